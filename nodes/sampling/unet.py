"""The Stable Diffusion UNets (SD1.x, SD2.x, SDXL and their fine-tunes) behind the architecture
interface (architecture.py). The paper swaps keys and values in the self-attention (attn1) of
the decoder: its sites are the transformer blocks of the UNet's output blocks, grouped by
resolution into levels (0 = the finest decoder level that has attention), patched through
ComfyUI's attn1 replace patches."""
from typing import Optional

import torch

from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample, UNetModel

from ...core.levels import paper_levels, token_grid
from .architecture import Architecture, Site, is_ours
from .compiled import call_options
from .patch import attend, heads_first


class UNet(Architecture):
    selection = "levels"

    def __init__(self, diffusion_model):
        super().__init__(diffusion_model)
        self._sites = decoder_sites(diffusion_model)

    @classmethod
    def fits(cls, diffusion_model) -> bool:
        return isinstance(diffusion_model, UNetModel)

    def sites(self) -> list:
        return list(self._sites)

    def levels(self) -> list:
        """The downsampling factor of each decoder level with attention, finest first."""
        return sorted({site.factor for site in self.sites()})

    def choose(self, text: str, latent_shape: tuple) -> tuple:
        """'0,1' -> those levels' sites; 'auto' -> the levels whose token grids are nearest to the
        paper's 64x64 and 32x32 for this latent (core/levels.py)."""
        factors = self.levels()
        chosen = parse_levels(text, len(factors), auto=paper_levels(factors, *latent_shape))
        return tuple(site.key for site in self.sites() if site.group in chosen)

    def chosen_levels(self, keys) -> tuple:
        return tuple(sorted({site.group for site in self.sites() if site.key in keys}))

    def token_grid(self, key: tuple, latent_shape: tuple) -> tuple:
        return token_grid(*latent_shape, next(site.factor for site in self.sites() if site.key == key))

    def site_name(self, key: tuple) -> str:
        """output block id, transformer index."""
        return f"output.{key[0]}.{key[1]}"

    def install(self, patcher, transfer) -> None:
        for block_id, index in transfer.sites:
            patcher.set_model_attn1_replace(SELF_ATTENTION, "output", block_id, index)

    def require_positions(self, positions):
        """A UNet's self-attention has no position embedding: the keys' positions are not a choice."""
        if positions is not None:
            raise ValueError("positions: Appearance Positions moves the appearance keys' rotary positions, which "
                             "Stable Diffusion UNets do not have; disconnect it")
        return None

    def require_free(self, model, keys) -> None:
        replaced = attn1_replacements(model)
        taken = [key for key in keys if ("output",) + key in replaced]
        if taken:
            owner = replaced[("output",) + taken[0]]
            raise ValueError(f"model: another node already replaced the self-attention of decoder layers "
                             f"{', '.join(map(self.site_name, taken))} ({getattr(owner, '__module__', '')}."
                             f"{getattr(owner, '__qualname__', type(owner).__qualname__)}); Cross-Image Attention "
                             "would overwrite it. Remove that node, or choose levels it does not patch")

    def require_intact(self, model, keys) -> None:
        replaced = attn1_replacements(model)
        lost = [self.site_name(key) for key in keys if not is_ours(replaced.get(("output",) + key), SelfAttention)]
        if lost:
            raise ValueError(f"model: a node after Cross-Image Attention replaced the self-attention of decoder "
                             f"layers {', '.join(lost)}, so they would no longer look at the appearance. Remove that "
                             "node, or put it before Cross-Image Attention on levels it does not patch")

    def install_recorder(self, patcher, recorder) -> tuple:
        """As the paper's code reads its 64 and 32 grids (SD1.5 at 512 px): the self-attention of
        the finest decoder level's last layer, the cross-attention of the next coarser level's
        last layer (of the same level where the decoder has attention at one level only)."""
        levels = [[site for site in self._sites if site.group == group] for group in range(len(self.levels()))]
        self_site, cross_site = levels[0][-1], levels[min(1, len(levels) - 1)][-1]
        patcher.set_model_attn1_replace(recorder.self_attention, "output", *self_site.key)
        patcher.set_model_attn2_replace(recorder.cross_attention, "output", *cross_site.key)
        return self_site, cross_site


def decoder_sites(unet) -> list:
    """The decoder's self-attention layers as Sites, finest level first, found from the module
    tree by resolution (not block numbers, so SD2 and SDXL layouts are found the same way)."""
    factor = 2 ** sum(isinstance(m, Downsample) for block in unet.input_blocks for m in block)
    found = []
    for block_id, block in enumerate(unet.output_blocks):
        for module in block:
            if isinstance(module, SpatialTransformer):
                found += [(factor, (block_id, index)) for index in range(len(module.transformer_blocks))]
        factor //= 2 ** sum(isinstance(m, Upsample) for m in block)
    factors = sorted({f for f, _ in found})
    return [Site(key, factors.index(f), f) for f in factors for g, key in found if g == f]


def parse_levels(text: str, available: int, name: str = "levels", auto=None) -> tuple:
    """'0,1' -> (0, 1), checked against the model's number of decoder attention levels;
    'auto' -> `auto` (the levels worked out for the model and image)."""
    if text.strip().lower() == "auto" and auto is not None:
        return tuple(auto)
    parts = text.replace(" ", "").split(",")
    if parts == [""]:
        raise ValueError(f"{name}: choose at least one decoder level, e.g. '0,1', or 'auto'")
    try:
        if "" in parts:
            raise ValueError
        levels = tuple(sorted({int(part) for part in parts}))
    except ValueError:
        raise ValueError(f"{name}: expected 'auto' or comma-separated level numbers like '0,1', got {text!r}") from None
    bad = [level for level in levels if not 0 <= level < available]
    if bad:
        raise ValueError(f"{name}: this model's decoder has attention at {available} resolution levels "
                         f"(0 = finest .. {available - 1}); {bad} do not exist")
    return levels


def attn1_replacements(model) -> dict:
    """{("output", block id, transformer index): replacement} of a MODEL's attn1 replace patches."""
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})


class SelfAttention:
    """The attn1 replacement at a patched decoder layer: patch.attend with the layer's q, k, v."""

    def __deepcopy__(self, memo):
        return self

    def __call__(self, q, k, v, extra_options):
        if torch.compiler.is_compiling():
            # Traced by torch.compile (TorchCompileModel): one opaque op, which reads the call's
            # plan when it runs (compiled.py).
            block, block_id = extra_options["block"]
            return torch.ops.cross_image_attention.unet_self_attention(
                q, k, v, block, block_id, extra_options["block_index"], extra_options["n_heads"],
                extra_options.get("attn_precision"))
        return self_attention(q, k, v, extra_options)


SELF_ATTENTION = SelfAttention()


def self_attention(q, k, v, extra_options, compiled: bool = False):
    """attn1's q, k, v (B, N, heads * d) to patch.attend, heads first."""
    import comfy.ldm.modules.attention as comfy_attention
    heads = extra_options["n_heads"]
    # ComfyUI's attention, or the one another node chose for this model (an
    # optimized_attention_override in transformer_options, which it calls)
    def attention(q_, k_, v_):
        return comfy_attention.optimized_attention(q_, k_, v_, heads, skip_reshape=True,
                                                   attn_precision=extra_options.get("attn_precision"),
                                                   transformer_options=extra_options)
    site = (extra_options["block"][1], extra_options["block_index"])
    return attend(site, *heads_first(heads, q, k, v), extra_options, attention, compiled)


@torch.library.custom_op("cross_image_attention::unet_self_attention", mutates_args=())
def compiled_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: str, block_id: int,
                            block_index: int, n_heads: int, attn_precision: Optional[torch.dtype]) -> torch.Tensor:
    """SelfAttention in a compiled graph: the layer's constants are arguments; the call's
    transformer_options are read when it runs."""
    extra = {**call_options(), "block": (block, block_id), "block_index": block_index, "n_heads": n_heads,
             "attn_precision": attn_precision}
    return self_attention(q, k, v, extra, compiled=True)


@compiled_self_attention.register_fake
def _(q, k, v, block, block_id, block_index, n_heads, attn_precision):
    return q.new_empty(q.shape[:-1] + v.shape[-1:])
