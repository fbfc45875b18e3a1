"""Parity with regions: the node graph with regional masks and several appearances computes the
output latent the independent reference (tests/reference.py, Region) computes from the same
random weights; the masks change the output (so the parity can fail); all-ones masks change
nothing.

Model and world as tests/test_parity.py: the tiny SD1.5-family UNet (attention at three
decoder levels) on a non-square 8x12 latent, short schedules. Masks are made at latent size
and given to the nodes at image size (8 pixels per latent pixel), so the nodes' bilinear
resize gives the latent masks back exactly."""
import dataclasses

import pytest
import torch

import node_graph
from parity import HEIGHT, TOLERANCE, WIDTH, fresh_draws, image_mask, make_world, max_difference
from parity import SEEDS as PARITY_SEEDS
from reference import Reference, Region, Settings

OTHER = (11, 15)  # appearances of another (odd) size: token grids 11x15, 6x8, 3x4
# the latents (world) and the seeds of their Invert (DDPM) nodes
SEEDS = {**PARITY_SEEDS, "second": 4, "third": 6, "other_main": 7, "other_second": 8}

# 20 steps: ComfyUI's ddim_uniform gives the reference's timesteps (1000 / 20); 14 sampled
# steps, swap from step 2, structure injection on steps 3 and 6, guidance from step 3,
# latent AdaIN from step 4; contrast 1.67 and inversion CFG 3.5 (the paper's)
SHORT_DDPM = Settings(steps=20, skip=6, swap_from=2, structure_every=3, structure_until=8, guidance=(3.5, 1.75, 3),
                      adain_from=4)
# DDIM over 25 steps, swapping the latent/1 and latent/4 grids, injection on steps 5 and 10
SHORT_DDIM = Settings(inversion="ddim", steps=25, skip=0, inversion_cfg=1.0, guidance=(3.0, 1.5, 6), grids=(1, 4),
                      swap_from=4, structure_until=11, adain_from=12)


def box(size, rows, cols, value=1.0) -> torch.Tensor:
    mask = torch.zeros(size)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = value
    return mask


SIZE = (HEIGHT, WIDTH)
# latent-size masks: the structure's object, the appearance's object (its top row of the 4x6
# grid pools to exactly 0.5: the >= 0.5 rule of the allowed keys), the second appearance's object
STRUCTURE_OBJECT = box(SIZE, (2, 7), (3, 10))
APPEARANCE_OBJECT = box(SIZE, (1, 8), (2, 7))
SECOND_OBJECT = box(SIZE, (0, 5), (5, 12))
# where the second appearance goes in the structure: part of its object and beyond it
SECOND_PLACE = box(SIZE, (3, 8), (6, 12))
# soft, overlapping shares for three appearances: sums from 0 (own attention) to 2.3 (divided)
SOFT_MAIN = box(SIZE, (0, 6), (0, 8), 0.8)
SOFT_SECOND = box(SIZE, (2, 8), (4, 12), 0.9)
SOFT_THIRD = box(SIZE, (1, 5), (3, 11), 0.6)
SOFT_THIRD[3:5, 3:6] = 0.3
# on appearances of another size (11x15)
OTHER_MAIN_OBJECT = box(OTHER, (2, 10), (1, 9))
OTHER_SECOND_OBJECT = box(OTHER, (0, 7), (6, 15))


@pytest.fixture(scope="module")
def world(comfy_nodes):
    """parity.make_world's, with further appearances: two of the structure's size, two of another size."""
    return make_world({"second": SIZE, "third": SIZE, "other_main": OTHER, "other_second": OTHER})


def reference_output(world, s: Settings, regions) -> torch.Tensor:
    """regions: (latent name, structure mask, appearance mask) per region, region 0 first."""
    def draws(name):
        return fresh_draws(SEEDS[name], s, world[name].shape[-2:]) if s.inversion == "ddpm" else None
    reference = Reference(world["twin"], s, world["cond"], world["uncond"])
    return reference.transfer(None, world["structure"], fresh_structure=draws("structure"), regions=[
        Region(world[name], structure_mask, appearance_mask, draws(name))
        for name, structure_mask, appearance_mask in regions])


def optional_mask(mask):
    return None if mask is None else image_mask(mask)


def transfer(node, world, s: Settings, inversions, regions) -> torch.Tensor:
    """node_graph.transfer's wiring with regions: region 0's masks on Cross-Image Attention,
    each further region through a Cross-Image Appearance Region node (chained, in order),
    Latent AdaIN without masks (it follows the regions). Returns the model-space output."""
    model = world["model"]
    n = s.steps - s.skip
    (main, main_structure, main_appearance), *others = regions
    chain = None
    for name, structure_mask, appearance_mask in others:
        chain = node("CrossImageAppearanceRegion").execute(
            inversions[name], image_mask(structure_mask), optional_mask(appearance_mask), regions=chain)[0]
    contrast = node("CrossImageAttentionContrast").execute(s.contrast)[0]
    (patched,) = node("CrossImageAttention").execute(
        model, inversions[main], node_graph.levels(s, node_graph.attention_factors(model)), s.swap_from / n, 1.0,
        contrast, s.structure_every, min(s.structure_until / n, 1.0),
        structure_mask=optional_mask(main_structure), appearance_mask=optional_mask(main_appearance), regions=chain)
    guidance = None
    if s.guidance is not None:
        guidance = node("CrossImageAppearanceGuidance").execute(s.guidance[0], s.guidance[1], s.guidance[2] / n)[0]
    adain = None
    if s.adain_from is not None:
        adain = node("CrossImageLatentAdaIN").execute(s.adain_from / n, min(s.adain_until / n, 1.0), None, None)[0]
    sampler = "ddpm" if s.inversion == "ddpm" else "euler"
    structure = inversions["structure"]
    (out,) = node("CrossImageSampler").execute(patched, node_graph.conditioning(world["cond"]), structure, sampler,
                                               1.0, None, guidance, adain)
    return out["samples"].to(structure.trajectory) * model.model.latent_format.scale_factor


CASES = {
    # one appearance, paper-like: its object onto the structure's object, the rest of the
    # output keeps its own attention
    "one_appearance_masked_ddpm": (SHORT_DDPM, [("appearance", STRUCTURE_OBJECT, APPEARANCE_OBJECT)]),
    # the main appearance everywhere but where a second one (its object only) goes
    "two_appearances_ddim": (SHORT_DDIM, [("appearance", None, None), ("second", SECOND_PLACE, SECOND_OBJECT)]),
    # the same with DDPM (each appearance its own draws), the main one lending only its object
    "two_appearances_ddpm": (SHORT_DDPM, [("appearance", None, APPEARANCE_OBJECT),
                                          ("second", SECOND_PLACE, SECOND_OBJECT)]),
    # three appearances with soft, overlapping structure masks (divided where they sum above 1,
    # own attention where they sum below); no AdaIN, whose masks would be soft
    "three_appearances_soft_overlap": (dataclasses.replace(SHORT_DDPM, adain_from=None), [
        ("appearance", SOFT_MAIN, None), ("second", SOFT_SECOND, SECOND_OBJECT), ("third", SOFT_THIRD, None)]),
    # the main appearance without a structure mask takes what two soft, overlapping others leave
    # (nothing where they sum above 1: there they are divided by their sum)
    "three_appearances_main_takes_the_rest": (dataclasses.replace(SHORT_DDPM, adain_from=None), [
        ("appearance", None, APPEARANCE_OBJECT), ("second", SOFT_SECOND, None), ("third", SOFT_THIRD, None)]),
    # two appearances of another, odd size than the structure's (11x15 against 8x12)
    "two_appearances_of_another_size": (SHORT_DDPM, [("other_main", None, OTHER_MAIN_OBJECT),
                                                     ("other_second", SECOND_PLACE, OTHER_SECOND_OBJECT)]),
}


def unmasked(name: str):
    """The case's settings and its main appearance alone, without masks."""
    s, regions = CASES[name]
    return s, [(regions[0][0], None, None)]


@pytest.fixture(scope="module")
def run(node, world):
    """run(settings, regions, side) -> the output latent by "nodes" or "reference", each
    computed once; each latent inverted once per schedule by the nodes."""
    done, inverted = {}, {}

    def invert(s: Settings, name: str):
        key = (s.inversion, s.steps, s.skip, s.inversion_cfg, name)
        if key not in inverted:
            inverted[key] = node_graph.invert(node, world["model"], world[name], world["cond"], world["uncond"], s,
                                              SEEDS[name])
        return inverted[key]

    def get(s: Settings, regions, side: str) -> torch.Tensor:
        key = (repr(s), tuple((name, id(m), id(a)) for name, m, a in regions), side)
        if key not in done:
            if side == "reference":
                done[key] = reference_output(world, s, regions)
            else:
                names = ["structure"] + [name for name, _, _ in regions]
                done[key] = transfer(node, world, s, {name: invert(s, name) for name in names}, regions)
        return done[key]
    return get


@pytest.mark.parametrize("name", list(CASES))
def test_nodes_equal_the_reference_with_regions(run, name):
    s, regions = CASES[name]
    expected, ours = run(s, regions, "reference"), run(s, regions, "nodes")
    assert ours.shape == expected.shape == (1, 4, HEIGHT, WIDTH)
    assert float(expected.std()) > 0.1  # a real latent, not a collapsed one
    assert max_difference(ours, expected) < TOLERANCE, max_difference(ours, expected)


@pytest.mark.parametrize("name", list(CASES))
def test_regions_change_the_output(run, name):
    """The masked reference is far from the nodes' transfer of the main appearance without
    masks (same settings), so the parity above can fail."""
    s, regions = CASES[name]
    difference = max_difference(run(s, regions, "reference"), run(*unmasked(name), "nodes"))
    assert difference > 50 * TOLERANCE, difference


ONES = torch.ones(HEIGHT, WIDTH)


def test_all_ones_masks_change_nothing(run):
    """Masks that cover everything give exactly the transfer without masks."""
    s, plain = unmasked("one_appearance_masked_ddpm")
    assert torch.equal(run(s, [("appearance", ONES, ONES)], "nodes"), run(s, plain, "nodes"))


def test_reference_regions_reduce_to_one_appearance(world, run):
    """The reference's own check: one region without masks is exactly its computation without
    regions, and so is (here, term by term) one with all-ones masks, which takes the regional
    path; the nodes without masks agree with it."""
    s, plain = unmasked("one_appearance_masked_ddpm")
    draws = {f"fresh_{name}": fresh_draws(SEEDS[name], s, SIZE) for name in ("appearance", "structure")}
    without = Reference(world["twin"], s, world["cond"], world["uncond"]).transfer(
        world["appearance"], world["structure"], **draws)
    assert torch.equal(without, run(s, plain, "reference"))
    assert max_difference(without, run(s, [("appearance", ONES, ONES)], "reference")) < 1e-6
    assert max_difference(without, run(s, plain, "nodes")) < TOLERANCE
