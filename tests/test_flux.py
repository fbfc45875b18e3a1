"""The nodes on tiny random Flux-family models (Flux.1 dev and schnell, Flux.2, Chroma; tests/tiny_models.py):
flow inversions that retrace exactly, the blocks users choose, the attention override and what
composes with it, the rows that are not outputs, the errors. The parity with an independent
reference is in test_parity_flux.py."""
import functools

import pytest
import torch

import tiny_models

KINDS = ("dev", "schnell", "flux2", "chroma")


@pytest.fixture(scope="module")
def flux(comfy_nodes):
    """{kind: (model, conditioning)} of the tiny Flux models (2 double + 2 single blocks)."""
    return {kind: (tiny_models.tiny_flux_model(seed=1, kind=kind, output_scale=0.2),
                   tiny_models.flux_conditioning(0, kind=kind)) for kind in KINDS}


def latent(seed, kind="dev", height=8, width=12):
    channels = 128 if kind == "flux2" else 16
    return {"samples": torch.randn(1, channels, height, width, generator=torch.Generator().manual_seed(seed))}


def invert_pair(node, model, cond, kind, method="DDPM", seeds=(1, 2), steps=10, skip=2, **sizes):
    args = (steps, "simple", 1.0, skip, 0) if method == "DDPM" else (steps, "simple", 1.0)
    return node(f"CrossImageInvertPair{method}").execute(model, latent(seeds[0], kind), latent(seeds[1], kind, **sizes),
                                                         cond, *args)


@pytest.mark.parametrize("kind", KINDS)
def test_the_edit_friendly_flow_inversion_is_retraced_exactly(node, flux, kind):
    """Every latent drawn independently from the image, x_i = (1 - sigma_i) x0 + sigma_i n_i, and
    ComfyUI's euler_ancestral replaying the noise maps lands on each of them: the last one to
    float round-off (the last step, to sigma 0, is deterministic: the trajectory ends there)."""
    model, cond = flux[kind]
    lat = latent(3, kind)
    inversion, _ = node("CrossImageInvertDDPM").execute(model, lat, cond, 10, "simple", 1.0, 2, 7)
    assert inversion.method == "flow" and inversion.noise.shape == (8,) + tuple(inversion.trajectory.shape[1:])
    assert not inversion.noise[-1].any()
    clean = model.model.process_latent_in(lat["samples"])
    sigmas = inversion.sigmas[:-1, None, None, None, None]
    spread = (inversion.trajectory[:-1] - (1 - sigmas) * clean).flatten(1).std(1) / sigmas.flatten()
    torch.testing.assert_close(spread, torch.ones(8), rtol=0.15, atol=0.15)
    (out,) = node("CrossImageSampler").execute(model, cond, inversion, "euler_ancestral", 1.0)
    torch.testing.assert_close(model.model.process_latent_in(out["samples"]), inversion.trajectory[-1], rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match="sampler_name: euler does not retrace an edit-friendly inversion of a flow"):
        node("CrossImageSampler").execute(model, cond, inversion, "euler", 1.0)


def test_the_euler_inversion_of_a_flow_converges_with_the_steps(node, flux):
    """Invert (DDIM) on a flow is the Euler step run backwards: its reconstruction error is first
    order in the step size (measured on the tiny Flux-dev: 0.50, 0.24, 0.12 of the latent's std
    at 10, 20, 40 steps of the simple scheduler)."""
    model, cond = flux["dev"]
    lat = latent(4)
    errors = []
    for steps in (10, 20, 40):
        inversion, _ = node("CrossImageInvertDDIM").execute(model, lat, cond, steps, "simple", 1.0)
        (out,) = node("CrossImageSampler").execute(model, cond, inversion, "euler", 1.0)
        errors.append(float((out["samples"] - lat["samples"]).abs().max() / lat["samples"].std()))
    assert errors[2] < 0.2 and errors[2] < 0.35 * errors[0], errors


def test_blocks_by_preset_or_number(node, pack, comfy_nodes):
    """'vital' is Stable Flow's 9 blocks of a 19 + 38 block model; 'auto' is vital there and the
    late half where no vital blocks are published; numbers count double blocks first."""
    adapter = pack.nodes.sampling.architecture.architecture_of
    full = adapter(tiny_models.tiny_flux_model(kind="dev", blocks=(19, 38), heads=1))
    vital = (("double", 0), ("double", 1), ("double", 17), ("double", 18), ("single", 6), ("single", 9),
             ("single", 34), ("single", 35), ("single", 37))
    assert full.choose("vital", (8, 12)) == full.choose("auto", (8, 12)) == vital
    assert len(full.choose("all", (8, 12))) == 57 and full.choose("late", (8, 12))[0] == ("single", 9)
    small = adapter(tiny_models.tiny_flux_model(kind="dev"))
    assert small.choose("auto", (8, 12)) == small.choose("late", (8, 12)) == (("single", 0), ("single", 1))
    assert small.choose("0, 3", (8, 12)) == (("double", 0), ("single", 1))
    with pytest.raises(ValueError, match="levels: no vital blocks are published for a model of 2 double and 2 single"):
        small.choose("vital", (8, 12))
    with pytest.raises(ValueError, match=r"levels: this model has 4 blocks .*; \[4\] do not exist"):
        small.choose("0,4", (8, 12))
    with pytest.raises(ValueError, match="levels: expected 'auto', a preset"):
        small.choose("0,,1", (8, 12))
    assert small.token_grid(("double", 0), (9, 12)) == (5, 6)  # patches of 2, the last row padded


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


@pytest.mark.parametrize("kind", KINDS)
def test_a_transfer_swaps_only_the_output_rows(node, flux, kind, monkeypatch):
    """Every model call of a transfer (contrast, structure injection, guidance, AdaIN), run again
    on the plain model with the same inputs: the appearance and structure rows' predictions are
    the same bit for bit, the output rows' differ on swap steps."""
    model, cond = flux[kind]
    structure, appearance = invert_pair(node, model, cond, kind)
    contrast = node("CrossImageAttentionContrast").execute(1.67)[0]
    (patched,) = node("CrossImageAttention").execute(model, appearance, "all", 0.3, 1.0, contrast, 3, 0.7)
    guidance = node("CrossImageAppearanceGuidance").execute(2.0, 1.5, 0.3)[0]
    adain = node("CrossImageLatentAdaIN").execute(0.4, 1.0)[0]
    calls = recorded_calls(monkeypatch)
    (out,) = node("CrossImageSampler").execute(patched, cond, structure, "euler_ancestral", 1.0, None, guidance, adain)
    assert out["samples"].shape == latent(0, kind)["samples"].shape and len(calls) == structure.steps
    monkeypatch.undo()
    changed = 0
    ours = ("cross_image_call_plan", "cross_image_settings", "optimized_attention_override", "wrappers")
    for x, t, kwargs, swapped in calls:
        options = kwargs["transformer_options"]
        keep = options["cross_image_call_plan"].rows.output_rows(len(options["cond_or_uncond"])).bool()
        plain = model.model.apply_model(x, t, **{**{k: v for k, v in kwargs.items() if k != "cross_image_patched"},
                                                 "transformer_options": {k: v for k, v in options.items()
                                                                         if k not in ours}})
        assert torch.equal(swapped[~keep], plain[~keep])
        changed += int(not torch.equal(swapped[keep], plain[keep]))
    assert changed >= 5  # the swap steps (7 sampled steps, from step 2)


def test_another_attention_override_is_chained_and_a_later_one_refused(node, flux):
    """An attention override set before Cross-Image Attention (an attention backend, Sage) runs in
    every attention the pack does not compute itself; one set after it would silence the swap,
    so the sampler refuses it by name; a wrapper that says it wraps ours (functools.wraps) but
    never calls it is caught when its blocks do not run."""
    model, cond = flux["dev"]
    structure, appearance = invert_pair(node, model, cond, "dev", method="DDIM")
    seen = []

    def backend(func, *args, **kwargs):
        seen.append(kwargs["transformer_options"].get("block_type"))
        return func(*args, **kwargs)
    before = model.clone()
    before.model_options["transformer_options"]["optimized_attention_override"] = backend
    (patched,) = node("CrossImageAttention").execute(before, appearance, "all", 0.0, 1.0)
    (out,) = node("CrossImageSampler").execute(patched, cond, structure, "euler", 1.0)
    (plain_patched,) = node("CrossImageAttention").execute(model, appearance, "all", 0.0, 1.0)
    (expected,) = node("CrossImageSampler").execute(plain_patched, cond, structure, "euler", 1.0)
    assert torch.equal(out["samples"], expected["samples"]) and {"double", "single"} <= set(seen)

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
    with pytest.raises(RuntimeError, match=r"patch did not run at double\.0, double\.1, single\.0, single\.1"):
        node("CrossImageSampler").execute(wrapped, cond, structure, "euler", 1.0)


def test_appearances_of_another_size_regions_and_positions(node, flux):
    """An appearance of another size (its own RoPE grid), regions over the image tokens, and the
    three positions all run and change the output; the output keeps the structure's size."""
    model, cond = flux["dev"]
    structure, appearance = invert_pair(node, model, cond, "dev", height=12, width=6)
    outs = {}
    for positions in ("same", "shifted", "attenuated"):
        settings = node("CrossImageAppearancePositions").execute(positions)[0]
        (patched,) = node("CrossImageAttention").execute(model, appearance, "all", 0.2, 1.0, positions=settings)
        outs[positions] = node("CrossImageSampler").execute(patched, cond, structure, "euler_ancestral", 1.0)[0]
    assert outs["same"]["samples"].shape == (1, 16, 8, 12)
    assert all((outs[a]["samples"] - outs["same"]["samples"]).abs().max() > 1e-4 for a in ("shifted", "attenuated"))
    mask = torch.zeros(1, 64, 96)
    mask[:, :32] = 1
    (regional,) = node("CrossImageAttention").execute(model, appearance, "all", 0.2, 1.0, structure_mask=mask)
    (masked,) = node("CrossImageSampler").execute(regional, cond, structure, "euler_ancestral", 1.0)
    assert (masked["samples"] - outs["attenuated"]["samples"]).abs().max() > 1e-4


def test_flux_inputs_that_cannot_be_honoured_are_refused(node, flux, tiny_model, cond):
    model, flux_cond = flux["dev"]
    structure, appearance = invert_pair(node, model, flux_cond, "dev")
    (patched,) = node("CrossImageAttention").execute(model, appearance, "all", 0.0, 1.0)
    referenced = [[flux_cond[0][0], {**flux_cond[0][1], "reference_latents": [torch.zeros(1, 16, 8, 12)]}]]
    with pytest.raises(ValueError, match="positive: carries reference latents"):
        node("CrossImageSampler").execute(patched, referenced, structure, "euler_ancestral", 1.0)
    with pytest.raises(ValueError, match="model: Self-Segmentation reads a UNet's attention"):
        node("CrossImageSelfSegmentation").execute(model, None, structure, "a photo", "photo", 0.3, 5, 1.4)
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
    assert other.guidance == 1.0 and structure.guidance == 3.5
    (patched_other,) = node("CrossImageAttention").execute(model, other, "all", 0.0, 1.0)
    with pytest.raises(ValueError, match="structure was inverted with guidance 3.5 but appearance with 1.0"):
        node("CrossImageSampler").execute(patched_other, flux_cond, structure, "euler_ancestral", 1.0)


def test_flow_inversions_save_and_load(node, flux):
    model, cond = flux["dev"]
    inversion = node("CrossImageInvertDDPM").execute(model, latent(10), cond, 8, "simple", 1.0, 1, 0)[0]
    entry = node("CrossImageSaveInversion").execute(inversion, "flux/inversion").ui["inversions"][0]
    loaded = node("CrossImageLoadInversion").execute(f"{entry['subfolder']}/{entry['filename']} [output]")[0]
    assert loaded.method == "flow" and loaded.guidance == 3.5 and torch.equal(loaded.noise, inversion.noise)
    (a,) = node("CrossImageSampler").execute(model, cond, inversion, "euler_ancestral", 1.0)
    (b,) = node("CrossImageSampler").execute(model, cond, loaded, "euler_ancestral", 1.0)
    assert torch.equal(a["samples"], b["samples"])
