"""Lumina 2 and Z-Image (NextDiT) behind the architecture interface (dit.py). Each forward runs
the text's refiner blocks, then the image's, then the joint `layers` over [text; image] (Z-Image
pads both parts to a multiple of 32 tokens: [text, text pads, image, image pads]); the sites are
the joint layers. q and k arrive after RoPE (axes: index, row, column).

Only ComfyUI 0.33.0 names the layer in the attention's transformer_options, and neither release
offers a block replacement for NextDiT, so a diffusion-model wrapper (ComfyUI's
WrappersMP.DIFFUSION_MODEL) gives each forward a fresh count of its attention calls: the model
makes them in a fixed order (comfy/ldm/lumina/model.py: context_refiner, noise_refiner, layers),
so call number r + i, past the r refiner blocks, is layer i (checked against the layer's number
where 0.33.0 gives it)."""
import itertools
from typing import Optional

from ...core.positions import rope_of
from .dit import JointTransformer

COUNT_KEY = "cross_image_attention_calls"  # in a forward's transformer_options: its attention calls so far
WRAPPER_KEY = "cross_image_attention"


class Lumina(JointTransformer):
    family = "Lumina 2 and Z-Image models"

    def __init__(self, diffusion_model):
        super().__init__(diffusion_model)
        self.blocks = (("layer", len(diffusion_model.layers)),)
        self.patch = diffusion_model.patch_size
        embedder = diffusion_model.rope_embedder
        self.rope = rope_of(embedder.axes_dim, embedder.theta)
        self.refiners = len(diffusion_model.context_refiner) + len(diffusion_model.noise_refiner)
        self.pad = diffusion_model.pad_tokens_multiple or 1

    @classmethod
    def fits(cls, diffusion_model) -> bool:
        from comfy.ldm.lumina.model import NextDiT
        return isinstance(diffusion_model, NextDiT)

    def site_of(self, options: dict, tokens: int, image_tokens: Optional[int]) -> Optional[tuple]:
        count = options.get(COUNT_KEY)
        if count is None:
            return None
        layer = next(count) - self.refiners
        named = options.get("block_index") if options.get("block_type") == "double" else None  # 0.33.0's own number
        if named is not None and named != layer:
            raise RuntimeError(f"model: attention call {layer + self.refiners} of this forward is layer {named}, not "
                               f"{layer}: this ComfyUI release runs the {self.family}' blocks in another order than "
                               "Cross-Image Attention counts them")
        return ("layer", layer) if layer >= 0 else None

    def image_slice(self, tokens: int, image_tokens: int) -> slice:
        start = tokens - -(-image_tokens // self.pad) * self.pad  # the image's pads come last
        return slice(start, start + image_tokens)

    def install(self, patcher, transfer) -> None:
        import comfy.patcher_extension
        super().install(patcher, transfer)
        patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, counting)


def counting(executor, *args, **kwargs):
    """The diffusion model's forward with a fresh count of its attention calls in its options."""
    kwargs["transformer_options"] = {**kwargs.get("transformer_options", {}), COUNT_KEY: itertools.count()}
    return executor(*args, **kwargs)
