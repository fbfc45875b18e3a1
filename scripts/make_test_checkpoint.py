"""Write a small random-weight Stable Diffusion checkpoint for tests, of a chosen family.

ComfyUI's checkpoint loader (``comfy.sd.load_checkpoint_guess_config``, used by
CheckpointLoaderSimple) detects the file as that family and loads all three parts from it.

``--family sd15`` (the default): SD1.5, eps prediction.

* ``model.diffusion_model.``: a shallow UNet with SD1.5's width (model_channels
  320, context_dim 768, 8 heads) but only two levels, one res block and one
  transformer block per level and in the middle block (about 107 M parameters);
* ``first_stage_model.``: a full-size SD VAE (AutoencoderKL, ch 128, ch_mult
  [1, 2, 4, 4], 2 res blocks, z_channels 4, with quant_conv/post_quant_conv);
* ``cond_stage_model.transformer.text_model.``: a full-size CLIP-L text encoder,
  in the key layout of the original SD1.5 checkpoints. The text projection is left
  out on purpose, as in real SD1.5 checkpoints: the SD1.5 loader would rename it into
  an unexpected key, and SD1.5 never uses it.

``--family sd2v``: SD2.x with v-prediction (as SD2.1 768): four levels of 320 channels with
linear-projection attention at the finest three (context_dim 1024), a full-size random
OpenCLIP ViT-H text encoder (``cond_stage_model.model.``) and the SD VAE. ComfyUI tells v from
eps SD2 models by the spread of one norm bias, which this family sets accordingly.

``--family sdxl``: the SDXL family (ComfyUI's KOALA-700M layout: SDXL's width,
context_dim 2048 and pooled/size conditioning, transformer depths 0, 2, 5 by level), but
every level at 320 channels, so the UNet is small; no attention at the finest level, as in
SDXL. Full-size random CLIP-L and CLIP-G text encoders (``conditioner.embedders.``, in
the SDXL checkpoint layout ComfyUI writes itself) and the SD VAE: about 1.9 GB in fp16.

Key names come from ComfyUI's own classes, built on the meta device so that no
memory is spent on them; every tensor is then drawn from a seeded generator:
Linear/Conv weights ~ N(0, 1/fan_in), biases 0, norm weights 1 and biases 0,
embeddings ~ N(0, 0.02), CLIP's logit scale log(100).

Usage: python scripts/make_test_checkpoint.py OUT.safetensors [--family sd15|sd2v|sdxl] [--seed N] [--comfyui PATH]
ComfyUI is imported only inside build_checkpoint; make it importable first
(headless.use_comfyui; the command line does that from --comfyui, default $COMFYUI_PATH).  On a
machine without a usable GPU, build_checkpoint switches ComfyUI to its --cpu
mode before comfy.model_management is first imported, since that import fails
otherwise with a CUDA build of torch.
"""

import argparse
import os
import sys
import time

import torch

UNET_CONFIG = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320,
    num_res_blocks=[1, 1], channel_mult=[1, 2],
    transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1,
    context_dim=768, num_heads=8, num_head_channels=-1,
    use_spatial_transformer=True, use_linear_in_transformer=False, legacy=False, adm_in_channels=None,
)
SDXL_UNET_CONFIG = dict(  # detected as KOALA_700M, an SDXL-family layout
    image_size=32, in_channels=4, out_channels=4, model_channels=320,
    num_res_blocks=[1, 1, 1], channel_mult=[1, 1, 1],
    transformer_depth=[0, 2, 5], transformer_depth_output=[0, 0, 2, 2, 5, 5], transformer_depth_middle=1,
    context_dim=2048, num_heads=-1, num_head_channels=64, adm_in_channels=2816, num_classes="sequential",
    use_spatial_transformer=True, use_linear_in_transformer=True, legacy=False,
)
SD2_UNET_CONFIG = dict(  # detected as SD2.x: four levels of 320 channels, attention at the finest three
    image_size=32, in_channels=4, out_channels=4, model_channels=320,
    num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 1, 1, 1],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    transformer_depth_middle=1, context_dim=1024, num_heads=-1, num_head_channels=64,
    use_spatial_transformer=True, use_linear_in_transformer=True, legacy=False, adm_in_channels=None,
)
# ComfyUI tells SD2's v-prediction models from its eps ones by how much this norm bias varies
# (trained v models: std over 0.09): the sd2v family gives it N(0, 0.2) values.
SD2_V_MARK = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
VAE_DDCONFIG = dict(
    double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128,
    ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0,
)
# Keys of ComfyUI's CLIP module that SD1.5 checkpoints do not carry.
CLIP_SKIPPED = ("text_projection.weight",)


def _prepare_comfy():
    """Select ComfyUI's CPU mode when no GPU is usable (before model_management loads)."""
    if "comfy.model_management" not in sys.modules and not torch.cuda.is_available():
        import comfy.cli_args
        comfy.cli_args.args.cpu = True


def _unet(config=UNET_CONFIG):
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    return UNetModel(**config)


def _vae():
    from comfy.ldm.models.autoencoder import AutoencoderKL
    return AutoencoderKL(ddconfig=VAE_DDCONFIG, embed_dim=4)


def _clip():
    import json
    import comfy.clip_model
    import comfy.ops
    import comfy.sd1_clip
    with open(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")) as f:
        config = json.load(f)
    return comfy.clip_model.CLIPTextModel(config, None, None, comfy.ops.manual_cast)


def _sdxl_clip():
    import comfy.sdxl_clip
    return comfy.sdxl_clip.SDXLClipModel(device="meta")


def _sdxl_clip_keys(sd):
    """ComfyUI's clip_l./clip_g. keys -> the SDXL checkpoint layout (conditioner.embedders.*)."""
    import comfy.supported_models
    return comfy.supported_models.SDXL(SDXL_UNET_CONFIG).process_clip_state_dict_for_saving(sd)


def _sd2_clip():
    import comfy.text_encoders.sd2_clip
    return comfy.text_encoders.sd2_clip.SD2ClipModel(device="meta")


def _sd2_clip_keys(sd):
    """ComfyUI's clip_h. keys -> the SD2 checkpoint layout (cond_stage_model.model., OpenCLIP's)."""
    import comfy.supported_models
    return comfy.supported_models.SD20(SD2_UNET_CONFIG).process_clip_state_dict_for_saving(sd)


def _sd2_v_unet_keys(sd):
    sd[SD2_V_MARK] = torch.randn(sd[SD2_V_MARK].shape, generator=torch.Generator().manual_seed(0)).mul(0.2).to(
        sd[SD2_V_MARK].dtype)
    return sd


def _same_keys(sd):
    return sd


# family: [(key prefix, module builder, keys to leave out, key layout conversion)]
FAMILIES = {
    "sd15": [("model.diffusion_model.", _unet, (), _same_keys),
             ("first_stage_model.", _vae, (), _same_keys),
             ("cond_stage_model.transformer.", _clip, CLIP_SKIPPED, _same_keys)],
    "sd2v": [("model.diffusion_model.", lambda: _unet(SD2_UNET_CONFIG), (), _sd2_v_unet_keys),
             ("first_stage_model.", _vae, (), _same_keys),
             ("", _sd2_clip, (), _sd2_clip_keys)],
    "sdxl": [("model.diffusion_model.", lambda: _unet(SDXL_UNET_CONFIG), (), _same_keys),
             ("first_stage_model.", _vae, (), _same_keys),
             ("", _sdxl_clip, (), _sdxl_clip_keys)],
}


def _random_state_dict(module, prefix, gen, dtype, skip=()):
    """Fresh tensors for every parameter and buffer of a (meta) module."""
    linear_like = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    out = {}
    for mod_name, mod in module.named_modules():
        for name, t in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            key = f"{mod_name}.{name}" if mod_name else name
            if key in skip:
                continue
            if isinstance(mod, linear_like) and name == "weight":
                std = t[0].numel() ** -0.5  # 1/sqrt(fan_in)
                v = torch.randn(t.shape, generator=gen) * std
            elif isinstance(mod, torch.nn.Embedding) and name == "weight":
                v = torch.randn(t.shape, generator=gen) * 0.02
            elif isinstance(mod, norms) and name == "weight":
                v = torch.ones(t.shape)
            elif isinstance(mod, linear_like + norms) and name == "bias":
                v = torch.zeros(t.shape)
            elif name == "logit_scale":  # CLIP's, unused for text encoding
                v = torch.full(t.shape, 4.6052)
            else:
                raise ValueError(f"no initialisation rule for {prefix}{key} ({type(mod).__name__})")
            out[prefix + key] = v.to(dtype)
    return out


def build_checkpoint(path, seed=0, dtype=torch.float16, family="sd15"):
    """Write the random checkpoint of `family` to ``path`` (safetensors); return its key count."""
    from safetensors.torch import save_file
    _prepare_comfy()
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for prefix, make, skip, layout in FAMILIES[family]:
        with torch.device("meta"):
            module = make()
        sd.update(layout(_random_state_dict(module, prefix, gen, dtype, skip)))
        del module
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return len(sd)


FLUX_VAE_DDCONFIG = dict(VAE_DDCONFIG, z_channels=16)  # Flux's autoencoder: 16 latent channels, no quant convs


def build_flux_vae(path, seed=0, dtype=torch.float16):
    """Write a random full-size Flux autoencoder (ae.safetensors' layout, which VAELoader detects)."""
    from safetensors.torch import save_file
    _prepare_comfy()
    from comfy.ldm.models.autoencoder import AutoencoderKL
    with torch.device("meta"):
        module = AutoencoderKL(ddconfig=FLUX_VAE_DDCONFIG, embed_dim=16)
    skip = tuple(f"{conv}.{kind}" for conv in ("quant_conv", "post_quant_conv") for kind in ("weight", "bias"))
    sd = _random_state_dict(module, "", torch.Generator().manual_seed(seed), dtype, skip)
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return len(sd)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="output .safetensors path")
    p.add_argument("--family", choices=sorted(FAMILIES), default="sd15")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"),
                   help="ComfyUI folder (default: $COMFYUI_PATH)")
    args = p.parse_args(argv)
    if not args.comfyui:
        p.error("give --comfyui PATH or set COMFYUI_PATH")
    import headless
    headless.use_comfyui(args.comfyui)
    t0 = time.perf_counter()
    n = build_checkpoint(args.out, seed=args.seed, family=args.family)
    size = os.path.getsize(args.out) / 2**20
    print(f"wrote {args.out}: {n} tensors, {size:.0f} MiB in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
