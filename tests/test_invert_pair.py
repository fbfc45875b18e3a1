"""Invert Pair: the structure and the appearance inverted together give the two inversions two
Invert nodes give, in the model calls of one when the images have one size."""
import pytest
import torch

import helpers
import node_graph
import tiny_models


def latent(seed, batch=1, height=8, width=12):
    return helpers.latent(seed, batch, height, width)


def assert_same_inversion(a, b):
    assert a.method == b.method and a.model_key == b.model_key and torch.equal(a.sigmas, b.sigmas)
    # one batch or two: the same arithmetic per latent, up to the kernels' float round-off (through
    # the random model, seen 3.5e-5 on latents of about 5)
    torch.testing.assert_close(a.trajectory, b.trajectory, rtol=1e-4, atol=1e-4)
    if a.noise is not None:
        torch.testing.assert_close(a.noise, b.noise, rtol=1e-4, atol=1e-4)


def single_and_pair(node, model, method, structure, appearance, *inputs):
    """(the inversions of two Invert nodes and their UNet calls, those of an Invert Pair node
    and its calls), each node given the other `inputs` (positive, steps, ..., negative)."""
    counted = node_graph.counting(model)
    singles = [node(f"CrossImageInvert{method}").execute(counted, lat, *inputs)[0] for lat in (structure, appearance)]
    single_calls = list(counted.evaluations)
    counted.evaluations.clear()
    pair = node(f"CrossImageInvertPair{method}").execute(counted, structure, appearance, *inputs)
    if method == "DDPM":  # the calls wait for a node that needs them (resolved: both in the same calls)
        assert counted.evaluations == [] and all(inversion.pending is not None for inversion in pair)
        for draws, one in zip(pair, singles):  # what they are known to land on: the draws, then the clean latent
            torch.testing.assert_close(draws.trajectory[:-1], one.trajectory[:-1], rtol=1e-4, atol=1e-4)
        pair = [pair[1].resolved(), pair[0].resolved()][::-1]
    return singles, single_calls, list(pair), list(counted.evaluations)


@pytest.mark.parametrize("method, settings", [
    ("DDIM", (8, "ddim_uniform", 1.0)),
    ("DDPM", (10, "ddim_uniform", 3.5, 3, 7)),  # CFG with a negative prompt, 7 of 10 steps, seed 7
])
def test_pair_equals_two_invert_nodes_in_half_the_calls(node, tiny_model, cond, method, settings):
    cfg = settings[2]
    negative = tiny_models.conditioning(9) if cfg != 1.0 else None
    singles, single_calls, pair, pair_calls = single_and_pair(node, tiny_model, method, latent(1, batch=2),
                                                              latent(2), cond, *settings, negative)
    for one, together in zip(singles, pair):
        assert_same_inversion(together, one)
    assert pair[0].batch_size == 2 and pair[1].batch_size == 1
    assert len(pair_calls) == len(single_calls) // 2  # one call a step (cond and uncond batched) instead of two
    assert sum(pair_calls) == sum(single_calls)  # the same latents: the saving is the calls
    assert set(pair_calls) == {3 * (2 if cfg != 1.0 else 1)}
    if method == "DDPM":  # each image draws from its own generator, as an Invert node with that seed does
        assert not torch.equal(pair[0].noise[:, :1], pair[1].noise)


def test_pair_of_two_sizes_inverts_each_in_its_own_calls(node, tiny_model, cond):
    singles, single_calls, pair, pair_calls = single_and_pair(
        node, tiny_model, "DDPM", latent(3), latent(4, height=12, width=8), cond, 6, "ddim_uniform", 1.0, 1, 0, None)
    for one, together in zip(singles, pair):
        assert_same_inversion(together, one)
    assert pair_calls == single_calls  # nothing to share: as two Invert nodes
    assert pair[1].trajectory.shape[-2:] == (12, 8)


def test_pair_errors_name_the_input(node, tiny_model, cond):
    bad = {"samples": torch.zeros(4, 8, 12)}
    with pytest.raises(ValueError, match="appearance: expected an image latent"):
        node("CrossImageInvertPairDDIM").execute(tiny_model, latent(5), bad, cond, 4, "normal", 1.0)
    with pytest.raises(ValueError, match="structure: expected an image latent"):
        node("CrossImageInvertPairDDPM").execute(tiny_model, bad, latent(5), cond, 4, "normal", 1.0, 1, 0)
    with pytest.raises(ValueError, match="negative: a negative conditioning is required"):
        node("CrossImageInvertPairDDIM").execute(tiny_model, latent(5), latent(6), cond, 4, "normal", 2.0)
