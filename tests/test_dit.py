"""The nodes on every diffusion-transformer family (tiny random models, tests/tiny_models.py
DIT_FAMILIES): flow inversions that retrace exactly, transfers that swap only the output rows,
the blocks users choose, what composes with the hooks and what is refused, appearances of other
sizes, regions and positions. Each family's parity with an independent reference is in its
test_parity_* module; what only Flux has (vital blocks, embedded guidance) in test_flux.py."""
import functools

import pytest
import torch

import tiny_models
from tiny_models import dit_latent as latent

FAMILIES = tuple(tiny_models.DIT_FAMILIES)
ROPE = {family for family in FAMILIES if not family.startswith("sd3")}  # rotary positions


@pytest.fixture(scope="module")
def dits(comfy_nodes):
    """{family: (model, conditioning)}, each built once."""
    built = {}

    def get(family):
        if family not in built:
            built[family] = tiny_models.tiny_dit(family)
        return built[family]
    return get


def invert_pair(node, model, cond, family, method="DDPM", seeds=(1, 2), steps=10, skip=2, **sizes):
    args = (steps, "simple", 1.0, skip, 0) if method == "DDPM" else (steps, "simple", 1.0)
    return node(f"CrossImageInvertPair{method}").execute(model, latent(family, seeds[0]),
                                                         latent(family, seeds[1], **sizes), cond, *args)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_edit_friendly_flow_inversion_is_retraced_exactly(node, dits, family):
    """Every latent drawn independently from the image, x_i = (1 - sigma_i) x0 + sigma_i n_i, and
    ComfyUI's euler_ancestral replaying the noise maps lands on each of them: the last one to
    float round-off (the last step, to sigma 0, is deterministic: the trajectory ends there)."""
    model, cond = dits(family)
    lat = latent(family, 3)
    inversion, _ = node("CrossImageInvertDDPM").execute(model, lat, cond, 10, "simple", 1.0, 2, 7)
    assert inversion.method == "flow" and inversion.noise.shape == (8,) + tuple(inversion.trajectory.shape[1:])
    assert not inversion.noise[-1].any()
    clean = model.model.process_latent_in(lat["samples"])
    sigmas = inversion.sigmas[:-1].view(-1, *[1] * (inversion.trajectory.ndim - 1))
    spread = (inversion.trajectory[:-1] - (1 - sigmas) * clean).flatten(1).std(1) / sigmas.flatten()
    torch.testing.assert_close(spread, torch.ones(8), rtol=0.15, atol=0.15)
    (out,) = node("CrossImageSampler").execute(model, cond, inversion, "euler_ancestral", 1.0)
    torch.testing.assert_close(model.model.process_latent_in(out["samples"]), inversion.trajectory[-1], rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match="sampler_name: euler does not retrace an edit-friendly inversion of a flow"):
        node("CrossImageSampler").execute(model, cond, inversion, "euler", 1.0)


def recorded_calls(monkeypatch):
    """Every model call's input and output rows, through BaseModel.apply_model."""
    import comfy.model_base
    calls = []
    apply_model = comfy.model_base.BaseModel.apply_model

    def recorded(self, x, t, *args, **kwargs):
        out = apply_model(self, x, t, *args, **kwargs)
        calls.append((x.clone(), t.clone(), kwargs, out))
        return out
    monkeypatch.setattr(comfy.model_base.BaseModel, "apply_model", recorded)
    return calls


OURS = ("cross_image_call_plan", "cross_image_settings", "optimized_attention_override", "wrappers", "patches_replace")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_transfer_swaps_only_the_output_rows(node, dits, family, monkeypatch):
    """Every model call of a transfer (contrast, structure injection, guidance, AdaIN), run again
    on the plain model with the same inputs: the appearance and structure rows' predictions are
    the same bit for bit, the output rows' differ on swap steps (and the sampler saw every block
    run the swap, or it would have raised)."""
    model, cond = dits(family)
    structure, appearance = invert_pair(node, model, cond, family)
    contrast = node("CrossImageAttentionContrast").execute(1.67)[0]
    (patched,) = node("CrossImageAttention").execute(model, appearance, "all", 0.3, 1.0, contrast, 3, 0.7)
    guidance = node("CrossImageAppearanceGuidance").execute(2.0, 1.5, 0.3)[0]
    adain = node("CrossImageLatentAdaIN").execute(0.4, 1.0)[0]
    calls = recorded_calls(monkeypatch)
    (out,) = node("CrossImageSampler").execute(patched, cond, structure, "euler_ancestral", 1.0, None, guidance, adain)
    # the pair's inversions made in these calls (sampling/deferred.py): one a step
    assert out["samples"].shape == latent(family, 0)["samples"].shape and len(calls) == structure.steps
    monkeypatch.undo()
    changed = 0
    for x, t, kwargs, swapped in calls:
        options = kwargs["transformer_options"]
        plan = options["cross_image_call_plan"]
        keep = plan.rows.output_rows(len(options["cond_or_uncond"])).bool()
        plain = model.model.apply_model(x, t, **{**kwargs, "transformer_options": {k: v for k, v in options.items()
                                                                                    if k not in OURS}})
        assert torch.equal(swapped[~keep], plain[~keep])
        changed += int(not torch.equal(swapped[keep], plain[keep]))
    assert changed >= 5  # the swap steps (7 sampled steps, from step 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_by_preset_or_number(pack, dits, family):
    """'auto' is the late half where no vital blocks are published; numbers count the blocks of
    each kind in order; a block past the last is refused by number."""
    architecture = pack.nodes.sampling.architecture.architecture_of(dits(family)[0])
    keys = [site.key for site in architecture.sites()]
    total = len({site.group for site in architecture.sites()})
    assert architecture.choose("auto", (8, 12)) == architecture.choose("late", (8, 12)) \
        == tuple(site.key for site in architecture.sites() if site.group >= total // 2)
    assert architecture.choose("all", (8, 12)) == tuple(keys)
    assert architecture.choose(f"0, {total - 1}", (8, 12)) == tuple(
        site.key for site in architecture.sites() if site.group in (0, total - 1))
    with pytest.raises(ValueError, match=rf"levels: this model has {total} blocks .*; \[{total}\] do not exist"):
        architecture.choose(f"0,{total}", (8, 12))
    with pytest.raises(ValueError, match="levels: expected 'auto', a preset"):
        architecture.choose("0,,1", (8, 12))
    with pytest.raises(ValueError, match="levels: no vital blocks are published for"):
        architecture.choose("vital", (8, 12))
    patch = architecture.patch  # 2 (Flux.2: 1), the last row padded
    assert architecture.token_grid(keys[0], (9, 12)) == (-(-9 // patch), 12 // patch)


@pytest.mark.parametrize("family", ["flux-dev", "sd35-medium", "z-image", "qwen-image"])
def test_another_attention_override_is_chained_and_a_later_one_refused(node, dits, family):
    """An attention override set before Cross-Image Attention (an attention backend, Sage) runs in
    every attention the pack does not compute itself; one set after it would silence the swap,
    so the sampler refuses it by name; a wrapper that says it wraps ours (functools.wraps) but
    never calls it is caught when its blocks do not run."""
    model, cond = dits(family)
    structure, appearance = invert_pair(node, model, cond, family, method="DDIM")
    seen = []

    def backend(func, *args, **kwargs):
        seen.append(args[0].shape)
        return func(*args, **kwargs)
    before = model.clone()
    before.model_options["transformer_options"]["optimized_attention_override"] = backend
    (patched,) = node("CrossImageAttention").execute(before, appearance, "all", 0.0, 1.0)
    (out,) = node("CrossImageSampler").execute(patched, cond, structure, "euler", 1.0)
    (plain_patched,) = node("CrossImageAttention").execute(model, appearance, "all", 0.0, 1.0)
    (expected,) = node("CrossImageSampler").execute(plain_patched, cond, structure, "euler", 1.0)
    assert torch.equal(out["samples"], expected["samples"]) and seen

    after = plain_patched.clone()
    after.model_options["transformer_options"]["optimized_attention_override"] = backend
    with pytest.raises(ValueError, match="model: a node after Cross-Image Attention replaced the model's attention"):
        node("CrossImageSampler").execute(after, cond, structure, "euler", 1.0)

    ours = plain_patched.model_options["transformer_options"]["optimized_attention_override"]

    @functools.wraps(ours)
    def skipping(func, *args, **kwargs):
        return func(*args, **kwargs)
    skipping.__wrapped__ = ours
    wrapped = plain_patched.clone()
    wrapped.model_options["transformer_options"]["optimized_attention_override"] = skipping
    with pytest.raises(RuntimeError, match=r"patch did not run at \w+\.0, "):
        node("CrossImageSampler").execute(wrapped, cond, structure, "euler", 1.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_appearances_of_another_size_regions_and_positions(node, dits, family):
    """An appearance of another size, regions over the image tokens and, with rotary positions,
    the three positions all run and change the output; the output keeps the structure's size.
    Without rotary positions, Appearance Positions is refused by name."""
    model, cond = dits(family)
    structure, appearance = invert_pair(node, model, cond, family, height=12, width=6)
    outs = {}
    for positions in ("same", "shifted", "attenuated") if family in ROPE else (None,):
        settings = None if positions is None else node("CrossImageAppearancePositions").execute(positions)[0]
        (patched,) = node("CrossImageAttention").execute(model, appearance, "all", 0.2, 1.0, positions=settings)
        outs[positions] = node("CrossImageSampler").execute(patched, cond, structure, "euler_ancestral", 1.0)[0]
    default = outs["attenuated" if family in ROPE else None]["samples"]
    assert default.shape == latent(family, 0)["samples"].shape
    if family in ROPE:
        assert all((outs[a]["samples"] - outs["same"]["samples"]).abs().max() > 1e-4 for a in ("shifted", "attenuated"))
    else:
        shifted = node("CrossImageAppearancePositions").execute("shifted")[0]
        with pytest.raises(ValueError, match="positions: Appearance Positions moves the appearance keys' rotary"):
            node("CrossImageAttention").execute(model, appearance, "all", 0.2, 1.0, positions=shifted)
    (plain,) = node("CrossImageSampler").execute(model, cond, structure, "euler_ancestral", 1.0)
    assert (default - plain["samples"]).abs().max() > 1e-4
    mask = torch.zeros(1, 64, 96)
    mask[:, :32] = 1
    (regional,) = node("CrossImageAttention").execute(model, appearance, "all", 0.2, 1.0, structure_mask=mask)
    (masked,) = node("CrossImageSampler").execute(regional, cond, structure, "euler_ancestral", 1.0)
    assert (masked["samples"] - default).abs().max() > 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_self_segmentation_is_refused_by_name(node, dits, family):
    model, cond = dits(family)
    structure, _ = invert_pair(node, model, cond, family, steps=4, skip=0)
    with pytest.raises(ValueError, match="model: Self-Segmentation reads a UNet's attention"):
        node("CrossImageSelfSegmentation").execute(model, None, structure, "a photo", "photo", 0.3, 5, 1.4)


@pytest.mark.parametrize("family", FAMILIES)
def test_flow_inversions_save_and_load(node, dits, family):
    model, cond = dits(family)
    inversion = node("CrossImageInvertDDPM").execute(model, latent(family, 10), cond, 8, "simple", 1.0, 1, 0)[0]
    entry = node("CrossImageSaveInversion").execute(inversion, f"{family}/inversion").ui["inversions"][0]
    loaded = node("CrossImageLoadInversion").execute(f"{entry['subfolder']}/{entry['filename']} [output]")[0]
    assert loaded.method == "flow" and loaded.guidance == inversion.guidance
    assert torch.equal(loaded.noise, inversion.noise)
    (a,) = node("CrossImageSampler").execute(model, cond, inversion, "euler_ancestral", 1.0)
    (b,) = node("CrossImageSampler").execute(model, cond, loaded, "euler_ancestral", 1.0)
    assert torch.equal(a["samples"], b["samples"])


def test_hidream_is_refused_with_the_reason(pack):
    """HiDream's attention calls carry no block identity and no block replacement exists for it:
    the nodes refuse its MODEL, saying why (checked on the class ComfyUI builds HiDream with)."""
    import comfy.ldm.hidream.model

    class Model:  # what architecture_of reads of a MODEL
        def get_model_object(self, name):
            assert name == "diffusion_model"
            cls = comfy.ldm.hidream.model.HiDreamImageTransformer2DModel
            return cls.__new__(cls)
    with pytest.raises(ValueError, match="model: HiDream is not supported: its attention calls carry no block"):
        pack.nodes.sampling.architecture.architecture_of(Model())
