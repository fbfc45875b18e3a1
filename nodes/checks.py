"""Input checks the nodes share: numbers (ComfyUI's own min/max checks let JSON NaN through),
step ranges that must cover a step, and MASKs."""
import math

import torch

VAE_SCALE = 8  # Stable Diffusion VAEs: one latent pixel per 8x8 image pixels


def require_number(name: str, value, low: float, high: float) -> float:
    """`value` as a float in [low, high], or a ValueError naming the input (NaN included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ValueError(f"{name}: must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def require_steps(names: str, start: float, end: float, steps: int, what: str) -> None:
    """Raise a ValueError naming the inputs unless [round(start * steps), round(end * steps))
    (core.schedule.in_step_range) holds at least one of the `steps` steps."""
    first, stop = round(start * steps), min(round(end * steps), steps)
    if first >= stop:
        raise ValueError(f"{names}: {start} to {end} of the {steps} sampled steps covers no step, so {what} "
                         f"would do nothing; widen the range or sample more steps")


def require_mask(name: str, mask) -> None:
    """A ComfyUI MASK: (batch, height, width) or (height, width), values in [0, 1], not empty."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or not mask.is_floating_point():
        raise ValueError(f"{name}: expected a MASK (batch, height, width) of values in [0, 1]")
    if not bool(torch.isfinite(mask).all()) or float(mask.min()) < 0.0 or float(mask.max()) > 1.0:
        raise ValueError(f"{name}: mask values must lie in [0, 1] (got {float(mask.min()):g} to "
                         f"{float(mask.max()):g}); scale it, e.g. from 0-255 to 0-1")
    if float(mask.sum()) <= 1.0:
        raise ValueError(f"{name}: the mask is empty; draw the object or leave the input unconnected")


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
