"""Cross-Image Attention: which layers it patches, what a patched layer computes, its inputs."""
import copy

import pytest
import torch

import tiny_models
from helpers import (FINEST_TWO, attn1_keys, invert, latent, layer_options,
                     naive_attention, patched_layer, record_attention)


def test_patch_selects_decoder_levels_and_leaves_input_model(node, tiny_model, cond):
    before = copy.deepcopy(tiny_model.model_options)
    appearance, _ = invert(node, tiny_model, latent(3), cond, steps=4)
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.15, 1.0)
    assert attn1_keys(patched) == FINEST_TWO
    (coarse,) = node("CrossImageAttention").execute(tiny_model, appearance, "2", 0.15, 1.0)
    assert attn1_keys(coarse) == {("output", 0, 0), ("output", 1, 0)}
    assert tiny_model.model_options == before and attn1_keys(tiny_model) == set()


def test_input_model_weights_and_options_unchanged(node, tiny_model, cond):
    options = copy.deepcopy(tiny_model.model_options)
    weights = {k: v.clone() for k, v in tiny_model.model.state_dict().items()}
    structure, _ = invert(node, tiny_model, latent(10), cond, steps=4)
    (patched,) = node("CrossImageAttention").execute(tiny_model, structure, "0,1", 0.0, 1.0)
    node("CrossImageSampler").execute(patched, cond, structure, "euler", 1.0)
    assert tiny_model.model_options == options
    assert all(torch.equal(v, weights[k]) for k, v in tiny_model.model.state_dict().items())


def test_bad_inputs_are_named(node, tiny_model, cond):
    inversion, _ = invert(node, tiny_model, latent(11), cond, steps=4)
    attention = node("CrossImageAttention")
    with pytest.raises(ValueError, match="levels: this model's decoder has attention at 3"):
        attention.execute(tiny_model, inversion, "0,3", 0.1, 1.0)
    with pytest.raises(ValueError, match="levels: expected .auto. or comma-separated"):
        attention.execute(tiny_model, inversion, "fine", 0.1, 1.0)
    with pytest.raises(ValueError, match="start/end"):
        attention.execute(tiny_model, inversion, "0", 0.9, 0.5)
    with pytest.raises(ValueError, match="appearance: expected an inversion"):
        attention.execute(tiny_model, {"samples": torch.zeros(1)}, "0", 0.1, 1.0)
    other_model = tiny_models.tiny_model(seed=1, channel_mult=(1, 2))
    with pytest.raises(ValueError, match="appearance: this inversion was made with a different model"):
        attention.execute(other_model, inversion, "0", 0.1, 1.0)
    with pytest.raises(ValueError, match="structure: this inversion was made with a different model"):
        node("CrossImageSampler").execute(other_model, cond, inversion, "euler", 1.0)
    longer, _ = invert(node, tiny_model, latent(12), cond, steps=6)
    (patched,) = attention.execute(tiny_model, longer, "0", 0.1, 1.0)
    with pytest.raises(ValueError, match="different schedules"):
        node("CrossImageSampler").execute(patched, cond, inversion, "euler", 1.0)
    with pytest.raises(ValueError, match="negative: a negative conditioning is required"):
        node("CrossImageSampler").execute(tiny_model, cond, inversion, "euler", 3.0)
    with pytest.raises(ValueError, match="negative"):
        node("CrossImageInvertDDIM").execute(tiny_model, latent(1), cond, 4, "normal", 2.0)


@pytest.mark.parametrize("from_structure", [True, False])
def test_structure_injection_steps_take_the_structure_keys(node, pack, tiny_model, from_structure):
    """Batch [out0, app, str0] x 2: on an injection step the output row takes the structure
    row's keys and values, on other steps the appearance's."""
    inversion, _ = invert(node, tiny_model, latent(18), tiny_models.conditioning(0), steps=4)
    (patched,) = node("CrossImageAttention").execute(tiny_model, inversion, "0", 0.0, 1.0, None, 5, 0.75)
    replace = patched_layer(patched, ("output", 5, 1))
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(6, 12, 16, generator=g) for _ in range(3))
    plan = pack.core.plan.CallPlan(step=5, rows=pack.core.rows.CallRows(1, 1, 1), swap=True,
                                   from_structure=from_structure)
    out = replace(q, k, v, layer_options(("output", 5, 1), 2, plan))
    for chunk in (0, 3):
        source = chunk + (2 if from_structure else 1)
        expected = naive_attention(q[chunk:chunk + 1], k[source:source + 1], v[source:source + 1], 2)
        assert torch.allclose(out[chunk:chunk + 1], expected, atol=1e-5)
        for own in (chunk + 1, chunk + 2):
            plain = naive_attention(q[own:own + 1], k[own:own + 1], v[own:own + 1], 2)
            assert torch.allclose(out[own:own + 1], plain, atol=1e-5)


def test_structure_injection_off_keeps_a_batch_of_two(node, pack, tiny_model, cond):
    structure, _ = invert(node, tiny_model, latent(19), cond, steps=3)
    (patched,) = node("CrossImageAttention").execute(tiny_model, structure, "0", 0.0, 1.0, None, 0, 0.59)
    instrumented, calls = record_attention(patched, pack.core.schedule.step_index)
    node("CrossImageSampler").execute(instrumented, cond, structure, "euler", 1.0)
    assert {rows for kind, _, _, rows in calls if kind == "any"} == {2}
    with pytest.raises(ValueError, match=r"structure_every: must be a number in \[0, 1000\], got -1"):
        node("CrossImageAttention").execute(tiny_model, structure, "0", 0.0, 1.0, None, -1, 0.59)


def test_auto_levels_are_the_paper_grids_for_this_image(node, pack, tiny_model, cond):
    """'auto' (the default) asks core.levels.paper_levels with the appearance latent's size: on the
    tiny UNet (attention at latent/1, /2, /4) a 16x24 latent has grids of 20, 10 and 5 tokens a
    side, all below 32, so the finest level; a 64x64 latent (64, 32, 16) gives the paper's 0,1."""
    small, _ = invert(node, tiny_model, latent(34), cond, steps=2)
    (patched,) = node("CrossImageAttention").execute(tiny_model, small, "auto", 0.0, 1.0)
    assert attn1_keys(patched) == {("output", 4, 0), ("output", 4, 1), ("output", 5, 0), ("output", 5, 1)}
    large, _ = invert(node, tiny_model, latent(35, height=64, width=64), cond, steps=1)
    (patched,) = node("CrossImageAttention").execute(tiny_model, large, "auto", 0.0, 1.0)
    assert attn1_keys(patched) == FINEST_TWO
    with pytest.raises(ValueError, match="levels: expected 'auto' or comma-separated"):
        node("CrossImageAttention").execute(tiny_model, small, "fine", 0.0, 1.0)
