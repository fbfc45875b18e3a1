"""Edit-friendly DDPM inversion (Huberman-Spiegelglas, Kulikov, Michaeli, CVPR 2024, eq. 6-7),
the inversion the cross-image attention paper uses, in ComfyUI's parameterisation.

Every x_i is drawn independently from the clean latent: x_i = x0 + sigma_i n_i (in the
variance-preserving form: sqrt(abar) x0 + sqrt(1 - abar) n). The noise map z_i is then the
noise a DDPM step (eta = 1) from x_i needs to land exactly on x_{i+1}:
    z_i = (x_{i+1} - mu_i) / std_i,
so that sampling with these z_i (and the same model, prompt and guidance) retraces the
trajectory. The step is ComfyUI's own DDPM step, computed on x / sqrt(1 + sigma^2)."""
from typing import Callable, Tuple

import torch

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


def ddpm_posterior(x_vp: torch.Tensor, eps: torch.Tensor, sigma: float,
                   sigma_next: float) -> Tuple[torch.Tensor, float]:
    """Mean and std of the DDPM step from noise level sigma to sigma_next (Ho et al. 2020, eq. 7),
    with abar = 1 / (1 + sigma^2); std is 0 for the last step (sigma_next = 0)."""
    abar, abar_next = 1 / (sigma * sigma + 1), 1 / (sigma_next * sigma_next + 1)
    alpha = abar / abar_next
    mean = (x_vp - (1 - alpha) * eps / (1 - abar) ** 0.5) / alpha ** 0.5
    std = ((1 - alpha) * (1 - abar_next) / (1 - abar)) ** 0.5 if sigma_next > 0 else 0.0
    return mean, std


def edit_friendly_invert(denoise: Denoiser, clean: torch.Tensor, sigmas: torch.Tensor,
                         fresh: torch.Tensor, callback=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Trajectory (len(sigmas), *clean.shape) and noise maps (len(sigmas) - 1, *clean.shape)
    along the descending `sigmas` (all of them above 0 except possibly the last); `fresh`
    (len(sigmas) - 1, *clean.shape) holds the independent standard normal draws.

    The last step has no noise (z = 0), so the trajectory ends at that step's mean, as in the
    paper's code. callback(k, denoised, x) after each step."""
    n = sigmas.shape[0] - 1
    samples = [clean + float(sigmas[i]) * fresh[i].to(clean) for i in range(n)] + [clean]
    trajectory, noise = [samples[0]], []
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(samples[i], sigma)
        eps = (samples[i] - denoised) / sigma
        mean, std = ddpm_posterior(samples[i] / (1 + sigma * sigma) ** 0.5, eps, sigma, sigma_next)
        if std > 0:
            target = samples[i + 1] / (1 + sigma_next * sigma_next) ** 0.5
            z = (target - mean) / std
            x_next = (mean + std * z) * (1 + sigma_next * sigma_next) ** 0.5
        else:
            z, x_next = torch.zeros_like(mean), mean
        noise.append(z)
        trajectory.append(x_next)
        if callback is not None:
            callback(i, denoised, x_next)
    return torch.stack(trajectory), torch.stack(noise)
