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
            elif name.endswith(("weight", "scale")):  # norms' gains (RMSNorm names its gain "scale")
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


def comfy_patcher(base, device=None):
    """`base` as ComfyUI's loaders hand it out: on ComfyUI's device (the CPU in the tests), with the
    patcher they use (0.33.0's DynamicVRAM one where that is on, else ModelPatcher)."""
    import comfy.model_management
    import comfy.model_patcher
    patcher = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    device = device or comfy.model_management.get_torch_device()
    return patcher(base, load_device=device, offload_device=torch.device("cpu"))


def built_model(family, seed: int, output_scale: float, last_layer: str):
    """A MODEL of a supported_models `family` (configured) as ComfyUI's loader builds it, random
    weights (`last_layer`'s weight scaled by output_scale), on the CPU."""
    family.set_inference_dtype(torch.float32, None)
    base = family.get_model({}, device=torch.device("cpu"))
    randomize_(base.diffusion_model, seed)
    with torch.no_grad():
        base.diffusion_model.get_submodule(last_layer).weight.mul_(output_scale)
    base.eval().requires_grad_(False)
    return comfy_patcher(base)


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
    return comfy_patcher(base, device)


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


FLUX_CONTEXT, FLUX_POOLED = 32, 24  # the tiny Flux models' text embedding and pooled text widths


def tiny_flux_config(kind: str = "dev", blocks=(2, 2), heads: int = 2) -> dict:
    """A Flux-family configuration with `heads` heads of 128 channels (as every Flux) and
    `blocks` (double, single) blocks: kind "dev" (guidance embedding) or "schnell" (none),
    Flux.1's 16-channel latents in 2x2 patches and 3 RoPE axes; or "flux2": Flux.2's 128-channel
    latents, patch 1, 4 RoPE axes, shared modulation; or "chroma": Flux.1-schnell's blocks modulated
    by a distilled guidance network instead of the pooled text and timestep (channels counted after
    the 2x2 patching, as ComfyUI detects Chroma)."""
    common = dict(context_in_dim=FLUX_CONTEXT, hidden_size=128 * heads, num_heads=heads, depth=blocks[0],
                  depth_single_blocks=blocks[1])
    if kind == "flux2":
        return dict(common, image_model="flux2", in_channels=128, out_channels=128, patch_size=1,
                    vec_in_dim=None, mlp_ratio=3.0, axes_dim=[32, 32, 32, 32], theta=2000, qkv_bias=False,
                    guidance_embed=True, global_modulation=True, mlp_silu_act=True, ops_bias=False,
                    default_ref_method="index", ref_index_scale=10.0, txt_ids_dims=[3])
    if kind == "chroma":
        return dict(common, image_model="chroma", in_channels=64, out_channels=64, patch_size=2, mlp_ratio=4.0,
                    axes_dim=[16, 56, 56], theta=10000, qkv_bias=True, in_dim=64, out_dim=128 * heads, hidden_dim=64,
                    n_layers=2, txt_ids_dims=[], vec_in_dim=None)
    return dict(common, image_model="flux", in_channels=16, out_channels=16, patch_size=2, vec_in_dim=FLUX_POOLED,
                mlp_ratio=4.0, axes_dim=[16, 56, 56], theta=10000, qkv_bias=True, guidance_embed=kind == "dev",
                txt_ids_dims=[])


def tiny_flux_model(seed: int = 0, kind: str = "dev", output_scale: float = 1.0, **config):
    """A ComfyUI MODEL of the Flux family (tiny_flux_config(kind, **config)) with random weights, on the
    CPU, built as ComfyUI's loader builds one (supported_models.Flux / FluxSchnell / Flux2 / Chroma
    and model_base.Flux / Chroma): ComfyUI 0.33.0 detects such a state dict itself, 0.3.75's loader fixes 24
    heads, so it is built directly."""
    import dataclasses

    import comfy.ldm.chroma.model
    import comfy.ldm.flux.model
    import comfy.model_patcher
    import comfy.supported_models
    params = comfy.ldm.chroma.model.ChromaParams if kind == "chroma" else comfy.ldm.flux.model.FluxParams
    fields = {field.name for field in dataclasses.fields(params)} | {"image_model"}
    config = {key: value for key, value in tiny_flux_config(kind, **config).items() if key in fields}  # this release's
    family = {"dev": comfy.supported_models.Flux, "schnell": comfy.supported_models.FluxSchnell,
              "flux2": comfy.supported_models.Flux2, "chroma": comfy.supported_models.Chroma}[kind](config)
    return built_model(family, seed, output_scale, "final_layer.linear")


def flux_conditioning(seed: int = 0, tokens: int = 8, guidance=3.5, kind: str = "dev"):
    """A Flux CONDITIONING for the tiny Flux models: a T5-like context, CLIP's pooled text (Flux.1)
    and the embedded guidance (Flux-dev, Flux.2; None: none)."""
    generator = torch.Generator().manual_seed(seed)
    extra = {} if guidance is None or kind == "chroma" else {"guidance": guidance}  # Chroma: CFG, no FluxGuidance
    # Flux.2 and Chroma take no pooled text (their text encoders give None)
    extra["pooled_output"] = None if kind in ("flux2", "chroma") else torch.randn(1, FLUX_POOLED, generator=generator)
    return [[torch.randn(1, tokens, FLUX_CONTEXT, generator=generator), extra]]



SD3_CONTEXT, SD3_POOLED = 32, 24  # the tiny SD3 models' text embedding and pooled text widths (SD3: 4096, 2048)


def tiny_sd3_model(seed: int = 0, medium: bool = False, depth: int = 2, output_scale: float = 1.0):
    """A ComfyUI MODEL of the SD3 family with random weights, on the CPU, loaded by ComfyUI's own
    loader (comfy.sd.load_diffusion_model_state_dict detects SD3 from the state dict: `depth`
    blocks of 64 * depth channels in `depth` heads, 16-channel latents in 2x2 patches, RMS
    QK-norm as SD3.5); `medium`: SD3.5 medium's image-only second attention (MMDiT-X) in the
    first block."""
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    import comfy.ops
    import comfy.sd
    hidden = 64 * depth
    network = mmdit.OpenAISignatureMMDITWrapper(
        input_size=None, patch_size=2, in_channels=16, out_channels=16, depth=depth, adm_in_channels=SD3_POOLED,
        context_embedder_config={"target": "torch.nn.Linear",
                                 "params": {"in_features": SD3_CONTEXT, "out_features": hidden}},
        num_patches=32 * 32, pos_embed_max_size=32, qk_norm="rms", x_block_self_attn_layers=[0] if medium else [],
        operations=comfy.ops.disable_weight_init, device="cpu", dtype=torch.float32)
    randomize_(network, seed)
    with torch.no_grad():
        network.final_layer.linear.weight.mul_(output_scale)
        # the position buffer is made empty (SD3's checkpoints hold its 2-D sin-cos table)
        table = mmdit.get_2d_sincos_pos_embed(hidden, 32)
        network.pos_embed.copy_(torch.from_numpy(table).float()[None])
    state = {f"model.diffusion_model.{key}": value for key, value in network.state_dict().items()}
    model = comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": torch.float32})
    model.model.eval().requires_grad_(False)
    return model


def sd3_conditioning(seed: int = 0, tokens: int = 8):
    """An SD3 CONDITIONING for the tiny SD3 models: the joint CLIP and T5 context and the pooled
    CLIP text."""
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, SD3_CONTEXT, generator=generator),
             {"pooled_output": torch.randn(1, SD3_POOLED, generator=generator)}]]


LUMINA_CONTEXT = 48  # the tiny Lumina 2 and Z-Image models' text embedding width (Gemma 2: 2304, Qwen3: 2560)


def tiny_lumina_config(kind: str = "lumina2", layers: int = 2) -> dict:
    """A NextDiT configuration with two heads, `layers` joint layers and two refiner blocks each
    for text and image: kind "lumina2" (Lumina 2's RoPE axes and theta, grouped key/value heads)
    or "z-image" (Z-Image's axes, theta 256, its modulation and its padding to 32 tokens)."""
    common = dict(image_model="lumina2", patch_size=2, in_channels=16, cap_feat_dim=LUMINA_CONTEXT, n_layers=layers,
                  n_refiner_layers=2, qk_norm=True, n_heads=2)
    if kind == "z-image":  # its modulation needs 256 channels at least
        return dict(common, dim=256, n_kv_heads=2, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512], rope_theta=256.0,
                    ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32)
    return dict(common, dim=192, n_kv_heads=1, axes_dims=[32, 32, 32], axes_lens=[300, 512, 512], rope_theta=10000.0,
                ffn_dim_multiplier=4.0)


def tiny_lumina_model(seed: int = 0, kind: str = "lumina2", output_scale: float = 1.0, **config):
    """A ComfyUI MODEL of Lumina 2 or Z-Image (tiny_lumina_config(kind, **config)) with random weights,
    on the CPU, built as ComfyUI's loader builds one (supported_models.Lumina2 / ZImage and
    model_base.Lumina2); ComfyUI's detection knows only the full-size widths, so it is built
    directly."""
    import comfy.model_patcher
    import comfy.supported_models
    family = {"lumina2": comfy.supported_models.Lumina2, "z-image": comfy.supported_models.ZImage}[kind](
        tiny_lumina_config(kind, **config))
    return built_model(family, seed, output_scale, "final_layer.linear")


def lumina_conditioning(seed: int = 0, tokens: int = 8):
    """A CONDITIONING for the tiny Lumina 2 and Z-Image models: the text encoder's hidden states."""
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, LUMINA_CONTEXT, generator=generator), {}]]


QWEN_CONTEXT = 64  # the tiny Qwen-Image model's text embedding width (Qwen2.5-VL: 3584)


def tiny_qwen_image_model(seed: int = 0, output_scale: float = 1.0, layers: int = 2):
    """A ComfyUI MODEL of Qwen-Image with random weights and `layers` blocks of two 128-channel
    heads, on the CPU, built as ComfyUI's loader builds one (supported_models.QwenImage and
    model_base.QwenImage); ComfyUI's detection fixes the full-size width, so it is built directly.
    Its latents have a frame axis: (B, 16, 1, H, W)."""
    import comfy.model_patcher
    import comfy.supported_models
    family = comfy.supported_models.QwenImage(dict(
        image_model="qwen_image", in_channels=64, out_channels=16, patch_size=2, num_layers=layers,
        num_attention_heads=2, attention_head_dim=128, joint_attention_dim=QWEN_CONTEXT, axes_dims_rope=(16, 56, 56)))
    return built_model(family, seed, output_scale, "proj_out")


def qwen_conditioning(seed: int = 0, tokens: int = 8):
    """A CONDITIONING for the tiny Qwen-Image model: the text encoder's hidden states."""
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, QWEN_CONTEXT, generator=generator), {}]]


# The diffusion transformers of the DiT tests: {family: (model builder, conditioning builder, latent
# channels, or (channels, frames))}; the models are a few blocks of two heads.
DIT_FAMILIES = {
    "flux-dev": (lambda **kw: tiny_flux_model(kind="dev", **kw), lambda seed: flux_conditioning(seed, kind="dev"), 16),
    "flux-schnell": (lambda **kw: tiny_flux_model(kind="schnell", **kw),
                     lambda seed: flux_conditioning(seed, guidance=None, kind="schnell"), 16),
    "flux2": (lambda **kw: tiny_flux_model(kind="flux2", **kw), lambda seed: flux_conditioning(seed, kind="flux2"),
              128),
    "chroma": (lambda **kw: tiny_flux_model(kind="chroma", **kw), lambda seed: flux_conditioning(seed, kind="chroma"),
               16),
    "sd3": (lambda **kw: tiny_sd3_model(**kw), sd3_conditioning, 16),
    "sd35-medium": (lambda **kw: tiny_sd3_model(medium=True, **kw), sd3_conditioning, 16),
    "lumina2": (lambda **kw: tiny_lumina_model(kind="lumina2", **kw), lumina_conditioning, 16),
    "z-image": (lambda **kw: tiny_lumina_model(kind="z-image", **kw), lumina_conditioning, 16),
    "qwen-image": (lambda **kw: tiny_qwen_image_model(**kw), qwen_conditioning, (16, 1)),
}


def tiny_dit(family: str, seed: int = 1, output_scale: float = 0.2):
    """(MODEL, CONDITIONING) of a DIT_FAMILIES family."""
    build, conditioning, _ = DIT_FAMILIES[family]
    return build(seed=seed, output_scale=output_scale), conditioning(0)


def dit_latent(family: str, seed: int, height: int = 8, width: int = 12) -> dict:
    """A random LATENT for a DIT_FAMILIES family's model."""
    channels = DIT_FAMILIES[family][2]
    shape = (channels if isinstance(channels, tuple) else (channels,)) + (height, width)
    return {"samples": torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))}
