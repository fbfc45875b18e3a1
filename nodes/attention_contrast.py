"""Attention Contrast: settings for the paper's attention-map contrast (core/contrast.py)."""
from ..core.settings import ContrastSettings
from .inputs import numbers
from .sockets import CATEGORY, ContrastSocket, io


class CrossImageAttentionContrast(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CrossImageAttentionContrast",
            display_name="Attention Contrast",
            category=CATEGORY,
            description=("Attention-map contrast for Cross-Image Attention (paper, sec. 4.2): after the softmax, the "
                         "output's attention to the appearance is pushed away from its mean and clipped to [0, 1], so "
                         "each output pixel follows fewer, better-matching appearance pixels. Computed in query "
                         "chunks; strength 1 is off."),
            inputs=[io.Float.Input("strength", default=1.67, min=0.0, max=10.0, step=0.01,
                                   tooltip="beta in clip((A - mean) * beta + mean, 0, 1). Paper: 1.67. Higher gives "
                                           "crisper, more literal appearance matches; 1 turns it off; below 1 blends "
                                           "more appearance pixels.")],
            outputs=[ContrastSocket.Output(display_name="contrast", tooltip="Contrast settings; connect to "
                                                                            "Cross-Image Attention.")],
        )

    @classmethod
    def execute(cls, strength):
        (strength,) = numbers(cls, strength=strength)
        return io.NodeOutput(ContrastSettings(strength=strength))
