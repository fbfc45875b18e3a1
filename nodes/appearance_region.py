"""Appearance Region: one more appearance image for Cross-Image Attention, and the region of
the structure it paints (core/regions.py)."""
from .checks import latent_mask, require_mask
from .model_info import require_inversion
from .settings import AppearanceRegion
from .sockets import CATEGORY, InversionSocket, RegionsSocket, io


def region_mask(name: str, mask, all_ones_is_none: bool = True):
    """A region's MASK checked (one mask, values in [0, 1], not empty), or None where it is
    absent or (with `all_ones_is_none`) all ones: a mask that keeps everything is no mask, exactly."""
    if mask is None:
        return None
    require_mask(name, mask)
    if mask.ndim == 3 and mask.shape[0] != 1:
        raise ValueError(f"{name}: one mask for the region, got a batch of {mask.shape[0]}")
    return None if all_ones_is_none and bool((mask >= 1).all()) else mask


def appearance_masks(regions, names=None) -> list:
    """Each region's appearance mask at its appearance latent's size (h, w), or None; errors
    name the masks `names` (default: appearance_mask)."""
    names = names or ["appearance_mask"] * len(regions)
    return [None if region.appearance_mask is None else latent_mask(region.appearance_mask, region.appearance.clean, name)[0]
            for name, region in zip(names, regions)]


def require_regions(regions, name: str = "regions") -> tuple:
    """The regions an Appearance Region node made, or a ValueError naming the input."""
    if regions is None:
        return ()
    if not isinstance(regions, tuple) or not all(isinstance(region, AppearanceRegion) for region in regions):
        raise ValueError(f"{name}: expected regions from the Appearance Region node, got {type(regions).__name__}")
    return regions


class CrossImageAppearanceRegion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CrossImageAppearanceRegion",
            display_name="Appearance Region",
            category=CATEGORY,
            description=("One more appearance image for Cross-Image Attention, for one region of the structure: "
                         "where structure_mask is set, the output takes its look from this appearance (only from "
                         "its pixels inside appearance_mask); e.g. the object from one image, the background from "
                         "another. Chain several; connect the last to Cross-Image Attention's regions."),
            inputs=[
                InversionSocket.Input("appearance", tooltip="Inversion of this region's appearance image (same model, prompt, steps and size as Cross-Image Attention's appearance)."),
                io.Mask.Input("structure_mask", tooltip="The structure image's pixels this appearance paints (at the structure image's size). Where regions overlap they share."),
                io.Mask.Input("appearance_mask", optional=True, tooltip="The appearance image's pixels to take the look from (at its size); without it, all."),
                RegionsSocket.Input("regions", optional=True, tooltip="Regions from other Appearance Region nodes; this one is added after them."),
            ],
            outputs=[RegionsSocket.Output(display_name="regions", tooltip="The regions so far; connect to Cross-Image Attention's regions or to another Appearance Region.")],
        )

    @classmethod
    def execute(cls, appearance, structure_mask, appearance_mask=None, regions=None):
        require_inversion(appearance, "appearance")
        if appearance.batch_size != 1:
            raise ValueError(f"appearance: a region takes one appearance image, got a batch of {appearance.batch_size}")
        # a region's structure mask stays, all ones too: None would mean "the pixels no region takes"
        region = AppearanceRegion(appearance, region_mask("structure_mask", structure_mask, all_ones_is_none=False),
                                  region_mask("appearance_mask", appearance_mask))
        return io.NodeOutput(require_regions(regions) + (region,))
