"""AdaIN (Image): match the colour statistics of a decoded image to a reference image."""
from ..core.adain import adain
from .inputs import mask_for_image, require_image
from .sockets import CATEGORY, io


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
                io.Image.Input("reference", tooltip="The image whose colour statistics to copy (the appearance "
                                                    "image); one, or one per image."),
                io.Mask.Input("image_mask", optional=True, tooltip="Only these pixels of the image are measured and "
                                                                   "changed (e.g. the object)."),
                io.Mask.Input("reference_mask", optional=True, tooltip="Only these pixels of the reference give the "
                                                                       "statistics."),
            ],
            outputs=[io.Image.Output(tooltip="The image with the reference's colour statistics, clipped to [0, 1].")],
        )

    @classmethod
    def execute(cls, image, reference, image_mask=None, reference_mask=None):
        image, reference = require_image("image", image), require_image("reference", reference)
        if reference.shape[-1] != image.shape[-1]:
            raise ValueError(f"reference: {reference.shape[-1]} channels, image has {image.shape[-1]}")
        if reference.shape[0] not in (1, image.shape[0]):
            raise ValueError(f"reference: batch of {reference.shape[0]} for {image.shape[0]} images; use 1 or the "
                             "same number")
        out = adain(image.movedim(-1, 1), reference.movedim(-1, 1),
                    mask_for_image(image_mask, image, "image_mask"),
                    mask_for_image(reference_mask, reference, "reference_mask"),
                    mask_names=("image_mask", "reference_mask"))
        return io.NodeOutput(out.movedim(1, -1).clamp(0.0, 1.0))
