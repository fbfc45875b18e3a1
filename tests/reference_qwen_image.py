"""The independent reference (tests/reference_dit.py) on Qwen-Image: diffusers'
QwenImageTransformer2DModel with a ComfyUI Qwen-Image model's weights (the same keys), its
attention processors computing each block's joint attention ([text; image], RoPE on both, the
image positions counted from the grid's centre) with the reference's swap. Latents have a frame
axis of one: (B, 16, 1, H, W), packed into 2x2 patches."""
import torch

from reference_dit import DiTReference, DiTSettings, set_processors


def qwen_image_twin(model):
    """A diffusers QwenImageTransformer2DModel with a ComfyUI Qwen-Image model's weights."""
    from diffusers import QwenImageTransformer2DModel
    network = model.model.diffusion_model
    block = network.transformer_blocks[0].attn
    twin = QwenImageTransformer2DModel(
        patch_size=network.patch_size, in_channels=network.img_in.in_features, out_channels=network.out_channels,
        num_layers=len(network.transformer_blocks), attention_head_dim=block.dim_head, num_attention_heads=block.heads,
        joint_attention_dim=network.txt_in.in_features, axes_dims_rope=tuple(network.pe_embedder.axes_dim))
    twin.load_state_dict(network.state_dict(), strict=True)
    return twin.eval()


class SwapAttention:
    """A diffusers attention processor for one block: QwenDoubleStreamAttnProcessor2_0's
    projections, norms and RoPE, the attention itself by its owner."""

    def __init__(self, owner: "QwenImageReference", block: int):
        self.owner, self.block = owner, block

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None,
                 attention_mask=None, image_rotary_emb=None):
        from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen
        assert attention_mask is None and encoder_hidden_states_mask is None

        def heads(t):
            return t.unflatten(-1, (attn.heads, -1))  # (B, L, H, D)
        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        tq, tk, tv = (heads(f(encoder_hidden_states)) for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        q, k, tq, tk = attn.norm_q(q), attn.norm_k(k), attn.norm_added_q(tq), attn.norm_added_k(tk)
        image_freqs, text_freqs = image_rotary_emb
        raw_k = torch.cat([tk, k], 1)
        q, k = (apply_rotary_emb_qwen(t, image_freqs, use_real=False) for t in (q, k))
        tq, tk = (apply_rotary_emb_qwen(t, text_freqs, use_real=False) for t in (tq, tk))
        text = encoder_hidden_states.shape[1]
        out = self.owner.attend(self.block, torch.cat([tq, q], 1), torch.cat([tk, k], 1), torch.cat([tv, v], 1),
                                slice(text, None), raw_k)
        return attn.to_out[0](out[:, text:]), attn.to_add_out(out[:, :text])


class QwenImageReference(DiTReference):
    """The reference on a Qwen-Image twin; prompts {"positive": context, "negative": context}."""

    def __init__(self, twin, settings: DiTSettings, prompts: dict):
        super().__init__(settings, prompts)
        self.twin = twin
        self.axes_dim, self.theta = tuple(twin.config.axes_dims_rope), 10000.0
        set_processors(twin, lambda name: SwapAttention(self, int(name.split(".")[1])))

    def image_positions(self, rows: int, cols: int) -> torch.Tensor:
        """(frame 0, row, column), rows and columns counted from the grid's centre."""
        ids = torch.zeros(rows, cols, 3)
        ids[..., 1] = (torch.arange(rows) - (rows - rows // 2))[:, None]
        ids[..., 2] = (torch.arange(cols) - (cols - cols // 2))[None]
        return ids.reshape(-1, 3)

    def predict(self, x, sigma, prompt, guidance):
        b, c, _, h, w = x.shape
        rows, cols = h // 2, w // 2
        self.grid = rows, cols
        packed = x[:, :, 0].reshape(b, c, rows, 2, cols, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, c * 4)
        out = self.twin(hidden_states=packed, encoder_hidden_states=prompt.expand(b, -1, -1),
                        timestep=torch.full((b,), sigma, device=x.device), img_shapes=[[(1, rows, cols)]] * b,
                        return_dict=False)[0]
        return out.reshape(b, rows, cols, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, 1, h, w)
