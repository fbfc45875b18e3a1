"""The attn1 replacement ComfyUI calls in the patched decoder layers, and the settings the
Cross-Image Attention node leaves on the MODEL for the Cross-Image Sampler."""
from dataclasses import dataclass
from functools import partial

import comfy.ldm.modules.attention as comfy_attention

from ..core.contrast import contrast_attention
from ..core.cross_attention import cross_image_attention, key_value_sources
from ..core.inversion import Inversion
from ..core.schedule import in_step_range, step_index

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

    def __deepcopy__(self, memo):
        return self  # immutable; ComfyUI deep-copies model options on every clone


@dataclass(frozen=True)
class BatchLayout:
    """The model batch per conditioning chunk: n_outputs output rows, then n_appearances."""
    n_outputs: int
    n_appearances: int


class CrossImageSelfAttention:
    """attn1 replacement: plain self-attention, except inside the step range of a
    Cross-Image Sampler run, where the output rows use the appearance rows' keys and values."""

    def __init__(self, start: float, end: float, contrast: float = 1.0):
        self.start, self.end, self.contrast = start, end, contrast

    def __deepcopy__(self, memo):
        return self

    def active(self, options) -> bool:
        schedule = options.get("sample_sigmas")
        if options.get(LAYOUT_KEY) is None or schedule is None:
            return False
        index = step_index(schedule, float(options["sigmas"].max()))
        return in_step_range(index, schedule.shape[0] - 1, self.start, self.end)

    def __call__(self, q, k, v, extra_options):
        attention = partial(comfy_attention.optimized_attention, heads=extra_options["n_heads"],
                            attn_precision=extra_options.get("attn_precision"))
        if not self.active(extra_options):
            return attention(q, k, v)
        layout = extra_options[LAYOUT_KEY]
        sources = key_value_sources(q.shape[0], layout.n_outputs, layout.n_appearances)
        swapped_attention = None  # strength 1 keeps ComfyUI's optimized attention for every row
        if self.contrast != 1.0:
            swapped_attention = partial(contrast_attention, heads=extra_options["n_heads"], strength=self.contrast)
        return cross_image_attention(q, k, v, sources, attention, swapped_attention)
