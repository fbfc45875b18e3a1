"""Appearance Region: one more appearance image for Cross-Image Attention, and the region of
the structure it paints (core/regions.py)."""
from ..core.settings import AppearanceRegion
from .inputs import region_mask, require_inversion, require_regions
from .sockets import CATEGORY, InversionSocket, RegionsSocket, io


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
                InversionSocket.Input("appearance", tooltip="Inversion of this region's appearance image (same model, "
                                                            "prompt, steps and size as Cross-Image Attention's "
                                                            "appearance)."),
                io.Mask.Input("structure_mask", tooltip="The structure image's pixels this appearance paints (at the "
                                                        "structure image's size). Where regions overlap they share."),
                io.Mask.Input("appearance_mask", optional=True, tooltip="The appearance image's pixels to take the "
                                                                        "look from (at its size); without it, all."),
                RegionsSocket.Input("regions", optional=True, tooltip="Regions from other Appearance Region nodes; "
                                                                      "this one is added after them."),
            ],
            outputs=[RegionsSocket.Output(display_name="regions", tooltip="The regions so far; connect to Cross-Image "
                                                                          "Attention's regions or to another "
                                                                          "Appearance Region.")],
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
