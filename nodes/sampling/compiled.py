"""TorchCompileModel (torch.compile) and the patch. In a compiled graph a patched site is one
opaque custom op (the architecture adapter's) that reads the call's plan when it runs: traced,
the plan would be baked into the graph (ComfyUI 0.33.0's TorchCompileModel skips the guards on
transformer_options) or guarded on (a recompile per call); a graph break would split the model's
block loop into blocks compiled one by one. The op reads the running call's transformer_options
from here, kept by an APPLY_MODEL wrapper on the patched MODEL."""
import contextvars

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension

_CALL_OPTIONS = contextvars.ContextVar("cross_image_call_options", default=None)
WRAPPER_KEY = "cross_image_call_options"  # the APPLY_MODEL wrapper's key on a patched MODEL
# A keyword the model takes in its **kwargs and ignores: compiled graphs guard on it, so the
# patched model's calls and the plain model's never share one.
PATCHED_CALL = "cross_image_patched"


def keep_call_options(executor, *args, **kwargs):
    """APPLY_MODEL wrapper; BaseModel.apply_model(x, t, c_concat, c_crossattn, control,
    transformer_options, **kwargs) hands it its arguments."""
    token = _CALL_OPTIONS.set(args[5] if len(args) > 5 else kwargs.get("transformer_options", {}))
    try:
        return executor(*args, **kwargs, **{PATCHED_CALL: True})
    finally:
        _CALL_OPTIONS.reset(token)


def call_options() -> dict:
    """The running model call's transformer_options (its plan, conditioning chunks, attention override)."""
    return _CALL_OPTIONS.get() or {}


def keep_options_of_calls(patcher) -> None:
    """Put the APPLY_MODEL wrapper on a patched clone."""
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, keep_call_options)


def require_exact_when_compiled(model) -> None:
    """Raise a ValueError unless the MODEL runs exactly under torch.compile: not compiled
    (TorchCompileModel), or compiled with ComfyUI's PyTorch attention (the one it picks on
    NVIDIA GPUs) and no other node's. Other attentions break ComfyUI's graphs inside every
    layer; ComfyUI 0.33.0's TorchCompileModel then reuses a block compiled for a plain layer in
    a patched one (it skips the guards on transformer_options, where the patches are)."""
    if "torch_compile_kwargs" not in model.model_options:
        return
    override = model.model_options.get("transformer_options", {}).get("optimized_attention_override")
    if comfy_attention.optimized_attention is not comfy_attention.attention_pytorch or override is not None:
        raise ValueError("model: compiled by TorchCompileModel with an attention other than ComfyUI's PyTorch "
                         "attention, which the Cross-Image nodes cannot run exactly compiled; start ComfyUI with "
                         "--use-pytorch-cross-attention (and no attention override), or remove TorchCompileModel")
