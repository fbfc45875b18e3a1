"""Fast mode's keys and values: an image's decoder self-attention keys and values, recorded at
every step while the Invert node runs (conditional rows only), so that the Cross-Image Sampler
can take them instead of denoising that image again alongside the output."""
import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import torch

from ..core.schedule import CallStep
from .model_info import decoder_attention_levels, parse_levels


def layer_name(block_id: int, index: int) -> str:
    return f"output.{block_id}.{index}"


def level_layers(model, levels: tuple) -> list:
    """Names of the decoder self-attention layers at `levels` (0 = finest)."""
    layers = decoder_attention_levels(model.get_model_object("diffusion_model"))
    return [layer_name(block_id, index) for level in levels for block_id, index in layers[level]]


class KeyValueRecorder:
    """attn1 replacement: ordinary attention that also keeps the conditional rows' keys and
    values of each step of `schedule` (on ComfyUI's intermediate device; in pinned memory when
    that is the CPU and the model runs on CUDA, so the copies do not stall the GPU)."""

    def __init__(self, schedule: torch.Tensor):
        self.schedule, self.call_step = schedule, CallStep()
        self.kept, self.seen = {}, {}  # kept[layer] = (keys, values), each (steps, batch, tokens, channels)

    def __deepcopy__(self, memo):
        return self

    def __call__(self, q, k, v, extra_options):
        step, steps = self.call_step(self.schedule, extra_options["sigmas"]), self.schedule.shape[0] - 1
        chunks = list(extra_options.get("cond_or_uncond") or [0])
        if step < steps and 0 in chunks:  # the clean end is never sampled from; 0: the conditional chunk
            rows = q.shape[0] // len(chunks)
            first = chunks.index(0) * rows
            layer = layer_name(extra_options["block"][1], extra_options["block_index"])
            if layer not in self.kept:
                self.kept[layer] = tuple(step_buffer(steps, t[first:first + rows]) for t in (k, v))
                self.seen[layer] = set()
            for kept, t in zip(self.kept[layer], (k, v)):
                kept[step].copy_(t[first:first + rows], non_blocking=True)
            self.seen[layer].add(step)
        return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"], transformer_options=extra_options,
                                                   attn_precision=extra_options.get("attn_precision"))

    def keys_values(self) -> dict:
        """{layer: (keys, values)}, each (steps, batch, tokens, channels)."""
        steps = self.schedule.shape[0] - 1
        for layer, seen in self.seen.items():
            if len(seen) != steps:
                raise RuntimeError(f"keep_keys_values: layer {layer} ran at {len(seen)} of {steps} steps")
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the copies into pinned memory are done before anyone reads them
        return self.kept


def step_buffer(steps: int, like: torch.Tensor) -> torch.Tensor:
    """Room for `steps` copies of `like` on ComfyUI's intermediate device, pinned when that is the
    CPU and `like` is on CUDA (pinned memory is limited: ordinary memory if it is refused)."""
    device = comfy.model_management.intermediate_device()
    shape = (steps,) + tuple(like.shape)
    if device.type == "cpu" and like.device.type == "cuda":
        try:
            return torch.empty(shape, dtype=like.dtype, device=device, pin_memory=True)
        except RuntimeError:
            pass
    return torch.empty(shape, dtype=like.dtype, device=device)


def recording(model, levels_text: str, schedule: torch.Tensor):
    """(a clone of `model` recording the decoder levels in `levels_text`, its recorder), or
    (model, None) when `levels_text` is empty."""
    if not levels_text.strip():
        return model, None
    layers = decoder_attention_levels(model.get_model_object("diffusion_model"))
    chosen = parse_levels(levels_text, len(layers), "keep_keys_values")
    recorder = KeyValueRecorder(schedule)
    clone = model.clone()
    for level in chosen:
        for block_id, index in layers[level]:
            clone.set_model_attn1_replace(recorder, "output", block_id, index)
    return clone, recorder


def require_keys_values(inversion, layers: list, name: str, levels: tuple) -> None:
    """Raise a ValueError naming `name` unless the inversion kept keys and values of every layer."""
    kept = inversion.keys_values or {}
    if any(layer not in kept for layer in layers):
        wanted = ",".join(str(level) for level in levels)
        raise ValueError(f"{name}: fast mode takes this image's keys and values from its inversion, which did not "
                         f"keep them for levels {wanted}: set keep_keys_values to '{wanted}' on its Invert node "
                         "(a loaded inversion never has them), or use mode 'exact'")
