"""Regional transfer: masks on Cross-Image Attention and several appearances by region, against
the definition (core/regions.py), at one layer and through the nodes on a tiny model. The
parity with the independent reference is in test_parity_regions.py."""
import pytest
import torch

from helpers import latent, layer_options, naive_attention, patched_layer


def invert(node, model, seed, cond, steps=6, height=16, width=24):
    return node("CrossImageInvertDDIM").execute(model, latent(seed, height=height, width=width), cond, steps,
                                               "ddim_uniform", 1.0)[0]


def image_mask(rows: slice, cols: slice, height=128, width=192):
    mask = torch.zeros(1, height, width)
    mask[:, rows, cols] = 1.0
    return mask


def split(heads, *tensors):
    """(B, N, heads * d) -> (B, heads, N, d), as the patch hands tensors to core/kv_swap.py."""
    return [t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in tensors]


def merged(*tensors):
    return [t.transpose(1, 2).flatten(2) for t in tensors]


def test_region_shares(pack):
    """A region without a mask takes what the others leave; overlaps past 1 are shared."""
    core = pack.core.regions
    a = torch.tensor([[1.0, 1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.5]])
    shares = core.region_shares([None, a, b], (1, 3))
    torch.testing.assert_close(shares, torch.tensor([[[0.0, 0.0, 0.5]], [[1.0, 0.5, 0.0]], [[0.0, 0.5, 0.5]]]))
    assert torch.equal(core.region_shares([None], (2, 2)), torch.ones(1, 2, 2))


def test_regional_attention_is_the_blend_of_the_definition(pack):
    """Batch [out0, out1, app_a, app_b] x cond/uncond: output tokens blend their attention to
    each region's appearance (keys inside its mask, with contrast) and to their own keys by the
    shares; appearance rows keep their own."""
    core = pack.core
    heads, grid = 2, (4, 5)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(8, 20, 16, generator=g) for _ in range(3))
    top = torch.zeros(4, 5)
    top[:2] = 1
    left = torch.zeros(4, 5)
    left[:, :2] = 1
    left[3, 1] = 0.5  # a soft edge: shared with the own attention
    shares = core.regions.region_shares([top, left], grid)
    key_mask = torch.zeros(4, 5)
    key_mask[1:3, 1:4] = 1
    regions = core.regions.RegionMaps(shares, [None, key_mask], {"site": (grid, grid)})
    sources = [core.rows.CallRows(2, 2).kv_sources(8, appearance=r) for r in range(2)]
    from functools import partial
    plain = lambda q, k, v: naive_attention(*merged(q, k, v), heads)  # noqa: E731
    contrast = partial(core.contrast.contrast_attention, strength=1.67)
    out = core.kv_swap.regional_attention(*split(heads, q, k, v), sources, regions.at("site", q.device), plain,
                                          contrast)
    inside = key_mask.flatten() >= 0.5
    own_share = (1 - shares.sum(0)).flatten()[None, :, None]
    for chunk in (0, 4):
        a, b = chunk + 2, chunk + 3
        for row in (chunk, chunk + 1):
            r = slice(row, row + 1)
            expected = (shares[0].flatten()[None, :, None] * naive_attention(q[r], k[a:a + 1], v[a:a + 1], heads, 1.67)
                        + shares[1].flatten()[None, :, None]
                        * naive_attention(q[r], k[b:b + 1, inside], v[b:b + 1, inside], heads, 1.67)
                        + own_share * naive_attention(q[r], k[r], v[r], heads))
            torch.testing.assert_close(out[r], expected, rtol=1e-5, atol=1e-5)
        for row in (a, b):
            torch.testing.assert_close(out[row:row + 1], naive_attention(q[row:row + 1], k[row:row + 1],
                                                                         v[row:row + 1], heads), rtol=1e-5, atol=1e-5)


def test_all_ones_masks_are_exactly_no_masks(node, pack, tiny_model, cond):
    structure, appearance = invert(node, tiny_model, 50, cond), invert(node, tiny_model, 51, cond)
    ones = torch.ones(1, 128, 192)
    contrast = node("CrossImageAttentionContrast").execute(1.67)[0]
    runs = []
    for masks in ((None, None), (ones, ones)):
        (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.2, 1.0, contrast, 2, 0.6,
                                                         *masks)
        assert pack.nodes.sampling.transfer.transfer_settings(patched).regions == ()
        adain = node("CrossImageLatentAdaIN").execute(0.3, 1.0)[0]
        runs.append(node("CrossImageSampler").execute(patched, cond, structure, "euler", 1.0, None, None, adain)[0])
    assert torch.equal(runs[0]["samples"], runs[1]["samples"])


def test_outside_the_structure_mask_the_output_keeps_its_own_keys(node, pack, tiny_model, cond):
    """At a swapped layer, output tokens outside the structure mask attend to their own keys
    and values, those inside to the appearance's keys inside the appearance mask only: the
    output there does not change when the appearance's other keys do."""
    structure, appearance = invert(node, tiny_model, 52, cond), invert(node, tiny_model, 53, cond)
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0", 0.0, 1.0, None, 0, 0.0,
                                                     image_mask(slice(0, 64), slice(None)),
                                                     image_mask(slice(64, None), slice(0, 96)))
    sampling = pack.nodes.sampling
    settings = sampling.transfer.transfer_settings(patched)
    regions = sampling.transfer.sampling_regions(sampling.architecture.architecture_of(patched), settings, structure,
                                                 None)
    replace = patched_layer(patched, ("output", 4, 0))
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 16 * 24, 16, generator=g) for _ in range(3))  # [output, appearance], finest level
    plan = pack.core.plan.CallPlan(step=1, rows=pack.core.rows.CallRows(1, 1), swap=True, regions=regions)
    options = layer_options(("output", 4, 0), 2, plan)
    out = replace(q, k, v, options)
    top = torch.arange(16 * 24) < 8 * 24  # the structure mask: the top 8 latent rows
    own = naive_attention(q[:1], k[:1], v[:1], 2)
    torch.testing.assert_close(out[0, ~top], own[0, ~top], rtol=1e-5, atol=1e-5)
    keys = (torch.arange(16 * 24) >= 8 * 24) & (torch.arange(16 * 24) % 24 < 12)  # bottom left of the appearance
    cross = naive_attention(q[:1], k[1:, keys], v[1:, keys], 2)
    torch.testing.assert_close(out[0, top], cross[0, top], rtol=1e-5, atol=1e-5)
    k2, v2 = k.clone(), v.clone()
    k2[1, ~keys], v2[1, ~keys] = 5.0, -5.0
    assert torch.equal(replace(q, k2, v2, options)[0], out[0])


def test_several_appearances_by_region(node, pack, tiny_model, cond):
    """The object from one appearance, the rest from another: both are denoised beside the
    output; each region's output latent takes its appearance's statistics (latent AdaIN
    follows the regions), and each appearance image changes the output."""
    structure = invert(node, tiny_model, 54, cond)
    rest, object_look, other_look = (invert(node, tiny_model, seed, cond) for seed in (55, 56, 57))
    top, right = image_mask(slice(0, 64), slice(None)), image_mask(slice(None), slice(96, None))
    calls = []
    counted = tiny_model.clone()
    counted.set_model_unet_function_wrapper(
        lambda apply, args: calls.append(args["input"].shape[0]) or apply(args["input"], args["timestep"], **args["c"]))

    def transfer(object_appearance):
        (regions,) = node("CrossImageAppearanceRegion").execute(object_appearance, top, right)
        (patched,) = node("CrossImageAttention").execute(counted, rest, "0,1", 0.0, 1.0, None, 0, 0.0,
                                                         None, None, regions)
        adain = node("CrossImageLatentAdaIN").execute(0.0, 1.0)[0]
        (out,) = node("CrossImageSampler").execute(patched, cond, structure, "euler", 1.0, None, None, adain)
        return out["samples"]
    out = transfer(object_look)
    assert set(calls) == {3}  # the output and both appearances in every call
    finals = [node("CrossImageSampler").execute(tiny_model, cond, a, "euler", 1.0)[0]["samples"]
              for a in (rest, object_look)]
    inside, outside = out[:, :, :8].flatten(2), out[:, :, 8:].flatten(2)
    looks = [finals[0].flatten(2), finals[1][:, :, :, 12:].flatten(2)]
    for part, look in ((outside, looks[0]), (inside, looks[1])):
        torch.testing.assert_close(part.mean(-1), look.mean(-1), rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(part.std(-1), look.std(-1), rtol=1e-3, atol=1e-3)
    assert (transfer(other_look) - out).abs().max() > 1e-2


def test_regional_inputs_are_checked(node, tiny_model, cond):
    appearance = invert(node, tiny_model, 58, cond)
    mask = image_mask(slice(0, 64), slice(None))
    attention = node("CrossImageAttention").execute
    with pytest.raises(ValueError, match="regions: expected regions from the Appearance Region node"):
        attention(tiny_model, appearance, "0", 0.0, 1.0, None, 0, 0.0, None, None, "not regions")
    small = invert(node, tiny_model, 59, cond, height=8, width=12)
    (regions,) = node("CrossImageAppearanceRegion").execute(small, mask)
    with pytest.raises(ValueError, match=r"regions \(region 1\): appearance: a \(8, 12\) latent, but appearance's is"):
        attention(tiny_model, appearance, "0", 0.0, 1.0, None, 0, 0.0, None, None, regions)
    dot = image_mask(slice(0, 8), slice(0, 8))  # one latent pixel: no token of the level 4 times coarser
    with pytest.raises(ValueError, match="appearance_mask: the masked part of the appearance image is smaller"):
        attention(tiny_model, appearance, "2", 0.0, 1.0, None, 0, 0.0, mask, dot)
    with pytest.raises(ValueError, match="structure_mask: one mask for the region, got a batch of 2"):
        node("CrossImageAppearanceRegion").execute(appearance, mask.repeat(2, 1, 1))
    with pytest.raises(ValueError, match="structure_mask: the mask is empty"):
        attention(tiny_model, appearance, "0", 0.0, 1.0, None, 0, 0.0, torch.zeros(1, 128, 192))
    (patched,) = attention(tiny_model, appearance, "0", 0.0, 1.0, None, 0, 0.0, mask)
    adain = node("CrossImageLatentAdaIN").execute(0.0, 1.0, mask)[0]
    with pytest.raises(ValueError, match="latent_adain: Cross-Image Attention has masks or regions"):
        node("CrossImageSampler").execute(patched, cond, invert(node, tiny_model, 60, cond), "euler", 1.0, None, None,
                                          adain)
