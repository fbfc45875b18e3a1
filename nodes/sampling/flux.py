"""Flux (Flux.1 dev and schnell, Flux.2) and Chroma behind the architecture interface
(architecture.py). Their attention is joint over text and image tokens, [text; image], in 19 (or
another number of) double blocks and 38 single blocks. The sites are those blocks; users choose
them by block number (double blocks first, then single blocks, as Stable Flow numbers them) or
by a preset. The output rows keep their queries and their own text keys and values and take the
appearance's image-token keys and values (Stable Flow's injection, arXiv 2411.14430).

The hook is ComfyUI's attention override (`optimized_attention_override` in transformer_options,
called by every attention with the block's type and index in its options, on 0.3.75 and
0.33.0 alike; 0.3.75 accepts attn1_patch for Flux but never calls it, and the method needs the
attention itself for the contrast anyway). An override another node set before is chained: it
runs every attention the pack does not compute itself. Its q and k arrive after RoPE; the
appearance keys' positions are then changed exactly (core/positions.py: rotations add)."""
import math

from ...core.positions import band_scales, rope_of, rotate, scale_bands
from ...core.settings import PositionSettings
from .architecture import Architecture, Site
from .patch import PLAN_KEY, attend

OVERRIDE = "optimized_attention_override"  # ComfyUI's key in transformer_options
# Stable Flow's vital blocks of Flux-dev (19 double + 38 single): double 0, 1, 17, 18 and single
# 6, 9, 34, 35, 37, i.e. 0, 1, 17, 18, 25, 28, 53, 54, 56 in one numbering
VITAL = {(19, 38): (0, 1, 17, 18, 25, 28, 53, 54, 56)}
PRESETS = ("vital", "all", "late", "early")


class Flux(Architecture):
    selection = "levels"

    def __init__(self, diffusion_model):
        super().__init__(diffusion_model)
        self.double, self.single = len(diffusion_model.double_blocks), len(diffusion_model.single_blocks)
        self.patch = diffusion_model.params.patch_size
        self.rope = rope_of(diffusion_model.params.axes_dim, diffusion_model.params.theta)

    @classmethod
    def fits(cls, diffusion_model) -> bool:
        from comfy.ldm.chroma.model import Chroma
        from comfy.ldm.flux.model import Flux as FluxModel
        return isinstance(diffusion_model, (FluxModel, Chroma))

    def sites(self) -> list:
        return ([Site(("double", i), i, self.patch) for i in range(self.double)]
                + [Site(("single", i), self.double + i, self.patch) for i in range(self.single)])

    def choose(self, text: str, latent_shape: tuple) -> tuple:
        """'vital' (Stable Flow's, where published for this layout), 'all', 'late' (the second
        half of the blocks), 'early' (the first half), 'auto' (vital where published, else late),
        or block numbers like '0,1,17,18,25' (double blocks 0 .. n-1, then single blocks)."""
        total = self.double + self.single
        word = text.strip().lower()
        if word == "auto":
            word = "vital" if (self.double, self.single) in VITAL else "late"
        if word == "vital":
            if (self.double, self.single) not in VITAL:
                raise ValueError(f"levels: no vital blocks are published for a model of {self.double} double and "
                                 f"{self.single} single blocks; choose all, late, early or block numbers "
                                 f"(0 .. {total - 1})")
            chosen = VITAL[self.double, self.single]
        elif word in ("all", "late", "early"):
            chosen = {"all": range(total), "late": range(total // 2, total), "early": range(total // 2)}[word]
        else:
            chosen = parse_blocks(text, total)
        return tuple(site.key for site in self.sites() if site.group in chosen)

    def token_grid(self, key: tuple, latent_shape: tuple) -> tuple:
        return tuple(-(-side // self.patch) for side in latent_shape)

    def site_name(self, key: tuple) -> str:
        return f"{key[0]}.{key[1]}"

    def install(self, patcher, transfer) -> None:
        options = patcher.model_options["transformer_options"]
        options[OVERRIDE] = JointAttention(self, frozenset(transfer.sites), transfer.positions, options.get(OVERRIDE))

    def require_free(self, model, keys) -> None:
        """Another node's attention override is chained, not overwritten: nothing to refuse."""

    def require_intact(self, model, keys) -> None:
        override = model.model_options.get("transformer_options", {}).get(OVERRIDE)
        while override is not None and not isinstance(override, JointAttention):
            override = getattr(override, "__wrapped__", None)
        if override is None:
            raise ValueError("model: a node after Cross-Image Attention replaced the model's attention (an attention "
                             "backend or Sage-attention node sets the same override), so no block would look at the "
                             "appearance. Put that node before Cross-Image Attention, which runs it in every block")

    def require_positions(self, positions):
        return PositionSettings() if positions is None else positions

    def install_recorder(self, patcher, recorder) -> tuple:
        raise ValueError("model: Self-Segmentation reads a UNet's attention; on Flux-family models it is not available "
                         "yet. Make the masks with another segmentation node, or draw them")


def parse_blocks(text: str, total: int) -> tuple:
    parts = text.replace(" ", "").split(",")
    try:
        if "" in parts:
            raise ValueError
        blocks = tuple(sorted({int(part) for part in parts}))
    except ValueError:
        raise ValueError(f"levels: expected 'auto', a preset ({', '.join(PRESETS)}) or comma-separated block numbers "
                         f"like '0,1,17', got {text!r}") from None
    bad = [block for block in blocks if not 0 <= block < total]
    if bad:
        raise ValueError(f"levels: this model has {total} blocks (0 = the first double block .. {total - 1} = the last "
                         f"single block); {bad} do not exist")
    return blocks


class JointAttention:
    """The attention override of a patched Flux-family MODEL: at a planned block, patch.attend
    with the image tokens named (the last ones of the sequence, as many as the call's latents
    have) and the appearance keys' positions as chosen; every other attention as the model (or
    the override set before this one) computes it."""

    def __init__(self, architecture: Flux, sites: frozenset, positions: PositionSettings, previous=None):
        self.architecture, self.sites, self.positions, self.previous = architecture, sites, positions, previous

    def __deepcopy__(self, memo):
        return self

    def __call__(self, func, q, k, v, heads, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}

        def attention(q_, k_, v_):
            if self.previous is not None:
                return self.previous(func, q_, k_, v_, heads, *args, **kwargs)
            return func(q_, k_, v_, heads, *args, **kwargs)
        site = (options.get("block_type"), options.get("block_index"))
        if site not in self.sites:
            return attention(q, k, v)
        plan = options.get(PLAN_KEY)
        if plan is None:  # outside the Cross-Image Sampler: attend refuses
            return attend(site, q, k, v, options, attention)
        image_tokens = math.prod(self.architecture.token_grid(site, plan.latent_shape))
        tokens = k.shape[2]
        if kwargs.get("mask") is not None or q.shape[2] != tokens or tokens < image_tokens:
            raise RuntimeError(f"model: block {self.architecture.site_name(site)} attends over {q.shape[2]} queries "
                               f"and {tokens} keys (with a mask: {kwargs.get('mask') is not None}), not the text and "
                               f"{image_tokens} image tokens of its latent: reference latents, a key cache or an "
                               "attention mask of another node cannot be combined with Cross-Image Attention")
        return attend(site, q, k, v, options, attention, image=slice(tokens - image_tokens, tokens),
                      transform=self.transform(plan))

    def transform(self, plan):
        """What the appearance's image keys undergo before the outputs attend to them."""
        if self.positions.kind == "same":
            return None
        if self.positions.kind == "shifted":  # beside the output: its columns' count further right
            offset = [0.0] * len(self.architecture.diffusion_model.params.axes_dim)
            offset[2] = float(self.architecture.token_grid(None, plan.latent_shape)[1])
            return lambda keys: rotate(keys, self.architecture.rope, offset)
        scales = band_scales(self.architecture.rope, plan.progress, axes=(1, 2),  # rows and columns
                             high_start=self.positions.high_start, high_end=self.positions.high_end)
        return lambda keys: scale_bands(keys, scales)
