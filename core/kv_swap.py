"""The key/value swap of cross-image attention (Alaluf et al. 2024, eq. 2): the output's queries
attend to the appearance image's keys and values,
    Attn(Q_out, K_app, V_app) = softmax(Q_out K_app^T / sqrt(d)) V_app,
at the attention sites the method patches (self-attention on UNets). Which row takes whose keys
and values is core/rows.py's; what is done at a site, core/plan.py's CallPlan.

Tensors are heads first: q, k, v (B, H, N, d); attention functions return (B, N, H * d), as
ComfyUI's do."""
from functools import lru_cache
from typing import Callable, Optional, Tuple

import torch

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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


def swapped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sources: tuple, attention: Attention,
                      contrast: Optional[Attention] = None,
                      borrowed: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Attention where row r uses the keys and values of row sources[r] (eq. 2): of this batch,
    or for sources past the batch, of the `borrowed` (keys, values) another model call lent (an
    appearance of another size: its token count may differ from the queries').

    Rows that take another row's keys and values (the outputs) go through `contrast` when one
    is given (attention with contrast); the others, and all rows when it is None, through
    `attention`."""
    every, kept, swapped, taken = row_plan(sources, q.device)
    if contrast is None and borrowed is None:
        return attention(q, k.index_select(0, every), v.index_select(0, every))
    keys, values = borrowed if borrowed is not None else (k, v)
    out = q.new_empty(q.shape[0], q.shape[2], q.shape[1] * v.shape[3])
    if len(kept):
        out.index_copy_(0, kept, attention(*(t.index_select(0, kept) for t in (q, k, v))))
    if len(swapped):
        out.index_copy_(0, swapped, (contrast or attention)(
            q.index_select(0, swapped), keys.index_select(0, taken), values.index_select(0, taken)))
    return out


def regional_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, region_sources: list, regions,
                       attention: Attention, contrast: Optional[Attention] = None,
                       borrowed: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Cross-image attention by regions (core/regions.py): the output rows blend, token by token,
    their attention to each region's appearance (rows region_sources[r], keys inside its mask,
    with `contrast`) and to their own keys and values, by the shares of `regions` (a
    regions.LayerRegions). The other rows keep their own keys and values."""
    _, kept, swapped, _ = row_plan(region_sources[0], q.device)
    keys, values = borrowed if borrowed is not None else (k, v)
    out = q.new_empty(q.shape[0], q.shape[2], q.shape[1] * v.shape[3])
    if len(kept):
        out.index_copy_(0, kept, attention(*(t.index_select(0, kept) for t in (q, k, v))))
    queries = q.index_select(0, swapped)
    blend = 0
    if regions.own is not None:
        blend = regions.own * attention(queries, k.index_select(0, swapped), v.index_select(0, swapped))
    for sources, share, tokens in zip(region_sources, regions.shares, regions.inside):
        taken = row_plan(sources, q.device)[3]
        k_r, v_r = keys.index_select(0, taken), values.index_select(0, taken)
        if tokens is not None:
            k_r, v_r = k_r.index_select(2, tokens), v_r.index_select(2, tokens)
        blend = blend + share * (contrast or attention)(queries, k_r, v_r)
    out.index_copy_(0, swapped, blend)
    return out
