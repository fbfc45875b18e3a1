"""Attention Contrast: the paper's contrast on the output rows of the swapped layers."""
import pytest
import torch

import tiny_models
from helpers import (invert, latent, layer_options,
                     naive_attention, patched_layer)


@pytest.mark.parametrize("strength", [1.0, 1.67])
def test_patched_layer_applies_contrast_to_output_rows_only(node, pack, tiny_model, strength):
    """One patched attn1 call on a cond+uncond batch [out0, out1, app] x 2, against the
    definition: outputs attend to their chunk's appearance with contrast, appearances to
    themselves without."""
    inversion, _ = invert(node, tiny_model, latent(15), tiny_models.conditioning(0), steps=4)
    (settings,) = node("CrossImageAttentionContrast").execute(strength)
    (patched,) = node("CrossImageAttention").execute(tiny_model, inversion, "0", 0.0, 1.0, settings)
    replace = patched_layer(patched, ("output", 4, 0))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 20, 16, generator=g) for _ in range(3))
    plan = pack.core.plan.CallPlan(step=1, rows=pack.core.rows.CallRows(2, 1), swap=True, contrast=strength)
    options = layer_options(("output", 4, 0), 2, plan)
    out = replace(q, k, v, options)
    for chunk in (0, 3):
        app = chunk + 2
        for row in (chunk, chunk + 1):
            expected = naive_attention(q[row:row + 1], k[app:app + 1], v[app:app + 1], 2, strength)
            assert torch.allclose(out[row:row + 1], expected, atol=1e-5)
        own = naive_attention(q[app:app + 1], k[app:app + 1], v[app:app + 1], 2)
        assert torch.allclose(out[app:app + 1], own, atol=1e-5)


def test_contrast_strength_one_equals_no_contrast_and_1_67_changes_the_output(node, tiny_model, cond):
    structure, _ = invert(node, tiny_model, latent(16), cond, steps=5)
    appearance, _ = invert(node, tiny_model, latent(17), cond, steps=5)
    results = []
    for contrast in (None, 1.0, 1.67):
        settings = None if contrast is None else node("CrossImageAttentionContrast").execute(contrast)[0]
        (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.0, 1.0, settings)
        results.append(node("CrossImageSampler").execute(patched, cond, structure, "euler", 1.0)[0]["samples"])
    assert torch.equal(results[0], results[1])
    assert (results[2] - results[0]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="strength"):
        node("CrossImageAttentionContrast").execute(-1.0)
    with pytest.raises(ValueError, match="contrast: expected settings"):
        node("CrossImageAttention").execute(tiny_model, appearance, "0", 0.0, 1.0, 1.67)
