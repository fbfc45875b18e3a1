"""The nodes on a tiny random ComfyUI model: inversion, patching, sampling, AdaIN, errors."""
import copy
import functools

import pytest
import torch

import tiny_models


@pytest.fixture(scope="module")
def smooth_model(comfy_nodes):
    """Random weights give a far rougher eps(x) than a trained model; a smaller last layer
    (eps amplitude ~0.1) brings DDIM inversion into the regime it is used in."""
    return tiny_models.tiny_model(seed=0, output_scale=0.01)


def latent(seed, batch=1, height=16, width=24):
    """A non-square VAE-space latent (16x24 = a 128x192 image)."""
    return {"samples": torch.randn(batch, 4, height, width, generator=torch.Generator().manual_seed(seed)) * 5}


def invert(node, model, lat, cond, steps=10, scheduler="ddim_uniform"):
    return node("CrossImageInvertDDIM").execute(model, lat, cond, steps, scheduler, 1.0)


def reconstruction_error(node, model, cond, steps):
    lat = latent(1, batch=2)
    inversion, _ = invert(node, model, lat, cond, steps)
    (out,) = node("CrossImageSampler").execute(model, cond, inversion, "euler", 1.0)
    return (out["samples"] - lat["samples"]).abs().max().item() / lat["samples"].std().item()


@pytest.mark.parametrize("prediction, tolerance", [("eps", 0.02), ("v", 0.3)])
def test_ddim_inversion_then_sampling_reconstructs(node, cond, prediction, tolerance):
    """DDIM inversion evaluates eps at x_t where sampling evaluates it at x_{t+1}, so the
    reconstruction error is first order in the step size (measured here: eps model 0.036,
    0.024, 0.013 and v model 0.87, 0.47, 0.25 of the latent's std at 10, 20, 40 steps).
    Tolerances: eps under 2% at 40 steps; the v model's eps is far from constant (its
    denoiser is close to x / (1 + sigma^2)), so 30%; and 4x the steps must cut the error
    by more than 40%, which a wrong schedule, scaling or step pairing does not do."""
    model = tiny_models.tiny_model(seed=0, prediction=prediction, output_scale=0.01)
    coarse = reconstruction_error(node, model, cond, 10)
    fine = reconstruction_error(node, model, cond, 40)
    assert fine < tolerance
    assert fine < 0.6 * coarse


def test_inversion_output(node, smooth_model, cond):
    lat = latent(2)
    inversion, noisy = invert(node, smooth_model, lat, cond, steps=8)
    assert inversion.trajectory.shape == (9, 1, 4, 16, 24)
    assert inversion.sigmas[-1] == 0 and bool((inversion.sigmas[:-1] > inversion.sigmas[1:]).all())
    scale = smooth_model.model.latent_format.scale_factor
    # trajectory is in model space; the LATENT outputs are in VAE space
    assert torch.allclose(inversion.clean, lat["samples"] * scale, atol=1e-5)
    assert torch.allclose(noisy["samples"] * scale, inversion.noisy, atol=1e-4)
    assert (inversion.noisy - inversion.clean).abs().max() > 1e-2


def attn1_keys(model):
    return set(model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {}))


# Tiny UNet: output blocks 0-1 at latent/4, 2-3 at latent/2, 4-5 at latent/1 (two transformers).
FINEST_TWO = {("output", 2, 0), ("output", 3, 0), ("output", 4, 0), ("output", 4, 1), ("output", 5, 0), ("output", 5, 1)}


def test_patch_selects_decoder_levels_and_leaves_input_model(node, tiny_model, cond):
    before = copy.deepcopy(tiny_model.model_options)
    appearance, _ = invert(node, tiny_model, latent(3), cond, steps=4)
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.15, 1.0)
    assert attn1_keys(patched) == FINEST_TWO
    (coarse,) = node("CrossImageAttention").execute(tiny_model, appearance, "2", 0.15, 1.0)
    assert attn1_keys(coarse) == {("output", 0, 0), ("output", 1, 0)}
    assert tiny_model.model_options == before and attn1_keys(tiny_model) == set()


def record_attention(model, pack):
    """Instrument every attn1 of a patched model: which block ran at which step, through the
    cross-image replacement or not, and whether its output differs from plain attention."""
    import comfy.ldm.modules.attention as attention
    step_index = pack.core.schedule.step_index
    calls = []

    def step(options):
        return step_index(options["sample_sigmas"], float(options["sigmas"].max()))

    def every_attn1(n, context, value, options):
        calls.append(("any", options["block"] + (options["block_index"],), step(options), n.shape[0]))
        return n, context, value

    def wrap(key, replace):
        @functools.wraps(replace)  # says it wraps the cross-image replacement (the sampler checks)
        def recorded(q, k, v, options):
            out = replace(q, k, v, options)
            plain = attention.optimized_attention(q, k, v, options["n_heads"])
            calls.append(("replace", key, step(options), not torch.allclose(out, plain, atol=1e-6)))
            return out
        return recorded

    model = model.clone()
    model.set_model_attn1_patch(every_attn1)
    replaces = model.model_options["transformer_options"]["patches_replace"]["attn1"]
    for key in list(replaces):
        replaces[key] = wrap(key, replaces[key])
    return model, calls


def test_keys_values_swapped_exactly_in_chosen_layers_and_steps(node, pack, tiny_model, cond):
    structure, _ = invert(node, tiny_model, latent(4), cond, steps=10)
    appearance, _ = invert(node, tiny_model, latent(5), cond, steps=10)
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.3, 0.8)
    instrumented, calls = record_attention(patched, pack)
    node("CrossImageSampler").execute(instrumented, cond, structure, "euler", 1.0)

    all_layers = {key for kind, key, _, _ in calls if kind == "any"}
    assert len(all_layers) == 4 + 1 + 8  # encoder, middle, decoder attn1 layers (transformer indices counted)
    # output and appearance every step; the structure (injected at step 5) from the swap's start,
    # while it equals the output before it, to the last injection step
    rows = {step: rows for kind, _, step, rows in calls if kind == "any"}
    assert rows == {step: 3 if 3 <= step <= 5 else 2 for step in range(10)}
    replaced = {(key, step) for kind, key, step, _ in calls if kind == "replace"}
    assert {key for key, _ in replaced} == FINEST_TWO
    swapped = {(key, step) for kind, key, step, differs in calls if kind == "replace" and differs}
    assert swapped == {(key, step) for key in FINEST_TWO for step in range(3, 8)}


def test_the_guider_decides_each_call_and_every_patched_layer_follows_it(node, pack, tiny_model, cond, monkeypatch):
    """One plan per model call, made by the guider and handed to every patched layer of that
    call: swap on steps 3-7 of 10 (start 0.3, end 0.8), from the structure on the one injection
    step inside the swap (step 5: every 5th step before round(0.59 * 10) = 6), with the node's
    contrast, in chunks a quarter of the device's free memory holds; the structure rows from the
    swap's start to that step."""
    import comfy.model_management
    free = 8 << 30
    monkeypatch.setattr(comfy.model_management, "get_free_memory",
                        lambda device=None, torch_free_too=False: (free, free) if torch_free_too else free)
    plan_key = pack.nodes.attention_patch.PLAN_KEY
    structure, _ = invert(node, tiny_model, latent(4), cond, steps=10)
    appearance, _ = invert(node, tiny_model, latent(5), cond, steps=10)
    contrast = node("CrossImageAttentionContrast").execute(1.5)[0]
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.3, 0.8, contrast)
    plans = {}
    replaces = patched.model_options["transformer_options"]["patches_replace"]["attn1"]
    for key, replace in list(replaces.items()):
        @functools.wraps(replace)
        def seen(q, k, v, options, key=key, replace=replace):
            plans.setdefault(options[plan_key].step, {})[key] = options[plan_key]
            return replace(q, k, v, options)
        replaces[key] = seen
    node("CrossImageSampler").execute(patched, cond, structure, "euler", 1.0)
    assert sorted(plans) == list(range(10))
    for step, by_layer in plans.items():
        assert set(by_layer) == FINEST_TWO and len({id(plan) for plan in by_layer.values()}) == 1
        plan = next(iter(by_layer.values()))
        assert plan.swap == (3 <= step <= 7) and plan.from_structure == (step == 5) and plan.contrast == 1.5
        # 2 GiB of float32 scores and their softmax: 2^28 probabilities (else the least chunk)
        assert plan.contrast_budget == (1 << 28 if plan.swap else pack.core.contrast.LEAST_BUDGET)
        assert (plan.layout.n_outputs, plan.layout.n_appearances, plan.layout.n_structures) == \
            (1, 1, 1 if 3 <= step <= 5 else 0)


def test_a_patched_model_outside_the_cross_image_sampler_is_an_error(node, pack, tiny_model, cond):
    """In a plain KSampler (or an Invert node) the patched layers would silently be plain ones."""
    import comfy.sample
    appearance, _ = invert(node, tiny_model, latent(5), cond, steps=3)
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0", 0.0, 1.0)
    lat = latent(6)["samples"]
    with pytest.raises(RuntimeError, match="patched by Cross-Image Attention, which only the Cross-Image Sampler can run"):
        comfy.sample.sample(patched, torch.zeros_like(lat), 2, 1.0, "euler", "normal", cond, cond, lat)


def assert_same_up_to_batching(a, b):
    """Equal up to float rounding that differs between batch sizes (values here are ~10)."""
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("method, sampler_name, change", [("ddim", "euler", 1.0), ("ddpm", "ddpm", 1e-2)])
def test_appearance_equal_to_structure_gives_the_unpatched_output(node, tiny_model, cond, method, sampler_name, change):
    """For DDPM inversions this also shows each batch row replays the right noise maps: the
    output rows the structure's, the appearance rows their own."""
    def inverted(seed):
        if method == "ddim":
            return invert(node, tiny_model, latent(seed), cond, steps=6)[0]
        return invert_ddpm(node, tiny_model, latent(seed), cond, seed=seed)[0]
    structure = inverted(6)
    (plain,) = node("CrossImageSampler").execute(tiny_model, cond, structure, sampler_name, 1.0)
    (patched,) = node("CrossImageAttention").execute(tiny_model, structure, "0,1,2", 0.0, 1.0)
    (same,) = node("CrossImageSampler").execute(patched, cond, structure, sampler_name, 1.0)
    assert_same_up_to_batching(same["samples"], plain["samples"])
    (patched_other,) = node("CrossImageAttention").execute(tiny_model, inverted(7), "0,1,2", 0.0, 1.0)
    (changed,) = node("CrossImageSampler").execute(patched_other, cond, structure, sampler_name, 1.0)
    assert (changed["samples"] - plain["samples"]).abs().max() > change


def test_batches_of_structures_share_or_pair_appearances(node, tiny_model, cond):
    structures, _ = invert(node, tiny_model, latent(8, batch=2), cond, steps=4)
    for n_appearance in (1, 2):
        appearance, _ = invert(node, tiny_model, latent(9, batch=n_appearance), cond, steps=4)
        (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.0, 1.0)
        (out,) = node("CrossImageSampler").execute(patched, cond, structures, "euler", 1.0)
        assert out["samples"].shape == (2, 4, 16, 24)
    # output i with appearance batch 2 uses appearance i: equals a single pair run
    single, _ = invert(node, tiny_model, {"samples": latent(8, batch=2)["samples"][1:]}, cond, steps=4)
    app_one, _ = invert(node, tiny_model, {"samples": latent(9, batch=2)["samples"][1:]}, cond, steps=4)
    (patched_one,) = node("CrossImageAttention").execute(tiny_model, app_one, "0,1", 0.0, 1.0)
    (pair,) = node("CrossImageSampler").execute(patched_one, cond, single, "euler", 1.0)
    assert_same_up_to_batching(out["samples"][1:], pair["samples"])


def test_input_model_weights_and_options_unchanged(node, tiny_model, cond):
    options = copy.deepcopy(tiny_model.model_options)
    weights = {k: v.clone() for k, v in tiny_model.model.state_dict().items()}
    structure, _ = invert(node, tiny_model, latent(10), cond, steps=4)
    (patched,) = node("CrossImageAttention").execute(tiny_model, structure, "0,1", 0.0, 1.0)
    node("CrossImageSampler").execute(patched, cond, structure, "euler", 1.0)
    assert tiny_model.model_options == options
    assert all(torch.equal(v, weights[k]) for k, v in tiny_model.model.state_dict().items())


def test_bad_inputs_are_named(node, tiny_model, cond):
    inversion, _ = invert(node, tiny_model, latent(11), cond, steps=4)
    attention = node("CrossImageAttention")
    with pytest.raises(ValueError, match="levels: this model's decoder has attention at 3"):
        attention.execute(tiny_model, inversion, "0,3", 0.1, 1.0)
    with pytest.raises(ValueError, match="levels: expected .auto. or comma-separated"):
        attention.execute(tiny_model, inversion, "fine", 0.1, 1.0)
    with pytest.raises(ValueError, match="start/end"):
        attention.execute(tiny_model, inversion, "0", 0.9, 0.5)
    with pytest.raises(ValueError, match="appearance: expected an inversion"):
        attention.execute(tiny_model, {"samples": torch.zeros(1)}, "0", 0.1, 1.0)
    other_model = tiny_models.tiny_model(seed=1, channel_mult=(1, 2))
    with pytest.raises(ValueError, match="appearance: this inversion was made with a different model"):
        attention.execute(other_model, inversion, "0", 0.1, 1.0)
    with pytest.raises(ValueError, match="structure: this inversion was made with a different model"):
        node("CrossImageSampler").execute(other_model, cond, inversion, "euler", 1.0)
    longer, _ = invert(node, tiny_model, latent(12), cond, steps=6)
    (patched,) = attention.execute(tiny_model, longer, "0", 0.1, 1.0)
    with pytest.raises(ValueError, match="different schedules"):
        node("CrossImageSampler").execute(patched, cond, inversion, "euler", 1.0)
    with pytest.raises(ValueError, match="negative: a negative conditioning is required"):
        node("CrossImageSampler").execute(tiny_model, cond, inversion, "euler", 3.0)
    with pytest.raises(ValueError, match="negative"):
        node("CrossImageInvertDDIM").execute(tiny_model, latent(1), cond, 4, "normal", 2.0)


def test_cfg_with_negative_runs(node, tiny_model, cond):
    negative = tiny_models.conditioning(5)
    inversion, _ = node("CrossImageInvertDDIM").execute(tiny_model, latent(13), cond, 3, "normal", 2.0, negative)
    (out,) = node("CrossImageSampler").execute(tiny_model, cond, inversion, "euler", 2.0, negative)
    assert torch.isfinite(out["samples"]).all()


def test_adain_image_node(node):
    g = torch.Generator().manual_seed(0)
    image = 0.5 + 0.05 * torch.randn(2, 16, 12, 3, generator=g)
    reference = 0.4 + 0.1 * torch.randn(1, 20, 10, 3, generator=g)
    (out,) = node("CrossImageAdaINImage").execute(image, reference)
    assert out.shape == image.shape
    assert torch.allclose(out.mean(dim=(1, 2)), reference.mean(dim=(1, 2)).expand(2, 3), atol=1e-4)
    assert torch.allclose(out.std(dim=(1, 2)), reference.std(dim=(1, 2)).expand(2, 3), atol=1e-3)
    mask = torch.zeros(2, 16, 12)
    mask[:, :8] = 1
    (masked,) = node("CrossImageAdaINImage").execute(image, reference, image_mask=mask)
    assert torch.equal(masked[:, 8:], image[:, 8:])
    assert torch.allclose(masked[:, :8].mean(dim=(1, 2)), reference.mean(dim=(1, 2)).expand(2, 3), atol=1e-4)
    with pytest.raises(ValueError, match="image_mask"):
        node("CrossImageAdaINImage").execute(image, reference, image_mask=torch.zeros(2, 16, 12))
    with pytest.raises(ValueError, match="reference_mask: mask of shape"):
        node("CrossImageAdaINImage").execute(image, reference, reference_mask=torch.ones(16, 12))
    with pytest.raises(ValueError, match="reference: batch of 3"):
        node("CrossImageAdaINImage").execute(image, reference.expand(3, -1, -1, -1))


def test_inversion_reports_progress_and_stops_on_interrupt(node, tiny_model, cond):
    import comfy.model_management
    import comfy.utils
    import nodes as comfy_nodes_module
    seen = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        invert(node, tiny_model, latent(14), cond, steps=5)
        # ComfyUI 0.33.0's ProgressBar drops updates closer than 100 ms apart but always sends
        # the first and the last: those, rising, of 5 steps
        values = [value for value, _ in seen]
        assert values[0] == 1 and values[-1] == 5 and values == sorted(set(values))
        assert {total for _, total in seen} == {5}
        comfy_nodes_module.interrupt_processing(True)
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            invert(node, tiny_model, latent(14), cond, steps=5)
    finally:
        comfy_nodes_module.interrupt_processing(False)
        comfy.utils.set_progress_bar_global_hook(None)
    assert attn1_keys(tiny_model) == set()


def naive_attention(q, k, v, heads, strength=1.0):
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    a = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)
    a = torch.clamp((a - 1 / k.shape[2]) * strength + 1 / k.shape[2], 0, 1)
    return (a @ v).transpose(1, 2).reshape(b, n, inner)


@pytest.mark.parametrize("strength", [1.0, 1.67])
def test_patched_layer_applies_contrast_to_output_rows_only(node, pack, tiny_model, strength):
    """One patched attn1 call on a cond+uncond batch [out0, out1, app] x 2, against the
    definition: outputs attend to their chunk's appearance with contrast, appearances to
    themselves without."""
    inversion, _ = invert(node, tiny_model, latent(15), tiny_models.conditioning(0), steps=4)
    (settings,) = node("CrossImageAttentionContrast").execute(strength)
    (patched,) = node("CrossImageAttention").execute(tiny_model, inversion, "0", 0.0, 1.0, settings)
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn1"][("output", 4, 0)]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 20, 16, generator=g) for _ in range(3))
    patch = pack.nodes.attention_patch
    options = {"n_heads": 2, "attn_precision": None,
               patch.PLAN_KEY: patch.CallPlan(step=1, layout=patch.BatchLayout(2, 1), swap=True, contrast=strength)}
    out = replace(q, k, v, options)
    for chunk in (0, 3):
        app = chunk + 2
        for row in (chunk, chunk + 1):
            expected = naive_attention(q[row:row + 1], k[app:app + 1], v[app:app + 1], 2, strength)
            assert torch.allclose(out[row:row + 1], expected, atol=1e-5)
        assert torch.allclose(out[app:app + 1], naive_attention(q[app:app + 1], k[app:app + 1], v[app:app + 1], 2), atol=1e-5)


def test_contrast_strength_one_equals_no_contrast_and_1_67_changes_the_output(node, tiny_model, cond):
    structure, _ = invert(node, tiny_model, latent(16), cond, steps=5)
    appearance, _ = invert(node, tiny_model, latent(17), cond, steps=5)
    results = []
    for contrast in (None, 1.0, 1.67):
        settings = None if contrast is None else node("CrossImageAttentionContrast").execute(contrast)[0]
        (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.0, 1.0, settings)
        results.append(node("CrossImageSampler").execute(patched, cond, structure, "euler", 1.0)[0]["samples"])
    assert torch.equal(results[0], results[1])
    assert (results[2] - results[0]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="strength"):
        node("CrossImageAttentionContrast").execute(-1.0)
    with pytest.raises(ValueError, match="contrast: expected settings"):
        node("CrossImageAttention").execute(tiny_model, appearance, "0", 0.0, 1.0, 1.67)


@pytest.mark.parametrize("from_structure", [True, False])
def test_structure_injection_steps_take_the_structure_keys(node, pack, tiny_model, from_structure):
    """Batch [out0, app, str0] x 2: on an injection step the output row takes the structure
    row's keys and values, on other steps the appearance's."""
    inversion, _ = invert(node, tiny_model, latent(18), tiny_models.conditioning(0), steps=4)
    (patched,) = node("CrossImageAttention").execute(tiny_model, inversion, "0", 0.0, 1.0, None, 5, 0.75)
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn1"][("output", 5, 1)]
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(6, 12, 16, generator=g) for _ in range(3))
    patch = pack.nodes.attention_patch
    options = {"n_heads": 2, "attn_precision": None,
               patch.PLAN_KEY: patch.CallPlan(step=5, layout=patch.BatchLayout(1, 1, 1), swap=True,
                                              from_structure=from_structure)}
    out = replace(q, k, v, options)
    for chunk in (0, 3):
        source = chunk + (2 if from_structure else 1)
        expected = naive_attention(q[chunk:chunk + 1], k[source:source + 1], v[source:source + 1], 2)
        assert torch.allclose(out[chunk:chunk + 1], expected, atol=1e-5)
        for own in (chunk + 1, chunk + 2):
            assert torch.allclose(out[own:own + 1], naive_attention(q[own:own + 1], k[own:own + 1], v[own:own + 1], 2), atol=1e-5)


def test_structure_injection_off_keeps_a_batch_of_two(node, pack, tiny_model, cond):
    structure, _ = invert(node, tiny_model, latent(19), cond, steps=3)
    (patched,) = node("CrossImageAttention").execute(tiny_model, structure, "0", 0.0, 1.0, None, 0, 0.59)
    instrumented, calls = record_attention(patched, pack)
    node("CrossImageSampler").execute(instrumented, cond, structure, "euler", 1.0)
    assert {rows for kind, _, _, rows in calls if kind == "any"} == {2}
    with pytest.raises(ValueError, match=r"structure_every: must be a number in \[0, 1000\], got -1"):
        node("CrossImageAttention").execute(tiny_model, structure, "0", 0.0, 1.0, None, -1, 0.59)


def guidance(node, scale, end_scale, start):
    return node("CrossImageAppearanceGuidance").execute(scale, end_scale, start)[0]


def test_appearance_guidance_runs_the_plain_pass_on_output_rows_on_guided_steps(node, pack, tiny_model, cond):
    structure, _ = invert(node, tiny_model, latent(20, batch=2), cond, steps=10)
    appearance, _ = invert(node, tiny_model, latent(21), cond, steps=10)
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.0, 1.0, None, 0, 0.0)
    instrumented, calls = record_attention(patched, pack)
    node("CrossImageSampler").execute(instrumented, cond, structure, "euler", 1.0, None, guidance(node, 3.5, 1.75, 0.3))
    middle = [(step, rows) for kind, key, step, rows in calls if kind == "any" and key[0] == "middle"]
    # one call per step: 2 outputs + 1 appearance, and on guided steps 2 plain copies of the outputs
    assert middle == [(i, 3) for i in range(3)] + [(i, 5) for i in range(3, 10)]


def test_appearance_guidance_limits(node, tiny_model, cond):
    """Scale 1 is the cross-image prediction itself; scale 0 from step 0 is the plain model."""
    structure, _ = invert(node, tiny_model, latent(22), cond, steps=5)
    appearance, _ = invert(node, tiny_model, latent(23), cond, steps=5)
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.0, 1.0, None, 0, 0.0)
    sample = node("CrossImageSampler").execute
    (unguided,) = sample(patched, cond, structure, "euler", 1.0)
    (one,) = sample(patched, cond, structure, "euler", 1.0, None, guidance(node, 1.0, 1.0, 0.0))
    assert_same_up_to_batching(one["samples"], unguided["samples"])
    (zero,) = sample(patched, cond, structure, "euler", 1.0, None, guidance(node, 0.0, 0.0, 0.0))
    (plain,) = sample(tiny_model, cond, structure, "euler", 1.0)
    assert_same_up_to_batching(zero["samples"], plain["samples"])
    (paper,) = sample(patched, cond, structure, "euler", 1.0, None, guidance(node, 3.5, 1.75, 0.0))
    assert (paper["samples"] - unguided["samples"]).abs().max() > 1.0
    with pytest.raises(ValueError, match="guidance: needs a model from Cross-Image Attention"):
        sample(tiny_model, cond, structure, "euler", 1.0, None, guidance(node, 3.5, 1.75, 0.0))
    with pytest.raises(ValueError, match="end_scale"):
        node("CrossImageAppearanceGuidance").execute(3.5, -1.0, 0.1)


def test_latent_adain_after_the_last_step_only(node, pack, tiny_model, cond):
    """With the range holding only the last step, sampling is unchanged and the result is
    AdaIN(output, appearance) of the final latents; one step earlier changes the trajectory."""
    structure, _ = invert(node, tiny_model, latent(24), cond, steps=10)
    appearance, _ = invert(node, tiny_model, latent(25), cond, steps=10)
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.0, 1.0, None, 0, 0.0)
    sample = node("CrossImageSampler").execute
    (output,) = sample(patched, cond, structure, "euler", 1.0)
    (appearance_final,) = sample(tiny_model, cond, appearance, "euler", 1.0)
    last = node("CrossImageLatentAdaIN").execute(0.9, 1.0)[0]
    (matched,) = sample(patched, cond, structure, "euler", 1.0, None, None, last)
    expected = pack.core.adain.adain(output["samples"], appearance_final["samples"])
    assert_same_up_to_batching(matched["samples"], expected)
    two_last = node("CrossImageLatentAdaIN").execute(0.8, 1.0)[0]
    (earlier,) = sample(patched, cond, structure, "euler", 1.0, None, None, two_last)
    assert (earlier["samples"] - matched["samples"]).abs().max() > 1e-2


def test_masked_latent_adain_statistics(node, pack, tiny_model, cond):
    structure, _ = invert(node, tiny_model, latent(26), cond, steps=6)
    appearance, _ = invert(node, tiny_model, latent(27), cond, steps=6)
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.0, 1.0, None, 0, 0.0)
    structure_mask = torch.zeros(1, 128, 192)
    structure_mask[:, :64] = 1  # top half of the image = top 8 of 16 latent rows
    appearance_mask = torch.zeros(1, 128, 192)
    appearance_mask[:, :, 96:] = 1  # right half
    settings = node("CrossImageLatentAdaIN").execute(0.0, 1.0, structure_mask, appearance_mask)[0]
    (out,) = node("CrossImageSampler").execute(patched, cond, structure, "euler", 1.0, None, None, settings)
    (appearance_final,) = node("CrossImageSampler").execute(tiny_model, cond, appearance, "euler", 1.0)
    inside = out["samples"][:, :, :8].flatten(2)
    reference = appearance_final["samples"][:, :, :, 12:].flatten(2)
    torch.testing.assert_close(inside.mean(-1), reference.mean(-1), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(inside.std(-1), reference.std(-1), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="structure_mask: the mask is empty"):
        node("CrossImageLatentAdaIN").execute(0.0, 1.0, torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="latent_adain: needs a model from Cross-Image Attention"):
        node("CrossImageSampler").execute(tiny_model, cond, structure, "euler", 1.0, None, None, settings)


def invert_ddpm(node, model, lat, cond, steps=12, skip=4, seed=0, cfg=1.0, negative=None):
    return node("CrossImageInvertDDPM").execute(model, lat, cond, steps, "ddim_uniform", cfg, skip, seed, negative)


def test_ddpm_inversion_is_retraced_exactly_by_comfyuis_ddpm_sampler(node, tiny_model, cond):
    """The noise maps make ComfyUI's ddpm sampler land on every stored latent, even with a
    random (chaotic) model; the last step has no noise and ends at its mean."""
    lat = latent(28, batch=2)
    inversion, noisy = invert_ddpm(node, tiny_model, lat, cond)
    full = node("CrossImageInvertDDIM").execute(tiny_model, lat, cond, 12, "ddim_uniform", 1.0)[0].sigmas
    n = full.shape[0] - 4
    assert torch.equal(inversion.sigmas, full[4:]) and inversion.trajectory.shape == (n, 2, 4, 16, 24)
    assert inversion.noise.shape == (n - 1, 2, 4, 16, 24) and not inversion.noise[-1].any()
    (out,) = node("CrossImageSampler").execute(tiny_model, cond, inversion, "ddpm", 1.0)
    scale = tiny_model.model.latent_format.scale_factor
    torch.testing.assert_close(out["samples"] * scale, inversion.trajectory[-1], rtol=1e-4, atol=1e-4)
    # every x_i before the last is an independent draw around the image: x_i - x0 = sigma_i n_i
    spread = (inversion.trajectory[:-1] - lat["samples"] * scale).flatten(1).std(1) / inversion.sigmas[:-1]
    torch.testing.assert_close(spread, torch.ones_like(spread), rtol=0.05, atol=0.05)


def test_ddpm_inversion_with_guidance_retraces_with_the_same_guidance(node, tiny_model, cond):
    negative = tiny_models.conditioning(9)
    inversion, _ = invert_ddpm(node, tiny_model, latent(29), cond, cfg=3.5, negative=negative)
    (same,) = node("CrossImageSampler").execute(tiny_model, cond, inversion, "ddpm", 3.5, negative)
    scale = tiny_model.model.latent_format.scale_factor
    # float32 round-off in each step's latent is amplified once (not compounded: the next noise
    # map lands on the stored latent again) by the random model's eps times cfg 3.5: seen 1e-3
    torch.testing.assert_close(same["samples"] * scale, inversion.trajectory[-1], rtol=0, atol=3e-3)


def test_ddpm_inversion_seeds_and_errors(node, tiny_model, cond):
    a, _ = invert_ddpm(node, tiny_model, latent(30), cond, seed=1)
    b, _ = invert_ddpm(node, tiny_model, latent(30), cond, seed=1)
    c, _ = invert_ddpm(node, tiny_model, latent(30), cond, seed=2)
    assert torch.equal(a.noise, b.noise) and not torch.equal(a.noise, c.noise)
    with pytest.raises(ValueError, match="sampler_name: euler does not retrace an edit-friendly DDPM inversion .*; use ddpm"):
        node("CrossImageSampler").execute(tiny_model, cond, a, "euler", 1.0)
    with pytest.raises(ValueError, match="skip: must be less than the 10 steps the ddim_uniform scheduler gives"):
        invert_ddpm(node, tiny_model, latent(30), cond, steps=10, skip=10)
    ddim, _ = node("CrossImageInvertDDIM").execute(tiny_model, latent(31), cond, 12, "ddim_uniform", 1.0)
    (patched,) = node("CrossImageAttention").execute(tiny_model, ddim, "0", 0.0, 1.0)
    with pytest.raises(ValueError, match="structure was inverted with DDPM but appearance with DDIM"):
        node("CrossImageSampler").execute(patched, cond, a, "ddpm", 1.0)


def test_samplers_that_do_not_retrace_the_inversion_are_refused_and_nothing_changes(node, pack, tiny_model, cond):
    """Every sampler ComfyUI lists: those that retrace the inversion run, the others (multistep,
    ancestral, SDE, CFG++, UniPC ...) are refused naming the ones that fit; neither changes the
    inversion (UniPC wrote its last sigma into the schedule it was handed)."""
    import comfy.samplers
    ddim, _ = invert(node, tiny_model, latent(32), cond, steps=3)
    ddpm, _ = invert_ddpm(node, tiny_model, latent(32), cond, steps=4, skip=1)
    (patched,) = node("CrossImageAttention").execute(tiny_model, ddim, "0", 0.0, 1.0)
    for inversion, fits, model in ((ddim, {"euler", "ddim"}, patched), (ddpm, {"ddpm"}, tiny_model)):
        before = [t.clone() for t in (inversion.sigmas, inversion.trajectory)]
        for name in comfy.samplers.SAMPLER_NAMES:
            if name in fits:
                (out,) = node("CrossImageSampler").execute(model, cond, inversion, name, 1.0)
                assert torch.isfinite(out["samples"]).all()
            else:
                with pytest.raises(ValueError, match=f"sampler_name: {name} does not retrace .*; use "):
                    node("CrossImageSampler").execute(model, cond, inversion, name, 1.0)
        assert all(torch.equal(a, b) for a, b in zip(before, (inversion.sigmas, inversion.trajectory)))
    # the schedule a sampler is handed is a copy: UniPC's write does not reach the inversion
    schedule = ddim.sigmas.clone()
    guider = pack.nodes.guided_sampling.make_guider(tiny_model, cond, None, 1.0)
    pack.nodes.guided_sampling.run_sampler(guider, comfy.samplers.sampler_object("uni_pc"), ddim.sigmas, ddim.noisy)
    assert torch.equal(ddim.sigmas, schedule)


def test_inversions_remember_the_exact_model(node, tiny_model, cond):
    """Another fine-tune of the same architecture, the same model with a LoRA-like weight
    patch, or a v-prediction twin are each a different model; loading the patched model (which
    writes its patches into the weights) does not change what it is."""
    import comfy.model_management
    inversion, _ = invert(node, tiny_model, latent(33), cond, steps=3)
    key = "diffusion_model.output_blocks.2.1.transformer_blocks.0.attn1.to_q.weight"
    patched = tiny_model.clone()
    weight = tiny_model.model.state_dict()[key]
    assert patched.add_patches({key: (torch.ones_like(weight),)}, 0.5) == [key]
    others = {"another fine-tune": tiny_models.tiny_model(seed=7), "a LoRA-patched model": patched}
    for what, other in others.items():
        with pytest.raises(ValueError, match="structure: this inversion was made with a different model than the "
                                             r"one connected here: other weights \(another checkpoint"):
            node("CrossImageSampler").execute(other, cond, inversion, "euler", 1.0)
    v_twin = tiny_models.tiny_model(seed=0, prediction="v")
    with pytest.raises(ValueError, match="appearance: .* another kind of model"):
        node("CrossImageAttention").execute(v_twin, inversion, "0", 0.0, 1.0)
    made_with_patch, _ = invert(node, patched, latent(33), cond, steps=3)
    comfy.model_management.load_models_gpu([patched])  # the patch is now in the loaded weights
    (out,) = node("CrossImageSampler").execute(patched, cond, made_with_patch, "euler", 1.0)
    assert torch.isfinite(out["samples"]).all()
    with pytest.raises(ValueError, match="other weights"):
        node("CrossImageSampler").execute(tiny_model, cond, made_with_patch, "euler", 1.0)


def test_auto_levels_are_the_paper_grids_for_this_image(node, pack, tiny_model, cond):
    """'auto' (the default) asks core.levels.paper_levels with the appearance latent's size: on the
    tiny UNet (attention at latent/1, /2, /4) a 16x24 latent has grids of 20, 10 and 5 tokens a
    side, all below 32, so the finest level; a 64x64 latent (64, 32, 16) gives the paper's 0,1."""
    small, _ = invert(node, tiny_model, latent(34), cond, steps=2)
    (patched,) = node("CrossImageAttention").execute(tiny_model, small, "auto", 0.0, 1.0)
    assert attn1_keys(patched) == {("output", 4, 0), ("output", 4, 1), ("output", 5, 0), ("output", 5, 1)}
    large, _ = invert(node, tiny_model, latent(35, height=64, width=64), cond, steps=1)
    (patched,) = node("CrossImageAttention").execute(tiny_model, large, "auto", 0.0, 1.0)
    assert attn1_keys(patched) == FINEST_TWO
    with pytest.raises(ValueError, match="levels: expected 'auto' or comma-separated"):
        node("CrossImageAttention").execute(tiny_model, small, "fine", 0.0, 1.0)
