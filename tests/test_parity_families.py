"""Parity on two more Stable Diffusion UNet families: the node graph computes the output latent
the independent reference (tests/reference.py) computes, as in test_parity.py, for

- "v": the tiny SD1.5-shaped UNet as a v-prediction model (SD2.x 768-v style); the reference
  turns the UNet's v into eps itself (Settings.prediction);
- "sdxl": a tiny SDXL-shaped UNet (model_base.SDXL: vector conditioning y from the pooled text
  and the sizes, linear projections, no attention at the finest level), its prompts carrying
  pooled_output; the reference feeds diffusers' text_time embedding. Its decoder attention
  levels are latent/2 (level 0) and latent/4 (level 1), so the swapped grids are (2, 4).

Each at the paper's defaults (edit-friendly DDPM inversion with CFG 3.5, appearance guidance,
latent AdaIN, 100 steps, sampling from step 32) and at one DDIM setting, on a non-square 8x12
latent; and each with one check that the comparison can fail."""
import dataclasses

import pytest
import torch

import node_graph
import tiny_models
from reference import Reference, Settings, diffusers_twin
from parity import HEIGHT, SEEDS, TOLERANCE, WIDTH, fresh_draws, max_difference

PAPER = {"v": Settings(prediction="v"), "sdxl": Settings(grids=(2, 4))}
DDIM = dict(inversion="ddim", steps=25, skip=0, inversion_cfg=1.0, swap_from=4, structure_until=10,
            guidance=(3.5, 1.75, 4), adain_from=12)
SETTINGS = {family: {"paper_defaults": s, "ddim": dataclasses.replace(s, **DDIM)} for family, s in PAPER.items()}


def make_world(family: str) -> dict:
    """The family's ComfyUI model and diffusers twin, prompts (as the nodes and the reference
    take them) and two clean latents."""
    g = torch.Generator().manual_seed(5)
    if family == "sdxl":
        model = tiny_models.tiny_sdxl_model(seed=11, output_scale=0.2)
        cond, uncond = tiny_models.sdxl_conditioning(1), tiny_models.sdxl_conditioning(2)
        prompts = {"pooled": cond[0][1]["pooled_output"], "uncond_pooled": uncond[0][1]["pooled_output"]}
    else:
        model = tiny_models.tiny_model(seed=11, prediction="v", output_scale=0.2)
        cond, uncond = ([[c, {}]] for c in torch.randn(2, 1, 8, tiny_models.CONTEXT_DIM, generator=g))
        prompts = {}
    latents = torch.randn(2, 1, 4, HEIGHT, WIDTH, generator=g)
    return {"model": model, "twin": diffusers_twin(model), "cond": cond, "uncond": uncond,
            "reference": dict(cond=cond[0][0], uncond=uncond[0][0], **prompts),
            "structure": latents[0], "appearance": latents[1]}


@pytest.fixture(scope="module")
def run(comfy_nodes, node):
    """run(family, setting) -> (nodes' output, reference output), each computed once."""
    worlds, done = {}, {}

    def compute(family, name):
        if (family, name) not in done:
            if family not in worlds:
                worlds[family] = make_world(family)
            w = worlds[family]
            s = SETTINGS[family][name]
            inversions = [node_graph.invert(node, w["model"], w[image], w["cond"], w["uncond"], s, SEEDS[image])
                          for image in ("appearance", "structure")]
            ours = node_graph.transfer(node, w["model"], w["cond"], s, *inversions)
            done[family, name] = ours, reference_output(w, s)
        return done[family, name]
    compute.worlds = worlds
    return compute


def reference_output(w, s: Settings, **changes) -> torch.Tensor:
    reference = Reference(w["twin"], s, **w["reference"], **changes)
    draws = {f"fresh_{image}": fresh_draws(seed, s) for image, seed in SEEDS.items()} if s.inversion == "ddpm" else {}
    return reference.transfer(w["appearance"], w["structure"], **draws)


@pytest.mark.parametrize("name", ["paper_defaults", "ddim"])
@pytest.mark.parametrize("family", list(SETTINGS))
def test_nodes_equal_the_reference(run, family, name):
    ours, expected = run(family, name)
    assert ours.shape == expected.shape == (1, 4, HEIGHT, WIDTH)
    assert float(expected.std()) > 0.1  # a real latent, not a collapsed one
    assert max_difference(ours, expected) < TOLERANCE, max_difference(ours, expected)


def test_the_v_model_is_not_an_eps_model(run):
    """Reading the v model's output as eps (no conversion) is far from the nodes' output."""
    ours, _ = run("v", "ddim")
    w = run.worlds["v"]
    wrong = reference_output(w, dataclasses.replace(SETTINGS["v"]["ddim"], prediction="eps"))
    assert max_difference(ours, wrong) > 50 * TOLERANCE, max_difference(ours, wrong)


def test_sdxl_sizes_in_another_order_break_parity(run):
    """time_ids as (w, h, crop left, crop top, target w, h) instead of diffusers' (h, w, ...):
    on the non-square latent the size embeddings differ, and so does the output."""
    ours, _ = run("sdxl", "ddim")
    height, width = HEIGHT * 8, WIDTH * 8
    swapped = (width, height, 0, 0, width, height)
    wrong = reference_output(run.worlds["sdxl"], SETTINGS["sdxl"]["ddim"], time_ids=swapped)
    assert max_difference(ours, wrong) > 50 * TOLERANCE, max_difference(ours, wrong)


def test_sdxl_appearance_of_another_size_and_saved_inversions(run, node):
    """An appearance latent of another shape (12x8 for the 8x12 structure) on the SDXL-shaped
    model: the reference runs it in UNet calls of its own with its own size embeddings, and the
    nodes agree; giving it the structure's sizes instead moves the output. The inversions,
    saved and loaded again (Save/Load Inversion), give the same output bit for bit."""
    run("sdxl", "ddim")  # makes the world
    portrait = torch.randn(1, 4, WIDTH, HEIGHT, generator=torch.Generator().manual_seed(7))
    w = {**run.worlds["sdxl"], "appearance": portrait}
    s = SETTINGS["sdxl"]["ddim"]
    inversions = [node_graph.invert(node, w["model"], w[image], w["cond"], w["uncond"], s, SEEDS[image])
                  for image in ("appearance", "structure")]
    ours = node_graph.transfer(node, w["model"], w["cond"], s, *inversions)
    expected = reference_output(w, s)
    assert max_difference(ours, expected) < TOLERANCE, max_difference(ours, expected)
    height, width = HEIGHT * 8, WIDTH * 8
    wrong = reference_output(w, s, time_ids=(height, width, 0, 0, height, width))
    assert max_difference(ours, wrong) > 50 * TOLERANCE, max_difference(ours, wrong)
    loaded = []
    for index, inversion in enumerate(inversions):
        entry = node("CrossImageSaveInversion").execute(inversion, f"sdxl/inversion_{index}").ui["inversions"][0]
        loaded.append(node("CrossImageLoadInversion").execute(f"{entry['subfolder']}/{entry['filename']} [output]")[0])
    assert torch.equal(node_graph.transfer(node, w["model"], w["cond"], s, *loaded), ours)
