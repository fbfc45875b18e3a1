"""The pack beside other nodes' attention patches: the attention implementation another node
selected runs in the patched layers, and patches that would overwrite each other are refused
with an error naming the conflict."""
import pytest
import torch

from helpers import FINEST_TWO, invert, latent, tiny_controlnet


@pytest.fixture(scope="module")
def pair(node, tiny_model, cond):
    return tuple(invert(node, tiny_model, latent(seed), cond, steps=4)[0] for seed in (40, 41))


def with_attention_override(model, seen):
    """A clone whose transformer_options select another attention implementation, as packs like
    SageAttention do (the key 0.33.0's ModelPatcher.set_model_optimized_attention sets; 0.3.75's
    attention functions honour it too). It records the layers it ran in, then runs ComfyUI's own."""
    clone = model.clone()

    def override(attention, *args, **kwargs):
        options = kwargs["transformer_options"]
        seen.add((options["block"][0], options["block"][1], options["block_index"]))
        return attention(*args, **kwargs)
    clone.model_options["transformer_options"]["optimized_attention_override"] = override
    return clone


@pytest.mark.parametrize("strength", [None, 1.67])
def test_patched_layers_run_the_attention_another_node_selected(node, tiny_model, cond, pair, strength):
    """Without contrast every row of a patched layer, with contrast the rows that keep their own
    keys and values (the appearance's), go through the selected attention; the output is the
    same as without the override, since this one computes the same function."""
    structure, appearance = pair
    contrast = None if strength is None else node("CrossImageAttentionContrast").execute(strength)[0]
    seen = set()
    overridden = with_attention_override(tiny_model, seen)
    (patched,) = node("CrossImageAttention").execute(overridden, appearance, "0,1", 0.0, 1.0, contrast)
    (out,) = node("CrossImageSampler").execute(patched, cond, structure, "euler", 1.0)
    assert FINEST_TWO <= seen  # the patched layers, besides every other attention layer
    (plain_patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.0, 1.0, contrast)
    (expected,) = node("CrossImageSampler").execute(plain_patched, cond, structure, "euler", 1.0)
    assert torch.equal(out["samples"], expected["samples"])


def test_a_second_cross_image_attention_node_is_refused(node, tiny_model, pair):
    (patched,) = node("CrossImageAttention").execute(tiny_model, pair[1], "0", 0.0, 1.0)
    for levels in ("0", "2"):  # the same layers or others: the settings would mix either way
        with pytest.raises(ValueError, match="model: this MODEL is already patched by a Cross-Image Attention node"):
            node("CrossImageAttention").execute(patched, pair[1], levels, 0.1, 1.0)


def other_pack_replacement(q, k, v, extra_options):
    return q


def test_another_nodes_replacement_on_the_same_layers_is_refused(node, tiny_model, pair):
    other = tiny_model.clone()
    other.set_model_attn1_replace(other_pack_replacement, "output", 5, 1)
    with pytest.raises(ValueError, match=r"model: another node already replaced the self-attention of decoder layers "
                                         r"output\.5\.1 \(.*other_pack_replacement\)"):
        node("CrossImageAttention").execute(other, pair[1], "0,1", 0.0, 1.0)
    # on layers Cross-Image Attention does not patch, both patches stay
    (patched,) = node("CrossImageAttention").execute(other, pair[1], "1,2", 0.0, 1.0)
    replaces = patched.model_options["transformer_options"]["patches_replace"]["attn1"]
    assert replaces[("output", 5, 1)] is other_pack_replacement


def test_a_replacement_after_cross_image_attention_is_refused_by_the_sampler(node, tiny_model, cond, pair):
    (patched,) = node("CrossImageAttention").execute(tiny_model, pair[1], "0,1", 0.0, 1.0)
    overwritten = patched.clone()
    overwritten.set_model_attn1_replace(other_pack_replacement, "output", 2, 0)
    with pytest.raises(ValueError, match=r"model: a node after Cross-Image Attention replaced the self-attention "
                                         r"of decoder layers output\.2\.0"):
        node("CrossImageSampler").execute(overwritten, cond, pair[0], "euler", 1.0)


def test_a_replacement_that_wraps_ours_is_accepted(node, tiny_model, cond, pair):
    """A node may compose with Cross-Image Attention by wrapping its replacement (saying so with
    functools.wraps): the layer still swaps, so the sampler runs it."""
    import functools
    (patched,) = node("CrossImageAttention").execute(tiny_model, pair[1], "0,1", 0.0, 1.0)
    replaces = patched.model_options["transformer_options"]["patches_replace"]["attn1"]
    ours = replaces[("output", 2, 0)]
    calls = []

    @functools.wraps(ours)
    def wrapping(q, k, v, extra_options):
        calls.append(extra_options["block"])
        return ours(q, k, v, extra_options)
    wrapped = patched.clone()
    wrapped.set_model_attn1_replace(wrapping, "output", 2, 0)
    (out,) = node("CrossImageSampler").execute(wrapped, cond, pair[0], "euler", 1.0)
    (expected,) = node("CrossImageSampler").execute(patched, cond, pair[0], "euler", 1.0)
    assert calls and torch.equal(out["samples"], expected["samples"])


def test_gligen_on_the_prompt_is_refused(node, tiny_model, cond, pair):
    """GLIGEN acts inside attention on every row: it would steer the appearance latent too."""
    (patched,) = node("CrossImageAttention").execute(tiny_model, pair[1], "0", 0.0, 1.0)
    boxed = [[cond[0][0], {**cond[0][1], "gligen": ("position", object(), [])}]]
    with pytest.raises(ValueError, match="positive: carries GLIGEN boxes, which would steer the "
                                         "appearance and structure latents"):
        node("CrossImageSampler").execute(patched, boxed, pair[0], "euler", 1.0)


def test_a_controlnet_steers_the_output_rows_only(node, tiny_model, cond, pair, monkeypatch):
    """A ControlNet on the prompt acts on the output rows: the UNet gets its residuals there and
    zeros on the appearance and structure rows, whose predictions are exactly those of the run
    without it (they never see the output), while the output changes."""
    import comfy.model_base
    structure, appearance = pair
    hint = torch.rand(1, 3, *(8 * side for side in structure.trajectory.shape[-2:]),
                      generator=torch.Generator().manual_seed(3))
    control = tiny_controlnet(tiny_model, 5).set_cond_hint(hint, 1.0, (0.0, 1.0))
    controlled = [[cond[0][0], {**cond[0][1], "control": control}]]
    (patched,) = node("CrossImageAttention").execute(tiny_model, appearance, "0,1", 0.0, 1.0, None, 2, 1.0)
    guidance = node("CrossImageAppearanceGuidance").execute(2.0, 1.5, 0.0)[0]
    calls = []
    apply_model = comfy.model_base.BaseModel.apply_model

    def recorded(self, x, *args, **kwargs):
        residuals = [r for rs in (kwargs.get("control") or {}).values() for r in rs if r is not None]
        largest = torch.stack([r.flatten(1).abs().amax(1) for r in residuals]).amax(0) if residuals else None
        out = apply_model(self, x, *args, **kwargs)  # (the UNet uses the residuals up)
        calls.append((out, largest))
        return out
    monkeypatch.setattr(comfy.model_base.BaseModel, "apply_model", recorded)
    runs = {}
    for name, positive in (("plain", cond), ("controlled", controlled)):
        calls.clear()
        runs[name] = node("CrossImageSampler").execute(patched, positive, structure, "euler", 1.0, None, guidance)[0]
        runs[name + " calls"] = list(calls)
    assert len(runs["plain calls"]) == len(runs["controlled calls"]) == structure.steps
    rows_seen = set()
    for (plain, _), (out, residual) in zip(runs["plain calls"], runs["controlled calls"]):
        # [output, appearance, structure (up to the last injection step), the output's plain copy (guidance)]
        rows = out.shape[0]
        rows_seen.add(rows)
        others = list(range(1, rows - 1))  # the appearance and structure rows
        assert bool((residual[[0, rows - 1]] > 0).all()) and bool((residual[others] == 0).all())
        torch.testing.assert_close(out[others], plain[others], rtol=0, atol=1e-6)
    assert rows_seen == {3, 4}
    assert (runs["controlled"]["samples"] - runs["plain"]["samples"]).abs().max() > 1e-3


def test_freeu_and_model_sampling_chained_before_the_pack(node, tiny_model, cond):
    """ComfyUI's FreeU and ModelSamplingDiscrete nodes, chained before the pack as users do:
    FreeU's patch runs in every call of the transfer and changes it; a sampling override
    (v-prediction with zero terminal SNR) is another kind of model, so inversions made without
    it are refused, and inversions made with it sample."""
    from comfy_extras.nodes_freelunch import FreeU  # ComfyUI's own nodes (V1 in 0.3.75, V3 in 0.33.0)
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete
    freeu = FreeU().patch(tiny_model, 1.2, 1.4, 0.9, 0.2)[0]
    v_zsnr = ModelSamplingDiscrete().patch(tiny_model, "v_prediction", True)[0]
    results = {}
    for name, model in (("plain", tiny_model), ("freeu", freeu), ("v_zsnr", v_zsnr)):
        structure, appearance = (invert(node, model, latent(seed), cond, steps=4)[0] for seed in (52, 53))
        (patched,) = node("CrossImageAttention").execute(model, appearance, "0,1", 0.0, 1.0)
        results[name] = node("CrossImageSampler").execute(patched, cond, structure, "euler", 1.0)[0]["samples"]
        assert torch.isfinite(results[name]).all(), name
    assert (results["freeu"] - results["plain"]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="structure: .*another kind of model"):
        node("CrossImageSampler").execute(tiny_model, cond, structure, "euler", 1.0)


def test_a_patched_layer_that_does_not_run_is_an_error(node, tiny_model, cond, pair):
    """A node that wraps the pack's replacement (and says so) but never calls it: the layer would
    silently be plain attention, so the sampler refuses, naming the layers that did not run."""
    import functools
    import comfy.ldm.modules.attention as attention
    (patched,) = node("CrossImageAttention").execute(tiny_model, pair[1], "0,1", 0.0, 1.0)
    ours = patched.model_options["transformer_options"]["patches_replace"]["attn1"][("output", 3, 0)]

    @functools.wraps(ours)
    def skipping(q, k, v, extra_options):
        return attention.optimized_attention(q, k, v, extra_options["n_heads"])
    wrapped = patched.clone()
    wrapped.set_model_attn1_replace(skipping, "output", 3, 0)
    with pytest.raises(RuntimeError, match=r"model: Cross-Image Attention's patch did not run at output\.3\.0: this "
                                           "ComfyUI release does not call the hook"):
        node("CrossImageSampler").execute(wrapped, cond, pair[0], "euler", 1.0)
