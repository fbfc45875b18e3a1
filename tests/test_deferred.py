"""Invert Pair's edit-friendly inversions wait for the node that needs them
(nodes/sampling/deferred.py): where the Cross-Image Sampler's calls are the inversion's (same
prompt, negative prompt, CFG) it makes them in its own calls, the appearance and structure rows
on their draws and the outputs' noise maps from the structure rows' predictions; otherwise it
inverts both in the same calls first. Either way the transfer is the one of two eager Invert
nodes, to float round-off."""
import pytest
import torch

import helpers
import node_graph
import tiny_models
from tiny_models import dit_latent

STEPS, SKIP, SEED = 8, 2, 5

FAMILIES = {  # family: (levels, sampler, scheduler, latents (structure, appearance))
    "flux-dev": ("all", "euler_ancestral", "simple", lambda: (dit_latent("flux-dev", 1, 8, 12),
                                                               dit_latent("flux-dev", 2, 8, 12))),
    "sd15": ("0,1", "ddpm", "ddim_uniform", lambda: (helpers.latent(1, height=8, width=12),
                                                      helpers.latent(2, height=8, width=12))),
}


@pytest.fixture(scope="module")
def flux(comfy_nodes):
    return tiny_models.tiny_dit("flux-dev")


@pytest.fixture
def world(request, flux, tiny_model, cond):
    """(family, counting model, prompt, latents) for the family parametrized."""
    family = request.param
    model, prompt = flux if family == "flux-dev" else (tiny_model, cond)
    return family, node_graph.counting(model), prompt, FAMILIES[family][3]()


def inversions(node, family, model, prompt, latents, pair=True):
    """(structure, appearance) inverted at cfg 1 by Invert Pair, or by two Invert nodes."""
    inputs = (prompt, STEPS, FAMILIES[family][2], 1.0, SKIP, SEED)
    if pair:
        return node("CrossImageInvertPairDDPM").execute(model, *latents, *inputs)
    return [node("CrossImageInvertDDPM").execute(model, latent, *inputs)[0] for latent in latents]


def transfer(node, family, model, prompt, structure, appearance, cfg=1.0, negative=None):
    levels, sampler = FAMILIES[family][:2]
    (patched,) = node("CrossImageAttention").execute(model, appearance, levels, 0.0, 1.0)
    return node("CrossImageSampler").execute(patched, prompt, structure, sampler, cfg, negative)[0]["samples"]


def run(node, world, pair, cfg=1.0, negative=None, sampler_prompt=None):
    """(output, the batch sizes of every model call) of an inversion at cfg 1 with the prompt and
    a transfer with `cfg`, `negative` and `sampler_prompt` (default: the prompt, rebuilt: equal,
    not the same object)."""
    family, model, prompt, latents = world
    model.evaluations.clear()
    structure, appearance = inversions(node, family, model, prompt, latents, pair=pair)
    if sampler_prompt is None:
        sampler_prompt = [[entry[0].clone(), dict(entry[1])] for entry in prompt]
    out = transfer(node, family, model, sampler_prompt, structure, appearance, cfg, negative)
    return out, list(model.evaluations)


@pytest.mark.parametrize("world", list(FAMILIES), indirect=True)
def test_the_inversions_are_made_in_the_sampling_calls_where_they_match(node, world, monkeypatch, pack):
    """Sampled as inverted: no call for the inversions, one a sampling step, and the transfer of
    two eager Invert nodes (the rows replaying their noise maps) to round-off."""
    drawn, calls = run(node, world, pair=True)
    eager, eager_calls = run(node, world, pair=False)
    n = STEPS - SKIP
    assert eager_calls[:2 * n] == [1] * 2 * n and len(eager_calls) == 3 * n  # two Invert nodes, then sampling
    assert len(calls) == n and sum(calls) < sum(eager_calls) - n  # the sampling calls alone
    tolerance = 1e-4
    torch.testing.assert_close(drawn, eager, rtol=tolerance, atol=tolerance)
    # sensitivity: the appearance's draws, or the structure's (their rows and the noise maps), a
    # step off move the output far past the tolerance
    made = pack.nodes.sampling.deferred.DrawnRows.__init__
    for part in ("appearances", "structures"):
        def shifted(self, *args):
            made(self, *args)
            setattr(self, part, torch.roll(getattr(self, part), 1, dims=0))
        monkeypatch.setattr(pack.nodes.sampling.deferred.DrawnRows, "__init__", shifted)
        off, _ = run(node, world, pair=True)
        assert float((off - eager).abs().max()) > 100 * tolerance, part


@pytest.mark.parametrize("world", list(FAMILIES), indirect=True)
def test_other_calls_invert_the_pair_together_first(node, world):
    """Another CFG or another prompt: the appearance replays its noise maps, both images inverted
    in the same calls before sampling, the transfer that of two eager Invert nodes."""
    family, _, prompt, _ = world
    n, negative = STEPS - SKIP, tiny_models.conditioning(9) if family != "flux-dev" else prompt
    out, calls = run(node, world, pair=True, cfg=2.0, negative=negative)
    eager, _ = run(node, world, pair=False, cfg=2.0, negative=negative)
    assert calls[:n] == [2] * n and len(calls) == 2 * n  # both images in each call, then the sampling
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)
    other = [[prompt[0][0] + 1.0, dict(prompt[0][1])]]
    out, calls = run(node, world, pair=True, sampler_prompt=other)
    eager, _ = run(node, world, pair=False, sampler_prompt=other)
    assert calls[:n] == [2] * n and len(calls) == 2 * n
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("world", ["sd15"], indirect=True)
def test_what_needs_an_inversion_resolves_it(node, world, tmp_path):
    """A plain reconstruction inverts the structure alone; Save Inversion inverts the rest. Both
    give what an eager Invert node gives."""
    family, model, prompt, latents = world
    model.evaluations.clear()
    structure, appearance = inversions(node, family, model, prompt, latents)
    singles = inversions(node, family, model, prompt, latents, pair=False)
    model.evaluations.clear()
    (out,) = node("CrossImageSampler").execute(model, prompt, structure, "ddpm", 1.0)
    n = STEPS - SKIP
    assert model.evaluations == [1] * n + [1] * n  # the structure's inversion, then its sampling
    (eager,) = node("CrossImageSampler").execute(model, prompt, singles[0], "ddpm", 1.0)
    torch.testing.assert_close(out["samples"], eager["samples"], rtol=1e-4, atol=1e-4)
    model.evaluations.clear()
    tensors, metadata = appearance.to_tensors()
    assert model.evaluations == [1] * n and metadata["method"] == "ddpm"
    single, _ = singles[1].to_tensors()
    for name in ("trajectory", "noise"):
        torch.testing.assert_close(tensors[name], single[name], rtol=1e-4, atol=1e-4)


def test_calls_match_only_with_equal_conditioning(pack, cond):
    deferred = pack.nodes.sampling.deferred
    job = deferred.DeferredInversions(None, ("structure",), (cond, None, 1.0))
    rebuilt = [[cond[0][0].clone(), {}]]
    assert job.called_as(rebuilt, None, 1.0) and job.called_as(cond, tiny_models.conditioning(3), 1.0)
    assert not job.called_as(cond, None, 2.0)  # another CFG
    assert not job.called_as([[cond[0][0] * 2, {}]], None, 1.0)  # another prompt
    assert not job.called_as([[cond[0][0], {"guidance": 2.0}]], None, 1.0)  # something added
    assert not job.called_as([[cond[0][0], {"control": object()}]], None, 1.0)  # kept to the outputs when sampling
    negative = tiny_models.conditioning(3)
    guided = deferred.DeferredInversions(None, ("structure",), (cond, negative, 2.0))
    assert guided.called_as(rebuilt, [[negative[0][0].clone(), {}]], 2.0)
    assert not guided.called_as(rebuilt, cond, 2.0)  # with CFG, the negative prompt counts
