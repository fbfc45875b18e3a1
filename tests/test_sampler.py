"""Cross-Image Sampler: which layers swap at which steps, the plan of each model call, the samplers it
runs, the models it accepts."""
import functools

import pytest
import torch

import tiny_models
from helpers import (FINEST_TWO, assert_same_up_to_batching, invert, invert_ddpm, latent, record_attention,
                     tiny_controlnet)


def test_keys_values_swapped_exactly_in_chosen_layers_and_steps(node, pack, tiny_model, cond):
    structure, _ = invert(node, tiny_model, latent(4), cond, steps=10)
    appearance, _ = invert(node, tiny_model, latent(5), cond, steps=10)
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.3, 0.8)
    instrumented, calls = record_attention(patched, pack.core.schedule.step_index)
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
    plan_key = pack.nodes.sampling.patch.PLAN_KEY
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
        assert (plan.rows.outputs, plan.rows.appearances, plan.rows.structures) == \
            (1, 1, 1 if 3 <= step <= 5 else 0)


def test_a_patched_model_outside_the_cross_image_sampler_is_an_error(node, pack, tiny_model, cond):
    """In a plain KSampler (or an Invert node) the patched layers would silently be plain ones."""
    import comfy.sample
    appearance, _ = invert(node, tiny_model, latent(5), cond, steps=3)
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0", 0.0, 1.0)
    lat = latent(6)["samples"]
    with pytest.raises(RuntimeError, match="patched by Cross-Image Attention, which only the Cross-Image Sampler can "
                                           "run"):
        comfy.sample.sample(patched, torch.zeros_like(lat), 2, 1.0, "euler", "normal", cond, cond, lat)


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


def test_cfg_with_negative_runs(node, tiny_model, cond):
    negative = tiny_models.conditioning(5)
    inversion, _ = node("CrossImageInvertDDIM").execute(tiny_model, latent(13), cond, 3, "normal", 2.0, negative)
    (out,) = node("CrossImageSampler").execute(tiny_model, cond, inversion, "euler", 2.0, negative)
    assert torch.isfinite(out["samples"]).all()


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
    guider = pack.nodes.sampling.runner.make_guider(tiny_model, cond, None, 1.0)
    pack.nodes.sampling.runner.run_sampler(guider, comfy.samplers.sampler_object("uni_pc"), ddim.sigmas, ddim.noisy)
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


def test_the_guider_the_patch_the_control_and_the_regions_read_one_row_layout(node, pack, tiny_model, cond,
                                                                                 monkeypatch):
    """A transfer with everything that depends on the rows: structure injection, appearance
    guidance's plain rows, a ControlNet on the prompt, a structure mask (regions) and latent
    AdaIN. Each model call's rows (core.rows.CallRows) are one object, the call plan's: the guider
    joins and splits the batch with it, the patched layers and the region blend take their key
    and value sources from it, the control wrapper its output rows."""
    rows_class = pack.core.rows.CallRows
    used = {}
    for method in ("join", "split", "kv_sources", "output_rows"):
        original = getattr(rows_class, method)

        def recorded(self, *args, _original=original, _method=method, **kwargs):
            used.setdefault(id(self), (self, set()))[1].add(_method if "appearance" not in kwargs or
                                                           kwargs["appearance"] is None else "regions")
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(rows_class, method, recorded)
    plans = []
    attend = pack.nodes.sampling.patch.attend

    def seen(site, q, k, v, options, *args, **kwargs):
        plans.append(options[pack.nodes.sampling.patch.PLAN_KEY])
        return attend(site, q, k, v, options, *args, **kwargs)
    monkeypatch.setattr(pack.nodes.sampling.unet, "attend", seen)

    structure, _ = invert(node, tiny_model, latent(60), cond, steps=8)
    appearance, _ = invert(node, tiny_model, latent(61), cond, steps=8)
    hint = torch.rand(1, 3, 128, 192, generator=torch.Generator().manual_seed(2))
    controlled = [[cond[0][0], {**cond[0][1], "control": tiny_controlnet(tiny_model, 4).set_cond_hint(hint, 1.0)}]]
    mask = torch.zeros(1, 128, 192)
    mask[:, :64] = 1
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.2, 1.0, None, 3, 0.9, mask)
    guidance = node("CrossImageAppearanceGuidance").execute(2.0, 1.5, 0.2)[0]
    adain = node("CrossImageLatentAdaIN").execute(0.5, 1.0)[0]
    node("CrossImageSampler").execute(patched, controlled, structure, "euler", 1.0, None, guidance, adain)

    calls = {id(plan.rows): plan for plan in plans}
    assert len(calls) == structure.steps  # one plan, and one CallRows, per model call
    for key, plan in calls.items():
        rows, methods = used[key]
        assert rows is plan.rows
        expected = {"join", "split", "output_rows"} | ({"regions"} if plan.regions is not None else
                                                       {"kv_sources"} if plan.swap else set())
        assert methods == expected, (plan.step, methods)
    assert {plan.rows.structures for plan in calls.values()} == {0, 1}  # injection on steps 3 and 6
    assert any(plan.rows.plain for plan in calls.values()) and any(plan.regions is not None for plan in calls.values())
    assert {id(rows) for rows, _ in used.values()} == set(calls)  # no other layout was consulted


def test_levels_with_empty_items_are_refused(node, tiny_model, cond):
    appearance, _ = invert(node, tiny_model, latent(62), cond, steps=2)
    for levels in ("0,,1", "0,1,", ",0", " , "):
        with pytest.raises(ValueError, match="levels: expected 'auto' or comma-separated level numbers"):
            node("CrossImageAttention").execute(tiny_model, appearance, levels, 0.0, 1.0)
    with pytest.raises(ValueError, match="levels: choose at least one decoder level"):
        node("CrossImageAttention").execute(tiny_model, appearance, " ", 0.0, 1.0)
