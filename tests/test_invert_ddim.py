"""Invert (DDIM) on a tiny random model: the trajectory, reconstruction, progress and interrupts."""
import pytest
import torch

import tiny_models
from helpers import (attn1_keys, invert, latent)


@pytest.fixture(scope="module")
def smooth_model(comfy_nodes):
    """Random weights give a far rougher eps(x) than a trained model; a smaller last layer
    (eps amplitude ~0.1) brings DDIM inversion into the regime it is used in."""
    return tiny_models.tiny_model(seed=0, output_scale=0.01)


def reconstruction_error(node, model, cond, steps):
    lat = latent(1, batch=2)
    inversion, _ = invert(node, model, lat, cond, steps)
    (out,) = node("CrossImageSampler").execute(model, cond, inversion, "euler", 1.0)
    return (out["samples"] - lat["samples"]).abs().max().item() / lat["samples"].std().item()


@pytest.mark.parametrize("prediction, tolerance", [("eps", 0.02), ("v", 0.3)])
def test_ddim_inversion_then_sampling_reconstructs(node, cond, prediction, tolerance):
    """DDIM inversion evaluates eps at x_t where sampling evaluates it at x_{t+1}, so the
    reconstruction error is first order in the step size (measured here: eps model 0.036,
    0.024, 0.013 and v model 0.87, 0.47, 0.25 of the latent's std at 10, 20, 40 steps).
    Tolerances: eps under 2% at 40 steps; the v model's eps is far from constant (its
    denoiser is close to x / (1 + sigma^2)), so 30%; and 4x the steps must cut the error
    by more than 40%, which a wrong schedule, scaling or step pairing does not do."""
    model = tiny_models.tiny_model(seed=0, prediction=prediction, output_scale=0.01)
    coarse = reconstruction_error(node, model, cond, 10)
    fine = reconstruction_error(node, model, cond, 40)
    assert fine < tolerance
    assert fine < 0.6 * coarse


def test_inversion_output(node, smooth_model, cond):
    lat = latent(2)
    inversion, noisy = invert(node, smooth_model, lat, cond, steps=8)
    assert inversion.trajectory.shape == (9, 1, 4, 16, 24)
    assert inversion.sigmas[-1] == 0 and bool((inversion.sigmas[:-1] > inversion.sigmas[1:]).all())
    scale = smooth_model.model.latent_format.scale_factor
    # trajectory is in model space; the LATENT outputs are in VAE space
    assert torch.allclose(inversion.clean, lat["samples"] * scale, atol=1e-5)
    assert torch.allclose(noisy["samples"] * scale, inversion.noisy, atol=1e-4)
    assert (inversion.noisy - inversion.clean).abs().max() > 1e-2


def test_inversion_reports_progress_and_stops_on_interrupt(node, tiny_model, cond):
    import comfy.model_management
    import comfy.utils
    import nodes as comfy_nodes_module
    seen = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        invert(node, tiny_model, latent(14), cond, steps=5)
        # ComfyUI 0.33.0's ProgressBar drops updates closer than 100 ms apart but always sends
        # the first and the last: those, rising, of 5 steps
        values = [value for value, _ in seen]
        assert values[0] == 1 and values[-1] == 5 and values == sorted(set(values))
        assert {total for _, total in seen} == {5}
        comfy_nodes_module.interrupt_processing(True)
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            invert(node, tiny_model, latent(14), cond, steps=5)
    finally:
        comfy_nodes_module.interrupt_processing(False)
        comfy.utils.set_progress_bar_global_hook(None)
    assert attn1_keys(tiny_model) == set()


@pytest.mark.parametrize("node_id", ["CrossImageInvertDDIM", "CrossImageInvertPairDDIM"])
def test_a_latent_with_a_noise_mask_is_refused(node, tiny_model, cond, node_id):
    """Set Latent Noise Mask's LATENT (inpainting): an inversion cannot honour the mask, so it
    says what to do instead of ignoring it."""
    masked = {**latent(15), "noise_mask": torch.ones(1, 1, 128, 192)}
    latents = (masked,) if node_id == "CrossImageInvertDDIM" else (latent(16), masked)
    name = "latent" if node_id == "CrossImageInvertDDIM" else "appearance"
    with pytest.raises(ValueError, match=f"{name}: this LATENT carries a noise mask .* give the mask to "
                                         "Cross-Image Attention"):
        node(node_id).execute(tiny_model, *latents, cond, 3, "normal", 1.0)
