"""An independent, deliberately naive Cross-Image Attention on Flux, written from the papers
(Alaluf et al. 2024, arXiv 2311.03335; Stable Flow, arXiv 2411.14430; Untwisting RoPE, arXiv
2602.05013, with the pack's documented schedule) on diffusers' FluxTransformer2DModel; the Flux
parity tests hold the nodes to it. It imports nothing of the pack and shares none of its code
paths: it works on the rectified flow x_sigma = (1 - sigma) x0 + sigma n with the velocity the
transformer predicts, the batch of three [output, appearance, structure], two full passes per
step (with and without the swap), attention computed with explicit probabilities, and AdaIN on
the batch after each step.

- Inversion: "euler" runs the Euler step backwards (the velocity at the latent in hand, the
  clean latent asked at the smallest sigma of the model's schedule); "flow" draws every latent
  independently, x_i = (1 - sigma_i) x0 + sigma_i n_i, and keeps the noise maps with which the
  stochastic Euler step (eta 1: down to sigma_d = sigma'^2 / sigma along the velocity, renoised
  up to sigma') lands on the next one.
- The swap (Stable Flow's injection, on the paper's schedule): in the chosen blocks, from step
  `swap_from` on, the output row keeps its queries and its text keys and values and takes the
  appearance row's image keys and values, or on the structure-injection steps the structure
  row's; the contrast clip((P - 1/N) beta + 1/N, 0, 1) acts on its probabilities, N all its keys.
- Positions of the appearance's keys: "same"; "shifted": embedded at positions the output's
  width further right (re-embedded from its keys before RoPE); "attenuated": each pair of the
  roped key channels on the row and column axes scaled by s = h + (1 - h) b, b = its band in its
  axis (0 highest frequency .. 1 lowest), h = step / (steps - 1).
- Guidance and AdaIN as the paper (core of tests/reference.py): v = v_plain + s_i (v_swap -
  v_plain) from step `guidance[2]`, s_i linear from guidance[0] to guidance[1]; AdaIN of the
  output to the appearance after each step in [adain_from, adain_until), on the latents the
  network sees (x itself on a flow).
- Embedded guidance per row: the output rows the sampler's value, the appearance and structure
  rows the value their inversions were made with."""
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

OUT, APP, STRUCT = 0, 1, 2


def flux_twin(model, **config):
    """A diffusers FluxTransformer2DModel with a ComfyUI Flux model's weights, mapped by
    ComfyUI's own key map (comfy.utils.flux_to_diffusers: each diffusers key from a ComfyUI key,
    a slice of one, or a function of one)."""
    import comfy.utils
    from diffusers import FluxTransformer2DModel
    params = model.model.diffusion_model.params
    twin = FluxTransformer2DModel(
        patch_size=1, in_channels=params.in_channels * params.patch_size ** 2, num_layers=params.depth,
        num_single_layers=params.depth_single_blocks, attention_head_dim=params.hidden_size // params.num_heads,
        num_attention_heads=params.num_heads, joint_attention_dim=params.context_in_dim,
        pooled_projection_dim=params.vec_in_dim, guidance_embeds=params.guidance_embed,
        axes_dims_rope=tuple(params.axes_dim))
    weights = model.model.diffusion_model.state_dict()
    mapping = comfy.utils.flux_to_diffusers({"depth": params.depth, "depth_single_blocks": params.depth_single_blocks,
                                             "hidden_size": params.hidden_size}, output_prefix="")
    state, used = {}, set()
    for key in twin.state_dict():
        source = mapping[key]
        if isinstance(source, str):
            state[key] = weights[source]
        elif source[1] is not None:  # (key, (dim, offset, size)): a slice of a fused ComfyUI weight
            dim, offset, size = source[1]
            state[key] = weights[source[0]].narrow(dim, offset, size)
        else:  # (key, None, function)
            state[key] = source[2](weights[source[0]])
        used.add(source if isinstance(source, str) else source[0])
    left = set(weights) - used
    assert not left, f"ComfyUI weights without a diffusers twin: {sorted(left)[:5]}"
    twin.load_state_dict(state, strict=True)
    return twin.eval()


@dataclass
class FluxSettings:
    """A transfer on Flux; steps index the sampled steps (after `skip`)."""
    sigmas: Tuple[float, ...]      # the schedule, falling to 0
    sigma_floor: float             # the smallest sigma of the model's schedule (the clean end of "euler")
    inversion: str = "flow"        # "flow" (edit-friendly) or "euler"
    skip: int = 0
    blocks: Tuple[int, ...] = ()   # swapped blocks: double blocks 0 .. n-1, then single blocks
    swap_from: int = 0
    contrast: float = 1.0
    structure_every: int = 0
    structure_until: int = 0
    guidance: Optional[Tuple[float, float, int]] = None
    adain_from: Optional[int] = None
    adain_until: int = 10 ** 6
    positions: str = "same"
    embedded_guidance: float = 3.5  # the output rows'
    inversion_guidance: float = 3.5  # the appearance and structure rows' (and the inversions')


def adain(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x (C, H, W) with y's per-channel mean and std (unbiased variance + 1e-5)."""
    xs, ys = x.flatten(1), y.flatten(1)
    moved = (xs - xs.mean(1, keepdim=True)) / (xs.var(1, keepdim=True) + 1e-5).sqrt()
    return (moved * (ys.var(1, keepdim=True) + 1e-5).sqrt() + ys.mean(1, keepdim=True)).reshape(x.shape)


class SwapAttention:
    """A diffusers attention processor for one block: FluxAttnProcessor's computation with the
    probabilities explicit, and the swap its owner's step asks for."""

    def __init__(self, owner: "FluxReference", block: int):
        self.owner, self.block = owner, block

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb
        owner = self.owner

        def heads(t):
            return t.unflatten(-1, (-1, attn.head_dim))  # (B, L, H, D)
        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        q, k = attn.norm_q(q), attn.norm_k(k)
        if encoder_hidden_states is not None:  # a double block: the text is projected apart, then goes first
            eq, ek, ev = (heads(f(encoder_hidden_states)) for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
            q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
        text = owner.text_tokens
        raw_k = k
        q, k = (apply_rotary_emb(t, image_rotary_emb, sequence_dim=1) for t in (q, k))
        source = owner.source(self.block)
        if source is not None:
            k, v = k.clone(), v.clone()
            k[OUT, text:] = k[source, text:] if source == STRUCT else owner.appearance_keys(raw_k[source, text:],
                                                                                           k[source, text:])
            v[OUT, text:] = v[source, text:]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
        probs = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
        if source is not None and owner.settings.contrast != 1.0:
            mean = 1.0 / probs.shape[-1]
            probs[OUT] = ((probs[OUT] - mean) * owner.settings.contrast + mean).clamp(0.0, 1.0)
        out = (probs @ v).transpose(1, 2).flatten(2).to(q.dtype)
        if encoder_hidden_states is None:
            return out
        text_out, image_out = out[:, :text], out[:, text:]
        return attn.to_out[1](attn.to_out[0](image_out)), attn.to_add_out(text_out)


class FluxReference:
    """Transfer with the method on Flux. `evaluations` counts transformer batch items, `calls` calls."""

    def __init__(self, twin, settings: FluxSettings, context: torch.Tensor, pooled: torch.Tensor):
        self.twin, self.settings, self.context, self.pooled = twin, settings, context, pooled
        self.text_tokens = context.shape[1]
        self.evaluations = self.calls = 0
        self.swap, self.step, self.grid = False, None, None
        self.double = twin.config.num_layers
        processors = {}
        for name in twin.attn_processors:
            kind, index = name.split(".")[0], int(name.split(".")[1])
            processors[name] = SwapAttention(self, index + (self.double if kind == "single_transformer_blocks" else 0))
        twin.set_attn_processor(processors)

    # -- the swap -------------------------------------------------------------------
    def source(self, block: int) -> Optional[int]:
        s = self.settings
        if not self.swap or self.step < s.swap_from or block not in s.blocks:
            return None
        injects = s.structure_every > 0 and self.step % s.structure_every == 0 and self.step < s.structure_until
        return STRUCT if injects else APP

    def appearance_keys(self, raw: torch.Tensor, roped: torch.Tensor) -> torch.Tensor:
        """The appearance row's image keys (L, H, D) as the output attends to them."""
        s = self.settings
        if s.positions == "same":
            return roped
        if s.positions == "shifted":
            from diffusers.models.embeddings import apply_rotary_emb
            rows, cols = self.grid
            ids = self.image_ids(rows, cols).to(raw.device)
            ids[:, 2] += cols
            return apply_rotary_emb(raw[None], self.twin.pos_embed(ids), sequence_dim=1)[0]
        axes = self.twin.config.axes_dims_rope
        progress = self.step / max(1, len(s.sigmas) - 1 - s.skip - 1)
        scales = []
        for axis, dim in enumerate(axes):
            band = torch.arange(dim // 2, dtype=torch.float64) / (dim // 2 - 1)
            scales.append(progress + (1 - progress) * band if axis in (1, 2) else torch.ones_like(band))
        scales = torch.cat(scales).repeat_interleave(2).to(roped)
        return roped * scales

    # -- the model --------------------------------------------------------------------
    @staticmethod
    def image_ids(rows: int, cols: int) -> torch.Tensor:
        ids = torch.zeros(rows, cols, 3)
        ids[..., 1] = torch.arange(rows)[:, None]
        ids[..., 2] = torch.arange(cols)[None]
        return ids.reshape(-1, 3)

    def velocity(self, x: torch.Tensor, sigma: float, guidance: torch.Tensor) -> torch.Tensor:
        """The transformer's velocity for latents x (B, C, H, W) at `sigma`, embedded guidance per row."""
        self.evaluations += x.shape[0]
        self.calls += 1
        b, c, h, w = x.shape
        rows, cols = h // 2, w // 2
        self.grid = rows, cols
        packed = x.reshape(b, c, rows, 2, cols, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, c * 4)
        device = x.device
        with torch.no_grad():
            out = self.twin(hidden_states=packed, encoder_hidden_states=self.context.expand(b, -1, -1),
                            pooled_projections=self.pooled.expand(b, -1),
                            timestep=torch.full((b,), sigma, device=device),
                            img_ids=self.image_ids(rows, cols).to(device),
                            txt_ids=torch.zeros(self.text_tokens, 3, device=device), guidance=guidance.to(device),
                            return_dict=False)[0]
        return out.reshape(b, rows, cols, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)

    def guidance_of_rows(self, rows: int) -> torch.Tensor:
        s = self.settings
        values = [s.embedded_guidance] + [s.inversion_guidance] * (rows - 1)
        return torch.tensor(values, dtype=torch.float32)

    # -- inversion --------------------------------------------------------------------
    def invert(self, x0: torch.Tensor, fresh: Optional[torch.Tensor] = None):
        """(xs, zs) over the sampled schedule sigmas[skip:]: xs[i] the latent at it, zs[i] the noise
        map of the step from it (None for "euler")."""
        s = self.settings
        sigmas = s.sigmas[s.skip:]
        n = len(sigmas) - 1
        g = torch.tensor([s.inversion_guidance])
        if s.inversion == "euler":
            xs = [None] * n + [x0]
            for i in reversed(range(n)):
                at = max(sigmas[i + 1], s.sigma_floor)
                xs[i] = xs[i + 1] + (sigmas[i] - sigmas[i + 1]) * self.velocity(xs[i + 1], at, g)
            return torch.stack(xs), None
        xs = [(1 - sigmas[i]) * x0 + sigmas[i] * fresh[i] for i in range(n)] + [x0]
        zs = torch.zeros_like(fresh)
        for i in range(n):
            mean, scale = self.stochastic_step(xs[i], self.velocity(xs[i], sigmas[i], g), sigmas[i], sigmas[i + 1])
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
            v_swap = self.velocity(batch, sigmas[i], guidance)
            self.swap = False
            v_plain = self.velocity(batch, sigmas[i], guidance)
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
