"""What a ComfyUI MODEL is: an identity key for inversions, and its decoder attention layers."""
import hashlib
import json

from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample


def model_key(model) -> str:
    """Identifies the model family and configuration (not the exact weights): the class,
    the UNet configuration and the noise schedule. Inversions remember it so that sampling
    with a different kind of model fails with a clear error."""
    base = model.model
    sampling = model.get_model_object("model_sampling")
    sigmas = getattr(sampling, "sigmas", None)
    description = {
        "model": type(base).__name__,
        "sampling": type(sampling).__name__,
        "unet": {k: repr(v) for k, v in sorted(base.model_config.unet_config.items())},
        "sigmas": [round(float(s), 5) for s in sigmas[::50]] if sigmas is not None else None,
    }
    digest = hashlib.sha1(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
    return f"{type(base).__name__}:{digest}"


def decoder_attention_levels(diffusion_model) -> list:
    """The UNet decoder's self-attention layers grouped by resolution level, finest first.

    Level 0 is the finest decoder resolution that has attention (latent/1 on SD1.5,
    latent/2 on SDXL). Each level is a list of (output block id, transformer index) keys
    as ComfyUI's attn1 replace patches use them. Found from the module tree, so it does not
    depend on block numbers or image sizes."""
    factor = sum(isinstance(m, Downsample) for block in diffusion_model.input_blocks for m in block)
    by_factor = {}
    for block_id, block in enumerate(diffusion_model.output_blocks):
        for module in block:
            if isinstance(module, SpatialTransformer):
                keys = by_factor.setdefault(factor, [])
                keys += [(block_id, index) for index in range(len(module.transformer_blocks))]
        factor -= sum(isinstance(m, Upsample) for m in block)
    return [by_factor[f] for f in sorted(by_factor)]


def require_inversion(value, name: str, model=None):
    """Check that input `name` is an inversion (made with `model`, when given); return it."""
    from ..core.inversion import Inversion
    if not isinstance(value, Inversion):
        raise ValueError(f"{name}: expected an inversion from an Invert node, got {type(value).__name__}")
    if model is not None and value.model_key != model_key(model):
        raise ValueError(f"{name}: this inversion was made with a different model; invert with the same model")
    return value


def parse_levels(text: str, available: int, name: str = "levels") -> tuple:
    """'0,1' -> (0, 1), checked against the model's number of decoder attention levels."""
    try:
        levels = tuple(sorted({int(part) for part in text.replace(" ", "").split(",") if part}))
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated level numbers like '0,1', got {text!r}") from None
    if not levels:
        raise ValueError(f"{name}: choose at least one decoder level, e.g. '0,1'")
    bad = [level for level in levels if not 0 <= level < available]
    if bad:
        raise ValueError(f"{name}: this model's decoder has attention at {available} resolution levels "
                         f"(0 = finest .. {available - 1}); {bad} do not exist")
    return levels
