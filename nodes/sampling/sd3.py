"""Stable Diffusion 3 and 3.5 (large, medium) behind the architecture interface (dit.py). Their
MMDiT runs one joint attention over [text; image] tokens per block, and in SD3.5 medium's first
blocks (MMDiT-X) a second attention over the image tokens alone; positions are embedded once at
the input (no RoPE), as in a UNet. A block number chooses its joint attention and, where the
block has one, its image-only attention ("joint" and "image" sites).

The attention calls carry no block identity (comfy/ldm/modules/diffusionmodules/mmdit.py, both
releases), so a block replacement (patches_replace["dit"][("double_block", i)], which ComfyUI
calls with the block's transformer_options) tags the calls of each planned block: it runs the
block as before, with the block's number added to its options. A replacement another node set
before is chained."""
from typing import Optional

from .architecture import Site, is_ours
from .dit import JointTransformer

BLOCK_KEY = "cross_image_block"  # in a tagged block's transformer_options


class SD3(JointTransformer):
    family = "SD3 and SD3.5 models"

    def __init__(self, diffusion_model):
        super().__init__(diffusion_model)
        self.blocks = (("joint", len(diffusion_model.joint_blocks)),)
        self.patch = diffusion_model.patch_size
        self.image_only = tuple(i for i, block in enumerate(diffusion_model.joint_blocks)
                                if block.x_block.x_block_self_attn)

    @classmethod
    def fits(cls, diffusion_model) -> bool:
        from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
        return isinstance(diffusion_model, MMDiT)

    def sites(self) -> list:
        return [Site(key, i, self.patch) for i in range(self.blocks[0][1])
                for key in (("joint", i),) + ((("image", i),) if i in self.image_only else ())]

    def site_of(self, options: dict, tokens: int, image_tokens: Optional[int]) -> Optional[tuple]:
        block = options.get(BLOCK_KEY)
        if block is None:
            return None
        # the image-only attention sees the image tokens alone, the joint one the text too
        return ("image", block) if tokens == image_tokens and block in self.image_only else ("joint", block)

    def install(self, patcher, transfer) -> None:
        super().install(patcher, transfer)
        replaced = block_replacements(patcher)
        for block in sorted({key[1] for key in transfer.sites}):
            patcher.set_model_patch_replace(BlockTag(block, replaced.get(("double_block", block))), "dit",
                                            "double_block", block)

    def require_intact(self, model, keys) -> None:
        super().require_intact(model, keys)
        replaced = block_replacements(model)
        lost = sorted({key[1] for key in keys if not is_ours(replaced.get(("double_block", key[1])), BlockTag)})
        if lost:
            raise ValueError(f"model: a node after Cross-Image Attention replaced joint blocks {lost} (Skip Layer "
                             "Guidance, for one, replaces blocks), so they would no longer look at the appearance. "
                             "Put that node before Cross-Image Attention, or choose blocks it does not replace")


def block_replacements(model) -> dict:
    """{("double_block", i): replacement} of a MODEL's dit replace patches."""
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})


class BlockTag:
    """The dit replacement of a planned block: the block (or the replacement set before) runs
    with its number in its transformer_options, where the attention override reads it."""

    def __init__(self, block: int, previous=None):
        self.block, self.previous = block, previous

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args: dict, extra: dict) -> dict:
        args = {**args, "transformer_options": {**args["transformer_options"], BLOCK_KEY: self.block}}
        if self.previous is not None:
            return self.previous(args, extra)
        return extra["original_block"](args)
