"""Parity on the other diffusion transformers: for SD3, SD3.5 medium (its image-only second
attention), Qwen-Image and Lumina 2, the node graph computes the output latent the independent
reference (tests/reference_dit.py on diffusers' SD3Transformer2DModel,
QwenImageTransformer2DModel and Lumina2Transformer2DModel, with the ComfyUI model's weights)
computes, from a reduction (the swap alone) to the full method with
classifier-free guidance and a negative prompt, and stops doing so when any single mechanism is
switched off or altered. Z-Image has no diffusers twin in the pinned diffusers; it shares
Lumina 2's adapter.

Models: a few blocks of two heads each (tests/tiny_models.py), random weights, 8x12 latents
(4x6 image tokens), 8 text tokens."""
import dataclasses

import pytest
import torch

import node_graph
import tiny_models
from reference_dit import DiTSettings
from reference_lumina import LuminaReference, lumina_twin
from reference_qwen_image import QwenImageReference, qwen_image_twin
from reference_sd3 import SD3Reference, sd3_twin

HEIGHT, WIDTH = 8, 12
TOLERANCE = 1e-4
PAIR_SEED = 3


def sd3_prompt(cond):
    return cond[0][0], cond[0][1]["pooled_output"]


def text_prompt(cond):
    return cond[0][0]


# family: (model, conditioning(seed), twin, reference class, prompt from a CONDITIONING, latent shape, rotary)
FAMILIES = {
    "sd3": (lambda: tiny_models.tiny_sd3_model(seed=11, depth=3, output_scale=0.2), tiny_models.sd3_conditioning,
            sd3_twin, SD3Reference, sd3_prompt, (16, HEIGHT, WIDTH), False),
    "sd35-medium": (lambda: tiny_models.tiny_sd3_model(seed=11, depth=3, medium=True, output_scale=0.2),
                    tiny_models.sd3_conditioning, sd3_twin, SD3Reference, sd3_prompt, (16, HEIGHT, WIDTH), False),
    "qwen-image": (lambda: tiny_models.tiny_qwen_image_model(seed=11, layers=3, output_scale=0.2),
                   tiny_models.qwen_conditioning, qwen_image_twin, QwenImageReference, text_prompt,
                   (16, 1, HEIGHT, WIDTH), True),
    "lumina2": (lambda: tiny_models.tiny_lumina_model(seed=11, layers=3, output_scale=0.2),
                tiny_models.lumina_conditioning, lumina_twin, LuminaReference, text_prompt, (16, HEIGHT, WIDTH), True),
}


@pytest.fixture(scope="module")
def worlds(comfy_nodes):
    """worlds(family): its ComfyUI model and twin, a prompt and a negative prompt, two clean
    latents, and the outputs computed so far; each built once."""
    built = {}

    def get(family):
        if family not in built:
            build, conditioning, twin, reference, prompt, shape, rotary = FAMILIES[family]
            model = build()
            latents = torch.randn(2, 1, *shape, generator=torch.Generator().manual_seed(6))
            built[family] = {"family": family, "model": model, "twin": twin(model), "reference": reference,
                             "prompt": prompt, "cond": conditioning(5), "negative": conditioning(7), "rotary": rotary,
                             "shape": shape, "structure": latents[0], "appearance": latents[1], "done": {}}
        return built[family]
    return get


ROTARY = [family for family, spec in FAMILIES.items() if spec[-1]]


def settings(world, steps: int, **values) -> DiTSettings:
    import comfy.samplers
    sampling = world["model"].get_model_object("model_sampling")
    sigmas = tuple(float(s) for s in comfy.samplers.calculate_sigmas(sampling, "simple", steps).float())
    return DiTSettings(sigmas=sigmas, sigma_floor=float(sampling.sigma_min), embedded_guidance=None,
                       inversion_guidance=None, **values)


def draws(world, seed: int, s: DiTSettings) -> torch.Tensor:
    """The Invert (Edit-Friendly DDPM) node's draws for its sampled steps, from its seed."""
    n = len(s.sigmas) - 1 - s.skip
    return torch.randn((n, 1, *world["shape"]), generator=torch.Generator().manual_seed(seed))


def reference_of(world, s: DiTSettings):
    prompts = {"positive": world["prompt"](world["cond"]), "negative": world["prompt"](world["negative"])}
    return world["reference"](world["twin"], s, prompts)


def cases(world) -> dict:
    """name: settings; the nodes are given the same blocks by number."""
    blocks = tuple(range(3))
    # the swap alone on the edit-friendly inversion. Euler inversion (family-independent, held
    # to the reference on Flux) asks the model at its smallest sigma, where ComfyUI's denoised
    # output x - sigma v loses digits in float32 (3e-4 on the tiny Qwen-Image's first inversion
    # step), which sampling then amplifies past the tolerance
    positions = "same" if world["rotary"] else None  # SD3: no Appearance Positions node to connect
    reduction = settings(world, 6, inversion="flow", blocks=(1, 2), positions=positions)
    full = settings(world, 8, inversion="flow", skip=2, blocks=blocks, swap_from=1, contrast=1.67, structure_every=2,
                    structure_until=4, guidance=(3.0, 1.5, 2), adain_from=3, cfg=2.5, inversion_cfg=1.5,
                    positions="attenuated" if world["rotary"] else None)
    named = {"reduction": reduction, "full_method": full}
    if world["rotary"]:
        named["shifted_positions"] = dataclasses.replace(full, positions="shifted", blocks=(2,))
    return named


def output(node, world, s: DiTSettings, side: str) -> torch.Tensor:
    key = (repr(s), side)
    if key not in world["done"]:
        if side == "reference":
            fresh = {} if s.inversion == "euler" else {"fresh_appearance": draws(world, PAIR_SEED, s),
                                                       "fresh_structure": draws(world, PAIR_SEED, s)}
            world["done"][key] = reference_of(world, s).transfer(world["appearance"], world["structure"], **fresh)
        else:
            levels = ",".join(str(block) for block in s.blocks)
            world["done"][key] = node_graph.dit_transfer(node, world["model"], world["cond"], s, world["structure"],
                                                         world["appearance"], levels, PAIR_SEED,
                                                         negative=world["negative"])
    return world["done"][key]


def max_difference(a, b) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_comfyui_model_equals_the_diffusers_twin(worlds, family):
    """The ComfyUI model's denoised output is x - sigma v with v the twin's velocity."""
    world = worlds(family)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *world["shape"], generator=g)
    sigma = torch.tensor([0.7, 0.3])
    context = world["cond"][0][0].expand(2, -1, -1)
    extra = {"num_tokens": context.shape[1]} if world["family"] == "lumina2" else {}
    if world["family"].startswith("sd3"):
        extra["y"] = world["cond"][0][1]["pooled_output"].expand(2, -1)
    reference = reference_of(world, settings(world, 2))
    with torch.no_grad():
        ours = world["model"].model.apply_model(x, sigma, c_crossattn=context, **extra)
    theirs = torch.cat([x[i:i + 1] - float(sigma[i]) * reference.velocity(x[i:i + 1], float(sigma[i]), None, 1.0)
                        for i in range(2)])
    assert float(ours.std()) > 0.1
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)


@pytest.mark.parametrize("family,name", [(family, name) for family in FAMILIES for name in ("reduction", "full_method")]
                         + [(family, "shifted_positions") for family in ROTARY])
def test_nodes_equal_the_reference(node, worlds, family, name):
    world = worlds(family)
    s = cases(world)[name]
    ours, expected = output(node, world, s, "nodes"), output(node, world, s, "reference")
    assert ours.shape == expected.shape == (1, *world["shape"])
    assert float(expected.std()) > 0.1
    assert max_difference(ours, expected) < TOLERANCE, max_difference(ours, expected)


CHANGES = {
    "no_contrast": dict(contrast=1.0),
    "no_structure_injection": dict(structure_every=0),
    "no_guidance": dict(guidance=None),
    "no_latent_adain": dict(adain_from=None),
    "no_cfg": dict(cfg=1.0),
    "first_block_only": dict(blocks=(0,)),
    "same_positions": dict(positions="same"),
}


@pytest.mark.parametrize("family,name", [(family, name) for family in FAMILIES for name in CHANGES
                                          if name != "same_positions" or family in ROTARY])
def test_any_changed_mechanism_breaks_parity(node, worlds, family, name):
    """The reference with one mechanism off or altered is far from the nodes' full method."""
    world = worlds(family)
    s = cases(world)["full_method"]
    changed = dataclasses.replace(s, **CHANGES[name])
    assert max_difference(output(node, world, changed, "reference"), output(node, world, s, "nodes")) > 50 * TOLERANCE


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_swap_changes_the_reduction(node, worlds, family):
    """Without any swapped block the reference is far from the nodes' reduction."""
    world = worlds(family)
    s = cases(world)["reduction"]
    assert max_difference(output(node, world, dataclasses.replace(s, blocks=()), "reference"),
                          output(node, world, s, "nodes")) > 50 * TOLERANCE
