"""Appearance guidance (Alaluf et al. 2024, sec. 4.3): classifier-free-guidance-style
extrapolation from the prediction without cross-image attention towards the one with it,
    eps = eps_no_swap + s_i * (eps_swap - eps_no_swap),
with s_i falling linearly over the denoising steps (the paper's code: numpy linspace from 3.5
to max(3.5 / 2, 1) over the 68 steps, applied from step 10; core/schedule.py says which steps).
The same combination holds for the denoised predictions, since eps = (x - denoised) / sigma is
affine in them."""
import torch


def guidance_scale(index: int, steps: int, scale: float, end_scale: float) -> float:
    """s_i for step `index` of `steps`: `scale` at the first step, `end_scale` at the last."""
    if steps <= 1:
        return scale
    return scale + (end_scale - scale) * index / (steps - 1)


def guide(no_swap: torch.Tensor, swap: torch.Tensor, scale: float) -> torch.Tensor:
    return no_swap + scale * (swap - no_swap)
