"""ComfyUI's UNet and diffusers' UNet2DConditionModel compute the same function from the
same weights: the footing for an independent reference implementation written with diffusers."""
import torch

import tiny_models
from reference import diffusers_twin


def test_comfyui_unet_equals_diffusers_unet(comfy_nodes):
    model = tiny_models.tiny_model(seed=3)
    twin = diffusers_twin(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 24, generator=g)  # non-square
    context = torch.randn(2, 8, tiny_models.CONTEXT_DIM, generator=g)
    t = torch.tensor([500.0, 21.0])
    with torch.no_grad():
        ours = model.model.diffusion_model(x, timesteps=t, context=context)
        theirs = twin(x, t, encoder_hidden_states=context).sample
    # seen: 2e-6 of outputs ~1 in float32 (summation order); any mapping or config slip is O(1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)


# SDXL's sizes, all different so that any mix-up of their order shows (ComfyUI's names)
SIZES = dict(height=128, width=192, crop_h=16, crop_w=8, target_height=256, target_width=320)


def test_comfyui_sdxl_unet_equals_diffusers_unet(comfy_nodes):
    """The SDXL-shaped UNet (no attention at the finest level, linear projections, vector
    conditioning): ComfyUI's with y from model_base.SDXL.encode_adm equals the twin with
    diffusers' added_cond_kwargs, time_ids in diffusers' order."""
    model = tiny_models.tiny_sdxl_model(seed=3)
    twin = diffusers_twin(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 24, generator=g)
    context = torch.randn(2, 8, tiny_models.CONTEXT_DIM, generator=g)
    pooled = torch.randn(2, tiny_models.POOLED_DIM, generator=g)
    t = torch.tensor([500.0, 21.0])
    time_ids = torch.tensor([[SIZES[k] for k in ("height", "width", "crop_h", "crop_w", "target_height",
                                                  "target_width")]] * 2, dtype=torch.float32)
    with torch.no_grad():
        y = model.model.encode_adm(pooled_output=pooled, **SIZES)
        ours = model.model.diffusion_model(x, timesteps=t, context=context, y=y)
        theirs = twin(x, t, encoder_hidden_states=context,
                      added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        swapped = twin(x, t, encoder_hidden_states=context,
                       added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids[:, [1, 0, 3, 2, 5, 4]]}).sample
    assert y.shape == (2, tiny_models.POOLED_DIM + 6 * 256)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)
    assert float((ours - swapped).abs().max()) > 1e-2  # the sizes reach the output


def test_reference_feeds_the_y_comfyui_builds(comfy_nodes):
    """The vector the reference's added_cond_kwargs make in the twin (the input of its
    add_embedding) is the y ComfyUI builds through its conditioning path for a prompt with
    pooled_output and no sizes (they default to the latent's size x 8), on a non-square latent."""
    import comfy.sampler_helpers
    import comfy.samplers
    from reference import Reference, Settings
    model = tiny_models.tiny_sdxl_model(seed=3)
    (context, extra), = tiny_models.sdxl_conditioning(seed=1)
    noise = torch.zeros(1, 4, 8, 12)
    conds = comfy.samplers.encode_model_conds(model.model.extra_conds, comfy.sampler_helpers.convert_cond(
        [[context, extra]]), noise, torch.device("cpu"), "positive")
    comfy_y = conds[0]["model_conds"]["y"].cond

    twin = diffusers_twin(model)
    fed = []
    twin.add_embedding.register_forward_hook(lambda module, args, out: fed.append(args[0]))
    Reference(twin, Settings(), context, pooled=extra["pooled_output"]).eps(noise, 500, context)
    assert comfy_y.shape == fed[0].shape == (1, tiny_models.POOLED_DIM + 6 * 256)
    torch.testing.assert_close(fed[0], comfy_y, rtol=0, atol=1e-6)
