"""What the parity tests share: the tiny SD1.5-family world (the ComfyUI model and its diffusers
twin with the same random weights, prompt contexts, clean latents of a non-square 8x12 size,
object masks), the DDPM inversions' draws, the tolerance and how outputs are compared."""
import torch

import tiny_models
from reference import Settings, diffusers_twin

HEIGHT, WIDTH = 8, 12
# float32 round-off (summation order in attention and convolutions, Ho's vs DDIM's form of the
# same DDPM step) grows through the steps; seen: 4e-5 at most on latents of std ~1.
TOLERANCE = 1e-4
SEEDS = {"appearance": 1, "structure": 2}  # the seeds of the latents' Invert (DDPM) nodes


def make_world(more: dict = None) -> dict:
    """The ComfyUI model and its twin, prompt contexts (cond, uncond), the structure's and the
    appearance's clean latents (1, 4, 8, 12) and their object masks (boolean, latent size), and
    `more` latents {name: (height, width)}."""
    model = tiny_models.tiny_model(seed=11, output_scale=0.2)
    g = torch.Generator().manual_seed(5)
    contexts = torch.randn(2, 1, 8, tiny_models.CONTEXT_DIM, generator=g)
    latents = torch.randn(2, 1, 4, HEIGHT, WIDTH, generator=g)
    object_masks = torch.zeros(2, HEIGHT, WIDTH, dtype=torch.bool)
    object_masks[0, 2:7, 3:10] = True   # structure's object
    object_masks[1, 1:8, 2:7] = True    # appearance's object
    g = torch.Generator().manual_seed(9)
    extra = {name: torch.randn(1, 4, *size, generator=g) for name, size in (more or {}).items()}
    return {"model": model, "twin": diffusers_twin(model), "cond": contexts[0], "uncond": contexts[1],
            "structure": latents[0], "appearance": latents[1], "masks": object_masks, **extra}


def fresh_draws(seed: int, s: Settings, size=(HEIGHT, WIDTH)) -> torch.Tensor:
    """The DDPM inversion's independent draws for all steps: the skipped steps' draws are
    arbitrary (never used); the others are those the Invert (DDPM) node makes from its seed."""
    used = torch.randn((s.steps - s.skip, 1, 4, *size), generator=torch.Generator().manual_seed(seed))
    unused = torch.randn((s.skip, 1, 4, *size), generator=torch.Generator().manual_seed(1000 + seed))
    return torch.cat([unused, used])


def image_mask(latent_mask: torch.Tensor) -> torch.Tensor:
    """A MASK (1, 8H, 8W) at image size whose bilinear resize to the latent is `latent_mask` (H, W)."""
    return latent_mask.float().repeat_interleave(8, 0).repeat_interleave(8, 1)[None]


def max_difference(a, b) -> float:
    return float((a - b).abs().max())


# The prompt of the world's random context (its tokens index the context) and its noun, whose
# attention in this random model singles out a part of both images for the official segmentor
PROMPT, NOUN = "a photo of animal", "animal"
NOUN_TOKEN = 4  # its position among the prompt's tokens: after the start token and three words
# Self-Segmentation's clusters and ratio in the world: random weights give self-attention rows
# without cluster structure, where k-means with the paper's k = 5 has many optima as good as
# each other (any two implementations pick different ones); 2-means has one here, and its
# clusters differ in their attention to the noun by 14% and 25%.
CLUSTERS, RATIO = 2, 1.1


class PromptClip:
    """ComfyUI's CLIP as Self-Segmentation uses it, on the world's random prompt context: tokenize()
    gives CLIP-like token ids (start, one per word, end, end ... to the context's 8 tokens),
    encode_from_tokens_scheduled() the CONDITIONING of the context."""
    START, END = 49406, 49407

    def __init__(self, context: torch.Tensor):
        self.context, self.vocabulary = context, {}

    def tokenize(self, text: str) -> dict:
        words = [self.vocabulary.setdefault(word, 1000 + len(self.vocabulary)) for word in text.split()]
        ids = [self.START] + words + [self.END] * (self.context.shape[1] - 1 - len(words))
        return {"l": [[(token, 1.0) for token in ids]]}

    def encode_from_tokens_scheduled(self, tokens: dict) -> list:
        return [[self.context, {}]]
