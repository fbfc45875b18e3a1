"""An independent, deliberately naive Cross-Image Attention written from the paper (Alaluf et al.
2024) and the official code's algorithm, restated in numbers, on diffusers'
UNet2DConditionModel; the parity tests hold the nodes to it. It imports nothing of
the pack and shares none of its code paths: it works like the paper's code, on
variance-preserving latents with DDPM arithmetic on alphas_cumprod, the batch of three
[output, appearance, structure], two full UNet passes per step (with and without the swap),
attention maps materialised whole, and AdaIN on the batch after each step.

Where the pack differs from the official code on purpose (docs/method.md, "Where this differs
from the paper's code, on purpose"), this follows the pack: the attention sees the step being
taken (no one-step lag) and the last step ends at alphas_cumprod = 1 (`final_abar`; the
official code uses alphas_cumprod[0]).

Regions (`Region`, `Reference.transfer(regions=...)`): several appearances, each inverted and
denoised in its own rows of the batch [output, appearance 0, ..., appearance R-1, structure],
and masks that share the output among them. On swap steps that are not structure-injection
steps the output's decoder self-attention at the swapped grids is
    sum_r w_r * CA_r + own * SELF
with w_r region r's share of each token (its structure mask, pooled to the token grid), CA_r
the contrast attention over region r's appearance keys inside its appearance mask, and SELF
plain attention over the output's own keys; latent AdaIN then runs once per region within its
masks. One region without masks is exactly the computation above.

Self-segmentation (`segment`, `Reference.segmentation_maps`, `transfer(segmentation=...)`): the
official segmentor restated, reading the last self-attention layer of the finest grid and the
cross-attention of the next coarser grid of one UNet pass, as its resolution-keyed store keeps
them."""
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

OUT, APP, STRUCT = 0, 1, 2  # rows of the sampling batch (with regions: OUT, the appearances, STRUCT last)


def diffusers_twin(model):
    """A diffusers UNet with a ComfyUI SD1.5- or SDXL-family model's architecture and weights
    (SDXL's vector conditioning `y` becomes diffusers' "text_time" added embedding)."""
    from diffusers import UNet2DConditionModel
    import comfy.utils
    config = model.model.model_config.unet_config
    levels, blocks = len(config["channel_mult"]), config["num_res_blocks"]
    # transformer depth per level (ComfyUI lists it per input block)
    depth = [config["transformer_depth"][level * blocks[0]] for level in range(levels)]
    channels = [config["model_channels"] * m for m in config["channel_mult"]]
    # diffusers' attention_head_dim is the number of heads; ComfyUI gives it or the channels per head
    heads = [config["num_heads"] if config["num_heads"] > 0 else c // config["num_head_channels"] for c in channels]
    added = {}
    if config.get("adm_in_channels"):  # SDXL: y = [pooled text, 6 size embeddings of 256]
        assert config.get("num_classes") == "sequential"
        added = dict(addition_embed_type="text_time", addition_time_embed_dim=256,
                     projection_class_embeddings_input_dim=config["adm_in_channels"])
    twin = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=blocks[0], block_out_channels=channels,
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depth],
        up_block_types=["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depth)],
        cross_attention_dim=config["context_dim"], attention_head_dim=heads,
        transformer_layers_per_block=[max(d, 1) for d in depth], norm_num_groups=32,
        use_linear_projection=config.get("use_linear_in_transformer", False), **added)
    mapping = comfy.utils.unet_to_diffusers(config)
    for ours, theirs in (("0.0", "linear_1"), ("0.2", "linear_2")):  # label_emb = add_embedding
        for kind in ("weight", "bias"):
            mapping.setdefault(f"add_embedding.{theirs}.{kind}", f"label_emb.{ours}.{kind}")
    weights = model.model.diffusion_model.state_dict()
    # the map lists every key a UNet of this shape may have (label_emb as both class_embedding
    # and add_embedding): keep those both UNets have, and check that no ComfyUI weight is left
    keys = twin.state_dict().keys()
    state = {key: weights[comfy_key] for key, comfy_key in mapping.items() if comfy_key in weights and key in keys}
    left = set(weights) - {mapping[key] for key in state}
    assert not left, f"ComfyUI weights without a diffusers twin: {sorted(left)[:5]}"
    twin.load_state_dict(state, strict=True)
    return twin.eval()


def sd15_alphas_cumprod(train_steps: int = 1000) -> torch.Tensor:
    """Scaled-linear betas from 0.00085 to 0.012 (SD1.5's scheduler config), in float64."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, train_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def leading_timesteps(steps: int, train_steps: int = 1000) -> list:
    """DDIMScheduler's "leading" spacing with steps_offset 1: 991, 981, ..., 1 for 100 steps."""
    ratio = train_steps // steps
    return [i * ratio + 1 for i in reversed(range(steps))]


@dataclass
class Settings:
    """The official defaults; step numbers index the sampling steps (68 at the defaults)."""
    inversion: str = "ddpm"        # "ddpm" (edit-friendly, eta 1) or "ddim" (eta 0)
    steps: int = 100
    skip: int = 32                 # sampling starts at timesteps[skip] (t = 671)
    inversion_cfg: float = 3.5
    grids: Tuple[int, ...] = (1, 2)  # decoder self-attention at latent/1 and latent/2 tokens swaps
    swap_from: int = 10
    contrast: float = 1.67
    structure_every: int = 5       # official: step % 5 == 0 and step < 40 takes the structure's K, V
    structure_until: int = 40
    guidance: Optional[Tuple[float, float, int]] = (3.5, 1.75, 10)  # first scale, last scale, from step
    adain_from: Optional[int] = 20  # None: no AdaIN
    adain_until: int = 100
    final_abar: float = 1.0
    prediction: str = "eps"        # what the UNet predicts: "eps" or "v" (SD2.x 768-v)


def adain(x: torch.Tensor, y: torch.Tensor, x_mask=None, y_mask=None) -> torch.Tensor:
    """x (C, H, W) with y's per-channel mean and std (unbiased variance + 1e-5), over and
    within boolean masks (H, W) when given."""
    xs = x.flatten(1) if x_mask is None else x.flatten(1)[:, x_mask.flatten()]
    ys = y.flatten(1) if y_mask is None else y.flatten(1)[:, y_mask.flatten()]
    x_mean, y_mean = xs.mean(1, keepdim=True), ys.mean(1, keepdim=True)
    x_std, y_std = (xs.var(1, keepdim=True) + 1e-5).sqrt(), (ys.var(1, keepdim=True) + 1e-5).sqrt()
    moved = (xs - x_mean) / x_std * y_std + y_mean
    out = x.clone().flatten(1)
    if x_mask is None:
        out = moved
    else:
        out[:, x_mask.flatten()] = moved
    return out.reshape(x.shape)


@dataclass
class Region:
    """One appearance of a regional transfer. Masks are float tensors in [0, 1] at latent size:
    structure_mask (H, W) on the structure's latent (the output tokens this appearance gives
    its look to; only region 0 may leave it out: it then takes what the others leave),
    appearance_mask (Ha, Wa) on this appearance's latent (the keys it lends; None: all).
    fresh: the DDPM inversion's independent draws (steps, 1, C, Ha, Wa)."""
    appearance: torch.Tensor
    structure_mask: Optional[torch.Tensor] = None
    appearance_mask: Optional[torch.Tensor] = None
    fresh: Optional[torch.Tensor] = None


def region_shares(structure_masks: List[Optional[torch.Tensor]], size) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Each region's share of every latent pixel and the output's own share: region 0 without
    a mask takes 1 - min(1, sum of the others); where the shares sum above 1 each is divided by
    that sum; own = 1 - sum of the shares."""
    if any(mask is None for mask in structure_masks[1:]):
        raise ValueError("only region 0 may come without a structure mask")
    shares = [None if mask is None else mask.to(torch.float32) for mask in structure_masks]
    if shares[0] is None:
        others = torch.zeros(size, dtype=torch.float32)
        for share in shares[1:]:
            others = others + share
        shares[0] = 1 - others.clamp(max=1.0)
    total = torch.zeros(size, dtype=torch.float32)
    for share in shares:
        total = total + share
    over = total > 1
    shares = [torch.where(over, share / total, share) for share in shares]
    summed = torch.zeros(size, dtype=torch.float32)
    for share in shares:
        summed = summed + share
    return shares, 1 - summed


def pool(mask: torch.Tensor, grid) -> torch.Tensor:
    """A latent-size (h, w) map averaged over a token grid (rows, cols), flattened row-major."""
    return F.adaptive_avg_pool2d(mask[None, None].to(torch.float32), grid).flatten()


class NaiveAttention:
    """A diffusers attention processor computing softmax(QK^T/sqrt(d)) V with the whole map;
    in decoder self-attention at the swapped grids, during the swap pass, the output row takes
    the appearance's (or, on injection steps, the structure's) keys and values, and its
    probabilities get the contrast clip((A - 1/N) beta + 1/N, 0, 1), not renormalised. With
    regions (not on injection steps) the output row instead mixes each region's contrast
    attention over its appearance's allowed keys and its own plain attention (attend_regions)."""

    def __init__(self, owner: "Reference", name: str):
        self.owner, self.name = owner, name
        self.decoder_self_attention = name.startswith("up_blocks") and ".attn1." in name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        owner, contrast = self.owner, self.owner.settings.contrast
        if owner.recorded is not None:  # self-segmentation's reading: every layer's map by its kind and size
            b, n, _ = q.shape
            qh, kh = (t.reshape(b, t.shape[1], attn.heads, -1).transpose(1, 2) for t in (q, k))
            probs = (qh @ kh.transpose(-1, -2) * qh.shape[-1] ** -0.5).softmax(dim=-1)
            key = encoder_hidden_states is not None, n
            if not (owner.record_first and key in owner.recorded):
                owner.recorded[key] = probs.mean(dim=1)  # a later layer overwrites
        kind = owner.key_value_source(hidden_states.shape[1]) if self.decoder_self_attention else None
        # regions: the output mixes its regions' appearances and itself (not on injection steps)
        regional = kind == APP and owner.regional
        source = None if kind is None or regional else owner.row_of(kind)
        alone = owner.alone
        if self.decoder_self_attention and alone is not None:
            # one latent per call (images of different sizes): the appearances and the structure
            # run first and leave their keys and values here for the output's call
            owner.kept[self.name, alone] = k, v
            if alone == OUT and regional:
                lent = [owner.kept[self.name, row] for row in owner.appearance_rows]
                out = self.attend_regions(q, k, v, lent, attn.heads, *owner.region_maps(q.shape[1]), contrast)
                return attn.to_out[1](attn.to_out[0](out))
            if alone == OUT and source is not None:
                (k, v), source = owner.kept[self.name, source], OUT
            else:
                source, regional = None, False
        if regional:  # the batch: every row attends to its own keys, then the output row mixes
            out = self.attend(q, k, v, attn.heads, None, contrast)
            lent = [(k[row:row + 1], v[row:row + 1]) for row in owner.appearance_rows]
            out[OUT] = self.attend_regions(q[OUT:OUT + 1], k[OUT:OUT + 1], v[OUT:OUT + 1], lent, attn.heads,
                                           *owner.region_maps(q.shape[1]), contrast)[0]
        else:
            out = self.attend(q, k, v, attn.heads, source, contrast)
        return attn.to_out[1](attn.to_out[0](out))

    @staticmethod
    def attend_regions(q, k, v, lent, heads: int, weights, own, allowed, contrast: float):
        """The output's attention in a regional swap: sum_r weights[r] * (contrast attention of
        q over lent[r]'s keys and values where allowed[r]) + own * (plain attention over its own
        k, v). q, k, v (1, N, heads * d); lent: (k_r, v_r) (1, N_r, heads * d); weights[r] and
        own (N,), allowed[r] boolean (N_r,). The contrast clip((P - 1/n) beta + 1/n, 0, 1), n the
        allowed keys, is not renormalised."""
        n = q.shape[1]

        def split(t):
            return t.reshape(1, t.shape[1], heads, -1).transpose(1, 2)  # (1, heads, tokens, d)
        q = split(q)
        scale = q.shape[-1] ** -0.5
        plain = (q @ split(k).transpose(-1, -2) * scale).softmax(dim=-1) @ split(v)
        out = own[:, None] * plain
        for (k_r, v_r), w, keep in zip(lent, weights, allowed):
            k_r, v_r = split(k_r)[:, :, keep], split(v_r)[:, :, keep]
            probs = (q @ k_r.transpose(-1, -2) * scale).softmax(dim=-1)
            if contrast != 1.0:
                mean = 1.0 / probs.shape[-1]
                probs = ((probs - mean) * contrast + mean).clamp(0.0, 1.0)
            out = out + w[:, None] * (probs @ v_r)
        return out.transpose(1, 2).reshape(1, n, -1)

    @staticmethod
    def attend(q, k, v, heads: int, source: Optional[int], contrast: float):
        """q (B, Nq, heads * d), k and v (B, Nk, heads * d); source: the row whose keys and
        values the output row takes (None: no swap; OUT: they are in its row already)."""
        b, n, _ = q.shape
        q, k, v = (t.reshape(b, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
        if source is not None:
            k, v = k.clone(), v.clone()
            k[OUT], v[OUT] = k[source], v[source]
        probs = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
        if source is not None and contrast != 1.0:
            mean = 1.0 / probs.shape[-1]
            probs[OUT] = ((probs[OUT] - mean) * contrast + mean).clamp(0.0, 1.0)
        return (probs @ v).transpose(1, 2).reshape(b, n, -1)


class Reference:
    """Transfer with the paper's algorithm. `evaluations` counts UNet batch items, `calls` UNet calls."""

    def __init__(self, unet, settings: Settings, cond: torch.Tensor, uncond: Optional[torch.Tensor] = None,
                 pooled: Optional[torch.Tensor] = None, uncond_pooled: Optional[torch.Tensor] = None,
                 time_ids: Optional[Tuple[float, ...]] = None):
        """SDXL: pooled, uncond_pooled: the prompts' pooled text embeddings (1, dim); time_ids:
        the six size numbers, by default (h, w, 0, 0, h, w) with h, w the latent's size x 8."""
        self.unet, self.settings, self.cond, self.uncond = unet, settings, cond, uncond
        self.pooled, self.uncond_pooled, self.time_ids = pooled, uncond_pooled, time_ids
        self.abar = sd15_alphas_cumprod()
        self.timesteps = leading_timesteps(settings.steps)
        self.evaluations = self.calls = 0
        self.swap, self.step, self.latent_tokens = False, None, None
        self.alone, self.kept = None, {}  # the row a one-latent call runs; keys and values it left
        self.recorded = None  # {(cross-attention?, query tokens): head-averaged map} while segmenting
        self.record_first = False
        self.latent_size = None  # (H, W) of the latents in the current UNet call
        # rows of the appearances and of the structure in the sampling batch, and the regions
        # (None, or shares and appearance masks when the output mixes its appearances)
        self.appearance_rows, self.structure_row, self.regions = [APP], STRUCT, None
        unet.set_attn_processor({name: NaiveAttention(self, name) for name in unet.attn_processors})

    # -- the swap -------------------------------------------------------------------
    def key_value_source(self, tokens: int) -> Optional[int]:
        """The row whose keys and values the output row takes in a decoder self-attention
        layer with `tokens` queries, or None where nothing is swapped."""
        s = self.settings
        grid = round((self.latent_tokens / tokens) ** 0.5)
        if not self.swap or self.step < s.swap_from or grid not in s.grids:
            return None
        injects = s.structure_every > 0 and self.step % s.structure_every == 0 and self.step < s.structure_until
        return STRUCT if injects else APP

    @property
    def regional(self) -> bool:
        return self.regions is not None

    def row_of(self, kind: int) -> int:
        """The batch row of the keys and values key_value_source names."""
        if kind == STRUCT:
            return self.structure_row
        assert len(self.appearance_rows) == 1
        return self.appearance_rows[0]

    def region_maps(self, tokens: int):
        """At a layer with `tokens` queries on the output's latent (H, W): the token grid
        (ceil(H/f), ceil(W/f)) of its downsampling factor f; each region's share and the own
        share pooled to it; each region's allowed appearance keys (pooled appearance mask
        >= 0.5 on its grid (ceil(Ha/f), ceil(Wa/f)); all where it has none)."""
        h, w = self.latent_size
        factor = next(f for f in (2 ** i for i in range(8))
                      if math.ceil(h / f) * math.ceil(w / f) == tokens)
        grid = (math.ceil(h / factor), math.ceil(w / factor))
        weights = [pool(share, grid) for share in self.regions["shares"]]
        own = pool(self.regions["own"], grid)
        allowed = []
        for mask, (ha, wa) in zip(self.regions["appearance_masks"], self.regions["appearance_sizes"]):
            app_grid = (math.ceil(ha / factor), math.ceil(wa / factor))
            allowed.append(torch.ones(app_grid[0] * app_grid[1], dtype=torch.bool) if mask is None
                           else pool(mask, app_grid) >= 0.5)
        return weights, own, allowed

    # -- the model ------------------------------------------------------------------
    def abar_at(self, index: int) -> float:
        """alphas_cumprod at timesteps[index]; index == steps is the clean end."""
        return float(self.abar[self.timesteps[index]]) if index < len(self.timesteps) else self.settings.final_abar

    def eps(self, x: torch.Tensor, t: int, context: torch.Tensor,
            pooled: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The noise prediction at x; pooled: SDXL's pooled text rows (default: the prompt's)."""
        self.evaluations += x.shape[0]
        self.calls += 1
        self.latent_tokens = x.shape[-2] * x.shape[-1]
        self.latent_size = tuple(x.shape[-2:])
        timestep = torch.full((x.shape[0],), float(t), device=x.device)
        added = {}
        if self.pooled is not None:  # SDXL: time_ids in diffusers' order (original h, w, crop top, left, target h, w)
            h, w = x.shape[-2] * 8, x.shape[-1] * 8
            time_ids = torch.tensor(self.time_ids or (h, w, 0, 0, h, w), dtype=x.dtype, device=x.device)
            pooled = self.pooled if pooled is None else pooled
            added["added_cond_kwargs"] = {"text_embeds": pooled.expand(x.shape[0], -1),
                                          "time_ids": time_ids.expand(x.shape[0], -1)}
        with torch.no_grad():
            out = self.unet(x, timestep, encoder_hidden_states=context.expand(x.shape[0], -1, -1), **added).sample
        if self.settings.prediction == "v":
            # v = sqrt(abar) eps - sqrt(1 - abar) x0 and x = sqrt(abar) x0 + sqrt(1 - abar) eps give
            # eps = sqrt(abar) v + sqrt(1 - abar) x
            a = float(self.abar[int(t)])
            out = a ** 0.5 * out + (1 - a) ** 0.5 * x
        return out

    def guided_eps(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """Text classifier-free guidance of the inversion (uncond + cfg (cond - uncond))."""
        cfg = self.settings.inversion_cfg
        if cfg == 1.0:
            return self.eps(x, t, self.cond)
        pooled = None if self.pooled is None else torch.cat([self.pooled.expand(x.shape[0], -1),
                                                             self.uncond_pooled.expand(x.shape[0], -1)])
        both = self.eps(torch.cat([x, x]), t, torch.cat([self.cond.expand(x.shape[0], -1, -1),
                                                          self.uncond.expand(x.shape[0], -1, -1)]), pooled)
        cond, uncond = both.chunk(2)
        return uncond + cfg * (cond - uncond)

    def ddpm_mean_var(self, x, eps, index):
        """The eta = 1 DDIM step's mean and variance from timesteps[index] to the next one (DDIM eq. 12/16)."""
        a, a_prev = self.abar_at(index), self.abar_at(index + 1)
        x0 = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
        var = (1 - a_prev) / (1 - a) * (1 - a / a_prev)
        return a_prev ** 0.5 * x0 + (1 - a_prev - var) ** 0.5 * eps, var

    def ddim_step(self, x, eps, index, index_next):
        """Deterministic DDIM (eta = 0) from the noise level of `index` to that of `index_next`."""
        a, a_next = self.abar_at(index), self.abar_at(index_next)
        x0 = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
        return a_next ** 0.5 * x0 + (1 - a_next) ** 0.5 * eps

    # -- inversion --------------------------------------------------------------------
    def invert_ddpm(self, x0: torch.Tensor, fresh: torch.Tensor):
        """Edit-friendly DDPM inversion over all steps. fresh[i] is the independent draw of
        x at timesteps[i]. Returns (xs, zs): xs[i] the latent at timesteps[i] (xs[steps] the
        clean end), zs[i] the noise map of the step from timesteps[i]."""
        steps = len(self.timesteps)
        xs = [self.abar_at(i) ** 0.5 * x0 + (1 - self.abar_at(i)) ** 0.5 * fresh[i] for i in range(steps)] + [x0]
        zs = torch.zeros_like(fresh)
        for i in range(steps):
            mean, var = self.ddpm_mean_var(xs[i], self.guided_eps(xs[i], self.timesteps[i]), i)
            if var > 0 and i < steps - 1:  # the last noise map is zero
                zs[i] = (xs[i + 1] - mean) / var ** 0.5
                xs[i + 1] = mean + var ** 0.5 * zs[i]
            else:
                xs[i + 1] = mean
        return torch.stack(xs), zs

    def invert_ddim(self, x0: torch.Tensor) -> torch.Tensor:
        """DDIM inversion from the clean end to the noisiest step, eps taken at the latent in
        hand; the clean latent is given to the model as a latent of t = 0 (the smallest
        trained noise level). Returns xs as invert_ddpm does."""
        steps = len(self.timesteps)
        xs = [None] * steps + [x0]
        eps = self.guided_eps(float(self.abar[0]) ** 0.5 * x0, 0)
        for i in reversed(range(steps)):
            xs[i] = self.ddim_step(xs[i + 1], eps, i + 1, i)
            if i > 0:
                eps = self.guided_eps(xs[i], self.timesteps[i])
        return torch.stack(xs)

    # -- sampling -------------------------------------------------------------------
    def transfer(self, appearance: Optional[torch.Tensor], structure: torch.Tensor, fresh_appearance=None,
                 fresh_structure=None, structure_mask=None, appearance_mask=None,
                 regions: Optional[List[Region]] = None, segmentation: Optional[dict] = None) -> torch.Tensor:
        """Invert both clean latents (1, C, H, W), sample the output; returns it (1, C, H, W).
        fresh_*: DDPM inversion draws (steps, 1, C, H, W); masks: boolean (H, W) for masked AdaIN.
        segmentation: instead of the masks, segment() each inverted image at sampling step
        segmentation["step"] (its latent and timestep there), with segmentation["token"] the
        noun's token and its "clusters" and "ratio"; the masks are kept in
        self.segmentation_masks (structure, appearance).
        regions: instead of appearance, fresh_appearance and the masks, the appearances and
        their masks (Region); region 0 is the main appearance. Latent AdaIN then runs once per
        region, r = 0 .. R-1, within its share of the output and its appearance mask (both 0 or 1)."""
        s = self.settings
        if regions is None:
            regions = [Region(appearance, fresh=fresh_appearance)]
            adain_masks = [(structure_mask, appearance_mask)]
            self.regions = None
        else:
            if appearance is not None or fresh_appearance is not None or structure_mask is not None \
                    or appearance_mask is not None:
                raise ValueError("with regions, the appearances and the masks come in the regions")
            adain_masks, self.regions = self.plan_regions(regions, structure.shape[-2:], s.adain_from is not None)
        rows = len(regions)
        self.appearance_rows, self.structure_row = list(range(1, 1 + rows)), 1 + rows
        if s.inversion == "ddpm":
            apps = [self.invert_ddpm(region.appearance, region.fresh) for region in regions]
            xs_apps, zs_apps = [xs for xs, _ in apps], [zs for _, zs in apps]
            xs_struct, zs_struct = self.invert_ddpm(structure, fresh_structure)
        else:
            xs_apps = [self.invert_ddim(region.appearance) for region in regions]
            xs_struct = self.invert_ddim(structure)
        if segmentation is not None:
            index = s.skip + segmentation["step"]
            self.segmentation_masks = [
                segment(*self.segmentation_maps(xs[index], self.timesteps[index]), tuple(xs.shape[-2:]),
                        segmentation["token"], segmentation["clusters"], segmentation["ratio"])
                for xs in (xs_struct, xs_apps[0])]
            adain_masks = [tuple(self.segmentation_masks)]
        # OUT, the appearances (APP when there is one), STRUCT (the last row)
        x = [xs_struct[s.skip]] + [xs[s.skip] for xs in xs_apps] + [xs_struct[s.skip]]
        zs = [zs_struct] + zs_apps + [zs_struct] if s.inversion == "ddpm" else None
        n = s.steps - s.skip
        scales = torch.linspace(s.guidance[0], s.guidance[1], n, dtype=torch.float64) if s.guidance else None
        for i in range(n):
            index, t = s.skip + i, self.timesteps[s.skip + i]
            self.step = i
            self.swap = True
            eps_swap = self.batch_eps(x, t)
            self.swap = False
            eps_plain = self.batch_eps(x, t)
            eps = eps_swap
            if scales is not None and i >= s.guidance[2]:
                eps = [plain + float(scales[i]) * (swap - plain) for swap, plain in zip(eps_swap, eps_plain)]
            for row in range(len(x)):
                if s.inversion == "ddpm":
                    mean, var = self.ddpm_mean_var(x[row], eps[row], index)
                    x[row] = mean + var ** 0.5 * zs[row][index]
                else:
                    x[row] = self.ddim_step(x[row], eps[row], index, index + 1)
            if s.adain_from is not None and s.adain_from <= i < s.adain_until:
                for row, (content, style) in zip(self.appearance_rows, adain_masks):
                    x[OUT] = adain(x[OUT][0], x[row][0], content, style)[None]
        return x[OUT]

    @staticmethod
    def plan_regions(regions: List[Region], size, adain: bool):
        """Latent AdaIN's masks per region (boolean; None where all pixels) and the attention's
        region plan (None when one region has no masks: the computation without regions).
        AdaIN's masks are the shares after normalisation and the appearance masks, which must
        then be 0 or 1 (the masked AdaIN here selects pixels; soft masks are not defined)."""
        if len(regions) == 1 and regions[0].structure_mask is None and regions[0].appearance_mask is None:
            return [(None, None)], None
        shares, own = region_shares([region.structure_mask for region in regions], tuple(size))
        adain_masks = []
        for share, region in zip(shares, regions):
            for mask in (share, region.appearance_mask):
                if adain and mask is not None and not bool(((mask == 0) | (mask == 1)).all()):
                    raise ValueError("latent AdaIN with regions takes 0/1 shares and appearance masks only")
            content = share == 1
            style = None if region.appearance_mask is None else region.appearance_mask == 1
            adain_masks.append((None if bool(content.all()) else content,
                                None if style is None or bool(style.all()) else style))
        plan = {"shares": shares, "own": own, "appearance_masks": [region.appearance_mask for region in regions],
                "appearance_sizes": [tuple(region.appearance.shape[-2:]) for region in regions]}
        return adain_masks, plan

    def batch_eps(self, x: list, t: int) -> list:
        """eps of the latents [output, appearance(s), structure]: one batch when their sizes
        agree; else one latent per call, the appearances and the structure first, so that the
        output's call finds their keys and values."""
        if all(row.shape == x[OUT].shape for row in x):
            return list(self.eps(torch.cat(x), t, self.cond).split(1))
        eps = [None] * len(x)
        for row in list(range(1, len(x))) + [OUT]:
            self.alone = row
            eps[row] = self.eps(x[row], t, self.cond)
        self.alone = None
        return eps

    # -- self-segmentation (the official utils/segmentation.py, restated) ------------------
    def segmentation_maps(self, x: torch.Tensor, t: int, first: bool = False):
        """One UNet pass on x (1, C, H, W) at timestep t with the prompt, keeping each kind of
        attention map by its query count, a later layer overwriting an earlier one, as the
        official segmentor does (with `first`, the first layer's kept instead: a wrong reading);
        returns (the self-attention map of the finest grid (N, N), the cross-attention map of
        the next coarser grid (N', tokens))."""
        self.recorded, self.record_first = {}, first
        work = self.evaluations, self.calls  # the official code reads these maps inside its sampling passes
        try:
            self.eps(x, t, self.cond)
            recorded = self.recorded
        finally:
            self.recorded = None
            self.evaluations, self.calls = work
        sizes = sorted({n for cross, n in recorded if not cross}, reverse=True)
        return recorded[False, sizes[0]][0], recorded[True, sizes[min(1, len(sizes) - 1)]][0]


def segment(self_attention: torch.Tensor, cross_attention: torch.Tensor, grid, token: int, clusters: int = 5,
            ratio: float = 1.4, inits: int = 10, seed: int = 1) -> torch.Tensor:
    """The official segmentor's mask (boolean, grid (h, w)): KMeans (k-means++, the best of
    `inits` by inertia) of the rows of the self-attention map; the noun's cross-attention
    column `token`, on the coarser grid, repeated 2x along both axes (cut to the grid where
    its sides are odd), normalised to (m - |min m|) / max m; a cluster is the object when its
    mean exceeds `ratio` times the mean of the other clusters' means once the best one is
    removed. Written in numpy from that description; an empty mask is refused (the official
    AdaIN would turn the output to NaN)."""
    import numpy as np
    points = self_attention.double().numpy()
    rng = np.random.RandomState(seed)
    best_labels, best_inertia = None, np.inf
    for _ in range(inits):
        centres = [points[rng.randint(len(points))]]
        for _ in range(1, clusters):
            nearest = np.min([((points - c) ** 2).sum(1) for c in centres], axis=0)
            candidates = rng.choice(len(points), size=2 + int(np.log(clusters)), p=nearest / nearest.sum())
            potentials = [np.minimum(nearest, ((points - points[i]) ** 2).sum(1)).sum() for i in candidates]
            centres.append(points[candidates[int(np.argmin(potentials))]])
        centres = np.array(centres)
        labels = None
        for _ in range(300):
            distances = ((points[:, None] - centres[None]) ** 2).sum(-1)
            new = distances.argmin(1)
            if labels is not None and (new == labels).all():
                break
            labels = new
            centres = np.array([points[labels == c].mean(0) if (labels == c).any() else centres[c]
                                for c in range(clusters)])
        inertia = ((points - centres[labels]) ** 2).sum()
        if inertia < best_inertia:
            best_labels, best_inertia = labels, inertia
    h, w = grid
    coarse = cross_attention[:, token].double().numpy().reshape(-(-h // 2), -(-w // 2))
    noun = coarse.repeat(2, axis=0).repeat(2, axis=1)[:h, :w].reshape(-1)
    noun = (noun - abs(noun.min())) / noun.max()
    scores = [noun[best_labels == c].mean() for c in range(clusters)]
    rest = list(scores)
    rest.remove(max(scores))
    mask = np.isin(best_labels, [c for c in range(clusters) if scores[c] > ratio * (sum(rest) / len(rest))])
    if not mask.any():
        raise ValueError("the official segmentor finds no object here")
    return torch.from_numpy(mask.reshape(h, w))
