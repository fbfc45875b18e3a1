"""The attention maps Self-Segmentation reads: the prompt's noun found among its tokens, and a
recorder that computes attention explicitly where the architecture adapter hooks it and keeps
the head-averaged maps."""
import comfy.samplers
import torch

from .architecture import architecture_of
from .runner import make_guider, run_sampler


def token_ids(tokens: dict) -> list:
    """The token ids of the first text encoder's first chunk of a clip.tokenize() result."""
    first = next(iter(tokens.values()))[0]
    return [int(token[0]) for token in first]


def word_positions(clip, prompt: str, word: str) -> list:
    """Positions of `word`'s tokens inside the tokenized prompt (start, end and padding
    tokens are those of an empty prompt)."""
    specials = set(token_ids(clip.tokenize("")))
    prompt_ids = token_ids(clip.tokenize(prompt))
    wanted = [t for t in token_ids(clip.tokenize(word)) if t not in specials]
    for start in range(len(prompt_ids) - len(wanted) + 1):
        if wanted and prompt_ids[start:start + len(wanted)] == wanted:
            return list(range(start, start + len(wanted)))
    raise ValueError(f"word: {word!r} is not a word of the prompt {prompt!r}")


class AttentionRecorder:
    """attn1/attn2 replacements that compute attention explicitly and keep the head-averaged
    maps: self-attention (B, N, N) and attention to the word's tokens (B, N)."""

    def __init__(self, positions):
        self.positions, self.self_maps, self.word_maps = positions, [], []

    def __deepcopy__(self, memo):
        return self

    @staticmethod
    def probabilities(q, k, heads):
        b, n, inner = q.shape
        q, k = (t.reshape(b, -1, heads, inner // heads).transpose(1, 2).float() for t in (q, k))
        return torch.softmax(q @ k.transpose(-1, -2) * (inner // heads) ** -0.5, dim=-1)

    @staticmethod
    def apply(probs, v, heads):
        b, n, inner = v.shape
        v = v.reshape(b, -1, heads, inner // heads).transpose(1, 2).float()
        return (probs @ v).transpose(1, 2).reshape(b, -1, inner)

    def self_attention(self, q, k, v, options):
        probs = self.probabilities(q, k, options["n_heads"])
        self.self_maps.append(probs.mean(dim=1).detach().cpu())
        return self.apply(probs, v, options["n_heads"]).to(q.dtype)

    def cross_attention(self, q, k, v, options):
        probs = self.probabilities(q, k, options["n_heads"])
        self.word_maps.append(probs.mean(dim=1)[..., self.positions].sum(dim=-1).detach().cpu())
        return self.apply(probs, v, options["n_heads"]).to(q.dtype)


def record_attention(model, clip, prompt: str, word: str, latents: torch.Tensor, sigma: float) -> dict:
    """The maps self-segmentation reads, from one model call on `latents` (model space) at noise
    level `sigma` with the prompt encoded by `clip`: "self" (B, N, N) on the token grid "grid"
    of the self-attention site, "word" (B, N') the attention to the noun's tokens on the grid
    "word_grid" of the cross-attention site, "scale" times coarser, and "factor": how many
    latent pixels a side a token of "grid" covers."""
    recorder, patched, architecture = AttentionRecorder([]), model.clone(), architecture_of(model)
    self_site, cross_site = architecture.install_recorder(patched, recorder)
    recorder.positions = word_positions(clip, prompt, word)

    def one_call(k_model, x, sigmas, extra_args=None, callback=None, disable=None):
        k_model(x, sigmas[0] * x.new_ones([x.shape[0]]), **(extra_args or {}))
        return x

    guider = make_guider(patched, clip.encode_from_tokens_scheduled(clip.tokenize(prompt)), None, 1.0)
    run_sampler(guider, comfy.samplers.KSAMPLER(one_call), torch.tensor([sigma, 0.0]), latents)
    shape = tuple(latents.shape[-2:])
    # one entry per part of the batch ComfyUI ran (it may split a call)
    return {"self": torch.cat(recorder.self_maps), "word": torch.cat(recorder.word_maps),
            "grid": architecture.token_grid(self_site.key, shape),
            "word_grid": architecture.token_grid(cross_site.key, shape),
            "scale": cross_site.factor // self_site.factor, "factor": self_site.factor}
