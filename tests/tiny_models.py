"""Small random-weight ComfyUI models for fast tests (built in-process, nothing downloaded)."""
import torch

CONTEXT_DIM = 32
POOLED_DIM = 24  # the SDXL-shaped model's pooled text embedding (SDXL: 1280)


def tiny_unet_config(channel_mult=(1, 2, 2)) -> dict:
    """An SD1.5-shaped UNet with 32 base channels and attention at every level; the finest
    level has two transformer blocks so transformer indices are exercised."""
    levels = len(channel_mult)
    depth = [2] + [1] * (levels - 1)
    return {
        "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
        "model_channels": 32, "channel_mult": list(channel_mult), "num_res_blocks": [1] * levels,
        "transformer_depth": depth, "transformer_depth_output": [d for d in depth for _ in range(2)],
        "transformer_depth_middle": 1, "context_dim": CONTEXT_DIM, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "use_linear_in_transformer": False,
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Fill every parameter: N(0, 1/fan_in) weights, unit norm scales, zero biases.
    (ComfyUI creates layers without initialising them.)"""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in ** 0.5)
            elif name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.zero_()


def tiny_model(seed: int = 0, prediction: str = "eps", channel_mult=(1, 2, 2), output_scale: float = 1.0):
    """A ComfyUI MODEL (ModelPatcher) of the SD1.5 family with a tiny random UNet, on the CPU.

    prediction "v" gives an SD2-style v-prediction model; output_scale scales the last layer."""
    return random_model(tiny_unet_config(channel_mult), seed, prediction, output_scale)


def tiny_sdxl_unet_config(depth=(0, 1, 2), channel_mult=(1, 2, 2)) -> dict:
    """An SDXL-shaped UNet: vector conditioning `y` (pooled text + 6 x 256 size embeddings,
    label_emb), linear projections in the transformers and, as in SDXL, no attention at the
    finest level (depth 0); the middle block as deep as the coarsest level."""
    depth_output = [d for d in depth for _ in range(2)]
    return {
        "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
        "model_channels": 32, "channel_mult": list(channel_mult), "num_res_blocks": [1] * len(depth),
        "transformer_depth": list(depth), "transformer_depth_output": depth_output,
        "transformer_depth_middle": depth[-1], "context_dim": CONTEXT_DIM, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": POOLED_DIM + 6 * 256, "num_classes": "sequential",
        "use_linear_in_transformer": True, "use_temporal_attention": False, "use_temporal_resblock": False,
    }


def tiny_sdxl_model(seed: int = 0, output_scale: float = 1.0, **config):
    """A ComfyUI MODEL of the SDXL family (model_base.SDXL, its latent format and conditioning)
    with a tiny random UNet (tiny_sdxl_unet_config(**config)), on the CPU."""
    return random_model(tiny_sdxl_unet_config(**config), seed, output_scale=output_scale, family="sdxl")


def random_model(unet_config: dict, seed: int = 0, prediction: str = "eps", output_scale: float = 1.0,
                 device=torch.device("cpu"), dtype=torch.float32, family: str = "sd15"):
    """A ComfyUI MODEL of the SD1.5 (or SDXL) family with this UNet configuration and random weights."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models

    if family == "sdxl":
        config = comfy.supported_models.SDXL(dict(unet_config))
        # SDXL's class fixes 64 channels a head; keep several heads on narrow tiny layers
        config.unet_config["num_head_channels"] = unet_config.get("num_head_channels", 16)
        model_class = comfy.model_base.SDXL
    else:
        config, model_class = comfy.supported_models.SD15(dict(unet_config)), comfy.model_base.BaseModel
    config.set_inference_dtype(dtype, None)
    model_type = {"eps": comfy.model_base.ModelType.EPS,
                  "v": comfy.model_base.ModelType.V_PREDICTION}[prediction]
    base = model_class(config, model_type=model_type, device=device)
    randomize_(base.diffusion_model, seed)
    with torch.no_grad():  # a smaller last layer makes eps vary smoothly, as in a trained model
        base.diffusion_model.out[-1].weight.mul_(output_scale)
    base.eval().requires_grad_(False)  # as in ComfyUI, which runs graphs in inference mode
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=torch.device("cpu"))


def conditioning(seed: int = 0, tokens: int = 8):
    """A ComfyUI CONDITIONING for the tiny model: [[context (1, tokens, dim), {}]]."""
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, CONTEXT_DIM, generator=generator), {}]]


def sdxl_conditioning(seed: int = 0, tokens: int = 8):
    """A ComfyUI CONDITIONING for the tiny SDXL-shaped model: [[context, {"pooled_output": pooled}]]
    (no sizes: ComfyUI then takes the latent's size x 8, as a plain CLIPTextEncode gives)."""
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn(1, tokens, CONTEXT_DIM, generator=generator)
    return [[context, {"pooled_output": torch.randn(1, POOLED_DIM, generator=generator)}]]
