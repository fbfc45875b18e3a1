"""Edit-friendly inversion (Huberman-Spiegelglas, Kulikov, Michaeli, CVPR 2024, eq. 6-7), the
inversion the cross-image attention paper uses, in ComfyUI's parameterisation, on a diffusion
(x = x0 + sigma n, "ddpm") and its analogue on a rectified flow (x = (1 - sigma) x0 + sigma n,
"flow", derived here).

Every x_i is drawn independently from the clean latent. The noise map z_i is then the noise the
sampler's stochastic step from x_i needs to land exactly on x_{i+1}:
    z_i = (x_{i+1} - mean_i) / std_i,
so that sampling with these z_i (and the same model, prompt and guidance) retraces the
trajectory. The last step (to sigma 0) has no noise, so the trajectory ends at its mean, as in
the paper's code.

- "ddpm": ComfyUI's DDPM step (eta = 1, Ho et al. 2020, eq. 7), computed on the
  variance-preserving latents x / sqrt(1 + sigma^2).
- "flow": ComfyUI's euler_ancestral step on a flow (eta = 1): down to sigma_d = sigma'^2 / sigma
  along the velocity, then renoised up to sigma',
      x' = (alpha' / alpha_d) (r x + (1 - r) x0_hat) + c z,   r = sigma_d / sigma, alpha = 1 - sigma,
      c = sqrt(sigma'^2 - sigma_d^2 alpha'^2 / alpha_d^2)."""
from typing import Callable, Tuple

import torch

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


def ddpm_posterior(x_vp: torch.Tensor, eps: torch.Tensor, sigma: float,
                   sigma_next: float) -> Tuple[torch.Tensor, float]:
    """Mean and std of the DDPM step from noise level sigma to sigma_next (Ho et al. 2020, eq. 7)
    on a variance-preserving latent, with abar = 1 / (1 + sigma^2); std is 0 for the last step."""
    abar, abar_next = 1 / (sigma * sigma + 1), 1 / (sigma_next * sigma_next + 1)
    alpha = abar / abar_next
    mean = (x_vp - (1 - alpha) * eps / (1 - abar) ** 0.5) / alpha ** 0.5
    std = ((1 - alpha) * (1 - abar_next) / (1 - abar)) ** 0.5 if sigma_next > 0 else 0.0
    return mean, std


def ddpm_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float) -> Tuple[torch.Tensor, float]:
    """The DDPM step's mean and noise scale in ComfyUI's latent space (x = x0 + sigma n)."""
    scale = (1 + sigma_next * sigma_next) ** 0.5 if sigma_next > 0 else 1.0
    mean, std = ddpm_posterior(x / (1 + sigma * sigma) ** 0.5, (x - denoised) / sigma, sigma, sigma_next)
    return mean * scale, std * scale


def flow_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float,
              eta: float = 1.0) -> Tuple[torch.Tensor, float]:
    """Mean and noise scale c of ComfyUI's euler_ancestral step on a flow from sigma to
    sigma_next (the formulas above, with eta's downstep); c is 0 for the last step."""
    if sigma_next == 0:
        return denoised, 0.0
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    ratio = sigma_down / sigma
    mean = (alpha_next / alpha_down) * (ratio * x + (1 - ratio) * denoised)
    return mean, (sigma_next ** 2 - sigma_down ** 2 * alpha_next ** 2 / alpha_down ** 2) ** 0.5


PROCESSES = {  # method: (the draw of x at sigma from x0 and n, the sampler's step)
    "ddpm": (lambda clean, sigma, n: clean + sigma * n, ddpm_step),
    "flow": (lambda clean, sigma, n: (1 - sigma) * clean + sigma * n, flow_step),
}


def draws(clean: torch.Tensor, sigmas: torch.Tensor, fresh: torch.Tensor, method: str) -> list:
    """The independent latents x_i at sigmas[i] (i < n) from the draws `fresh`, then the clean
    latent: the trajectory an edit-friendly inversion lands on, known before any model call."""
    draw = PROCESSES[method][0]
    return [draw(clean, float(sigmas[i]), fresh[i].to(clean)) for i in range(sigmas.shape[0] - 1)] + [clean]


def noise_map(step, x: torch.Tensor, x_next: torch.Tensor, denoised: torch.Tensor, sigma: float,
              sigma_next: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(z, where the sampler's step with it lands): z = (x_next - mean) / std of the sampler's
    `step` from x with the model's `denoised`; zero for the last step (std 0, landing on the mean)."""
    mean, std = step(x, denoised, sigma, sigma_next)
    if std > 0:
        z = (x_next - mean) / std
        return z, mean + std * z
    return torch.zeros_like(mean), mean


def edit_friendly_invert(denoise: Denoiser, clean: torch.Tensor, sigmas: torch.Tensor, fresh: torch.Tensor,
                         callback=None, method: str = "ddpm") -> Tuple[torch.Tensor, torch.Tensor]:
    """Trajectory (len(sigmas), *clean.shape) and noise maps (len(sigmas) - 1, *clean.shape)
    along the descending `sigmas` (all of them above 0 except possibly the last); `fresh`
    (len(sigmas) - 1, *clean.shape) holds the independent standard normal draws; `method` the
    process ("ddpm" or "flow"). callback(k, denoised, x) after each step."""
    step = PROCESSES[method][1]
    n = sigmas.shape[0] - 1
    samples = draws(clean, sigmas, fresh, method)
    trajectory, noise = [samples[0]], []
    for i in range(n):
        denoised = denoise(samples[i], float(sigmas[i]))
        z, x_next = noise_map(step, samples[i], samples[i + 1], denoised, float(sigmas[i]), float(sigmas[i + 1]))
        noise.append(z)
        trajectory.append(x_next)
        if callback is not None:
            callback(i, denoised, x_next)
    return torch.stack(trajectory), torch.stack(noise)
