"""What the real loaders cannot give a CPU test run of a shipped diffusion-transformer workflow
(Flux, SD3.5, Z-Image, Qwen-Image), and the stand-ins the tests give instead, through ComfyUI's
own loader functions:

- Their text encoders (T5-XXL, Qwen3, Qwen2.5-VL) have fixed multi-G-parameter configurations
  (ComfyUI builds them from config files whatever the weights), so the CLIP loaders' files are
  placeholders and comfy.sd.load_clip gives, for those, a small stand-in with CLIP's interface
  (tokenize, encode_from_tokens_scheduled) whose CONDITIONING has the tiny models' widths for the
  loader's CLIP type.
- ComfyUI's UNETLoader detects some tiny state dicts itself (SD3; Flux on 0.33.0) and fixes the
  full-size widths for others, so where the real loader fails on a file these tests wrote, the
  model is built directly (tests/tiny_models.py) and given the file's weights.
- Qwen-Image's autoencoder (Wan 2.1's) is detected with its width from the weights, so its file
  is a narrow random one; the others use the full-size Flux autoencoder layout.

install() puts both into comfy.sd; the in-process tests call it, and so does the test server of
the browser tests (tests/server_nodes, a custom node only that server loads)."""
import json

import torch

MARKER = "cross_image_attention_test"  # in a file's safetensors metadata: what the file stands for


# the files the shipped workflows load through UNETLoader: the tiny_models.DIT_FAMILIES family each stands for
DIFFUSION_MODELS = {"flux1-dev.safetensors": "flux-dev", "z_image_turbo_bf16.safetensors": "z-image",
                    "qwen_image_fp8_e4m3fn.safetensors": "qwen-image"}
# the CLIP loaders' types (comfy.sd.CLIPType names) -> the family whose CONDITIONING the stand-in makes
TEXT_FAMILIES = {"FLUX": "flux-dev", "SD3": "sd3", "LUMINA2": "lumina2", "QWEN_IMAGE": "qwen-image"}


def write_diffusion_model(path: str, family: str, seed: int = 0, prefix: str = "") -> dict:
    """A tiny random model of a tiny_models.DIT_FAMILIES family as UNETLoader reads diffusion
    models; returns its weights (prefixed with `prefix`)."""
    from safetensors.torch import save_file

    import tiny_models
    model = tiny_models.DIT_FAMILIES[family][0](seed=seed, output_scale=0.2)
    weights = {prefix + k: v.contiguous() for k, v in model.model.diffusion_model.state_dict().items()}
    save_file(weights, path, metadata={MARKER: json.dumps({"family": family})})
    return weights


def write_sd3_checkpoint(path: str, seed: int = 0) -> None:
    """A checkpoint as SD3.5's single file holds it (CheckpointLoaderSimple): a tiny random SD3
    model and a random full-size 16-channel autoencoder (Flux's layout, SD3's too), no text encoders."""
    from safetensors.torch import load_file, save_file

    import make_test_checkpoint
    write_diffusion_model(path, "sd3", seed, prefix="model.diffusion_model.")
    weights = load_file(path)
    make_test_checkpoint.build_flux_vae(path + ".vae", seed)
    weights.update({"first_stage_model." + k: v for k, v in load_file(path + ".vae").items()})
    save_file(weights, path)
    import os
    os.remove(path + ".vae")


def write_wan_vae(path: str, seed: int = 0, dim: int = 8) -> None:
    """A random Wan 2.1 autoencoder (Qwen-Image's) `dim` channels wide, which VAELoader detects."""
    from safetensors.torch import save_file

    import comfy.ldm.wan.vae
    import tiny_models
    vae = comfy.ldm.wan.vae.WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                   temperal_downsample=[False, True, True], dropout=0.0)
    tiny_models.randomize_(vae, seed)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, path)


def write_text_encoder(path: str) -> None:
    from safetensors.torch import save_file
    save_file({"placeholder": torch.zeros(1)}, path, metadata={MARKER: "text encoder"})


def marker(path: str):
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt") as f:
            return (f.metadata() or {}).get(MARKER)
    except Exception:
        return None


class StandInTextEncoder:
    """CLIP's interface as CLIPTextEncode uses it: tokens from a word table, a context of the tiny
    models' width for `family` and, where the family has one, a pooled vector, both fixed
    functions of the tokens."""
    TOKENS = 16

    def __init__(self, family: str):
        import tiny_models
        self.width, self.pooled = {"flux-dev": (tiny_models.FLUX_CONTEXT, tiny_models.FLUX_POOLED),
                                   "sd3": (tiny_models.SD3_CONTEXT, tiny_models.SD3_POOLED),
                                   "lumina2": (tiny_models.LUMINA_CONTEXT, None),
                                   "qwen-image": (tiny_models.QWEN_CONTEXT, None)}[family]
        self.vocabulary = {}

    def tokenize(self, text: str, **kwargs) -> dict:
        words = [self.vocabulary.setdefault(word, 1 + len(self.vocabulary)) for word in text.split()][:self.TOKENS - 1]
        ids = words + [0] * (self.TOKENS - len(words))
        return {"words": [[(token, 1.0) for token in ids]]}

    def encode_from_tokens_scheduled(self, tokens: dict, **kwargs) -> list:
        ids = torch.tensor([token for token, _ in tokens["words"][0]])
        table = torch.randn(1000, self.width, generator=torch.Generator().manual_seed(0))
        context = table[ids % 1000][None]
        extra = {} if self.pooled is None else {"pooled_output": context.mean(1)[:, :self.pooled]}
        return [[context, extra]]


def install() -> None:
    """Patch comfy.sd's load_clip and load_diffusion_model to give the stand-ins for files marked
    by these tests (every other file loads as always). Idempotent."""
    import comfy.sd
    if getattr(comfy.sd.load_clip, "stand_in", False):
        return
    load_clip, load_diffusion_model = comfy.sd.load_clip, comfy.sd.load_diffusion_model

    def clip(ckpt_paths, embedding_directory=None, clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION, *args, **kwargs):
        if ckpt_paths and all(marker(path) == "text encoder" for path in ckpt_paths):
            # TripleCLIPLoader gives no type: ComfyUI tells SD3's three encoders by their weights
            family = "sd3" if len(ckpt_paths) == 3 else TEXT_FAMILIES.get(clip_type.name)
            if family is None:
                raise ValueError(f"the test stand-in text encoder has no {clip_type.name} form")
            return StandInTextEncoder(family)
        return load_clip(ckpt_paths, embedding_directory, clip_type, *args, **kwargs)

    def diffusion_model(path, *args, **kwargs):
        try:
            return load_diffusion_model(path, *args, **kwargs)
        except Exception:
            described = marker(path)
            if described is None:
                raise
        import comfy.utils

        import tiny_models
        model = tiny_models.DIT_FAMILIES[json.loads(described)["family"]][0](output_scale=0.2)
        model.model.diffusion_model.load_state_dict(comfy.utils.load_torch_file(path), strict=True)
        return model
    clip.stand_in = diffusion_model.stand_in = True
    comfy.sd.load_clip, comfy.sd.load_diffusion_model = clip, diffusion_model
