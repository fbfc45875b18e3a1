"""Latent AdaIN: the output latents take the appearances' statistics after the chosen steps."""
import pytest
import torch

from helpers import (assert_same_up_to_batching, invert, latent)


def test_latent_adain_after_the_last_step_only(node, pack, tiny_model, cond):
    """With the range holding only the last step, sampling is unchanged and the result is
    AdaIN(output, appearance) of the final latents; one step earlier changes the trajectory."""
    structure, _ = invert(node, tiny_model, latent(24), cond, steps=10)
    appearance, _ = invert(node, tiny_model, latent(25), cond, steps=10)
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.0, 1.0, None, 0, 0.0)
    sample = node("CrossImageSampler").execute
    (output,) = sample(patched, cond, structure, "euler", 1.0)
    (appearance_final,) = sample(tiny_model, cond, appearance, "euler", 1.0)
    last = node("CrossImageLatentAdaIN").execute(0.9, 1.0)[0]
    (matched,) = sample(patched, cond, structure, "euler", 1.0, None, None, last)
    expected = pack.core.adain.adain(output["samples"], appearance_final["samples"])
    assert_same_up_to_batching(matched["samples"], expected)
    two_last = node("CrossImageLatentAdaIN").execute(0.8, 1.0)[0]
    (earlier,) = sample(patched, cond, structure, "euler", 1.0, None, None, two_last)
    assert (earlier["samples"] - matched["samples"]).abs().max() > 1e-2


def test_masked_latent_adain_statistics(node, pack, tiny_model, cond):
    structure, _ = invert(node, tiny_model, latent(26), cond, steps=6)
    appearance, _ = invert(node, tiny_model, latent(27), cond, steps=6)
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.0, 1.0, None, 0, 0.0)
    structure_mask = torch.zeros(1, 128, 192)
    structure_mask[:, :64] = 1  # top half of the image = top 8 of 16 latent rows
    appearance_mask = torch.zeros(1, 128, 192)
    appearance_mask[:, :, 96:] = 1  # right half
    settings = node("CrossImageLatentAdaIN").execute(0.0, 1.0, structure_mask, appearance_mask)[0]
    (out,) = node("CrossImageSampler").execute(patched, cond, structure, "euler", 1.0, None, None, settings)
    (appearance_final,) = node("CrossImageSampler").execute(tiny_model, cond, appearance, "euler", 1.0)
    inside = out["samples"][:, :, :8].flatten(2)
    reference = appearance_final["samples"][:, :, :, 12:].flatten(2)
    torch.testing.assert_close(inside.mean(-1), reference.mean(-1), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(inside.std(-1), reference.std(-1), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="structure_mask: the mask is empty"):
        node("CrossImageLatentAdaIN").execute(0.0, 1.0, torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="latent_adain: needs a model from Cross-Image Attention"):
        node("CrossImageSampler").execute(tiny_model, cond, structure, "euler", 1.0, None, None, settings)
