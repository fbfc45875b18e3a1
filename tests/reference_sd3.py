"""The independent reference (tests/reference_dit.py) on SD3 and SD3.5: diffusers'
SD3Transformer2DModel with a ComfyUI SD3 model's weights (ComfyUI's own key map,
comfy.utils.mmdit_to_diffusers, read backwards), its attention processors computing each block's
joint attention ([image; text] in diffusers' order: no RoPE, so the order of the keys does not
matter) and, in SD3.5 medium's MMDiT-X blocks, the image-only second attention, both with the
reference's swap: block i swaps both. Positions are embedded at the input, so "shifted" and
"attenuated" do not apply."""
import torch

from reference_dit import DiTReference, DiTSettings, load_twin, set_processors


def sd3_twin(model):
    """A diffusers SD3Transformer2DModel with a ComfyUI SD3 (or SD3.5) model's weights."""
    import comfy.utils
    from diffusers import SD3Transformer2DModel
    network = model.model.diffusion_model
    weights = network.state_dict()
    depth, hidden = len(network.joint_blocks), network.x_embedder.proj.out_channels
    heads = network.joint_blocks[0].x_block.attn.num_heads
    twin = SD3Transformer2DModel(
        sample_size=network.pos_embed_max_size, patch_size=network.patch_size, in_channels=network.in_channels,
        out_channels=network.out_channels, num_layers=depth, attention_head_dim=hidden // heads,
        num_attention_heads=heads, joint_attention_dim=network.context_embedder.in_features,
        caption_projection_dim=hidden, pooled_projection_dim=network.y_embedder.mlp[0].in_features,
        pos_embed_max_size=network.pos_embed_max_size, qk_norm="rms_norm",
        dual_attention_layers=tuple(i for i, block in enumerate(network.joint_blocks)
                                    if block.x_block.x_block_self_attn))
    mapping = comfy.utils.mmdit_to_diffusers({"depth": depth, "num_blocks": depth}, output_prefix="")
    return load_twin(twin, weights, mapping)


class SwapAttention:
    """A diffusers attention processor for one block's joint (or image-only) attention:
    JointAttnProcessor2_0's projections and norms, the attention itself by its owner."""

    def __init__(self, owner: "SD3Reference", block: int):
        self.owner, self.block = owner, block

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        def heads(t):
            return t.unflatten(-1, (attn.heads, -1))  # (B, L, H, D)
        image = hidden_states.shape[1]
        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        q, k = attn.norm_q(q), attn.norm_k(k)
        if encoder_hidden_states is not None:  # the joint attention: the text after the image
            eq, ek, ev = (heads(f(encoder_hidden_states)) for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
            q, k, v = torch.cat([q, eq], 1), torch.cat([k, ek], 1), torch.cat([v, ev], 1)
        out = self.owner.attend(self.block, q, k, v, slice(0, image))
        image_out = attn.to_out[1](attn.to_out[0](out[:, :image]))
        if encoder_hidden_states is None:
            return image_out
        text_out = out[:, image:]
        return image_out, (text_out if attn.context_pre_only else attn.to_add_out(text_out))


class SD3Reference(DiTReference):
    """The reference on an SD3 twin; prompts {"positive": (context, pooled), "negative": ...}."""

    def __init__(self, twin, settings: DiTSettings, prompts: dict):
        super().__init__(settings, prompts)
        self.twin = twin
        set_processors(twin, lambda name: SwapAttention(self, int(name.split(".")[1])))

    def predict(self, x, sigma, prompt, guidance):
        context, pooled = prompt
        b = x.shape[0]
        return self.twin(hidden_states=x, encoder_hidden_states=context.expand(b, -1, -1),
                         pooled_projections=pooled.expand(b, -1),
                         timestep=torch.full((b,), sigma * 1000.0, device=x.device),  # SD3's timestep: 1000 sigma
                         return_dict=False)[0]
