"""ComfyUI's UNet and diffusers' UNet2DConditionModel compute the same function from the
same weights: the footing for an independent reference implementation written with diffusers."""
import torch

import tiny_models


def diffusers_twin(model):
    """A diffusers UNet with the tiny ComfyUI model's architecture and weights."""
    from diffusers import UNet2DConditionModel
    import comfy.utils
    config = model.model.model_config.unet_config
    levels = len(config["channel_mult"])
    twin = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=config["num_res_blocks"][0],
        block_out_channels=[config["model_channels"] * m for m in config["channel_mult"]],
        down_block_types=["CrossAttnDownBlock2D"] * levels, up_block_types=["CrossAttnUpBlock2D"] * levels,
        cross_attention_dim=config["context_dim"], attention_head_dim=config["num_heads"],
        transformer_layers_per_block=config["transformer_depth"], norm_num_groups=32)
    mapping = comfy.utils.unet_to_diffusers(config)
    weights = model.model.diffusion_model.state_dict()
    # the map lists every key a UNet of this shape may have; keep those this one has
    twin.load_state_dict({key: weights[comfy_key] for key, comfy_key in mapping.items() if comfy_key in weights},
                         strict=True)
    return twin.eval()


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
