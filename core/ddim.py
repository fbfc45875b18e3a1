"""Deterministic DDIM inversion (Song et al. 2021, eq. 12 with eta = 0, run backwards).

In ComfyUI's parameterisation x = x0 + sigma * eps, a DDIM step from sigma_a to sigma_b is
    x_b = x_a + (sigma_b - sigma_a) * eps(x_a, sigma_a),
which is exactly ComfyUI's "euler"/"ddim" sampler step. Inversion walks the schedule the
other way, predicting eps at the latent it already has (the usual approximation
eps(x_{t+1}) ~ eps(x_t)); its error therefore shrinks linearly with the step size.
"""
from typing import Callable, Optional

import torch

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


def eps_from_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
    """The noise a denoiser implies: eps = (x - x0_hat) / sigma."""
    return (x - denoised) / sigma


def ddim_invert(denoise: Denoiser, clean: torch.Tensor, sigmas: torch.Tensor, sigma_floor: float,
                callback: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None) -> torch.Tensor:
    """Invert `clean` along the sampling schedule `sigmas` (descending, sigmas[-1] usually 0).

    denoise(x, sigma) returns the model's x0 estimate. The model cannot be asked at sigma 0,
    so a clean latent is evaluated at `sigma_floor` (the model's smallest trained sigma).
    Returns the trajectory (len(sigmas), *clean.shape): entry i is the latent at sigmas[i].
    callback(k, denoised, x) is called after each of the n steps (k = 0..n-1).
    """
    n = sigmas.shape[0] - 1
    trajectory = [None] * n + [clean]
    x = clean
    for k, i in enumerate(range(n - 1, -1, -1)):
        sigma_here = float(sigmas[i + 1])
        sigma_eval = max(sigma_here, sigma_floor)
        denoised = denoise(x, sigma_eval)
        x = x + (float(sigmas[i]) - sigma_here) * eps_from_denoised(x, denoised, sigma_eval)
        trajectory[i] = x
        if callback is not None:
            callback(k, denoised, x)
    return torch.stack(trajectory)
