"""Latent AdaIN: settings for AdaIN on the output latents during sampling (paper, sec. 4.3)."""
from ..core.settings import LatentAdaINSettings
from .inputs import numbers, require_mask, require_range
from .sockets import ADVANCED, CATEGORY, LatentAdaINSocket, io


class CrossImageLatentAdaIN(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CrossImageLatentAdaIN",
            display_name="Latent AdaIN",
            category=CATEGORY,
            description=("AdaIN on latents (paper, sec. 4.3): after each step in the range, the output latent takes "
                         "the appearance latent's per-channel mean and standard deviation, which carries the "
                         "appearance's colours into the output. With masks, only the object: statistics from the "
                         "masked pixels, and only masked output pixels change. Connect to Cross-Image Sampler."),
            inputs=[
                io.Float.Input("start", default=0.29, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps after which the output latent is matched to the "
                                       "appearance (paper: step 20 of 68, 0.29). Earlier gives stronger colour "
                                       "transfer."),
                io.Float.Input("end", default=1.0, min=0.0, max=1.0, step=0.01, **ADVANCED,
                               tooltip="Fraction of the steps at which matching stops (paper: 1.0, through the last "
                                       "step)."),
                io.Mask.Input("structure_mask", optional=True,
                              tooltip="The object in the structure image (e.g. from a mask editor or segmentation "
                                      "node): only these output pixels are measured and changed."),
                io.Mask.Input("appearance_mask", optional=True,
                              tooltip="The object in the appearance image: only these pixels give the statistics."),
            ],
            outputs=[LatentAdaINSocket.Output(display_name="latent_adain", tooltip="Latent AdaIN settings; connect to "
                                                                                   "Cross-Image Sampler.")],
        )

    @classmethod
    def execute(cls, start, end, structure_mask=None, appearance_mask=None):
        start, end = numbers(cls, start=start, end=end)
        require_range(start, end)
        for name, mask in (("structure_mask", structure_mask), ("appearance_mask", appearance_mask)):
            if mask is not None:
                require_mask(name, mask)
        return io.NodeOutput(LatentAdaINSettings(start, end, structure_mask, appearance_mask))
