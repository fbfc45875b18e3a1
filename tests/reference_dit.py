"""An independent, deliberately naive Cross-Image Attention on a flow-matching diffusion
transformer, written from the papers (Alaluf et al. 2024, arXiv 2311.03335; Stable Flow, arXiv
2411.14430; Untwisting RoPE, arXiv 2602.05013, with the pack's documented schedule); the
family twins (reference_flux.py, reference_sd3.py, reference_qwen_image.py, reference_lumina.py)
run it on diffusers' own transformers and the DiT parity tests hold the nodes to it. It imports
nothing of the pack and shares none of its code paths: it works on the rectified flow
x_sigma = (1 - sigma) x0 + sigma n with the velocity the transformer predicts, the batch of three
[output, appearance, structure], two full passes per step (with and without the swap), each with
classifier-free guidance as its own pair of passes, attention computed with explicit
probabilities, and AdaIN on the batch after each step.

- Inversion: "euler" runs the Euler step backwards (the velocity at the latent in hand, the
  clean latent asked at the smallest sigma of the model's schedule); "flow" draws every latent
  independently, x_i = (1 - sigma_i) x0 + sigma_i n_i, and keeps the noise maps with which the
  stochastic Euler step (eta 1: down to sigma_d = sigma'^2 / sigma along the velocity, renoised
  up to sigma') lands on the next one.
- The swap (Stable Flow's injection, on the paper's schedule): in the chosen blocks, from step
  `swap_from` on, the output row keeps its queries and its text keys and values and takes the
  appearance row's image keys and values, or on the structure-injection steps the structure
  row's; the contrast clip((P - 1/N) beta + 1/N, 0, 1) acts on its probabilities, N all its keys.
- Positions of the appearance's keys (rotary models): "same"; "shifted": embedded at positions
  whose first column is right after the output's last (re-embedded from its keys before RoPE);
  "attenuated": each pair of the roped key channels on the row and column axes scaled by
  s = h + (1 - h) b, b = its band in its axis (0 highest frequency .. 1 lowest), h = step /
  (steps - 1).
- Guidance and AdaIN as the paper (core of tests/reference.py): v = v_plain + s_i (v_swap -
  v_plain) from step `guidance[2]`, s_i linear from guidance[0] to guidance[1]; AdaIN of the
  output to the appearance after each step in [adain_from, adain_until), on the latents the
  network sees (x itself on a flow).
- Embedded guidance per row (Flux-dev): the output rows the sampler's value, the appearance and
  structure rows the value their inversions were made with."""
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

OUT, APP, STRUCT = 0, 1, 2


@dataclass
class DiTSettings:
    """A transfer on a diffusion transformer; steps index the sampled steps (after `skip`)."""
    sigmas: Tuple[float, ...]      # the schedule, falling to 0
    sigma_floor: float             # the smallest sigma of the model's schedule (the clean end of "euler")
    inversion: str = "flow"        # "flow" (edit-friendly) or "euler"
    skip: int = 0
    blocks: Tuple[int, ...] = ()   # swapped blocks, numbered through the kinds of blocks in order
    swap_from: int = 0
    contrast: float = 1.0
    structure_every: int = 0
    structure_until: int = 0
    guidance: Optional[Tuple[float, float, int]] = None
    adain_from: Optional[int] = None
    adain_until: int = 10 ** 6
    positions: Optional[str] = "same"  # None: no Appearance Positions node (models without RoPE)
    cfg: float = 1.0               # classifier-free guidance of the sampling (1: the prompt alone)
    inversion_cfg: float = 1.0     # and of the inversions
    embedded_guidance: Optional[float] = 3.5  # Flux-dev's, the output rows'
    inversion_guidance: Optional[float] = 3.5  # the appearance and structure rows' (and the inversions')


def adain(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x (C, ...) with y's per-channel mean and std (unbiased variance + 1e-5)."""
    xs, ys = x.flatten(1), y.flatten(1)
    moved = (xs - xs.mean(1, keepdim=True)) / (xs.var(1, keepdim=True) + 1e-5).sqrt()
    return (moved * (ys.var(1, keepdim=True) + 1e-5).sqrt() + ys.mean(1, keepdim=True)).reshape(x.shape)


def rope(keys: torch.Tensor, positions: torch.Tensor, axes_dim, theta: float) -> torch.Tensor:
    """RoPE (Su et al. 2021) of keys (L, H, D) at positions (L, axes): axis a owns the next
    axes_dim[a] channels, its pair j (channels 2j, 2j + 1) turned by the angle
    position * theta^(-2j / axes_dim[a])."""
    positions = positions.to(keys.device).double()
    angles = torch.cat([positions[:, a:a + 1] * theta ** (-torch.arange(0, dim, 2, device=keys.device).double() / dim)
                        for a, dim in enumerate(axes_dim)], dim=1)[:, None]  # (L, 1, D / 2)
    x, y = keys.double().unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack([angles.cos() * x - angles.sin() * y, angles.sin() * x + angles.cos() * y], -1) \
        .flatten(-2).to(keys.dtype)


def load_twin(twin, weights: dict, mapping: dict):
    """`twin` (a diffusers transformer) with a ComfyUI model's `weights`, by a key map in ComfyUI's
    own format (comfy.utils.flux_to_diffusers, mmdit_to_diffusers): each diffusers key from a
    ComfyUI key, (key, (dim, offset, size)) a slice of a fused one, or (key, None, function) a
    function of one. Every ComfyUI weight must be used."""
    state, used = {}, set()
    for key in twin.state_dict():
        source = mapping[key]
        if isinstance(source, str):
            state[key] = weights[source]
        elif source[1] is not None:
            dim, offset, size = source[1]
            state[key] = weights[source[0]].narrow(dim, offset, size)
        else:
            state[key] = source[2](weights[source[0]])
        used.add(source if isinstance(source, str) else source[0])
    left = set(weights) - used
    assert not left, f"ComfyUI weights without a diffusers twin: {sorted(left)[:5]}"
    twin.load_state_dict(state, strict=True)
    return twin.eval()


def set_processors(twin, processor_of) -> None:
    """Every attention module of a diffusers transformer (named like "layers.3.attn") gets
    processor_of(name)."""
    for name, module in twin.named_modules():
        if hasattr(module, "set_processor") and hasattr(module, "processor"):
            module.set_processor(processor_of(name))


class DiTReference:
    """Transfer with the method on a twin. A family's subclass sets `axes_dim` and `theta` (None:
    no rotary positions) and gives `predict` (the twin's velocity for one prompt) and
    `image_positions` (where its image tokens sit, for "shifted"); its attention processors
    call `attend`. `evaluations` counts transformer batch items, `calls` calls."""
    axes_dim: Optional[tuple] = None
    theta: float = 10000.0

    def __init__(self, settings: DiTSettings, prompts: dict):
        """prompts: {"positive": ..., "negative": ...} as the family's predict takes them."""
        self.settings, self.prompts = settings, prompts
        self.evaluations = self.calls = 0
        self.swap, self.step, self.grid = False, None, None

    # -- the swap -------------------------------------------------------------------
    def source(self, block: int) -> Optional[int]:
        s = self.settings
        if not self.swap or self.step < s.swap_from or block not in s.blocks:
            return None
        injects = s.structure_every > 0 and self.step % s.structure_every == 0 and self.step < s.structure_until
        return STRUCT if injects else APP

    def attend(self, block: int, q, k, v, image: slice, raw_k=None) -> torch.Tensor:
        """Joint attention of q, k, v (B, L, H, D), RoPE applied (raw_k: the keys before it), its
        image tokens at `image`, with the block's swap; returns (B, L, H * D)."""
        source = self.source(block)
        if source is not None:
            k, v = k.clone(), v.clone()
            k[OUT, image] = k[source, image] if source == STRUCT else self.appearance_keys(
                None if raw_k is None else raw_k[source, image], k[source, image])
            v[OUT, image] = v[source, image]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
        probs = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
        if source is not None and self.settings.contrast != 1.0:
            mean = 1.0 / probs.shape[-1]
            probs[OUT] = ((probs[OUT] - mean) * self.settings.contrast + mean).clamp(0.0, 1.0)
        return (probs @ v).transpose(1, 2).flatten(2).to(q.dtype)

    def appearance_keys(self, raw: Optional[torch.Tensor], roped: torch.Tensor) -> torch.Tensor:
        """The appearance row's image keys (L, H, D) as the output attends to them."""
        s = self.settings
        if s.positions in (None, "same") or self.axes_dim is None:
            return roped
        if s.positions == "shifted":
            positions = self.image_positions(*self.grid)
            rows, cols = self.grid
            last = float(self.image_positions(rows, cols)[:, 2].max())  # the output's last column
            positions[:, 2] += last + 1 - positions[:, 2].min()
            return rope(raw, positions, self.axes_dim, self.theta)
        progress = self.step / max(1, len(s.sigmas) - 1 - s.skip - 1)
        scales = []
        for axis, dim in enumerate(self.axes_dim):
            band = torch.arange(dim // 2, dtype=torch.float64) / (dim // 2 - 1)
            scales.append(progress + (1 - progress) * band if axis in (1, 2) else torch.ones_like(band))
        return roped * torch.cat(scales).repeat_interleave(2).to(roped)

    # -- the model --------------------------------------------------------------------
    def predict(self, x: torch.Tensor, sigma: float, prompt, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """The twin's velocity for latents x (B, C, ...) at `sigma` with one prompt."""
        raise NotImplementedError

    def image_positions(self, rows: int, cols: int) -> torch.Tensor:
        """(rows * cols, axes) positions of a grid's image tokens, row by row."""
        raise NotImplementedError

    def velocity(self, x: torch.Tensor, sigma: float, guidance: Optional[torch.Tensor], cfg: float) -> torch.Tensor:
        """v_negative + cfg (v_positive - v_negative), each its own pass (cfg 1: the prompt alone)."""
        def one(prompt):
            self.evaluations += x.shape[0]
            self.calls += 1
            with torch.no_grad():
                return self.predict(x, sigma, prompt, guidance)
        positive = one(self.prompts["positive"])
        if cfg == 1.0:
            return positive
        negative = one(self.prompts["negative"])
        return negative + cfg * (positive - negative)

    def guidance_of_rows(self, rows: int, inversion: bool = False) -> Optional[torch.Tensor]:
        s = self.settings
        if s.inversion_guidance is None:
            return None
        values = [s.inversion_guidance] * rows if inversion else [s.embedded_guidance] + [s.inversion_guidance] * (
            rows - 1)
        return torch.tensor(values, dtype=torch.float32)

    # -- inversion --------------------------------------------------------------------
    def invert(self, x0: torch.Tensor, fresh: Optional[torch.Tensor] = None):
        """(xs, zs) over the sampled schedule sigmas[skip:]: xs[i] the latent at it, zs[i] the noise
        map of the step from it (None for "euler")."""
        s = self.settings
        sigmas = s.sigmas[s.skip:]
        n = len(sigmas) - 1
        g = self.guidance_of_rows(1, inversion=True)
        if s.inversion == "euler":
            xs = [None] * n + [x0]
            for i in reversed(range(n)):
                at = max(sigmas[i + 1], s.sigma_floor)
                xs[i] = xs[i + 1] + (sigmas[i] - sigmas[i + 1]) * self.velocity(xs[i + 1], at, g, s.inversion_cfg)
            return torch.stack(xs), None
        xs = [(1 - sigmas[i]) * x0 + sigmas[i] * fresh[i] for i in range(n)] + [x0]
        zs = torch.zeros_like(fresh)
        for i in range(n):
            mean, scale = self.stochastic_step(xs[i], self.velocity(xs[i], sigmas[i], g, s.inversion_cfg), sigmas[i],
                                               sigmas[i + 1])
            if scale > 0:
                zs[i] = (xs[i + 1] - mean) / scale
                xs[i + 1] = mean + scale * zs[i]
            else:
                xs[i + 1] = mean
        return torch.stack(xs), zs

    @staticmethod
    def stochastic_step(x, velocity, sigma, sigma_next):
        """(mean, noise scale) of the stochastic Euler step (eta 1) from sigma to sigma_next."""
        x0 = x - sigma * velocity
        if sigma_next == 0:
            return x0, 0.0
        sigma_down = sigma_next ** 2 / sigma
        euler = x + (sigma_down - sigma) * velocity  # along the flow down to sigma_down
        mean = (1 - sigma_next) / (1 - sigma_down) * euler
        return mean, math.sqrt(sigma_next ** 2 - (sigma_down * (1 - sigma_next) / (1 - sigma_down)) ** 2)

    # -- sampling -------------------------------------------------------------------
    def transfer(self, appearance: torch.Tensor, structure: torch.Tensor, fresh_appearance=None,
                 fresh_structure=None) -> torch.Tensor:
        s = self.settings
        (xs_app, zs_app), (xs_struct, zs_struct) = self.invert(appearance, fresh_appearance), \
            self.invert(structure, fresh_structure)
        sigmas = s.sigmas[s.skip:]
        n = len(sigmas) - 1
        x = [xs_struct[0], xs_app[0], xs_struct[0]]
        zs = [zs_struct, zs_app, zs_struct]
        scales = torch.linspace(s.guidance[0], s.guidance[1], n, dtype=torch.float64) if s.guidance else None
        for i in range(n):
            self.step = i
            batch = torch.cat(x)
            guidance = self.guidance_of_rows(3)
            self.swap = True
            v_swap = self.velocity(batch, sigmas[i], guidance, s.cfg)
            self.swap = False
            v_plain = self.velocity(batch, sigmas[i], guidance, s.cfg)
            v = v_swap
            if scales is not None and i >= s.guidance[2]:
                v = v_plain + float(scales[i]) * (v_swap - v_plain)
            for row in range(3):
                if s.inversion == "euler":
                    x[row] = x[row] + (sigmas[i + 1] - sigmas[i]) * v[row:row + 1]
                else:
                    mean, scale = self.stochastic_step(x[row], v[row:row + 1], sigmas[i], sigmas[i + 1])
                    x[row] = mean + scale * zs[row][i]
            if s.adain_from is not None and s.adain_from <= i < s.adain_until:
                x[OUT] = adain(x[OUT][0], x[APP][0])[None]
        return x[OUT]
