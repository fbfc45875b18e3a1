"""Cross-image attention (Alaluf et al. 2024, eq. 2): the output's queries attend to the
appearance image's keys and values, Attn(Q_out, K_app, V_app) = softmax(Q_out K_app^T / sqrt(d)) V_app.

The model batch holds, per conditioning chunk, the output rows, the appearance rows, (when
structure injection is on) the structure rows, and (for appearance guidance) plain copies of
the output rows: [out_0 .. , app_0 .. , str_0 .., plain_0 ..], repeated for the cond/uncond
chunks. An appearance of another size than the structure runs in a model call of its own,
and lends the output rows its keys and values from there.
"""
from functools import lru_cache
from typing import Callable, Optional, Tuple

import torch

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@lru_cache(maxsize=64)
def key_value_sources(rows: int, n_outputs: int, n_appearances: int, n_structures: int = 0,
                      from_structure: bool = False, n_plain: int = 0, lent: bool = False,
                      appearance: Optional[int] = None) -> tuple:
    """For each row of the model batch, the row whose keys and values it attends to (worked out
    once per layout, not at every patched layer).

    Output row j of a chunk takes appearance row j % n_appearances of the same chunk (one
    appearance for all outputs, or one each), or with `from_structure` its own structure row j
    (structure injection); appearance and structure rows keep their own, and so do the
    `n_plain` rows that may end each chunk (copies of the outputs, predicted without the swap).
    With `lent`, the appearances are not in the batch (another model call ran them, at their own
    size) and source rows + i names row i of the keys and values they lent, chunk by chunk.
    With `appearance`, every output row takes that appearance row (regions: core/regions.py)."""
    in_batch = 0 if lent else n_appearances
    per_chunk = n_outputs + in_batch + n_structures + n_plain
    if rows % per_chunk:
        raise ValueError(f"batch of {rows} rows is not a multiple of {n_outputs} outputs + "
                         f"{in_batch} appearances + {n_structures} structures + {n_plain} plain rows")
    if from_structure and n_structures != n_outputs:
        raise ValueError(f"structure injection needs one structure row per output ({n_structures} for {n_outputs})")
    outputs = torch.arange(n_outputs)
    taken = outputs % n_appearances if appearance is None else torch.full_like(outputs, appearance)
    sources = torch.arange(rows)
    for chunk, start in enumerate(range(0, rows, per_chunk)):
        if from_structure:
            sources[start:start + n_outputs] = start + n_outputs + in_batch + outputs
        elif lent:
            sources[start:start + n_outputs] = rows + chunk * n_appearances + taken
        else:
            sources[start:start + n_outputs] = start + n_outputs + taken
    return tuple(sources.tolist())


@lru_cache(maxsize=64)
def row_plan(sources: tuple, device: torch.device) -> tuple:
    """(every row's source, kept rows, swapped rows, the rows those take keys and values from:
    rows of the batch, or of the lent keys and values for sources past the batch) as index
    tensors on `device`, made once per layout: a boolean mask on the GPU, or indices copied
    from the CPU at each layer, would make the CPU wait for the GPU's queued work."""
    rows = torch.tensor(sources)
    swapped = rows != torch.arange(len(sources))
    taken = rows[swapped]
    plan = (rows, torch.nonzero(~swapped)[:, 0], torch.nonzero(swapped)[:, 0],
            taken - len(sources) if bool((taken >= len(sources)).any()) else taken)
    return tuple(t.to(device) for t in plan)


def cross_image_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sources: tuple,
                          attention: Attention, swapped_attention: Optional[Attention] = None,
                          lent: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Attention where row r uses the keys and values of row sources[r] (eq. 2): of this batch,
    or for sources past the batch, of the `lent` (keys, values) another model call made (an
    appearance of another size: its token count may differ from the queries').

    Rows that take another row's keys and values (the outputs) go through
    `swapped_attention` when one is given (e.g. attention with contrast); the others, and
    all rows when it is None, through `attention`."""
    every, kept, swapped, taken = row_plan(sources, q.device)
    if swapped_attention is None and lent is None:
        return attention(q, k.index_select(0, every), v.index_select(0, every))
    keys, values = lent if lent is not None else (k, v)
    out = torch.empty_like(q)
    if len(kept):
        out.index_copy_(0, kept, attention(*(t.index_select(0, kept) for t in (q, k, v))))
    if len(swapped):
        out.index_copy_(0, swapped, (swapped_attention or attention)(
            q.index_select(0, swapped), keys.index_select(0, taken), values.index_select(0, taken)))
    return out


def regional_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, region_sources: list, regions: tuple,
                       attention: Attention, swapped_attention: Optional[Attention] = None,
                       lent: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Cross-image attention by regions (core/regions.py): the output rows blend, token by token,
    their attention to each region's appearance (rows region_sources[r], keys inside its mask,
    with `swapped_attention`) and to their own keys and values, by the shares in `regions`
    (Regions.at: shares (R, N, 1), own share (N, 1) or None, key indices or None per region).
    The other rows keep their own keys and values."""
    shares, own, inside = regions
    _, kept, swapped, _ = row_plan(region_sources[0], q.device)
    keys, values = lent if lent is not None else (k, v)
    out = torch.empty_like(q)
    if len(kept):
        out.index_copy_(0, kept, attention(*(t.index_select(0, kept) for t in (q, k, v))))
    queries = q.index_select(0, swapped)
    blend = 0 if own is None else own * attention(queries, k.index_select(0, swapped), v.index_select(0, swapped))
    for sources, share, tokens in zip(region_sources, shares, inside):
        taken = row_plan(sources, q.device)[3]
        k_r, v_r = keys.index_select(0, taken), values.index_select(0, taken)
        if tokens is not None:
            k_r, v_r = k_r.index_select(1, tokens), v_r.index_select(1, tokens)
        blend = blend + share * (swapped_attention or attention)(queries, k_r, v_r)
    out.index_copy_(0, swapped, blend)
    return out
