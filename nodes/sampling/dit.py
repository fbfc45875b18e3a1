"""What the diffusion transformers share behind the architecture interface (architecture.py):
their attention is joint over text and image tokens, so the sites are blocks, chosen by number
or preset, and at a planned block the output rows keep their queries and their own text keys and
values and take the appearance's image-token keys and values (Stable Flow's injection, arXiv
2411.14430). The family adapters (flux.py, sd3.py, lumina.py, qwen_image.py) say only what
differs: the blocks, how a call names its block, where the image tokens sit in the sequence,
and the rotary positions.

The hook is ComfyUI's attention override (`optimized_attention_override` in transformer_options,
called by every attention of these models on 0.3.75 and 0.33.0 alike; the method needs the
attention itself for the contrast, which the families' q/k/v patches cannot give). An override
another node set before is chained: it runs every attention the pack does not compute itself.
Where RoPE applies before the attention, the appearance keys' positions are changed exactly
(core/positions.py: rotations add)."""
import math
from typing import Optional

from ...core.positions import Rope, band_scales, rotate, scale_bands
from ...core.settings import PositionSettings
from .architecture import Architecture, Site, is_ours
from .patch import PLAN_KEY, attend

OVERRIDE = "optimized_attention_override"  # ComfyUI's key in transformer_options
PRESETS = ("all", "late", "early")


class JointTransformer(Architecture):
    """A diffusion transformer: `blocks` is ((kind, count), ...) in the order users number them;
    `patch` the side of a token's latent patch; `rope` the rotary embedding of its attention
    (None: positions are embedded once at the input); `vital` {(count, ...): published block
    numbers} for the 'vital' preset."""
    selection = "levels"
    blocks: tuple = ()
    patch: int = 2
    rope: Optional[Rope] = None
    vital: dict = {}
    centered = False  # image positions counted from the grid's centre (else from its first row and column)
    family = "this model"

    def sites(self) -> list:
        found, number = [], 0
        for kind, count in self.blocks:
            found += [Site((kind, i), number + i, self.patch) for i in range(count)]
            number += count
        return found

    def layout(self) -> tuple:
        return tuple(count for _, count in self.blocks)

    def choose(self, text: str, latent_shape: tuple) -> tuple:
        """'vital' (published for this layout), 'all', 'late' (the second half of the blocks),
        'early' (the first half), 'auto' (vital where published, else late), or block numbers like
        '0,1,17' (counted through the kinds of blocks in order)."""
        total = sum(self.layout())
        word = text.strip().lower()
        if word == "auto":
            word = "vital" if self.layout() in self.vital else "late"
        if word == "vital":
            if self.layout() not in self.vital:
                raise ValueError(f"levels: no vital blocks are published for {self.family} with "
                                 f"{self.layout_words()}; choose all, late, early or block numbers (0 .. {total - 1})")
            chosen = self.vital[self.layout()]
        elif word in PRESETS:
            chosen = {"all": range(total), "late": range(total // 2, total), "early": range(total // 2)}[word]
        else:
            chosen = self.parse_blocks(text, total)
        return tuple(site.key for site in self.sites() if site.group in chosen)

    def layout_words(self) -> str:
        return " and ".join(f"{count} {kind} blocks" for kind, count in self.blocks)

    def parse_blocks(self, text: str, total: int) -> tuple:
        parts = text.replace(" ", "").split(",")
        try:
            if "" in parts:
                raise ValueError
            blocks = tuple(sorted({int(part) for part in parts}))
        except ValueError:
            presets = ", ".join(("vital",) * bool(self.vital) + PRESETS)
            raise ValueError(f"levels: expected 'auto', a preset ({presets}) or comma-separated block numbers like "
                             f"'0,1,17', got {text!r}") from None
        bad = [block for block in blocks if not 0 <= block < total]
        if bad:
            first, last = self.blocks[0][0], self.blocks[-1][0]
            raise ValueError(f"levels: this model has {total} blocks (0 = the first {first} block .. {total - 1} = the "
                             f"last {last} block); {bad} do not exist")
        return blocks

    def token_grid(self, key: tuple, latent_shape: tuple) -> tuple:
        return tuple(-(-side // self.patch) for side in latent_shape)  # the last patch padded

    def site_name(self, key: tuple) -> str:
        return f"{key[0]}.{key[1]}"

    # -- what a family says about its attention calls --------------------------------
    def site_of(self, options: dict, tokens: int, image_tokens: Optional[int]) -> Optional[tuple]:
        """The site a call of the attention override is at, from its transformer_options (and
        its sequence length; image_tokens: None outside the Cross-Image Sampler), or None."""
        return options.get("block_type"), options.get("block_index")

    def image_slice(self, tokens: int, image_tokens: int) -> slice:
        """Where a sequence of `tokens` holds its `image_tokens` image tokens: the last ones."""
        return slice(tokens - image_tokens, tokens)

    # -- installing ---------------------------------------------------------------------
    def install(self, patcher, transfer) -> None:
        options = patcher.model_options["transformer_options"]
        options[OVERRIDE] = JointAttention(self, frozenset(transfer.sites), transfer.positions, options.get(OVERRIDE))

    def require_free(self, model, keys) -> None:
        """Another node's attention override is chained, not overwritten: nothing to refuse."""

    def require_intact(self, model, keys) -> None:
        if not is_ours(model.model_options.get("transformer_options", {}).get(OVERRIDE), JointAttention):
            raise ValueError("model: a node after Cross-Image Attention replaced the model's attention (an attention "
                             "backend or Sage-attention node sets the same override), so no block would look at the "
                             "appearance. Put that node before Cross-Image Attention, which runs it in every block")

    def require_positions(self, positions):
        if self.rope is None:
            if positions is not None:
                raise ValueError(f"positions: Appearance Positions moves the appearance keys' rotary positions, which "
                                 f"{self.family} does not have (its positions are embedded at the input); disconnect "
                                 "it")
            return None
        return PositionSettings() if positions is None else positions

    def install_recorder(self, patcher, recorder) -> tuple:
        raise ValueError(f"model: Self-Segmentation reads a UNet's attention; on {self.family} it is not available "
                         "yet. Make the masks with another segmentation node, or draw them")

    # -- the appearance keys' positions -------------------------------------------------
    def key_transform(self, positions: Optional[PositionSettings], plan):
        """What the appearance's image keys undergo before the outputs attend to them."""
        if positions is None or positions.kind == "same":
            return None
        if positions.kind == "shifted":  # beside the output: its first column right after the output's last
            columns = self.token_grid(None, plan.latent_shape)[1]
            offset = [0.0] * (int(self.rope.axis.max()) + 1)
            offset[2] = float(columns - columns // 2 + self.token_grid(None, plan.appearance_shape)[1] // 2
                              if self.centered else columns)
            return lambda keys: rotate(keys, self.rope, offset)
        scales = band_scales(self.rope, plan.progress, axes=(1, 2),  # rows and columns
                             high_start=positions.high_start, high_end=positions.high_end)
        return lambda keys: scale_bands(keys, scales)


class JointAttention:
    """The attention override of a patched diffusion transformer: at a planned block, patch.attend
    with the image tokens named (as many as the call's latents have) and the appearance keys'
    positions as chosen; every other attention as the model (or the override set before this
    one) computes it. q, k, v arrive heads first (skip_reshape) or as (B, N, heads * d)."""

    def __init__(self, architecture: JointTransformer, sites: frozenset, positions, previous=None):
        self.architecture, self.sites, self.positions, self.previous = architecture, sites, positions, previous

    def __deepcopy__(self, memo):
        return self

    def __call__(self, func, q, k, v, heads, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        plan = options.get(PLAN_KEY)

        def attention(q_, k_, v_, **changes):
            if self.previous is not None:
                return self.previous(func, q_, k_, v_, heads, *args, **{**kwargs, **changes})
            return func(q_, k_, v_, heads, *args, **{**kwargs, **changes})
        architecture = self.architecture
        tokens = k.shape[2] if kwargs.get("skip_reshape") else k.shape[1]
        image_tokens = None if plan is None else math.prod(architecture.token_grid(None, plan.latent_shape))
        site = architecture.site_of(options, tokens, image_tokens)
        if site not in self.sites:
            return attention(q, k, v)
        if not kwargs.get("skip_reshape"):  # (B, N, heads * d), v possibly (B, N, heads, d)
            q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
            inner = attention

            def attention(q_, k_, v_):
                return inner(q_, k_, v_, skip_reshape=True)
        if plan is None:  # outside the Cross-Image Sampler: attend refuses
            return attend(site, q, k, v, options, attention)
        masked = kwargs.get("mask") is not None or (len(args) > 0 and args[0] is not None)  # the mask may be positional
        if masked or q.shape[2] != tokens or tokens < image_tokens:
            raise RuntimeError(f"model: block {architecture.site_name(site)} attends over {q.shape[2]} queries and "
                               f"{tokens} keys (with a mask: {masked}), not the text and {image_tokens} image tokens "
                               "of its latent: reference latents, a key cache or an attention mask of another node "
                               "cannot be combined with Cross-Image Attention")
        return attend(site, q, k, v, options, attention, image=architecture.image_slice(tokens, image_tokens),
                      transform=architecture.key_transform(self.positions, plan))
