"""Unit tests of core/ against hand-computed values (plain tensors, no model)."""
import math
import os
import subprocess
import sys

import pytest
import torch


@pytest.fixture(scope="module")
def core(pack):
    """The pack's core package (as ComfyUI loaded it), every module imported."""
    import importlib
    import pkgutil
    for module in pkgutil.iter_modules(pack.core.__path__):
        importlib.import_module(f"{pack.core.__name__}.{module.name}")
    return pack.core


def test_core_imports_without_comfyui():
    code = ("import sys, importlib, pkgutil; sys.path.insert(0, %r); import core; "
            "[importlib.import_module('core.' + m.name) for m in pkgutil.iter_modules(core.__path__)]; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'nodes', 'folder_paths')]; "
            "assert not bad, bad" % os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], check=True)


def test_eps_from_denoised(core):
    x, d = torch.tensor([3.0, -1.0]), torch.tensor([1.0, 1.0])
    assert torch.equal(core.ddim.eps_from_denoised(x, d, 2.0), torch.tensor([1.0, -1.0]))


def test_ddim_invert_constant_noise_is_exact(core):
    """For a denoiser whose noise prediction is a constant c, x_sigma = x0 + sigma * c exactly."""
    c = torch.tensor([0.5, -2.0])
    clean = torch.tensor([1.0, 3.0])
    sigmas = torch.tensor([8.0, 3.0, 1.0, 0.0])
    asked = []

    def denoise(x, sigma):
        asked.append(sigma)
        return x - sigma * c

    steps = []
    trajectory = core.ddim.ddim_invert(denoise, clean, sigmas, sigma_floor=0.1,
                                       callback=lambda k, d, x: steps.append(k))
    expected = torch.stack([clean + s * c for s in sigmas])
    assert torch.allclose(trajectory, expected, atol=1e-6)
    assert asked == [0.1, 1.0, 3.0]  # clean latent asked at the floor, then each sigma reached
    assert steps == [0, 1, 2]


def test_ddim_invert_gaussian_data_by_hand(core):
    """Data ~ N(0, 1): the exact denoiser is x / (1 + sigma^2). One step from sigma 0 to 2,
    asked at the floor 0.5: eps = (x - x/1.25)/0.5 = 0.4 x, so x_2 = x + 2 * 0.4 x = 1.8 x."""
    clean = torch.tensor([1.0, -2.0])
    trajectory = core.ddim.ddim_invert(lambda x, s: x / (1 + s * s), clean, torch.tensor([2.0, 0.0]), 0.5)
    assert torch.allclose(trajectory[0], 1.8 * clean)
    assert torch.equal(trajectory[1], clean)


def test_step_index(core):
    schedule = torch.tensor([10.0, 5.0, 2.0, 0.0])
    assert [core.schedule.step_index(schedule, s) for s in (10.0, 5.0, 2.0, 7.0, 1.0)] == [0, 1, 2, 1, 3]


def test_step_ranges_match_the_paper(core):
    # Paper: swap from step 10 of 68 to the end; 0.15 * 68 = 10.2 rounds to 10.
    assert core.schedule.step_range(0.15, 1.0, 68) == range(10, 68)
    assert core.schedule.step_range(0.3, 0.8, 10) == range(3, 8)
    assert core.schedule.step_range(0.92, 1.0, 5) == range(5, 5)  # rounds to no step


def test_structure_injection_steps_match_the_paper(core):
    # paper's code: step % 5 == 0 and step < 40, of 68 steps; 0.59 * 68 = 40.1 rounds to 40 (inside the swap)
    settings = core.settings.TransferSettings(None, (), 0.0, 1.0, structure_every=5, structure_until=0.59)
    assert sorted(core.schedule.transfer_steps(68, settings).injection) == list(range(0, 40, 5))
    late = core.settings.TransferSettings(None, (), 0.15, 1.0, structure_every=5, structure_until=0.59)
    assert sorted(core.schedule.transfer_steps(68, late).injection) == list(range(10, 40, 5))
    off = core.settings.TransferSettings(None, (), 0.0, 1.0, structure_every=0, structure_until=1.0)
    assert not core.schedule.transfer_steps(68, off).injection and not off.injects_structure


def test_adain_by_hand(core):
    content = torch.tensor([[[1.0, 3.0]]])       # mean 2, unbiased var 2
    style = torch.tensor([[[10.0, 20.0, 30.0]]])  # mean 20, unbiased var 100
    out = core.adain.adain(content, style, eps=0.0)
    # (x - 2) / sqrt(2) * 10 + 20
    assert torch.allclose(out, torch.tensor([[[20 - 10 / 2 ** 0.5, 20 + 10 / 2 ** 0.5]]]))


def test_adain_statistics_and_eps(core):
    g = torch.Generator().manual_seed(0)
    content, style = torch.randn(2, 3, 8, 8, generator=g), 4 + 3 * torch.randn(1, 3, 6, 5, generator=g)
    out = core.adain.adain(content, style)
    flat_out, flat_style = out.flatten(2), style.flatten(2)
    assert torch.allclose(flat_out.mean(-1), flat_style.mean(-1).expand(2, 3), atol=1e-5)
    # std = sqrt(var + 1e-5) on both sides, so the unbiased stds match up to that epsilon
    assert torch.allclose(flat_out.std(-1), flat_style.std(-1).expand(2, 3), atol=1e-4)


def test_adain_masks_restrict_statistics_and_change(core):
    content = torch.tensor([[[1.0, 3.0, 100.0]]])
    style = torch.tensor([[[10.0, 20.0, -50.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    out = core.adain.adain(content, style, content_mask=mask, style_mask=torch.tensor([[0.0, 1.0, 1.0]]), eps=0.0)
    # style stats over [20, -50]: mean -15, unbiased std sqrt(2450); content stats over [1, 3]
    std = 2450 ** 0.5
    assert torch.allclose(out[0, 0, :2], torch.tensor([-15 - std / 2 ** 0.5, -15 + std / 2 ** 0.5]))
    assert out[0, 0, 2] == 100.0  # outside the content mask: untouched


def test_adain_rejects_empty_mask(core):
    with pytest.raises(ValueError, match="content_mask"):
        core.adain.adain(torch.ones(1, 3, 4), torch.ones(1, 3, 4), content_mask=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="style_mask"):
        core.adain.adain(torch.ones(1, 3, 4), torch.ones(1, 3, 4), style_mask=torch.zeros(1, 4))


def _inversion(core, shape=(1, 4, 8, 8), sigmas=(3.0, 1.0, 0.0), key="m"):
    sigmas = torch.tensor(sigmas)
    return core.inversion.Inversion(sigmas=sigmas, trajectory=torch.zeros(len(sigmas), *shape), model_key=key)


def test_inversion_pairing_errors(core):
    structure = _inversion(core, shape=(2, 4, 8, 8))
    structure.check_pairs_with(_inversion(core), "structure", "appearance")
    with pytest.raises(ValueError, match="different models"):
        structure.check_pairs_with(_inversion(core, key="other"), "structure", "appearance")
    structure.check_pairs_with(_inversion(core, shape=(1, 4, 13, 6)), "structure", "appearance")  # sizes may differ
    with pytest.raises(ValueError, match="appearance latent 3: use latents of the same VAE"):
        structure.check_pairs_with(_inversion(core, shape=(1, 3, 8, 8)), "structure", "appearance")
    with pytest.raises(ValueError, match="different schedules"):
        structure.check_pairs_with(_inversion(core, sigmas=(4.0, 0.0)), "structure", "appearance")
    with pytest.raises(ValueError, match="batch of 3"):
        structure.check_pairs_with(_inversion(core, shape=(3, 4, 8, 8)), "structure", "appearance")
    with pytest.raises(ValueError, match="latents for"):
        core.inversion.Inversion(sigmas=torch.tensor([2.0, 1.0, 0.0]), trajectory=torch.zeros(2, 1, 4, 8, 8),
                                 model_key="m")


def contrast(core, q, k, v, heads, strength, budget_elements=1 << 21):
    """core.contrast.contrast_attention on (B, N, heads * d) tensors."""
    split = [t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v)]
    return core.contrast.contrast_attention(*split, strength, budget_elements=budget_elements)


def naive_contrast(q, k, v, heads, strength):
    """The whole map at once, straight from the definition."""
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    a = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)
    mean = 1.0 / k.shape[2]
    a = torch.clamp((a - mean) * strength + mean, 0, 1)
    return (a @ v).transpose(1, 2).reshape(b, n, inner)


def test_contrast_by_hand(core):
    """One query, two keys with scores 0 and ln 3: A = [1/4, 3/4]; strength 2 around mean 1/2
    gives [0, 1] (clipped); the output is V's second row. Strength 3 would give [-1/4, 5/4]
    before the clip: still [0, 1], no renormalisation needed there."""
    q = torch.tensor([[[1.0]]])
    k = torch.tensor([[[0.0], [torch.log(torch.tensor(3.0)).item()]]])
    v = torch.tensor([[[10.0], [20.0]]])
    assert torch.allclose(contrast(core, q, k, v, 1, 1.0), torch.tensor([[[17.5]]]))
    assert torch.allclose(contrast(core, q, k, v, 1, 2.0), torch.tensor([[[20.0]]]))
    # strength 1.5: [1/8, 7/8] -> 10/8 + 140/8
    assert torch.allclose(contrast(core, q, k, v, 1, 1.5), torch.tensor([[[18.75]]]))


def test_contrast_rows_are_not_renormalised(core):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 5, 4, generator=g), torch.randn(1, 7, 4, generator=g)
    ones = torch.ones(1, 7, 4)
    rows = contrast(core, q, k, ones, 2, 3.0)  # V = 1: output = row sums
    assert not torch.allclose(rows, torch.ones_like(rows))


@pytest.mark.parametrize("budget", [1, 37, 1 << 24])
def test_contrast_in_chunks_equals_the_whole_map(core, budget):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 24, 16, generator=g) for _ in range(3))
    chunked = contrast(core, q, k, v, 4, 1.67, budget_elements=budget)
    assert torch.allclose(chunked, naive_contrast(q, k, v, 4, 1.67), atol=1e-6)


def test_contrast_strength_one_is_plain_attention(core):
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 9, 8, generator=g) for _ in range(3))
    plain = torch.nn.functional.scaled_dot_product_attention(
        *(t.view(1, 9, 2, 4).transpose(1, 2) for t in (q, k, v))).transpose(1, 2).reshape(1, 9, 8)
    assert torch.allclose(contrast(core, q, k, v, 2, 1.0), plain, atol=1e-6)


def test_contrast_budget_from_free_memory(core):
    """A quarter of the free memory for two float32 maps; never below the least budget. With
    64 GiB free, SD1.5's finest decoder level at 512 px (8 heads, 4096 tokens) is one chunk."""
    contrast = core.contrast
    assert contrast.budget_from_free_memory(0) == contrast.LEAST_BUDGET
    assert contrast.budget_from_free_memory(64 << 30) == 1 << 31
    assert contrast.query_chunk(heads=8, queries=4096, keys=4096, budget_elements=1 << 31) == 4096
    assert contrast.query_chunk(heads=8, queries=4096, keys=4096, budget_elements=contrast.LEAST_BUDGET) == 64


def test_query_chunk(core):
    assert core.contrast.query_chunk(heads=8, queries=4096, keys=4096, budget_elements=8 * 4096 * 512) == 512
    assert core.contrast.query_chunk(heads=8, queries=10, keys=4096, budget_elements=1) == 1
    assert core.contrast.query_chunk(heads=1, queries=10, keys=4, budget_elements=10 ** 6) == 10


def test_guidance_schedule_matches_the_paper(core):
    import numpy as np
    paper = np.linspace(3.5, max(3.5 / 2, 1), 68)
    settings = core.settings.TransferSettings(None, (), 0.15, 1.0)
    guidance = core.settings.GuidanceSettings(3.5, 1.75, 0.15)
    scales = core.schedule.transfer_steps(68, settings, guidance).guidance
    assert scales[:10] == (None,) * 10
    assert np.allclose(scales[10:], paper[10:])
    assert core.guidance.guidance_scale(0, 1, 2.0, 1.0) == 2.0
    # guidance only where the swap is on: from the later of the two starts, to the swap's end
    later = core.schedule.transfer_steps(10, core.settings.TransferSettings(None, (), 0.3, 0.8), guidance).guidance
    assert [i for i, scale in enumerate(later) if scale is not None] == [3, 4, 5, 6, 7]


def test_guide_by_hand(core):
    assert torch.equal(core.guidance.guide(torch.tensor([1.0]), torch.tensor([3.0]), 2.5), torch.tensor([6.0]))


def test_ddpm_posterior_by_hand(core):
    """sigma 1 -> abar 1/2; sigma_next 0 -> abar 1: alpha 1/2, mean = (x - eps/sqrt 2 ... ) * sqrt 2,
    std 0 (last step). sigma 3 -> abar 0.1, sigma_next 1 -> abar 0.5: alpha 0.2,
    var = 0.8 * 0.5 / 0.9."""
    x, eps = torch.tensor([1.0]), torch.tensor([0.5])
    mean, std = core.edit_friendly.ddpm_posterior(x, eps, 1.0, 0.0)
    assert torch.allclose(mean, (x - 0.5 * eps / 0.5 ** 0.5) / 0.5 ** 0.5) and std == 0.0
    mean, std = core.edit_friendly.ddpm_posterior(x, eps, 3.0, 1.0)
    assert torch.allclose(mean, (x - 0.8 * eps / 0.9 ** 0.5) / 0.2 ** 0.5)
    assert abs(std - (0.8 * 0.5 / 0.9) ** 0.5) < 1e-12


def test_edit_friendly_inversion_lands_on_its_draws(core):
    """With the exact denoiser of N(0, 1) data, each re-derived latent equals the independent
    draw, and replaying the noise maps with the DDPM step retraces the trajectory."""
    denoise = lambda x, s: x / (1 + s * s)  # noqa: E731
    sigmas = torch.tensor([5.0, 2.0, 0.5, 0.0])
    clean = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    draws = torch.randn((3, 2, 3), generator=torch.Generator().manual_seed(1))
    trajectory, noise = core.edit_friendly.edit_friendly_invert(denoise, clean, sigmas, draws)
    for i in range(3):
        assert torch.allclose(trajectory[i], clean + sigmas[i] * draws[i], atol=1e-5)
    x = trajectory[0]
    for i in range(3):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        mean, std = core.edit_friendly.ddpm_posterior(x / (1 + s * s) ** 0.5, (x - denoise(x, s)) / s, s, s_next)
        x = (mean + std * noise[i]) * ((1 + s_next * s_next) ** 0.5 if s_next > 0 else 1.0)
        assert torch.allclose(x, trajectory[i + 1], atol=1e-5)
    assert not noise[-1].any()


def test_kmeans_finds_separated_groups(core):
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.3 * torch.randn(40, 2, generator=g) for c in centers])
    labels = core.segmentation.kmeans(points, 3)
    groups = [set(labels[i * 40:(i + 1) * 40].tolist()) for i in range(3)]
    assert all(len(group) == 1 for group in groups) and len(set.union(*groups)) == 3


def test_object_clusters_by_hand(core):
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    word = torch.tensor([0.9, 0.7, 0.1, 0.1, 0.2, 0.2])
    # normalised (w - 0.1) / 0.9: cluster scores 0.78, 0, 0.11; the mean without the best is
    # 0.056, so 0.78 and 0.11 exceed 1.4 * 0.056 = 0.078 (the paper's rule is that lenient)
    assert core.segmentation.object_clusters(labels, word, 1.4).tolist() == [True, False, True]
    assert core.segmentation.object_clusters(labels, word, 2.5).tolist() == [True, False, False]
    # nothing stands out: the best cluster still counts; an empty cluster never does
    assert core.segmentation.object_clusters(labels, torch.ones(6), 1.4).tolist() == [True, False, False]
    labels, word = torch.tensor([0, 0, 2, 2]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert core.segmentation.object_clusters(labels, word, 1.4).tolist() == [True, False, False]


def test_self_segmentation_separates_an_object_that_attends_to_itself(core):
    """Pixels 0-5 attend among themselves, 6-15 among themselves; the noun looks at 0-5."""
    n = 16
    attention = torch.zeros(n, n)
    attention[:6, :6] = 1 / 6
    attention[6:, 6:] = 1 / 10
    word = torch.zeros(n)
    word[:6] = 1.0
    mask = core.segmentation.self_segmentation(attention, word, clusters=2)
    assert mask.tolist() == [1.0] * 6 + [0.0] * 10


def test_paper_levels_translate_the_paper_grids_to_any_model_and_size(core):
    """The levels whose token grids are nearest to SD1.5's swapped 64x64 and 32x32 at 512 px."""
    paper_levels = core.levels.paper_levels
    sd_factors, sdxl_factors = [1, 2, 4], [2, 4]  # attention at latent/1, /2, /4; SDXL: /2, /4
    assert paper_levels(sd_factors, 64, 64) == (0, 1)     # SD1.5 / SD2 at 512 px: the paper's own
    assert paper_levels(sd_factors, 96, 96) == (1, 2)     # SD2 at 768 px: 48 and 24 tokens a side
    assert paper_levels(sdxl_factors, 128, 128) == (0, 1)  # SDXL at 1024 px: 64 and 32
    assert paper_levels(sdxl_factors, 64, 64) == (0,)     # SDXL at 512 px: 32 is nearest to both
    assert paper_levels(sd_factors, 64, 96) == (0, 1)     # 512x768: sqrt(64 * 96) = 78 and 39 a side
    # halving rounds up
    assert core.levels.token_grid(9, 7, 2) == (5, 4) and core.levels.token_grid(16, 24, 4) == (4, 6)
    assert core.levels.grid_side(9, 7, 2) == math.sqrt(5 * 4)


@pytest.mark.parametrize("shape", [(4, 8, 12), (4, 5, 7), (4, 16, 12), (4, 13, 30)])
def test_packing_round_trips_latents_of_other_sizes(core, shape):
    """An appearance latent of another size rides in the sampler batch as rows of the
    structure's shape (8 x 12), channel by channel, zero-padded; unpack gives it back."""
    row_shape = (4, 8, 12)
    latents = torch.randn(2, *shape)
    rows = core.packing.pack(latents, row_shape)
    k = -(-shape[1] * shape[2] // 96)
    assert rows.shape == (2 * k, *row_shape)
    assert torch.equal(core.packing.unpack(rows, shape), latents)
    # each channel's values stay in that channel (per-channel maps act on the right values)
    assert torch.equal(rows[:k, 1].flatten()[:shape[1] * shape[2]], latents[0, 1].flatten())
    assert int((rows != 0).sum()) == latents.numel()  # the rest is padding
    if shape == row_shape:
        assert rows is latents


def test_packing_padding_stays_zero_through_the_retracing_steps(core, comfy_nodes):
    """Zero padding with a zero prediction there stays zero through ComfyUI's Euler and DDPM
    steps (what lets a latent of another size share the sampler batch)."""
    import comfy.k_diffusion.sampling as k_sampling
    rows = core.packing.pack(torch.randn(1, 4, 5, 7), (4, 8, 12))
    padding = rows == 0

    def model(x, sigma, **kwargs):  # a prediction that is zero where the input is
        return x * 0.5

    sigmas = torch.tensor([3.0, 1.5, 0.5, 0.0])
    noise = lambda sigma, sigma_next: torch.randn_like(rows) * ~padding  # noqa: E731 (zero on the padding)
    for sampler in (k_sampling.sample_euler, k_sampling.sample_ddpm):
        extra = {"noise_sampler": noise} if sampler is k_sampling.sample_ddpm else {}
        out = sampler(model, rows.clone(), sigmas, disable=True, **extra)
        assert bool((out[padding] == 0).all()) and bool((out[~padding] != 0).all())
