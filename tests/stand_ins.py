"""What the real loaders cannot give a CPU test run of a shipped Flux workflow, and the stand-ins
the tests give instead, through ComfyUI's own loader functions:

- Flux's T5-XXL text encoder has a fixed 4.7 G-parameter configuration (ComfyUI builds it from a
  config file whatever the weights), so DualCLIPLoader's text encoders are placeholder files
  and comfy.sd.load_clip gives, for those, a small stand-in with CLIP's interface (tokenize,
  encode_from_tokens_scheduled) whose CONDITIONING has the tiny Flux models' widths.
- ComfyUI 0.33.0's UNETLoader detects the tiny Flux state dicts itself; 0.3.75's fixes 24 heads
  (a 3072-wide model), so where the real loader fails on a file these tests wrote, the model is
  built directly (tests/tiny_models.py) and given the file's weights.

install() puts both into comfy.sd; the in-process tests call it, and so does the test server of
the browser tests (tests/server_nodes, a custom node only that server loads)."""
import json

import torch

MARKER = "cross_image_attention_test"  # in a file's safetensors metadata: what the file stands for


def write_flux_model(path: str, kind: str = "dev", seed: int = 0) -> None:
    """A tiny random Flux model (tests/tiny_models.py) as UNETLoader reads diffusion models."""
    from safetensors.torch import save_file

    import tiny_models
    model = tiny_models.tiny_flux_model(seed=seed, kind=kind, output_scale=0.2)
    weights = {k: v.contiguous() for k, v in model.model.diffusion_model.state_dict().items()}
    save_file(weights, path, metadata={MARKER: json.dumps({"kind": kind})})


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
    Flux models' width and a pooled vector, both fixed functions of the tokens."""
    TOKENS = 16

    def __init__(self):
        self.vocabulary = {}

    def tokenize(self, text: str, **kwargs) -> dict:
        words = [self.vocabulary.setdefault(word, 1 + len(self.vocabulary)) for word in text.split()][:self.TOKENS - 1]
        ids = words + [0] * (self.TOKENS - len(words))
        return {"t5xxl": [[(token, 1.0) for token in ids]], "l": [[(token, 1.0) for token in ids]]}

    def encode_from_tokens_scheduled(self, tokens: dict, **kwargs) -> list:
        import tiny_models
        ids = torch.tensor([token for token, _ in tokens["t5xxl"][0]])
        table = torch.randn(1000, tiny_models.FLUX_CONTEXT, generator=torch.Generator().manual_seed(0))
        context = table[ids % 1000][None]
        pooled = context.mean(1)[:, :tiny_models.FLUX_POOLED]
        return [[context, {"pooled_output": pooled}]]


def install() -> None:
    """Patch comfy.sd's load_clip and load_diffusion_model to give the stand-ins for files marked
    by these tests (every other file loads as always). Idempotent."""
    import comfy.sd
    if getattr(comfy.sd.load_clip, "stand_in", False):
        return
    load_clip, load_diffusion_model = comfy.sd.load_clip, comfy.sd.load_diffusion_model

    def clip(ckpt_paths, *args, **kwargs):
        if ckpt_paths and all(marker(path) == "text encoder" for path in ckpt_paths):
            return StandInTextEncoder()
        return load_clip(ckpt_paths, *args, **kwargs)

    def diffusion_model(path, *args, **kwargs):
        try:
            return load_diffusion_model(path, *args, **kwargs)
        except Exception:
            described = marker(path)
            if described is None:
                raise
        import comfy.utils

        import tiny_models
        model = tiny_models.tiny_flux_model(kind=json.loads(described)["kind"], output_scale=0.2)
        model.model.diffusion_model.load_state_dict(comfy.utils.load_torch_file(path), strict=True)
        return model
    clip.stand_in = diffusion_model.stand_in = True
    comfy.sd.load_clip, comfy.sd.load_diffusion_model = clip, diffusion_model
