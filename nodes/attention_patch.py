"""The attn1 replacement ComfyUI calls in the patched decoder layers, and the settings the
Cross-Image Attention node leaves on the MODEL for the Cross-Image Sampler."""
from dataclasses import dataclass
from functools import partial

import comfy.ldm.modules.attention as comfy_attention
import torch

from ..core.contrast import contrast_attention
from ..core.cross_attention import cross_image_attention, key_value_sources
from ..core.inversion import Inversion
from ..core.schedule import CallStep, in_step_range, injects_structure
from .keys_values import layer_name
from .model_info import decoder_attention_levels

SETTINGS_KEY = "cross_image_attention"   # in transformer_options, set by the attention node
LAYOUT_KEY = "cross_image_layout"        # in transformer_options, set by the sampler node


@dataclass(frozen=True)
class ContrastSettings:
    """Attention-map contrast for the output rows of the swapped layers (1 = off)."""
    strength: float = 1.67


@dataclass(frozen=True)
class CrossImageSettings:
    appearance: Inversion
    levels: tuple
    start: float
    end: float
    contrast: float = 1.0
    structure_every: int = 0
    structure_until: float = 0.0
    fast: bool = False  # keys and values from the inversions (keys_values.py) instead of batch rows

    def __deepcopy__(self, memo):
        return self  # immutable; ComfyUI deep-copies model options on every clone


@dataclass(frozen=True)
class BatchLayout:
    """The model batch per conditioning chunk: output rows, appearance rows, structure rows,
    plain rows (copies of the outputs that keep their own keys and values: appearance
    guidance's no-swap prediction, in the same model call). Fast mode has output rows only;
    `structure` is then the structure inversion whose kept keys and values serve structure
    injection (None: no injection)."""
    n_outputs: int
    n_appearances: int
    n_structures: int = 0
    structure: object = None
    n_plain: int = 0


def attn1_replacements(model) -> dict:
    """{("output", block id, transformer index): replacement} of a MODEL's attn1 replace patches."""
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})


def is_ours(replacement) -> bool:
    """A CrossImageSelfAttention, or a replacement that wraps one and says so as functools.wraps
    does (__wrapped__): a node that composes with ours instead of replacing it."""
    while replacement is not None and not isinstance(replacement, CrossImageSelfAttention):
        replacement = getattr(replacement, "__wrapped__", None)
    return replacement is not None


def require_own_layers(model, settings) -> None:
    """Raise a ValueError if a node after Cross-Image Attention replaced the self-attention of
    a layer it patched (that layer would silently stop swapping)."""
    layers = decoder_attention_levels(model.get_model_object("diffusion_model"))
    replaced = attn1_replacements(model)
    lost = [layer_name(block_id, index) for level in settings.levels for block_id, index in layers[level]
            if not is_ours(replaced.get(("output", block_id, index)))]
    if lost:
        raise ValueError(f"model: a node after Cross-Image Attention replaced the self-attention of decoder layers "
                         f"{', '.join(lost)}, so they would no longer look at the appearance. Remove that node, or "
                         "put it before Cross-Image Attention on levels it does not patch")


class CrossImageSelfAttention:
    """attn1 replacement: plain self-attention, except inside the step range of a
    Cross-Image Sampler run, where the output rows use the appearance rows' keys and values."""

    def __init__(self, settings: CrossImageSettings):
        self.settings, self.call_step = settings, CallStep()

    def __deepcopy__(self, memo):
        return self

    def step(self, options):
        """(step index, number of steps) of the sampler run, or None outside a Cross-Image Sampler run."""
        schedule = options.get("sample_sigmas")
        if options.get(LAYOUT_KEY) is None or schedule is None:
            return None
        return self.call_step(schedule, options["sigmas"]), schedule.shape[0] - 1

    def __call__(self, q, k, v, extra_options):
        # ComfyUI's attention, or the one another node chose for this model (an
        # optimized_attention_override in transformer_options), for every row that is not
        # given contrast; the contrast needs the probabilities, so it is computed here.
        attention = partial(comfy_attention.optimized_attention, heads=extra_options["n_heads"],
                            attn_precision=extra_options.get("attn_precision"), transformer_options=extra_options)
        step, s = self.step(extra_options), self.settings
        if step is None or not in_step_range(*step, s.start, s.end):
            return attention(q, k, v)
        layout = extra_options[LAYOUT_KEY]
        injects = injects_structure(*step, s.structure_every, s.structure_until)
        swapped_attention = None  # strength 1 keeps ComfyUI's optimized attention for every row
        if s.contrast != 1.0:
            swapped_attention = partial(contrast_attention, heads=extra_options["n_heads"], strength=s.contrast)
        if s.fast:
            kept_k, kept_v = self.kept_keys_values(layout.structure if injects and layout.structure is not None
                                                   else s.appearance, step[0], q, layout.n_outputs, extra_options)
            if not layout.n_plain:
                return (swapped_attention or attention)(q, kept_k, kept_v)
            # the output rows take the kept keys and values, appended after the batch; plain rows keep their own
            sources = torch.arange(q.shape[0])
            sources[sources % (layout.n_outputs + layout.n_plain) < layout.n_outputs] += q.shape[0]
            return cross_image_attention(q, torch.cat([k, kept_k]), torch.cat([v, kept_v]), sources, attention,
                                         swapped_attention)
        from_structure = layout.n_structures > 0 and injects
        sources = key_value_sources(q.shape[0], layout.n_outputs, layout.n_appearances,
                                    layout.n_structures, from_structure, layout.n_plain)
        return cross_image_attention(q, k, v, sources, attention, swapped_attention)

    @staticmethod
    def kept_keys_values(inversion, step, q, n_outputs, extra_options):
        """Fast mode: the keys and values `inversion` kept for this layer and step, one row per
        batch row (output j of each chunk takes image j, or the only image)."""
        keys, values = inversion.keys_values[layer_name(extra_options["block"][1], extra_options["block_index"])]
        rows = torch.arange(q.shape[0], device=q.device) % n_outputs % keys.shape[1]
        # from pinned memory (keys_values.py) the copy runs without making the CPU wait
        return tuple(t[step].to(q.device, q.dtype, non_blocking=True).index_select(0, rows) for t in (keys, values))


@dataclass(frozen=True)
class GuidanceSettings:
    """Appearance guidance for the Cross-Image Sampler (paper: 3.5 -> 1.75 from step 10 of 68)."""
    scale: float = 3.5
    end_scale: float = 1.75
    start: float = 0.15


@dataclass(frozen=True, eq=False)
class LatentAdaINSettings:
    """AdaIN of the output latents to the appearance latents after steps in [start, end)
    (paper: steps 20 to the end of 68), optionally within masks."""
    start: float = 0.29
    end: float = 1.0
    structure_mask: object = None
    appearance_mask: object = None
