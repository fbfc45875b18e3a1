"""Which model an inversion was made with: an identity key, so that sampling with another model fails
with a clear error."""
import hashlib
import json

import torch


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
