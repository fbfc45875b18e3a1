"""Qwen-Image (and Qwen-Image-Edit without its reference images) behind the architecture
interface (dit.py). Its 60 (or another number of) blocks attend jointly over [text; image];
every attention call carries its block's index in transformer_options
(comfy/ldm/qwen_image/model.py, both releases), after RoPE (axes: frame, row, column, the image
positions counted from the grid's centre). Its latents have a frame axis of one: (B, 16, 1, H, W)."""
from ...core.positions import rope_of
from .dit import JointTransformer


class QwenImage(JointTransformer):
    family = "Qwen-Image models"
    centered = True

    def __init__(self, diffusion_model):
        super().__init__(diffusion_model)
        self.blocks = (("double", len(diffusion_model.transformer_blocks)),)
        self.patch = diffusion_model.patch_size
        embedder = diffusion_model.pe_embedder
        self.rope = rope_of(embedder.axes_dim, embedder.theta)

    @classmethod
    def fits(cls, diffusion_model) -> bool:
        from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel
        return isinstance(diffusion_model, QwenImageTransformer2DModel)
