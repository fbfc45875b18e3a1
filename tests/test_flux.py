"""What only the Flux family has (tests/tiny_models.py's tiny Flux models): Stable Flow's vital
blocks, Flux-dev's embedded guidance recorded by the inversions, reference latents refused; and
the Euler inversion's error, first order in the step. What every diffusion transformer does is
in test_dit.py, the parity with an independent reference in test_parity_flux.py."""
import pytest
import torch

import tiny_models
from tiny_models import dit_latent


@pytest.fixture(scope="module")
def flux(comfy_nodes):
    """(model, conditioning) of the tiny Flux-dev (2 double + 2 single blocks)."""
    return tiny_models.tiny_dit("flux-dev")


def latent(seed, height=8, width=12):
    return dit_latent("flux-dev", seed, height, width)


def invert_pair(node, model, cond):
    return node("CrossImageInvertPairDDPM").execute(model, latent(1), latent(2), cond, 10, "simple", 1.0, 2, 0)


def test_the_euler_inversion_of_a_flow_converges_with_the_steps(node, flux):
    """Invert (DDIM) on a flow is the Euler step run backwards: its reconstruction error is first
    order in the step size (measured on the tiny Flux-dev: 0.50, 0.24, 0.12 of the latent's std
    at 10, 20, 40 steps of the simple scheduler)."""
    model, cond = flux
    lat = latent(4)
    errors = []
    for steps in (10, 20, 40):
        inversion, _ = node("CrossImageInvertDDIM").execute(model, lat, cond, steps, "simple", 1.0)
        (out,) = node("CrossImageSampler").execute(model, cond, inversion, "euler", 1.0)
        errors.append(float((out["samples"] - lat["samples"]).abs().max() / lat["samples"].std()))
    assert errors[2] < 0.2 and errors[2] < 0.35 * errors[0], errors


def test_vital_blocks(pack, comfy_nodes):
    """'vital' is Stable Flow's 9 blocks of a 19 + 38 block model, and 'auto' there; numbers
    count double blocks first."""
    adapter = pack.nodes.sampling.architecture.architecture_of
    full = adapter(tiny_models.tiny_flux_model(kind="dev", blocks=(19, 38), heads=1))
    vital = (("double", 0), ("double", 1), ("double", 17), ("double", 18), ("single", 6), ("single", 9),
             ("single", 34), ("single", 35), ("single", 37))
    assert full.choose("vital", (8, 12)) == full.choose("auto", (8, 12)) == vital
    assert len(full.choose("all", (8, 12))) == 57 and full.choose("late", (8, 12))[0] == ("single", 9)
    small = adapter(tiny_models.tiny_flux_model(kind="dev"))
    assert small.choose("0, 3", (8, 12)) == (("double", 0), ("single", 1))
    with pytest.raises(ValueError, match="levels: no vital blocks are published for Flux-family models with 2 double "
                                         "blocks and 2 single blocks; choose all, late, early or block numbers"):
        small.choose("vital", (8, 12))


def test_flux_inputs_that_cannot_be_honoured_are_refused(node, flux, tiny_model, cond):
    model, flux_cond = flux
    structure, appearance = invert_pair(node, model, flux_cond)
    (patched,) = node("CrossImageAttention").execute(model, appearance, "all", 0.0, 1.0)
    referenced = [[flux_cond[0][0], {**flux_cond[0][1], "reference_latents": [torch.zeros(1, 16, 8, 12)]}]]
    with pytest.raises(ValueError, match="positive: carries reference latents"):
        node("CrossImageSampler").execute(patched, referenced, structure, "euler_ancestral", 1.0)
    with pytest.raises(ValueError, match="structure: this inversion was made with a different model .* another kind"):
        node("CrossImageSampler").execute(tiny_model, cond, structure, "euler_ancestral", 1.0)
    unet_inversion = node("CrossImageInvertDDIM").execute(tiny_model, {"samples": torch.randn(1, 4, 8, 12)}, cond, 3,
                                                         "normal", 1.0)[0]
    with pytest.raises(ValueError, match="appearance: this inversion was made with a different model"):
        node("CrossImageAttention").execute(model, unet_inversion, "all", 0.0, 1.0)
    shifted = node("CrossImageAppearancePositions").execute("shifted")[0]
    with pytest.raises(ValueError, match="positions: Appearance Positions moves the appearance keys' rotary"):
        node("CrossImageAttention").execute(tiny_model, unet_inversion, "0", 0.0, 1.0, positions=shifted)
    with pytest.raises(ValueError, match="positions: expected settings from the Appearance Positions node"):
        node("CrossImageAttention").execute(model, appearance, "all", 0.0, 1.0, positions="shifted")
    lower = [[flux_cond[0][0], {**flux_cond[0][1], "guidance": 1.0}]]
    other = node("CrossImageInvertDDPM").execute(model, latent(9), lower, 10, "simple", 1.0, 2, 0)[0]
    assert other.guidance == 1.0 and structure.known_guidance() == 3.5
    (patched_other,) = node("CrossImageAttention").execute(model, other, "all", 0.0, 1.0)
    with pytest.raises(ValueError, match="structure was inverted with guidance 3.5 but appearance with 1.0"):
        node("CrossImageSampler").execute(patched_other, flux_cond, structure, "euler_ancestral", 1.0)


