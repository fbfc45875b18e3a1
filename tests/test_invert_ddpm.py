"""Invert (Edit-Friendly DDPM): noise maps that ComfyUI's DDPM sampler retraces exactly, seeds, errors."""
import pytest
import torch

import tiny_models
from helpers import (invert_ddpm, latent)


def test_ddpm_inversion_is_retraced_exactly_by_comfyuis_ddpm_sampler(node, tiny_model, cond):
    """The noise maps make ComfyUI's ddpm sampler land on every stored latent, even with a
    random (chaotic) model; the last step has no noise and ends at its mean."""
    lat = latent(28, batch=2)
    inversion, noisy = invert_ddpm(node, tiny_model, lat, cond)
    full = node("CrossImageInvertDDIM").execute(tiny_model, lat, cond, 12, "ddim_uniform", 1.0)[0].sigmas
    n = full.shape[0] - 4
    assert torch.equal(inversion.sigmas, full[4:]) and inversion.trajectory.shape == (n, 2, 4, 16, 24)
    assert inversion.noise.shape == (n - 1, 2, 4, 16, 24) and not inversion.noise[-1].any()
    (out,) = node("CrossImageSampler").execute(tiny_model, cond, inversion, "ddpm", 1.0)
    scale = tiny_model.model.latent_format.scale_factor
    torch.testing.assert_close(out["samples"] * scale, inversion.trajectory[-1], rtol=1e-4, atol=1e-4)
    # every x_i before the last is an independent draw around the image: x_i - x0 = sigma_i n_i
    spread = (inversion.trajectory[:-1] - lat["samples"] * scale).flatten(1).std(1) / inversion.sigmas[:-1]
    torch.testing.assert_close(spread, torch.ones_like(spread), rtol=0.05, atol=0.05)


def test_ddpm_inversion_with_guidance_retraces_with_the_same_guidance(node, tiny_model, cond):
    negative = tiny_models.conditioning(9)
    inversion, _ = invert_ddpm(node, tiny_model, latent(29), cond, cfg=3.5, negative=negative)
    (same,) = node("CrossImageSampler").execute(tiny_model, cond, inversion, "ddpm", 3.5, negative)
    scale = tiny_model.model.latent_format.scale_factor
    # float32 round-off in each step's latent is amplified once (not compounded: the next noise
    # map lands on the stored latent again) by the random model's eps times cfg 3.5: seen 1e-3
    torch.testing.assert_close(same["samples"] * scale, inversion.trajectory[-1], rtol=0, atol=3e-3)


def test_ddpm_inversion_seeds_and_errors(node, tiny_model, cond):
    a, _ = invert_ddpm(node, tiny_model, latent(30), cond, seed=1)
    b, _ = invert_ddpm(node, tiny_model, latent(30), cond, seed=1)
    c, _ = invert_ddpm(node, tiny_model, latent(30), cond, seed=2)
    assert torch.equal(a.noise, b.noise) and not torch.equal(a.noise, c.noise)
    with pytest.raises(ValueError, match="sampler_name: euler does not retrace an edit-friendly DDPM inversion .*; "
                                         "use ddpm"):
        node("CrossImageSampler").execute(tiny_model, cond, a, "euler", 1.0)
    with pytest.raises(ValueError, match="skip: must be less than the 10 steps the ddim_uniform scheduler gives"):
        invert_ddpm(node, tiny_model, latent(30), cond, steps=10, skip=10)
    ddim, _ = node("CrossImageInvertDDIM").execute(tiny_model, latent(31), cond, 12, "ddim_uniform", 1.0)
    (patched,) = node("CrossImageAttention").execute(tiny_model, ddim, "0", 0.0, 1.0)
    with pytest.raises(ValueError, match="structure was inverted with DDPM but appearance with DDIM"):
        node("CrossImageSampler").execute(patched, cond, a, "ddpm", 1.0)
