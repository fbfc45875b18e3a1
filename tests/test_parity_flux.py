"""Parity on Flux: the node graph computes the output latent the independent reference
(tests/reference_flux.py: diffusers FluxTransformer2DModel, the batch of three, two full passes
per step, explicit attention probabilities) computes from the same random weights, from the
reduction to Stable Flow's algorithm to the full method, and stops doing so when any single
mechanism is switched off or altered.

Model: a Flux-dev with Flux-dev's 19 double and 38 single blocks (so that Stable Flow's vital
blocks exist) but one head of 128 channels, on a non-square 8x12 latent (4x6 image tokens) and
8 text tokens."""
import dataclasses

import pytest
import torch

import node_graph
import tiny_models
from reference_dit import DiTSettings
from reference_flux import FluxReference, flux_twin

HEIGHT, WIDTH = 8, 12
TOLERANCE = 1e-4
SEEDS = {"appearance": 1, "structure": 2}
PAIR_SEED = 3
VITAL = (0, 1, 17, 18, 25, 28, 53, 54, 56)


@pytest.fixture(scope="module")
def world(comfy_nodes):
    """The ComfyUI model and its twin, the prompt (context, pooled text, embedded guidance 3.5)
    and two clean latents (model space)."""
    model = tiny_models.tiny_flux_model(seed=11, kind="dev", output_scale=0.2, blocks=(19, 38), heads=1)
    cond = tiny_models.flux_conditioning(5, tokens=8, guidance=3.5)
    g = torch.Generator().manual_seed(6)
    latents = torch.randn(2, 1, 16, HEIGHT, WIDTH, generator=g)
    return {"model": model, "twin": flux_twin(model), "cond": cond, "structure": latents[0], "appearance": latents[1]}


def schedule(world, steps: int) -> tuple:
    import comfy.samplers
    sampling = world["model"].get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", steps).float()
    return tuple(float(s) for s in sigmas), float(sampling.sigma_min)


def settings(world, steps: int, **values) -> DiTSettings:
    sigmas, floor = schedule(world, steps)
    return DiTSettings(sigmas=sigmas, sigma_floor=floor, **values)


def draws(seed: int, s: DiTSettings) -> torch.Tensor:
    """The Invert (Edit-Friendly DDPM) node's draws for its sampled steps, from its seed."""
    n = len(s.sigmas) - 1 - s.skip
    return torch.randn((n, 1, 16, HEIGHT, WIDTH), generator=torch.Generator().manual_seed(seed))


def reference_output(world, s: DiTSettings, seed=PAIR_SEED) -> torch.Tensor:
    context, extra = world["cond"][0]
    reference = FluxReference(world["twin"], s, context, extra["pooled_output"])
    fresh = {} if s.inversion == "euler" else {"fresh_appearance": draws(seed, s), "fresh_structure": draws(seed, s)}
    return reference.transfer(world["appearance"], world["structure"], **fresh)


def node_output(node, world, s: DiTSettings, levels: str) -> torch.Tensor:
    return node_graph.dit_transfer(node, world["model"], world["cond"], s, world["structure"], world["appearance"],
                                    levels, PAIR_SEED)


def cases(world) -> dict:
    """name: (settings, levels)."""
    stable_flow = settings(world, 12, inversion="euler", blocks=VITAL)
    full = settings(world, 14, inversion="flow", skip=3, blocks=VITAL, swap_from=2, contrast=1.67, structure_every=3,
                    structure_until=7, guidance=(3.0, 1.5, 3), adain_from=4, positions="attenuated")
    return {
        # Stable Flow's algorithm: its vital blocks from the first step, the same positions, no
        # contrast, guidance or AdaIN; Euler inversion (its own, without the 1.15 latent nudge)
        "stable_flow_reduction": (stable_flow, "vital"),
        # the paper's full method on Flux: edit-friendly flow inversion, contrast, structure
        # injection, appearance guidance, latent AdaIN, attenuated positions
        "full_method": (full, "vital"),
        "shifted_positions_late_blocks": (dataclasses.replace(full, positions="shifted", blocks=tuple(range(28, 57))),
                                          "late"),
        # the output rows at another embedded guidance than the inversions (Stable Flow: 3 and 1)
        "guidance_per_row": (dataclasses.replace(stable_flow, embedded_guidance=3.0, inversion_guidance=1.0), "vital"),
    }


@pytest.fixture(scope="module")
def run(node, world):
    """run(name or (settings, levels), side) -> output, each computed once."""
    done = {}

    def get(case, side):
        s, levels = cases(world)[case] if isinstance(case, str) else case
        key = (repr(s), levels, side)
        if key not in done:
            done[key] = reference_output(world, s) if side == "reference" else node_output(node, world, s, levels)
        return done[key]
    return get


def max_difference(a, b) -> float:
    return float((a - b).abs().max())


def test_comfyui_flux_equals_the_diffusers_twin(world):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, HEIGHT, WIDTH, generator=g)
    context, extra = world["cond"][0]
    sigma = torch.tensor([0.7, 0.3])
    with torch.no_grad():
        ours = world["model"].model.diffusion_model(x, sigma, context.expand(2, -1, -1),
                                                    y=extra["pooled_output"].expand(2, -1),
                                                    guidance=torch.tensor([3.5, 1.0]))
    reference = FluxReference(world["twin"], settings(world, 2), context, extra["pooled_output"])
    theirs = torch.cat([reference.velocity(x[i:i + 1], float(sigma[i]), torch.tensor([g_]), 1.0) for i, g_ in
                        enumerate((3.5, 1.0))])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)


@pytest.mark.parametrize("name", ["stable_flow_reduction", "full_method", "shifted_positions_late_blocks",
                                  "guidance_per_row"])
def test_nodes_equal_the_reference(run, name):
    ours, expected = run(name, "nodes"), run(name, "reference")
    assert ours.shape == expected.shape == (1, 16, HEIGHT, WIDTH)
    assert float(expected.std()) > 0.1
    assert max_difference(ours, expected) < TOLERANCE, max_difference(ours, expected)


CHANGES = {
    "no_contrast": dict(contrast=1.0),
    "no_structure_injection": dict(structure_every=0),
    "no_guidance": dict(guidance=None),
    "no_latent_adain": dict(adain_from=None),
    "same_positions": dict(positions="same"),
    "shifted_positions": dict(positions="shifted"),
    "first_and_last_blocks": dict(blocks=(0, 56)),
    "swap_from_step_6": dict(swap_from=6),
}


@pytest.mark.parametrize("name", list(CHANGES))
def test_any_changed_mechanism_breaks_parity(world, run, name):
    """The reference with one mechanism off or altered is far from the nodes' full method."""
    s, levels = cases(world)["full_method"]
    changed = dataclasses.replace(s, **CHANGES[name])
    assert max_difference(run((changed, levels), "reference"), run("full_method", "nodes")) > 50 * TOLERANCE


def test_the_swap_changes_the_stable_flow_output(world, run):
    """Without any swapped block the reference is far from the nodes' Stable Flow reduction."""
    s, levels = cases(world)["stable_flow_reduction"]
    assert max_difference(run((dataclasses.replace(s, blocks=()), levels), "reference"),
                          run("stable_flow_reduction", "nodes")) > 50 * TOLERANCE
