"""Parity: the node graph computes the output latent the independent reference
(tests/reference.py: diffusers UNet, the paper's batch of three, two full passes per step,
materialised attention maps) computes from the same random weights, and stops doing so when
any single mechanism is switched off or altered.

Model: the tiny SD1.5-family UNet (attention at three decoder levels, token grids latent/1,
latent/2, latent/4) on a non-square 8x12 latent."""
import dataclasses
import math

import pytest
import torch

import tiny_models
from reference import Reference, Settings, diffusers_twin

HEIGHT, WIDTH = 8, 12
# float32 round-off (summation order in the attention and convolutions, Ho's vs DDIM's form
# of the same DDPM step) grows through the steps; seen: see PARITY_SEEN in the test ids.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def world(comfy_nodes):
    """The ComfyUI model and its diffusers twin, prompt contexts and two clean latents."""
    model = tiny_models.tiny_model(seed=11, output_scale=0.2)
    g = torch.Generator().manual_seed(5)
    contexts = torch.randn(2, 1, 8, tiny_models.CONTEXT_DIM, generator=g)
    latents = torch.randn(2, 1, 4, HEIGHT, WIDTH, generator=g)
    object_masks = torch.zeros(2, HEIGHT, WIDTH, dtype=torch.bool)
    object_masks[0, 3:13, 4:20] = True   # structure's object
    object_masks[1, 5:16, 2:14] = True   # appearance's object
    return {"model": model, "twin": diffusers_twin(model), "cond": contexts[0], "uncond": contexts[1],
            "structure": latents[0], "appearance": latents[1], "masks": object_masks}


SEEDS = {"appearance": 1, "structure": 2}


def fresh_draws(seed: int, s: Settings) -> torch.Tensor:
    """The DDPM inversion's independent draws for all steps: the skipped steps' draws are
    arbitrary (never used); the others are those the Invert (DDPM) node makes from its seed."""
    used = torch.randn((s.steps - s.skip, 1, 4, HEIGHT, WIDTH), generator=torch.Generator().manual_seed(seed))
    unused = torch.randn((s.skip, 1, 4, HEIGHT, WIDTH), generator=torch.Generator().manual_seed(1000 + seed))
    return torch.cat([unused, used])


def reference_output(world, s: Settings, masked: bool) -> torch.Tensor:
    reference = Reference(world["twin"], s, world["cond"], world["uncond"])
    masks = {"structure_mask": world["masks"][0], "appearance_mask": world["masks"][1]} if masked else {}
    draws = {f"fresh_{name}": fresh_draws(seed, s) for name, seed in SEEDS.items()} if s.inversion == "ddpm" else {}
    return reference.transfer(world["appearance"], world["structure"], **draws, **masks)


def invert(node, world, s: Settings, name: str):
    model = world["model"]
    latent = {"samples": world[name] / model.model.latent_format.scale_factor}
    positive, negative = [[world["cond"], {}]], [[world["uncond"], {}]]
    if s.inversion == "ddpm":
        return node("CrossImageInvertDDPM").invert(model, latent, positive, s.steps, "ddim_uniform",
                                                   s.inversion_cfg, s.skip, SEEDS[name], negative)[0]
    assert s.skip == 0, "the DDIM node samples every step it inverted"
    return node("CrossImageInvertDDIM").invert(model, latent, positive, s.steps, "ddim_uniform", s.inversion_cfg, negative)[0]


def image_mask(latent_mask: torch.Tensor) -> torch.Tensor:
    """A MASK at image size (8 pixels per latent pixel) whose latent-size resize is `latent_mask`."""
    return latent_mask.float().repeat_interleave(8, 0).repeat_interleave(8, 1)[None]


def node_output(node, world, s: Settings, masked: bool, inversions=None) -> torch.Tensor:
    """The transfer through the nodes, settings given as the reference's; model-space result."""
    model = world["model"]
    appearance, structure = inversions or (invert(node, world, s, "appearance"), invert(node, world, s, "structure"))
    n = s.steps - s.skip
    levels = ",".join(str(int(math.log2(grid))) for grid in s.grids)  # the tiny UNet has attention at every level
    contrast = node("CrossImageAttentionContrast").settings(s.contrast)[0]
    (patched,) = node("CrossImageAttention").patch(model, appearance, levels, s.swap_from / n, 1.0, contrast,
                                                   s.structure_every, min(s.structure_until / n, 1.0))
    guidance = None
    if s.guidance is not None:
        guidance = node("CrossImageAppearanceGuidance").settings(s.guidance[0], s.guidance[1], s.guidance[2] / n)[0]
    adain = None
    if s.adain_from is not None:
        masks = (image_mask(world["masks"][0]), image_mask(world["masks"][1])) if masked else (None, None)
        adain = node("CrossImageLatentAdaIN").settings(s.adain_from / n, min(s.adain_until / n, 1.0), *masks)[0]
    sampler = "ddpm" if s.inversion == "ddpm" else "euler"
    (out,) = node("CrossImageSampler").sample(patched, [[world["cond"], {}]], structure, sampler, 1.0, None, guidance, adain)
    return out["samples"] * model.model.latent_format.scale_factor


PAPER = Settings()
SETTINGS = {
    "paper_defaults_masked_adain": (PAPER, True),
    "ddim_inversion_without_guidance": (Settings(inversion="ddim", steps=25, skip=0, inversion_cfg=1.0, guidance=None,
                                                 swap_from=4, structure_until=10, adain_from=12), False),
    "no_adain_coarse_levels_strong_contrast": (dataclasses.replace(PAPER, adain_from=None, grids=(1, 4), contrast=2.5,
                                                                   structure_every=3, swap_from=5), False),
}


@pytest.fixture(scope="module")
def paper_run(node, world):
    """The paper-defaults reference output and the nodes' inversions for it (shared by the
    sensitivity tests)."""
    inversions = (invert(node, world, PAPER, "appearance"), invert(node, world, PAPER, "structure"))
    return reference_output(world, PAPER, True), inversions


def max_difference(a, b) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("name", list(SETTINGS))
def test_nodes_equal_the_reference(node, world, paper_run, name):
    s, masked = SETTINGS[name]
    if s is PAPER:
        expected, inversions = paper_run
    else:
        expected, inversions = reference_output(world, s, masked), None
    ours = node_output(node, world, s, masked, inversions)
    assert ours.shape == expected.shape == (1, 4, HEIGHT, WIDTH)
    assert float(expected.std()) > 0.1  # a real latent, not a collapsed one
    assert max_difference(ours, expected) < TOLERANCE, max_difference(ours, expected)


# One mechanism switched off or altered on the nodes' side, the reference at paper defaults.
CHANGES = {
    "no_contrast": dataclasses.replace(PAPER, contrast=1.0),
    "other_contrast": dataclasses.replace(PAPER, contrast=1.6),
    "no_structure_injection": dataclasses.replace(PAPER, structure_every=0),
    "injection_every_4": dataclasses.replace(PAPER, structure_every=4),
    "no_guidance": dataclasses.replace(PAPER, guidance=None),
    "guidance_from_step_11": dataclasses.replace(PAPER, guidance=(3.5, 1.75, 11)),
    "no_latent_adain": dataclasses.replace(PAPER, adain_from=None),
    "adain_from_step_21": dataclasses.replace(PAPER, adain_from=21),
    "finest_level_only": dataclasses.replace(PAPER, grids=(1,)),
    "swap_from_step_11": dataclasses.replace(PAPER, swap_from=11),
}


@pytest.mark.parametrize("name", list(CHANGES) + ["unmasked_adain"])
def test_any_changed_mechanism_breaks_parity(node, world, paper_run, name):
    expected, inversions = paper_run
    ours = node_output(node, world, CHANGES.get(name, PAPER), name != "unmasked_adain", inversions)
    assert max_difference(ours, expected) > 50 * TOLERANCE, max_difference(ours, expected)


def test_a_changed_inversion_breaks_parity(node, world, paper_run):
    """The inversion's guidance and draws are part of the method too."""
    expected, _ = paper_run
    other_cfg = dataclasses.replace(PAPER, inversion_cfg=1.0)
    inversions = (invert(node, world, other_cfg, "appearance"), invert(node, world, other_cfg, "structure"))
    assert max_difference(node_output(node, world, PAPER, True, inversions), expected) > 50 * TOLERANCE
