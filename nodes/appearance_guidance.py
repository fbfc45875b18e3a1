"""Appearance Guidance: settings for the Cross-Image Sampler (core/guidance.py)."""
from ..core.settings import GuidanceSettings
from .inputs import numbers
from .sockets import ADVANCED, CATEGORY, GuidanceSocket, io


class CrossImageAppearanceGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CrossImageAppearanceGuidance",
            display_name="Appearance Guidance",
            category=CATEGORY,
            description=("Appearance guidance (paper, sec. 4.3): from a chosen step on, the output's prediction is "
                         "pushed from the plain model's towards the cross-image one: eps = eps_plain + s * (eps_cross "
                         "- eps_plain), s falling linearly from scale to end_scale. Connect to Cross-Image Sampler. "
                         "Costs one extra model pass on the output latent per guided step."),
            inputs=[
                io.Float.Input("scale", default=3.5, min=0.0, max=30.0, step=0.05,
                               tooltip="Guidance at the first step (paper: 3.5). Higher transfers more appearance; 1 "
                                       "is no guidance; 0 removes the cross-image effect on guided steps."),
                io.Float.Input("end_scale", default=1.75, min=0.0, max=30.0, step=0.05, **ADVANCED,
                               tooltip="Guidance at the last step (paper: max(3.5 / 2, 1) = 1.75); the scale falls "
                                       "linearly in between."),
                io.Float.Input("start", default=0.15, min=0.0, max=1.0, step=0.01, **ADVANCED,
                               tooltip="Fraction of the steps after which guidance applies (paper: step 10 of 68, "
                                       "0.15)."),
            ],
            outputs=[GuidanceSocket.Output(display_name="guidance", tooltip="Guidance settings; connect to "
                                                                            "Cross-Image Sampler.")],
        )

    @classmethod
    def execute(cls, scale, end_scale, start):
        return io.NodeOutput(GuidanceSettings(*numbers(cls, scale=scale, end_scale=end_scale, start=start)))
