"""Bad and odd inputs get a clear error naming the input (README: "Bad inputs"), and nothing
is lost or left changed. Each case here was once silently wrong or a raw exception."""
import math

import pytest
import torch
from safetensors.torch import save_file

from helpers import invert, latent

NAN = math.nan


@pytest.fixture(scope="module")
def pair(node, tiny_model, cond):
    return tuple(invert(node, tiny_model, latent(seed), cond, steps=5)[0] for seed in (50, 51))


@pytest.mark.parametrize("node_id, args, message", [
    ("CrossImageAttentionContrast", (NAN,), r"strength: must be a number in \[0.0, 10.0\], got nan"),
    ("CrossImageAppearanceGuidance", (NAN, 1.75, 0.15), r"scale: must be a number"),
    ("CrossImageAppearanceGuidance", (3.5, 1.75, NAN), r"start: must be a number"),
    ("CrossImageLatentAdaIN", (NAN, 1.0), r"start: must be a number"),
    ("CrossImageLatentAdaIN", (0.2, float("inf")), r"end: must be a number"),
])
def test_nan_and_infinite_numbers_are_refused(node, node_id, args, message):
    with pytest.raises(ValueError, match=message):
        node(node_id).execute(*args)


def test_nan_numbers_on_model_nodes_are_refused(node, tiny_model, cond, pair):
    structure, appearance = pair
    with pytest.raises(ValueError, match="start: must be a number"):
        node("CrossImageAttention").execute(tiny_model, appearance, "0", NAN, 1.0)
    with pytest.raises(ValueError, match="structure_until: must be a number"):
        node("CrossImageAttention").execute(tiny_model, appearance, "0", 0.1, 1.0, None, 5, NAN)
    with pytest.raises(ValueError, match="cfg: must be a number"):
        node("CrossImageSampler").execute(tiny_model, cond, structure, "euler", NAN)
    with pytest.raises(ValueError, match="cfg: must be a number"):
        node("CrossImageInvertDDIM").execute(tiny_model, latent(1), cond, 3, "normal", NAN)
    with pytest.raises(ValueError, match="cfg: must be a number"):
        node("CrossImageInvertDDPM").execute(tiny_model, latent(1), cond, 6, "normal", NAN, 1, 0)


@pytest.mark.parametrize("mask, message", [
    (torch.full((1, 128, 192), 255.0),
     r"structure_mask: mask values must lie in \[0, 1\] \(got 255 to 255\); scale it from 0-255 to 0-1"),
    # a bicubic resize overshoots a little: the advice is to clamp, not to rescale
    (torch.linspace(-0.03, 1.04, 128 * 192).reshape(1, 128, 192),
     r"structure_mask: mask values must lie in \[0, 1\] \(got -0.03 to 1.04\); clamp it to 0-1 \(resizing"),
    (torch.full((1, 128, 192), NAN), r"structure_mask: the mask holds NaN or infinite values"),
    (torch.ones(1, 128, 192, dtype=torch.uint8), "structure_mask: expected a MASK"),
])
def test_masks_out_of_range_are_refused(node, mask, message):
    with pytest.raises(ValueError, match=message):
        node("CrossImageLatentAdaIN").execute(0.0, 1.0, mask)


@pytest.mark.parametrize("size", [(100, 192), (128, 128), (64, 96 * 3)])
def test_masks_of_another_size_or_aspect_are_refused_not_stretched(node, tiny_model, cond, pair, size):
    """The latents are 16x24 (a 128x192 image): masks must be 128x192 (or 16x24)."""
    structure, appearance = pair
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0", 0.0, 1.0, None, 0, 0.0)
    settings = node("CrossImageLatentAdaIN").execute(0.0, 1.0, torch.ones(1, *size))[0]
    with pytest.raises(ValueError, match=f"structure_mask: a {size[1]}x{size[0]} mask for a 192x128 image"):
        node("CrossImageSampler").execute(patched, cond, structure, "euler", 1.0, None, None, settings)
    at_latent_size = node("CrossImageLatentAdaIN").execute(0.0, 1.0, torch.ones(1, 16, 24))[0]
    (out,) = node("CrossImageSampler").execute(patched, cond, structure, "euler", 1.0, None, None, at_latent_size)
    assert torch.isfinite(out["samples"]).all()


def test_ranges_that_round_to_no_step_are_refused(node, tiny_model, cond, pair):
    """5 sampled steps: 0.92 to 1.0 rounds to [5, 5), no step."""
    structure, appearance = pair
    sample = node("CrossImageSampler").execute
    (late,) = node("CrossImageAttention").execute(tiny_model, appearance, "0", 0.92, 1.0)
    with pytest.raises(ValueError, match="Cross-Image Attention's start/end.*covers no step"):
        sample(late, cond, structure, "euler", 1.0)
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0", 0.0, 0.5)
    guidance = node("CrossImageAppearanceGuidance").execute(3.5, 1.75, 0.6)[0]
    with pytest.raises(ValueError, match="guidance .*covers no step, so appearance guidance would do nothing"):
        sample(patched, cond, structure, "euler", 1.0, None, guidance)
    adain = node("CrossImageLatentAdaIN").execute(0.93, 0.99)[0]
    with pytest.raises(ValueError, match="latent_adain .*covers no step"):
        sample(patched, cond, structure, "euler", 1.0, None, None, adain)


def test_ddpm_skip_beyond_the_steps_the_scheduler_gives_is_refused(node, tiny_model, cond):
    """The beta scheduler gives fewer steps than asked for many step counts."""
    import comfy.samplers
    sampling = tiny_model.get_model_object("model_sampling")
    given = comfy.samplers.calculate_sigmas(sampling, "beta", 1000).shape[0] - 1
    assert given < 1000
    with pytest.raises(ValueError, match=f"skip: must be less than the {given} steps the beta scheduler gives"):
        node("CrossImageInvertDDPM").execute(tiny_model, latent(2), cond, 1000, "beta", 1.0, given, 0)


def test_self_segmentation_refuses_a_nan_step(node):
    """(Odd latents on an SDXL-like layout: test_self_segmentation.py, end to end.)"""
    with pytest.raises(ValueError, match="step: must be a number"):
        node("CrossImageSelfSegmentation").execute(None, None, None, "a photo", "photo", NAN, 5, 1.4)


def write(path, tensors, metadata):
    save_file(tensors, str(path), metadata=metadata)


GOOD = {"format": "cross_image_attention.inversion", "version": "1", "model_key": "m", "method": "ddim"}
SIGMAS = torch.tensor([2.0, 1.0, 0.0])
TRAJECTORY = torch.zeros(3, 1, 4, 8, 8)


@pytest.mark.parametrize("tensors, metadata, message", [
    ({"sigmas": SIGMAS, "trajectory": TRAJECTORY.half()}, GOOD, "trajectory must be a float32 tensor, got "
                                                                "torch.float16"),
    ({"sigmas": SIGMAS, "trajectory": TRAJECTORY.int()}, GOOD, "trajectory must be a float32 tensor"),
    ({"sigmas": SIGMAS.flip(0), "trajectory": TRAJECTORY}, GOOD, "sigmas must be a schedule .* falling"),
    ({"sigmas": SIGMAS, "trajectory": TRAJECTORY.clone().fill_(NAN)}, GOOD, "trajectory holds NaN"),
    ({"sigmas": SIGMAS, "trajectory": TRAJECTORY}, {**GOOD, "method": "magic"}, "unknown method 'magic'"),
    ({"sigmas": SIGMAS, "trajectory": TRAJECTORY}, {k: v for k, v in GOOD.items() if k != "model_key"},
     r"lacks \['model_key'\]"),
    ({"sigmas": SIGMAS, "trajectory": TRAJECTORY[:, 0]}, GOOD,
     "trajectory \\(steps, batch, channels, height, width\\)"),
])
def test_hostile_or_odd_files_are_refused(node, comfy_dirs, tensors, metadata, message):
    write(comfy_dirs["input"] / "odd.safetensors", tensors, metadata)
    with pytest.raises(ValueError, match=f"inversion 'odd.safetensors': .*{message}"):
        node("CrossImageLoadInversion").execute("odd.safetensors")


def test_a_corrupt_file_is_refused(node, comfy_dirs):
    (comfy_dirs["input"] / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="inversion 'corrupt.safetensors': not a readable safetensors file"):
        node("CrossImageLoadInversion").execute("corrupt.safetensors")
