"""The attn1 replacement ComfyUI calls in the decoder layers Cross-Image Attention patched. It
decides nothing: each model call of the Cross-Image Sampler carries a CallPlan, made by the
sampler's guider, that says what the batch holds and whose keys and values each row uses."""
import contextvars
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

    def __call__(self, q, k, v, extra_options):
        if torch.compiler.is_compiling():
            # Traced by torch.compile (TorchCompileModel): one opaque op, which reads the call's
            # plan when it runs. Traced, the plan would be baked into the graph (ComfyUI 0.33.0's
            # TorchCompileModel skips the guards on transformer_options) or guarded on (a
            # recompile per call); a graph break would split the UNet's block loop into blocks
            # compiled one by one.
            block, block_id = extra_options["block"]
            return torch.ops.cross_image_attention.self_attention(
                q, k, v, block, block_id, extra_options["block_index"], extra_options["n_heads"],
                extra_options.get("attn_precision"))
        return self_attention(q, k, v, extra_options)


def self_attention(q, k, v, extra_options, compiled=False):
    """CrossImageSelfAttention's work, by the call's plan. compiled: lend copies of the keys and
    values (in a compiled graph, their memory is reused after the op)."""
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
            plan.lend_to[layer, chunk] = (keys.clone(), values.clone()) if compiled else (keys, values)
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


# The running model call's transformer_options (its plan, conditioning chunks, attention
# override), for the op in compiled graphs; kept by an APPLY_MODEL wrapper on the patched MODEL.
_CALL_OPTIONS = contextvars.ContextVar("cross_image_call_options", default=None)
WRAPPER_KEY = "cross_image_attention"


def keep_call_options(executor, *args, **kwargs):
    """APPLY_MODEL wrapper; BaseModel.apply_model(x, t, c_concat, c_crossattn, control,
    transformer_options, **kwargs) hands it its arguments."""
    token = _CALL_OPTIONS.set(args[5] if len(args) > 5 else kwargs.get("transformer_options", {}))
    try:
        # A keyword the UNet takes in its **kwargs and ignores: compiled graphs guard on it, so
        # the patched model's calls and the plain model's never share one (ComfyUI 0.33.0's
        # TorchCompileModel skips the guards on transformer_options, where the patches are).
        return executor(*args, **kwargs, cross_image_attention=True)
    finally:
        _CALL_OPTIONS.reset(token)


@torch.library.custom_op("cross_image_attention::self_attention", mutates_args=())
def compiled_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: str, block_id: int,
                            block_index: int, n_heads: int, attn_precision: Optional[torch.dtype]) -> torch.Tensor:
    """CrossImageSelfAttention in a compiled graph: the layer's constants are arguments; the
    call's transformer_options are read when it runs."""
    extra = {**(_CALL_OPTIONS.get() or {}), "block": (block, block_id), "block_index": block_index,
             "n_heads": n_heads, "attn_precision": attn_precision}
    return self_attention(q, k, v, extra, compiled=True)


@compiled_self_attention.register_fake
def _(q, k, v, block, block_id, block_index, n_heads, attn_precision):
    return q.new_empty(q.shape[:-1] + v.shape[-1:])


def require_exact_when_compiled(model) -> None:
    """Raise a ValueError unless the MODEL runs exactly under torch.compile: not compiled
    (TorchCompileModel), or compiled with ComfyUI's PyTorch attention (the one it picks on
    NVIDIA GPUs) and no other node's. Other attentions break ComfyUI's graphs inside every
    layer; ComfyUI 0.33.0's TorchCompileModel then reuses a block compiled for a plain layer in
    a patched one (it skips the guards on transformer_options, where the patches are)."""
    if "torch_compile_kwargs" not in model.model_options:
        return
    override = model.model_options.get("transformer_options", {}).get("optimized_attention_override")
    if comfy_attention.optimized_attention is not comfy_attention.attention_pytorch or override is not None:
        raise ValueError("model: compiled by TorchCompileModel with an attention other than ComfyUI's PyTorch "
                         "attention, which the Cross-Image nodes cannot run exactly compiled; start ComfyUI with "
                         "--use-pytorch-cross-attention (and no attention override), or remove TorchCompileModel")


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
