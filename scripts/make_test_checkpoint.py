"""Write a small random-weight SD1.5-style checkpoint for tests.

ComfyUI's checkpoint loader (``comfy.sd.load_checkpoint_guess_config``, used by
CheckpointLoaderSimple) detects the file as SD1.5 (eps prediction) and loads all
three parts from it:

* ``model.diffusion_model.``: a shallow UNet with SD1.5's width (model_channels
  320, context_dim 768, 8 heads) but only two levels, one res block and one
  transformer block per level and in the middle block (about 107 M parameters);
* ``first_stage_model.``: a full-size SD VAE (AutoencoderKL, ch 128, ch_mult
  [1, 2, 4, 4], 2 res blocks, z_channels 4, with quant_conv/post_quant_conv);
* ``cond_stage_model.transformer.text_model.``: a full-size CLIP-L text encoder,
  in the key layout of the original SD1.5 checkpoints.

Key names come from ComfyUI's own classes, built on the meta device so that no
memory is spent on them; every tensor is then drawn from a seeded generator:
Linear/Conv weights ~ N(0, 1/fan_in), biases 0, norm weights 1 and biases 0,
embeddings ~ N(0, 0.02).  The text projection is left out on purpose, as in real
SD1.5 checkpoints: the SD1.5 loader would rename it into an unexpected key, and
SD1.5 never uses it.

Usage: python scripts/make_test_checkpoint.py OUT.safetensors [--seed N] [--comfyui PATH]
ComfyUI is imported only inside build_checkpoint; put its folder on sys.path
first (the command line does that from --comfyui, default $COMFYUI_PATH).  On a
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


def _unet():
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    return UNetModel(**UNET_CONFIG)


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


PARTS = (
    ("model.diffusion_model.", _unet),
    ("first_stage_model.", _vae),
    ("cond_stage_model.transformer.", _clip),
)


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
            else:
                raise ValueError(f"no initialisation rule for {prefix}{key} ({type(mod).__name__})")
            out[prefix + key] = v.to(dtype)
    return out


def build_checkpoint(path, seed=0, dtype=torch.float16):
    """Write the random checkpoint to ``path`` (safetensors); return its key count."""
    from safetensors.torch import save_file
    _prepare_comfy()
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for prefix, make in PARTS:
        with torch.device("meta"):
            module = make()
        skip = CLIP_SKIPPED if prefix.startswith("cond_stage_model.") else ()
        sd.update(_random_state_dict(module, prefix, gen, dtype, skip))
        del module
    save_file(sd, path)
    return len(sd)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="output .safetensors path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"),
                   help="ComfyUI folder (default: $COMFYUI_PATH)")
    args = p.parse_args(argv)
    if not args.comfyui:
        p.error("give --comfyui PATH or set COMFYUI_PATH")
    sys.path.insert(0, os.path.abspath(args.comfyui))
    t0 = time.perf_counter()
    n = build_checkpoint(args.out, seed=args.seed)
    size = os.path.getsize(args.out) / 2**20
    print(f"wrote {args.out}: {n} tensors, {size:.0f} MiB in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
