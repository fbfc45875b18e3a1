"""What a patched attention site does: what the call's CallPlan (core/plan.py) says. The
architecture adapters' hooks hand their site's q, k, v here; this decides nothing itself."""
from functools import partial

import torch

from ...core.contrast import contrast_attention
from ...core.kv_swap import image_part, regional_attention, swapped_attention

PLAN_KEY = "cross_image_call_plan"  # in a model call's transformer_options; set by the guider only


def heads_first(heads: int, *tensors) -> tuple:
    """(B, N, heads * d) tensors as (B, heads, N, d) views."""
    return tuple(t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in tensors)


def attend(site: tuple, q, k, v, options: dict, attention, compiled: bool = False, image: slice = None,
           transform=None) -> torch.Tensor:
    """The attention at patched site `site` of q, k, v (B, heads, N, d) by the call's plan;
    `attention` is the model's own (B, heads, N, d) -> (B, N, heads * d). Returns (B, N, heads * d).

    image: the image tokens of each row's sequence at a joint text-and-image site (None: all);
    transform: what the architecture does to the appearance's keys before the output rows
    attend to them (their positions, core/positions.py), or None.
    compiled: lend copies of the keys and values (in a compiled graph, their memory is reused
    after the op)."""
    plan = options.get(PLAN_KEY)
    if plan is None:
        raise RuntimeError("model: this MODEL is patched by Cross-Image Attention, which only the Cross-Image "
                           "Sampler can run; sample it there, or use the MODEL from before Cross-Image Attention")
    plan.ran.add(site)
    if plan.lend:
        chunks = conditioning_chunks(options)
        lent_k, lent_v = image_part(k, image), image_part(v, image)
        for chunk, keys, values in zip(chunks, lent_k.chunk(len(chunks)), lent_v.chunk(len(chunks))):
            plan.kv_store[site, chunk] = (keys.clone(), values.clone()) if compiled else (keys, values)
    if not plan.swap:
        return attention(q, k, v)
    contrast = None  # strength 1 keeps the model's attention for every row
    if plan.contrast != 1.0:
        contrast = partial(contrast_attention, strength=plan.contrast, budget_elements=plan.contrast_budget)
    borrowed = None
    if plan.borrow:  # this call's chunks, in its order
        pairs = [plan.kv_store[site, chunk] for chunk in conditioning_chunks(options)]
        borrowed = pairs[0] if len(pairs) == 1 else tuple(torch.cat(part) for part in zip(*pairs))
    rows = plan.rows
    transform = None if plan.from_structure else transform  # the structure's keys keep its positions
    if plan.regions is not None:
        sources = [rows.kv_sources(q.shape[0], appearance=r) for r in range(len(plan.regions))]
        return regional_attention(q, k, v, sources, plan.regions.at(site, q.device), attention, contrast, borrowed,
                                  image, transform)
    return swapped_attention(q, k, v, rows.kv_sources(q.shape[0], plan.from_structure), attention, contrast,
                             borrowed, image, transform)


def conditioning_chunks(options: dict) -> list:
    """The call's conditioning chunks in order, each named by its conditioning entry and
    cond/uncond, which the two model calls of one step share."""
    return list(zip(options["uuids"], options["cond_or_uncond"]))
