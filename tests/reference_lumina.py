"""The independent reference (tests/reference_dit.py) on Lumina 2: diffusers'
Lumina2Transformer2DModel with a ComfyUI Lumina 2 model's weights (the key map below), its
attention processors computing each joint layer's attention over [text; image] (RoPE on both,
grouped key/value heads repeated) with the reference's swap; the refiner blocks (text alone,
image alone) attend as the model does. ComfyUI's Lumina 2 predicts minus diffusers' output at
timestep 1 - sigma."""
import torch

from reference_dit import DiTReference, DiTSettings, load_twin, set_processors

# ComfyUI's NextDiT names -> diffusers' Lumina2 names, within a block and outside the blocks
BLOCK_KEYS = {"attention.q_norm.weight": "attn.norm_q.weight", "attention.k_norm.weight": "attn.norm_k.weight",
              "attention.out.weight": "attn.to_out.0.weight", "feed_forward.w1.weight": "feed_forward.linear_1.weight",
              "feed_forward.w2.weight": "feed_forward.linear_2.weight",
              "feed_forward.w3.weight": "feed_forward.linear_3.weight",
              "adaLN_modulation.1.weight": "norm1.linear.weight", "adaLN_modulation.1.bias": "norm1.linear.bias",
              "attention_norm1.weight": "norm1.norm.weight", "attention_norm2.weight": "norm2.weight",
              "ffn_norm1.weight": "ffn_norm1.weight", "ffn_norm2.weight": "ffn_norm2.weight"}
TOP_KEYS = {"x_embedder.weight": "x_embedder.weight", "x_embedder.bias": "x_embedder.bias",
            "t_embedder.mlp.0.weight": "time_caption_embed.timestep_embedder.linear_1.weight",
            "t_embedder.mlp.0.bias": "time_caption_embed.timestep_embedder.linear_1.bias",
            "t_embedder.mlp.2.weight": "time_caption_embed.timestep_embedder.linear_2.weight",
            "t_embedder.mlp.2.bias": "time_caption_embed.timestep_embedder.linear_2.bias",
            "cap_embedder.0.weight": "time_caption_embed.caption_embedder.0.weight",
            "cap_embedder.1.weight": "time_caption_embed.caption_embedder.1.weight",
            "cap_embedder.1.bias": "time_caption_embed.caption_embedder.1.bias",
            "final_layer.linear.weight": "norm_out.linear_2.weight",
            "final_layer.linear.bias": "norm_out.linear_2.bias",
            "final_layer.adaLN_modulation.1.weight": "norm_out.linear_1.weight",
            "final_layer.adaLN_modulation.1.bias": "norm_out.linear_1.bias"}


def key_map(network) -> dict:
    """{diffusers key: ComfyUI key, or (key, (dim, offset, size)) for q, k, v of the fused qkv}."""
    heads, kv_heads = network.n_heads, network.layers[0].attention.n_kv_heads
    head_dim = network.dim // heads
    mapping = {diffusers: comfy for comfy, diffusers in TOP_KEYS.items()}
    for part in ("context_refiner", "noise_refiner", "layers"):
        for i in range(len(getattr(network, part))):
            block = f"{part}.{i}."
            for comfy, diffusers in BLOCK_KEYS.items():
                if part == "context_refiner":  # no modulation: its first norm is a plain RMSNorm
                    diffusers = {"norm1.norm.weight": "norm1.weight"}.get(diffusers, diffusers)
                mapping[block + diffusers] = block + comfy
            sizes = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)
            for name, offset, size in zip(("to_q", "to_k", "to_v"), (0, sizes[0], sizes[0] + sizes[1]), sizes):
                mapping[f"{block}attn.{name}.weight"] = (block + "attention.qkv.weight", (0, offset, size))
    return mapping


def lumina_twin(model):
    """A diffusers Lumina2Transformer2DModel with a ComfyUI Lumina 2 model's weights."""
    from diffusers import Lumina2Transformer2DModel
    network = model.model.diffusion_model
    embedder = network.rope_embedder
    twin = Lumina2Transformer2DModel(
        sample_size=16, patch_size=network.patch_size, in_channels=network.in_channels, hidden_size=network.dim,
        num_layers=len(network.layers), num_refiner_layers=len(network.noise_refiner),
        num_attention_heads=network.n_heads, num_kv_heads=network.layers[0].attention.n_kv_heads, multiple_of=256,
        ffn_dim_multiplier=None, norm_eps=1e-5, scaling_factor=1.0, axes_dim_rope=tuple(embedder.axes_dim),
        cap_feat_dim=network.cap_embedder[1].in_features)
    # 0.3.75's norm_final is never used
    weights = {key: value for key, value in network.state_dict().items() if key != "norm_final.weight"}
    return load_twin(twin, weights, key_map(network))


class SwapAttention:
    """A diffusers attention processor: Lumina2AttnProcessor2_0's projections, norms, RoPE and
    repeated key/value heads, the attention itself by its owner (`block` None: a refiner's)."""

    def __init__(self, owner: "LuminaReference", block):
        self.owner, self.block = owner, block

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 base_sequence_length=None):
        from diffusers.models.embeddings import apply_rotary_emb
        assert base_sequence_length is None and (attention_mask is None or bool(attention_mask.all()))
        q = attn.to_q(hidden_states).unflatten(-1, (attn.heads, -1))
        head_dim = q.shape[-1]
        k, v = (f(encoder_hidden_states).unflatten(-1, (-1, head_dim)) for f in (attn.to_k, attn.to_v))
        q, k = attn.norm_q(q), attn.norm_k(k)
        raw_k = k
        q, k = (apply_rotary_emb(t, image_rotary_emb, use_real=False) for t in (q, k))
        repeat = attn.heads // k.shape[2]  # query head h reads key/value head h // repeat
        k, v, raw_k = (t.repeat_interleave(repeat, dim=2) for t in (k, v, raw_k))
        out = self.owner.attend(self.block, q, k, v, slice(self.owner.text_tokens, None), raw_k)
        return attn.to_out[0](out)


class LuminaReference(DiTReference):
    """The reference on a Lumina 2 twin; prompts {"positive": context, "negative": context} of as
    many tokens each."""

    def __init__(self, twin, settings: DiTSettings, prompts: dict):
        super().__init__(settings, prompts)
        self.twin, self.text_tokens = twin, prompts["positive"].shape[1]
        self.axes_dim, self.theta = tuple(twin.config.axes_dim_rope), 10000.0
        set_processors(twin, lambda name: SwapAttention(self, int(name.split(".")[1]) if name.startswith("layers.")
                                                        else None))

    def image_positions(self, rows: int, cols: int) -> torch.Tensor:
        """(the text's length, row, column)."""
        ids = torch.full((rows, cols, 3), float(self.text_tokens))
        ids[..., 1] = torch.arange(rows)[:, None]
        ids[..., 2] = torch.arange(cols)[None]
        return ids.reshape(-1, 3)

    def predict(self, x, sigma, prompt, guidance):
        b, _, h, w = x.shape
        self.grid = h // 2, w // 2
        context = prompt.expand(b, -1, -1)
        mask = torch.ones(context.shape[:2], dtype=torch.bool, device=x.device)
        return -self.twin(hidden_states=x, timestep=torch.full((b,), 1.0 - sigma, device=x.device),
                          encoder_hidden_states=context, encoder_attention_mask=mask, return_dict=False)[0]
