"""Helpers the node tests share: latents, inversions, the definition of attention, and an
instrumented patched model."""
import functools

import torch

# The tiny UNet (tests/tiny_models.py): output blocks 0-1 at latent/4, 2-3 at latent/2, 4-5 at
# latent/1 (two transformers): levels 2, 1 and 0.
FINEST_TWO = {("output", 2, 0), ("output", 3, 0), ("output", 4, 0), ("output", 4, 1), ("output", 5, 0),
              ("output", 5, 1)}


def latent(seed, batch=1, height=16, width=24, scale=5.0):
    """A non-square VAE-space LATENT (16x24 = a 128x192 image)."""
    return {"samples": torch.randn(batch, 4, height, width, generator=torch.Generator().manual_seed(seed)) * scale}


def invert(node, model, lat, cond, steps=10, scheduler="ddim_uniform"):
    """(inversion, noisy LATENT) of Invert (DDIM) at cfg 1."""
    return node("CrossImageInvertDDIM").execute(model, lat, cond, steps, scheduler, 1.0)


def invert_ddpm(node, model, lat, cond, steps=12, skip=4, seed=0, cfg=1.0, negative=None):
    """(inversion, noisy LATENT) of Invert (Edit-Friendly DDPM)."""
    return node("CrossImageInvertDDPM").execute(model, lat, cond, steps, "ddim_uniform", cfg, skip, seed, negative)


def naive_attention(q, k, v, heads, strength=1.0):
    """softmax(Q K^T / sqrt(d)) V with the paper's contrast, the whole map at once, straight
    from the definition; q, k, v (B, N, heads * d)."""
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    a = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)
    a = torch.clamp((a - 1 / k.shape[2]) * strength + 1 / k.shape[2], 0, 1)
    return (a @ v).transpose(1, 2).reshape(b, n, -1)


def attn1_keys(model):
    return set(model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {}))


def patched_layer(model, key):
    """The attn1 replacement Cross-Image Attention put at ("output", block id, index) `key`."""
    return model.model_options["transformer_options"]["patches_replace"]["attn1"][key]


def layer_options(key, heads, plan):
    """The extra_options ComfyUI hands an attn1 replacement at ("output", block id, index) `key`
    in a model call that carries `plan`."""
    import headless
    return {"n_heads": heads, "attn_precision": None, "block": key[:2], "block_index": key[2],
            headless.pack_module().nodes.sampling.patch.PLAN_KEY: plan}


def record_attention(model, step_index):
    """Instrument every attn1 of a patched model: which block ran at which step, through the
    cross-image replacement or not, and whether its output differs from plain attention.
    Returns (the instrumented clone, the list of calls it fills)."""
    import comfy.ldm.modules.attention as attention
    calls = []

    def step(options):
        return step_index(options["sample_sigmas"], float(options["sigmas"].max()))

    def every_attn1(n, context, value, options):
        calls.append(("any", options["block"] + (options["block_index"],), step(options), n.shape[0]))
        return n, context, value

    def wrap(key, replace):
        @functools.wraps(replace)  # says it wraps the cross-image replacement (the sampler checks)
        def recorded(q, k, v, options):
            out = replace(q, k, v, options)
            plain = attention.optimized_attention(q, k, v, options["n_heads"])
            calls.append(("replace", key, step(options), not torch.allclose(out, plain, atol=1e-6)))
            return out
        return recorded

    model = model.clone()
    model.set_model_attn1_patch(every_attn1)
    replaces = model.model_options["transformer_options"]["patches_replace"]["attn1"]
    for key in list(replaces):
        replaces[key] = wrap(key, replaces[key])
    return model, calls


def assert_same_up_to_batching(a, b):
    """Equal up to float rounding that differs between batch sizes (values here are ~10)."""
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def tiny_controlnet(model, seed: int):
    """A ComfyUI ControlNet for `model`'s UNet, random weights (no zero convolutions)."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.ops
    import tiny_models
    config = {key: value for key, value in model.model.model_config.unet_config.items()
              if key not in ("out_channels", "dtype", "device", "operations")}
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.disable_weight_init, dtype=torch.float32,
                                     device=torch.device("cpu"), **config)
    tiny_models.randomize_(net, seed)
    return comfy.controlnet.ControlNet(net, load_device=torch.device("cpu"), manual_cast_dtype=None)
