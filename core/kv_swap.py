"""The key/value swap of cross-image attention (Alaluf et al. 2024, eq. 2): the output's queries
attend to the appearance image's keys and values,
    Attn(Q_out, K_app, V_app) = softmax(Q_out K_app^T / sqrt(d)) V_app,
at the attention sites the method patches. Which row takes whose keys and values is
core/rows.py's; what is done at a site, core/plan.py's CallPlan.

At a joint text-and-image attention site (a diffusion transformer) only the image tokens are
swapped: a swapped row keeps its own queries and its own text keys and values and takes the
source row's image-token keys and values (Stable Flow's injection, arXiv 2411.14430). `image`
names the image tokens of each row's sequence; None: every token is an image token (UNet
self-attention). The contrast's mean is then 1 / (all the keys the row sees, text included).

Tensors are heads first: q, k, v (B, H, N, d); attention functions return (B, N, H * d), as
ComfyUI's do."""
from functools import lru_cache
from typing import Callable, Optional, Tuple

import torch

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
KeyTransform = Callable[[torch.Tensor], torch.Tensor]


@lru_cache(maxsize=64)
def row_plan(sources: tuple, device: torch.device) -> tuple:
    """(every row's source, kept rows, swapped rows, the rows those take keys and values from:
    rows of the batch, or of the borrowed keys and values for sources past the batch) as index
    tensors on `device`, made once per layout: a boolean mask on the GPU, or indices copied
    from the CPU at each site, would make the CPU wait for the GPU's queued work."""
    rows = torch.tensor(sources)
    swapped = rows != torch.arange(len(sources))
    taken = rows[swapped]
    plan = (rows, torch.nonzero(~swapped)[:, 0], torch.nonzero(swapped)[:, 0],
            taken - len(sources) if bool((taken >= len(sources)).any()) else taken)
    return tuple(t.to(device) for t in plan)


def image_part(t: torch.Tensor, image: Optional[slice]) -> torch.Tensor:
    """The image tokens (dim 2) of keys or values, all of them where `image` is None."""
    return t if image is None else t[:, :, image]


def with_image(own: torch.Tensor, image_tokens: torch.Tensor, image: Optional[slice]) -> torch.Tensor:
    """Rows' own tokens with their image tokens replaced by `image_tokens` (whose count may differ)."""
    if image is None:
        return image_tokens
    return torch.cat([own[:, :, :image.start], image_tokens, own[:, :, image.stop:]], dim=2)


def swapped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sources: tuple, attention: Attention,
                      contrast: Optional[Attention] = None,
                      borrowed: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, image: Optional[slice] = None,
                      transform: Optional[KeyTransform] = None) -> torch.Tensor:
    """Attention where row r uses the image keys and values of row sources[r] (eq. 2): of this
    batch, or for sources past the batch, of the `borrowed` image (keys, values) another model
    call lent (an appearance of another size: its token count may differ from the queries').
    `transform` acts on the taken keys (positions: core/positions.py).

    Rows that take another row's keys and values (the outputs) go through `contrast` when one
    is given (attention with contrast); the others, and all rows when it is None, through
    `attention`."""
    every, kept, swapped, taken = row_plan(sources, q.device)
    if contrast is None and borrowed is None and image is None and transform is None:
        return attention(q, k.index_select(0, every), v.index_select(0, every))
    keys, values = borrowed if borrowed is not None else (image_part(k, image), image_part(v, image))
    out = q.new_empty(q.shape[0], q.shape[2], q.shape[1] * v.shape[3])
    if len(kept):
        out.index_copy_(0, kept, attention(*(t.index_select(0, kept) for t in (q, k, v))))
    if len(swapped):
        taken_keys = keys.index_select(0, taken)
        if transform is not None:
            taken_keys = transform(taken_keys)
        out.index_copy_(0, swapped, (contrast or attention)(
            q.index_select(0, swapped), with_image(k.index_select(0, swapped), taken_keys, image),
            with_image(v.index_select(0, swapped), values.index_select(0, taken), image)))
    return out


def regional_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, region_sources: list, regions,
                       attention: Attention, contrast: Optional[Attention] = None,
                       borrowed: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, image: Optional[slice] = None,
                       transform: Optional[KeyTransform] = None) -> torch.Tensor:
    """Cross-image attention by regions (core/regions.py): the output rows blend, token by token,
    their attention to each region's appearance (rows region_sources[r], image keys inside its
    mask, with `contrast`) and to their own keys and values, by the shares of `regions` (a
    regions.LayerRegions, over the image tokens; tokens outside `image`, the text, keep their
    own attention). The other rows keep their own keys and values."""
    _, kept, swapped, _ = row_plan(region_sources[0], q.device)
    keys, values = borrowed if borrowed is not None else (image_part(k, image), image_part(v, image))
    out = q.new_empty(q.shape[0], q.shape[2], q.shape[1] * v.shape[3])
    if len(kept):
        out.index_copy_(0, kept, attention(*(t.index_select(0, kept) for t in (q, k, v))))
    queries, own_k, own_v = (t.index_select(0, swapped) for t in (q, k, v))
    shares, own = regions.shares, regions.own
    if image is not None and (image.start > 0 or image.stop < q.shape[2]):
        # the shares are the image queries'; every other query (the text) is all its own
        pad = (0, 0, image.start, q.shape[2] - image.stop)
        shares = torch.nn.functional.pad(shares, pad)
        own = torch.nn.functional.pad(torch.zeros_like(regions.shares[0]) if own is None else own, pad, value=1.0)
    blend = 0
    if own is not None:
        blend = own * attention(queries, own_k, own_v)
    for sources, share, tokens in zip(region_sources, shares, regions.inside):
        taken = row_plan(sources, q.device)[3]
        k_r, v_r = keys.index_select(0, taken), values.index_select(0, taken)
        if tokens is not None:
            k_r, v_r = k_r.index_select(2, tokens), v_r.index_select(2, tokens)
        if transform is not None:
            k_r = transform(k_r)
        blend = blend + share * (contrast or attention)(queries, with_image(own_k, k_r, image),
                                                        with_image(own_v, v_r, image))
    out.index_copy_(0, swapped, blend)
    return out
