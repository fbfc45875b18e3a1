"""Edit-friendly inversion on a rectified flow (x_sigma = (1 - sigma) x0 + sigma n, the velocity
v = n - x0 the model predicts): the flow analogue of edit-friendly DDPM inversion
(Huberman-Spiegelglas, Kulikov, Michaeli, CVPR 2024, eq. 6-7), derived here for the stochastic
Euler step ComfyUI's euler_ancestral sampler takes on flow models.

That step (eta = 1) from sigma to sigma' goes down to sigma_d = sigma'^2 / sigma along the
model's velocity and renoises back up to sigma':
    x' = (alpha' / alpha_d) (r x + (1 - r) x0_hat) + c z,    r = sigma_d / sigma, alpha = 1 - sigma,
    c = sqrt(sigma'^2 - sigma_d^2 alpha'^2 / alpha_d^2),
with z standard normal. Drawing every x_i independently from the clean latent,
x_i = (1 - sigma_i) x0 + sigma_i n_i, the noise map z_i = (x_{i+1} - mean_i) / c_i is the noise
that step needs to land exactly on x_{i+1}; sampling with these z_i (and the same model and
prompt) retraces the trajectory. The last step (sigma' = 0) is deterministic, x = x0_hat."""
from typing import Callable, Tuple

import torch

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


def ancestral_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float,
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


def edit_friendly_flow_invert(denoise: Denoiser, clean: torch.Tensor, sigmas: torch.Tensor, fresh: torch.Tensor,
                              callback=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Trajectory (len(sigmas), *clean.shape) and noise maps (len(sigmas) - 1, *clean.shape)
    along the descending flow `sigmas` (in (0, 1], the last possibly 0); `fresh`
    (len(sigmas) - 1, *clean.shape) holds the independent standard normal draws.
    callback(k, denoised, x) after each step."""
    n = sigmas.shape[0] - 1
    samples = [(1 - float(sigmas[i])) * clean + float(sigmas[i]) * fresh[i].to(clean) for i in range(n)] + [clean]
    trajectory, noise = [samples[0]], []
    for i in range(n):
        denoised = denoise(samples[i], float(sigmas[i]))
        mean, scale = ancestral_step(samples[i], denoised, float(sigmas[i]), float(sigmas[i + 1]))
        if scale > 0:
            z = (samples[i + 1] - mean) / scale
            x_next = mean + scale * z
        else:
            z, x_next = torch.zeros_like(mean), mean
        noise.append(z)
        trajectory.append(x_next)
        if callback is not None:
            callback(i, denoised, x_next)
    return torch.stack(trajectory), torch.stack(noise)
