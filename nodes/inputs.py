"""The input checks of every node, in one place: each refuses what a node cannot use exactly,
with an error that names the input and what fits. Number bounds come from the node's own
schema (its inputs' min and max), so the editor's limits and the checks never disagree."""
import math

import torch

from ..core.inversion import Inversion
from ..core.settings import AppearanceRegion
from .sampling.identity import model_key

VAE_SCALE = 8  # Stable Diffusion VAEs: one latent pixel per 8x8 image pixels


def require_number(name: str, value, low: float, high: float) -> float:
    """`value` as a float in [low, high], or a ValueError naming the input (NaN included: ComfyUI's
    own range checks let JSON NaN through)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ValueError(f"{name}: must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def numbers(node_class, **values) -> list:
    """The named number inputs of `node_class`, each checked against its schema's min and max;
    in the order given (ints stay ints)."""
    bounds = {entry.id: (entry.min, entry.max) for entry in node_class.define_schema().inputs
              if getattr(entry, "min", None) is not None}
    checked = []
    for name, value in values.items():
        number = require_number(name, value, *bounds[name])
        checked.append(int(number) if isinstance(value, int) and not isinstance(value, bool) else number)
    return checked


def require_range(start: float, end: float) -> None:
    if not start < end:
        raise ValueError(f"start/end: need start < end, got start={start}, end={end}")


def require_steps(names: str, steps: range, count: int, what: str, start: float, end: float) -> None:
    """Raise a ValueError naming the inputs unless `steps` (the steps a range of fractions
    start..end covers, core/schedule.py) holds at least one of the `count` sampled steps."""
    if not steps:
        raise ValueError(f"{names}: {start} to {end} of the {count} sampled steps covers no step, so {what} "
                         f"would do nothing; widen the range or sample more steps")


def require_settings(name: str, value, kind: type, node: str):
    """`value` as the settings `node` makes (or None), or a ValueError naming the input."""
    if value is not None and not isinstance(value, kind):
        raise ValueError(f"{name}: expected settings from the {node} node, got {type(value).__name__}")
    return value


def require_inversion(value, name: str, model=None) -> Inversion:
    """Check that input `name` is an inversion (made with `model`, when given); return it."""
    if not isinstance(value, Inversion):
        raise ValueError(f"{name}: expected an inversion from an Invert node, got {type(value).__name__}")
    if model is not None:
        made_with, given = value.model_key.split(":")[0], model_key(model)
        if value.model_key != given:
            what = ("other weights (another checkpoint or fine-tune, or other LoRAs or weight patches)"
                    if made_with == given.split(":")[0] else
                    "another kind of model (architecture, prediction type or noise schedule)")
            raise ValueError(f"{name}: this inversion was made with a different model than the one connected "
                             f"here: {what}. Invert with the MODEL you sample with")
    return value


def require_regions(regions, name: str = "regions") -> tuple:
    """The regions an Appearance Region node made, or a ValueError naming the input."""
    if regions is None:
        return ()
    if not isinstance(regions, tuple) or not all(isinstance(region, AppearanceRegion) for region in regions):
        raise ValueError(f"{name}: expected regions from the Appearance Region node, got {type(regions).__name__}")
    return regions


def require_mask(name: str, mask) -> None:
    """A ComfyUI MASK: (batch, height, width) or (height, width), values in [0, 1], not empty."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or not mask.is_floating_point():
        raise ValueError(f"{name}: expected a MASK (batch, height, width) of values in [0, 1]")
    if not bool(torch.isfinite(mask).all()):
        raise ValueError(f"{name}: the mask holds NaN or infinite values")
    low, high = float(mask.min()), float(mask.max())
    if low < 0.0 or high > 1.0:
        advice = ("scale it from 0-255 to 0-1" if high > 2.0 else
                  "clamp it to 0-1 (resizing with bicubic or lanczos filters overshoots slightly)")
        raise ValueError(f"{name}: mask values must lie in [0, 1] (got {low:g} to {high:g}); {advice}")
    if float(mask.sum()) <= 1.0:
        raise ValueError(f"{name}: the mask is empty; draw the object or leave the input unconnected")


def region_mask(name: str, mask, all_ones_is_none: bool = True):
    """A region's MASK checked (one mask, values in [0, 1], not empty), or None where it is
    absent or (with `all_ones_is_none`) all ones: a mask that keeps everything is no mask, exactly."""
    if mask is None:
        return None
    require_mask(name, mask)
    if mask.ndim == 3 and mask.shape[0] != 1:
        raise ValueError(f"{name}: one mask for the region, got a batch of {mask.shape[0]}")
    return None if all_ones_is_none and bool((mask >= 1).all()) else mask


def latent_mask(mask, latent: torch.Tensor, name: str):
    """A MASK at the image size of `latent` (B, C, h, w), i.e. (8h, 8w), or at the latent size,
    as (B or 1, h, w) at the latent's size; other sizes are refused rather than stretched."""
    if mask is None:
        return None
    mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).to(latent)
    h, w = latent.shape[-2:]
    if mask.shape[0] not in (1, latent.shape[0]):
        raise ValueError(f"{name}: {mask.shape[0]} masks for {latent.shape[0]} latents")
    if tuple(mask.shape[-2:]) == (h * VAE_SCALE, w * VAE_SCALE):
        mask = torch.nn.functional.interpolate(mask, size=(h, w), mode="bilinear", align_corners=False)
    elif tuple(mask.shape[-2:]) != (h, w):
        raise ValueError(f"{name}: a {mask.shape[-1]}x{mask.shape[-2]} mask for a {w * VAE_SCALE}x{h * VAE_SCALE} "
                         f"image: make the mask at the image's size")
    return mask[:, 0]


def appearance_masks(regions, names=None) -> list:
    """Each region's appearance mask at its appearance latent's size (h, w), or None; errors
    name the masks `names` (default: appearance_mask)."""
    names = names or ["appearance_mask"] * len(regions)
    return [None if region.appearance_mask is None else latent_mask(region.appearance_mask, region.appearance.clean,
                                                                    name)[0]
            for name, region in zip(names, regions)]


def mask_for_image(mask, image: torch.Tensor, name: str):
    """A ComfyUI MASK (B, H, W) or (H, W) checked against an IMAGE (B, H, W, C)."""
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3 or mask.shape[1:] != image.shape[1:3]:
        raise ValueError(f"{name}: mask of shape {tuple(mask.shape)} does not match the image size "
                         f"{image.shape[2]}x{image.shape[1]}")
    return mask


def require_image(name: str, image) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise ValueError(f"{name}: expected an IMAGE (batch, height, width, channels)")
    return image
