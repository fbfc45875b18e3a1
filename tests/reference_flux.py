"""The independent reference (tests/reference_dit.py) on Flux: diffusers' FluxTransformer2DModel
with a ComfyUI Flux model's weights, its attention processors computing the joint attention
(text first, then the image tokens) with the reference's swap; the Flux parity tests hold the
nodes to it. Embedded guidance per row: the output rows the sampler's value, the appearance and
structure rows the value their inversions were made with."""
import torch

from reference_dit import DiTReference, DiTSettings, load_twin


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
    mapping = comfy.utils.flux_to_diffusers({"depth": params.depth, "depth_single_blocks": params.depth_single_blocks,
                                             "hidden_size": params.hidden_size}, output_prefix="")
    return load_twin(twin, model.model.diffusion_model.state_dict(), mapping)


class SwapAttention:
    """A diffusers attention processor for one block: FluxAttnProcessor's projections, norms and
    RoPE, the attention itself by its owner (the reference's, with the swap)."""

    def __init__(self, owner: "FluxReference", block: int):
        self.owner, self.block = owner, block

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        def heads(t):
            return t.unflatten(-1, (-1, attn.head_dim))  # (B, L, H, D)
        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        q, k = attn.norm_q(q), attn.norm_k(k)
        if encoder_hidden_states is not None:  # a double block: the text is projected apart, then goes first
            eq, ek, ev = (heads(f(encoder_hidden_states)) for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
            q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
        text = self.owner.text_tokens
        raw_k = k
        q, k = (apply_rotary_emb(t, image_rotary_emb, sequence_dim=1) for t in (q, k))
        out = self.owner.attend(self.block, q, k, v, slice(text, None), raw_k)
        if encoder_hidden_states is None:
            return out
        text_out, image_out = out[:, :text], out[:, text:]
        return attn.to_out[1](attn.to_out[0](image_out)), attn.to_add_out(text_out)


class FluxReference(DiTReference):
    """The reference on a Flux twin; blocks are numbered double blocks first, then single blocks."""

    def __init__(self, twin, settings: DiTSettings, context: torch.Tensor, pooled: torch.Tensor):
        super().__init__(settings, {"positive": (context, pooled)})
        self.twin, self.text_tokens = twin, context.shape[1]
        self.axes_dim, self.theta = tuple(twin.config.axes_dims_rope), 10000.0
        double = twin.config.num_layers
        processors = {}
        for name in twin.attn_processors:
            kind, index = name.split(".")[0], int(name.split(".")[1])
            processors[name] = SwapAttention(self, index + (double if kind == "single_transformer_blocks" else 0))
        twin.set_attn_processor(processors)

    def image_positions(self, rows: int, cols: int) -> torch.Tensor:
        ids = torch.zeros(rows, cols, 3)
        ids[..., 1] = torch.arange(rows)[:, None]
        ids[..., 2] = torch.arange(cols)[None]
        return ids.reshape(-1, 3)

    def predict(self, x, sigma, prompt, guidance):
        context, pooled = prompt
        b, c, h, w = x.shape
        rows, cols = h // 2, w // 2
        self.grid = rows, cols
        packed = x.reshape(b, c, rows, 2, cols, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, c * 4)
        device = x.device
        out = self.twin(hidden_states=packed, encoder_hidden_states=context.expand(b, -1, -1),
                        pooled_projections=pooled.expand(b, -1), timestep=torch.full((b,), sigma, device=device),
                        img_ids=self.image_positions(rows, cols).to(device),
                        txt_ids=torch.zeros(self.text_tokens, 3, device=device),
                        guidance=None if guidance is None else guidance.to(device), return_dict=False)[0]
        return out.reshape(b, rows, cols, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
