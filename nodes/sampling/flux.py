"""Flux (Flux.1 dev and schnell, Flux.2) and Chroma behind the architecture interface (dit.py).
Their attention is joint over [text; image] tokens in 19 (or another number of) double blocks
and 38 single blocks, numbered double blocks first as Stable Flow numbers them. Every attention
call carries its block's type and index in transformer_options (comfy/ldm/flux/model.py and
chroma/model.py, both releases); q and k arrive after RoPE (3 axes, Flux.2 4: index, row,
column, ...)."""
from ...core.positions import rope_of
from .dit import JointTransformer

# Stable Flow's vital blocks of Flux-dev (19 double + 38 single): double 0, 1, 17, 18 and single
# 6, 9, 34, 35, 37, i.e. 0, 1, 17, 18, 25, 28, 53, 54, 56 in one numbering
VITAL = {(19, 38): (0, 1, 17, 18, 25, 28, 53, 54, 56)}


class Flux(JointTransformer):
    family = "Flux-family models"
    vital = VITAL

    def __init__(self, diffusion_model):
        super().__init__(diffusion_model)
        self.blocks = (("double", len(diffusion_model.double_blocks)), ("single", len(diffusion_model.single_blocks)))
        self.patch = diffusion_model.params.patch_size
        self.rope = rope_of(diffusion_model.params.axes_dim, diffusion_model.params.theta)

    @classmethod
    def fits(cls, diffusion_model) -> bool:
        from comfy.ldm.chroma.model import Chroma
        from comfy.ldm.flux.model import Flux as FluxModel
        return isinstance(diffusion_model, (FluxModel, Chroma))
