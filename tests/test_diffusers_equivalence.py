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
