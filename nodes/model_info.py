"""What a ComfyUI MODEL is: an identity key for inversions, and its decoder attention layers."""
import hashlib
import json

import torch

from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample


def model_key(model) -> str:
    """Identifies the model an inversion was made with, as "kind:weights": the kind is the
    class, the UNet configuration, the prediction type and the noise schedule; the weights are
    a fingerprint of the effective weights (weight_fingerprint). Inversions remember it so that
    sampling with another model fails with a clear error."""
    base = model.model
    sampling = model.get_model_object("model_sampling")
    sigmas = getattr(sampling, "sigmas", None)
    kind = {
        "model": type(base).__name__,
        # ComfyUI builds the sampling class per model (class ModelSampling(Discrete, EPS or V ...)):
        # its bases, not its name, say the prediction type
        "sampling": [cls.__name__ for cls in type(sampling).__mro__],
        "unet": {k: repr(v) for k, v in sorted(base.model_config.unet_config.items())},
        "sigmas": [round(float(s), 5) for s in sigmas[::50]] if sigmas is not None else None,
    }
    return f"{type(base).__name__}.{digest(kind)}:{weight_fingerprint(model)}"


def weight_fingerprint(model) -> str:
    """A digest of a few values spread through every UNet weight and every weight patch
    (LoRAs, merges: ModelPatcher.patches, with their strengths). Reading 8 values a tensor
    tells checkpoints, fine-tunes and patched models apart without hashing gigabytes."""
    def sample(tensor):
        if type(tensor) not in (torch.Tensor, torch.nn.Parameter):  # e.g. quantized weight classes: described
            return [type(tensor).__name__, str(tensor.dtype)]
        flat = tensor.detach().reshape(-1)
        return flat[::max(1, flat.numel() // 8)][:8].float().cpu().tolist() if flat.numel() else []

    def tensors_in(value):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from tensors_in(item)
        elif hasattr(value, "weights"):  # ComfyUI's weight adapters (LoRA, LoHa, ...)
            yield from tensors_in(value.weights)

    # while ComfyUI has a patched model loaded, its weights hold the patches and the originals
    # are in the patcher's backup: read those, so the key does not depend on what is loaded
    backup = getattr(model, "backup", {})
    weights = [(name, list(t.shape), sample(backup[name].weight if name in backup else t))
               for name, t in model.model.state_dict().items() if name.startswith("diffusion_model.")]
    patches = [(key, [(entry[0], entry[2], [sample(t) for t in tensors_in(entry[1])]) for entry in entries])
               for key, entries in sorted(model.patches.items()) if key.startswith("diffusion_model.")]
    return digest({"weights": weights, "patches": patches})


def digest(description) -> str:
    return hashlib.sha1(json.dumps(description, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def decoder_attention_levels(diffusion_model) -> list:
    """The UNet decoder's self-attention layers grouped by resolution level, finest first.

    Level 0 is the finest decoder resolution that has attention (latent/1 on SD1.5,
    latent/2 on SDXL). Each level is a list of (output block id, transformer index) keys
    as ComfyUI's attn1 replace patches use them. Found from the module tree, so it does not
    depend on block numbers or image sizes."""
    return list(_decoder_attention(diffusion_model).values())


def decoder_level_factors(diffusion_model) -> list:
    """How many times coarser than the latent each decoder attention level is, finest first."""
    return [2 ** downsamples for downsamples in _decoder_attention(diffusion_model)]


def _decoder_attention(diffusion_model) -> dict:
    """{number of downsamplings: [(output block id, transformer index), ...]}, finest first."""
    factor = sum(isinstance(m, Downsample) for block in diffusion_model.input_blocks for m in block)
    by_factor = {}
    for block_id, block in enumerate(diffusion_model.output_blocks):
        for module in block:
            if isinstance(module, SpatialTransformer):
                keys = by_factor.setdefault(factor, [])
                keys += [(block_id, index) for index in range(len(module.transformer_blocks))]
        factor -= sum(isinstance(m, Upsample) for m in block)
    return {f: by_factor[f] for f in sorted(by_factor)}


def layer_name(block_id: int, index: int) -> str:
    """How errors name a decoder self-attention layer: output block id, transformer index."""
    return f"output.{block_id}.{index}"


def require_inversion(value, name: str, model=None):
    """Check that input `name` is an inversion (made with `model`, when given); return it."""
    from ..core.inversion import Inversion
    if not isinstance(value, Inversion):
        raise ValueError(f"{name}: expected an inversion from an Invert node, got {type(value).__name__}")
    if model is not None:
        made_with, given = value.model_key.split(":")[0], model_key(model)
        if value.model_key != given:
            what = ("other weights (another checkpoint or fine-tune, or other LoRAs or weight patches)"
                    if made_with == given.split(":")[0] else
                    "another kind of model (architecture, prediction type or noise schedule)")
            raise ValueError(f"{name}: this inversion was made with a different model than the one connected "
                             f"here: {what}. Invert with the MODEL you sample with")
    return value


def parse_levels(text: str, available: int, name: str = "levels", auto=None) -> tuple:
    """'0,1' -> (0, 1), checked against the model's number of decoder attention levels;
    'auto' -> `auto` (the levels worked out for the model and image)."""
    if text.strip().lower() == "auto" and auto is not None:
        return tuple(auto)
    try:
        levels = tuple(sorted({int(part) for part in text.replace(" ", "").split(",") if part}))
    except ValueError:
        raise ValueError(f"{name}: expected 'auto' or comma-separated level numbers like '0,1', got {text!r}") from None
    if not levels:
        raise ValueError(f"{name}: choose at least one decoder level, e.g. '0,1', or 'auto'")
    bad = [level for level in levels if not 0 <= level < available]
    if bad:
        raise ValueError(f"{name}: this model's decoder has attention at {available} resolution levels "
                         f"(0 = finest .. {available - 1}); {bad} do not exist")
    return levels
