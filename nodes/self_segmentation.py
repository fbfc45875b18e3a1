"""Self-Segmentation: object masks of an inverted image from the model's own attention
(core/segmentation.py), as MASKs for Latent AdaIN or for previewing."""
import comfy.samplers
import torch
import torch.nn.functional as F

from ..core.levels import token_grid
from ..core.segmentation import self_segmentation
from .checks import VAE_SCALE, require_number
from .guided_sampling import make_guider, run_sampler
from .model_info import decoder_attention_levels, decoder_level_factors, require_inversion
from .sockets import ADVANCED, CATEGORY, InversionSocket, io


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


class CrossImageSelfSegmentation(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CrossImageSelfSegmentation",
            display_name="Self-Segmentation",
            category=CATEGORY,
            description=("Self-segmentation (paper, sec. 4.3): runs the model once on the inverted image at a chosen "
                         "step, clusters its pixels by their self-attention (k-means) in the finest decoder level, and "
                         "keeps the clusters that attend to the prompt's noun. Gives MASKs for Latent AdaIN "
                         "(structure_mask, appearance_mask); preview them with a mask preview node."),
            inputs=[
                io.Model.Input("model", tooltip="The model the image was inverted with."),
                io.Clip.Input("clip", tooltip="The text encoder of that model, to encode the prompt and find the noun."),
                InversionSocket.Input("inversion", tooltip="Inversion of the image to segment (structure or appearance)."),
                io.String.Input("prompt", default="a photo of an animal", multiline=True,
                                tooltip="The prompt the image was inverted with."),
                io.String.Input("word", default="animal",
                                tooltip="The noun naming the object (the paper: the domain word); its pixels become the mask."),
                io.Float.Input("step", default=0.29, min=0.0, max=1.0, step=0.01, **ADVANCED,
                               tooltip="Fraction of the inversion's steps at which the attention is read (paper: step 20 of 68). Later is less noisy."),
                io.Int.Input("clusters", default=5, min=2, max=32, **ADVANCED,
                             tooltip="k of the k-means (paper: 5). More clusters cut finer parts."),
                io.Float.Input("ratio", default=1.4, min=1.0, max=10.0, step=0.05, **ADVANCED,
                               tooltip="A cluster is the object when its attention to the noun is this many times the mean of the other clusters but the best (paper: 1.4). Higher keeps less."),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="The object mask at image size (1 = object), one per inverted image.")],
        )

    @classmethod
    def execute(cls, model, clip, inversion, prompt, word, step, clusters, ratio):
        step, ratio = require_number("step", step, 0.0, 1.0), require_number("ratio", ratio, 1.0, 10.0)
        require_inversion(inversion, "inversion", model)
        if not word.strip():
            raise ValueError("word: name the object, e.g. 'animal'")
        recorder = AttentionRecorder(word_positions(clip, prompt, word.strip()))
        patched = model.clone()
        unet = model.get_model_object("diffusion_model")
        for block_id, index in decoder_attention_levels(unet)[0]:
            patched.set_model_attn1_replace(recorder.self_attention, "output", block_id, index)
            patched.set_model_attn2_replace(recorder.cross_attention, "output", block_id, index)
        index = min(round(step * inversion.steps), inversion.steps - 1)
        sigma = float(inversion.sigmas[index])

        def one_call(k_model, x, sigmas, extra_args=None, callback=None, disable=None):
            k_model(x, sigmas[0] * x.new_ones([x.shape[0]]), **(extra_args or {}))
            return x

        guider = make_guider(patched, clip.encode_from_tokens_scheduled(clip.tokenize(prompt)), None, 1.0)
        run_sampler(guider, comfy.samplers.KSAMPLER(one_call), torch.tensor([sigma, 0.0]), inversion.trajectory[index])
        self_map = torch.stack(recorder.self_maps).mean(0)
        word_map = torch.stack(recorder.word_maps).mean(0)
        height, width = inversion.trajectory.shape[-2:]
        factor = decoder_level_factors(unet)[0]  # the finest decoder level with attention
        grid = token_grid(height, width, factor)
        masks = torch.stack([self_segmentation(self_map[b], word_map[b], clusters, ratio)
                             for b in range(self_map.shape[0])]).reshape(-1, 1, *grid)
        # each token covers factor x factor latent pixels (the last row and column may stick out)
        masks = F.interpolate(masks, scale_factor=factor * VAE_SCALE, mode="nearest")
        return io.NodeOutput(masks[:, 0, :height * VAE_SCALE, :width * VAE_SCALE])
