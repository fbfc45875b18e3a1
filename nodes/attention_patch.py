"""The attn1 replacement ComfyUI calls in the decoder layers Cross-Image Attention patched. It
decides nothing: each model call of the Cross-Image Sampler carries a CallPlan, made by the
sampler's guider, that says what the batch holds and whose keys and values each row uses."""
from dataclasses import dataclass
from functools import partial
from typing import Optional

import torch

import comfy.ldm.modules.attention as comfy_attention

from ..core.contrast import LEAST_BUDGET, contrast_attention
from ..core.cross_attention import cross_image_attention, key_value_sources, regional_attention
from ..core.regions import Regions
from .model_info import decoder_attention_levels, layer_name

PLAN_KEY = "cross_image_call_plan"  # in transformer_options, for one model call; set by the guider only


@dataclass(frozen=True)
class BatchLayout:
    """The model batch per conditioning chunk: output rows, appearance rows, structure rows,
    and plain rows (copies of the outputs that keep their own keys and values: appearance
    guidance's no-swap prediction, in the same model call). With `appearances_lent`, the
    appearance rows are not in the batch: an appearance of another size than the structure
    runs in a model call of its own just before, which lends its keys and values."""
    n_outputs: int
    n_appearances: int
    n_structures: int = 0
    n_plain: int = 0
    appearances_lent: bool = False


@dataclass(frozen=True)
class CallPlan:
    """One model call: its step, its batch, and whether the output rows swap (take the appearance
    rows' keys and values, or with `from_structure` their structure rows'), with what contrast,
    computed in chunks of at most `contrast_budget` probabilities (core/contrast.py), and with
    `regions` by region (core/regions.py: each appearance row where its mask says).
    `lend_to`: a dict this call's patched layers leave their keys and values in, per layer and
    conditioning entry, for the call that reads them as `lent` (appearances_lent)."""
    step: int
    layout: BatchLayout
    swap: bool
    from_structure: bool = False
    contrast: float = 1.0
    contrast_budget: int = LEAST_BUDGET
    regions: Optional[Regions] = None
    lend_to: Optional[dict] = None
    lent: Optional[dict] = None


class CrossImageSelfAttention:
    """attn1 replacement: the output rows attend with their own queries to the keys and values the
    call's plan names (eq. 2 of the paper); every other row, and every row of a call that does not
    swap, is plain self-attention."""

    def __deepcopy__(self, memo):
        return self

    # Compiled graphs must not bake in a call's plan (ComfyUI 0.33.0's TorchCompileModel skips guards on transformer_options)
    @torch.compiler.disable
    def __call__(self, q, k, v, extra_options):
        plan = extra_options.get(PLAN_KEY)
        if plan is None:
            raise RuntimeError("model: this MODEL is patched by Cross-Image Attention, which only the Cross-Image "
                               "Sampler can run; sample it there, or use the MODEL from before Cross-Image Attention")
        # ComfyUI's attention, or the one another node chose for this model (an
        # optimized_attention_override in transformer_options), for every row that is not
        # given contrast; the contrast needs the probabilities, so it is computed here.
        attention = partial(comfy_attention.optimized_attention, heads=extra_options["n_heads"],
                            attn_precision=extra_options.get("attn_precision"), transformer_options=extra_options)
        if plan.lend_to is not None:
            layer, chunks = layer_and_chunks(extra_options)
            for chunk, keys, values in zip(chunks, k.chunk(len(chunks)), v.chunk(len(chunks))):
                plan.lend_to[layer, chunk] = keys, values
        if not plan.swap:
            return attention(q, k, v)
        swapped_attention = None  # strength 1 keeps the model's attention for every row
        if plan.contrast != 1.0:
            swapped_attention = partial(contrast_attention, heads=extra_options["n_heads"], strength=plan.contrast,
                                        budget_elements=plan.contrast_budget)
        layout, lent = plan.layout, None
        if layout.appearances_lent and not plan.from_structure:  # this call's chunks, in its order
            layer, chunks = layer_and_chunks(extra_options)
            pairs = [plan.lent[layer, chunk] for chunk in chunks]
            lent = pairs[0] if len(pairs) == 1 else tuple(torch.cat(part) for part in zip(*pairs))
        shape = (q.shape[0], layout.n_outputs, layout.n_appearances, layout.n_structures, plan.from_structure,
                 layout.n_plain, layout.appearances_lent)
        if plan.regions is not None:
            sources = [key_value_sources(*shape, appearance=r) for r in range(len(plan.regions))]
            shares = plan.regions.at(q.shape[1], (k if lent is None else lent[0]).shape[1], q.device)
            return regional_attention(q, k, v, sources, shares, attention, swapped_attention, lent)
        return cross_image_attention(q, k, v, key_value_sources(*shape), attention, swapped_attention, lent)


def layer_and_chunks(extra_options) -> tuple:
    """(this layer, the call's conditioning chunks in order), each chunk named by its
    conditioning entry and cond/uncond, which two model calls of one step share."""
    layer = extra_options["block"], extra_options["block_index"]
    return layer, list(zip(extra_options["uuids"], extra_options["cond_or_uncond"]))


def attn1_replacements(model) -> dict:
    """{("output", block id, transformer index): replacement} of a MODEL's attn1 replace patches."""
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})


def is_ours(replacement) -> bool:
    """A CrossImageSelfAttention, or a replacement that wraps one and says so as functools.wraps
    does (__wrapped__): a node that composes with ours instead of replacing it."""
    while replacement is not None and not isinstance(replacement, CrossImageSelfAttention):
        replacement = getattr(replacement, "__wrapped__", None)
    return replacement is not None


def require_own_layers(model, levels) -> None:
    """Raise a ValueError if a node after Cross-Image Attention replaced the self-attention of
    a layer it patched at `levels` (that layer would silently stop swapping)."""
    layers = decoder_attention_levels(model.get_model_object("diffusion_model"))
    replaced = attn1_replacements(model)
    lost = [layer_name(block_id, index) for level in levels for block_id, index in layers[level]
            if not is_ours(replaced.get(("output", block_id, index)))]
    if lost:
        raise ValueError(f"model: a node after Cross-Image Attention replaced the self-attention of decoder layers "
                         f"{', '.join(lost)}, so they would no longer look at the appearance. Remove that node, or "
                         "put it before Cross-Image Attention on levels it does not patch")
