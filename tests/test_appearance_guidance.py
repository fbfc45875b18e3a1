"""Appearance Guidance: the plain pass on the output rows, and its limits."""
import pytest

from helpers import (assert_same_up_to_batching, invert, latent, record_attention)


def guidance(node, scale, end_scale, start):
    return node("CrossImageAppearanceGuidance").execute(scale, end_scale, start)[0]


def test_appearance_guidance_runs_the_plain_pass_on_output_rows_on_guided_steps(node, pack, tiny_model, cond):
    structure, _ = invert(node, tiny_model, latent(20, batch=2), cond, steps=10)
    appearance, _ = invert(node, tiny_model, latent(21), cond, steps=10)
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.0, 1.0, None, 0, 0.0)
    instrumented, calls = record_attention(patched, pack.core.schedule.step_index)
    node("CrossImageSampler").execute(instrumented, cond, structure, "euler", 1.0, None, guidance(node, 3.5, 1.75, 0.3))
    middle = [(step, rows) for kind, key, step, rows in calls if kind == "any" and key[0] == "middle"]
    # one call per step: 2 outputs + 1 appearance, and on guided steps 2 plain copies of the outputs
    assert middle == [(i, 3) for i in range(3)] + [(i, 5) for i in range(3, 10)]


def test_appearance_guidance_limits(node, tiny_model, cond):
    """Scale 1 is the cross-image prediction itself; scale 0 from step 0 is the plain model."""
    structure, _ = invert(node, tiny_model, latent(22), cond, steps=5)
    appearance, _ = invert(node, tiny_model, latent(23), cond, steps=5)
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.0, 1.0, None, 0, 0.0)
    sample = node("CrossImageSampler").execute
    (unguided,) = sample(patched, cond, structure, "euler", 1.0)
    (one,) = sample(patched, cond, structure, "euler", 1.0, None, guidance(node, 1.0, 1.0, 0.0))
    assert_same_up_to_batching(one["samples"], unguided["samples"])
    (zero,) = sample(patched, cond, structure, "euler", 1.0, None, guidance(node, 0.0, 0.0, 0.0))
    (plain,) = sample(tiny_model, cond, structure, "euler", 1.0)
    assert_same_up_to_batching(zero["samples"], plain["samples"])
    (paper,) = sample(patched, cond, structure, "euler", 1.0, None, guidance(node, 3.5, 1.75, 0.0))
    assert (paper["samples"] - unguided["samples"]).abs().max() > 1.0
    with pytest.raises(ValueError, match="guidance: needs a model from Cross-Image Attention"):
        sample(tiny_model, cond, structure, "euler", 1.0, None, guidance(node, 3.5, 1.75, 0.0))
    with pytest.raises(ValueError, match="end_scale"):
        node("CrossImageAppearanceGuidance").execute(3.5, -1.0, 0.1)
