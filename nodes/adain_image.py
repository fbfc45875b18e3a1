"""AdaIN (Image): match the colour statistics of a decoded image to a reference image."""
import torch

from ..core.adain import adain
from .sockets import CATEGORY, io


def _mask_for(mask, image, name):
    """A ComfyUI MASK (B, H, W) or (H, W) checked against an IMAGE (B, H, W, C)."""
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3 or mask.shape[1:] != image.shape[1:3]:
        raise ValueError(f"{name}: mask of shape {tuple(mask.shape)} does not match the image size "
                         f"{image.shape[2]}x{image.shape[1]}")
    return mask


class CrossImageAdaINImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CrossImageAdaINImage",
            display_name="AdaIN (Image)",
            category=CATEGORY,
            description=("AdaIN on images: shifts and scales each colour channel of the image so its mean and "
                         "standard deviation match the reference (e.g. the appearance image). Masks limit which "
                         "pixels give the statistics and which pixels change."),
            inputs=[
                io.Image.Input("image", tooltip="The image to recolour (the decoded output)."),
                io.Image.Input("reference", tooltip="The image whose colour statistics to copy (the appearance image); one, or one per image."),
                io.Mask.Input("image_mask", optional=True, tooltip="Only these pixels of the image are measured and changed (e.g. the object)."),
                io.Mask.Input("reference_mask", optional=True, tooltip="Only these pixels of the reference give the statistics."),
            ],
            outputs=[io.Image.Output(tooltip="The image with the reference's colour statistics, clipped to [0, 1].")],
        )

    @classmethod
    def execute(cls, image, reference, image_mask=None, reference_mask=None):
        if not isinstance(image, torch.Tensor) or image.ndim != 4:
            raise ValueError("image: expected an IMAGE (batch, height, width, channels)")
        if not isinstance(reference, torch.Tensor) or reference.ndim != 4:
            raise ValueError("reference: expected an IMAGE (batch, height, width, channels)")
        if reference.shape[-1] != image.shape[-1]:
            raise ValueError(f"reference: {reference.shape[-1]} channels, image has {image.shape[-1]}")
        if reference.shape[0] not in (1, image.shape[0]):
            raise ValueError(f"reference: batch of {reference.shape[0]} for {image.shape[0]} images; use 1 or the same number")
        out = adain(image.movedim(-1, 1), reference.movedim(-1, 1),
                    _mask_for(image_mask, image, "image_mask"), _mask_for(reference_mask, reference, "reference_mask"),
                    mask_names=("image_mask", "reference_mask"))
        return io.NodeOutput(out.movedim(1, -1).clamp(0.0, 1.0))
