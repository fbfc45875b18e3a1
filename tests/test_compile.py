"""ComfyUI's TorchCompileModel node (torch.compile, inductor, on the CPU) before the pack, its one
MODEL wired to the inversions and to Cross-Image Attention as in a workflow: the compiled
transfers equal the eager ones, no model call recompiles for its plan, the UNet compiles whole,
and the plain model still runs after the patched one.

Each model call of the Cross-Image Sampler carries a new CallPlan in transformer_options. Were
the patched attention traced, the compiled graph would depend on the plan read while compiling:
ComfyUI 0.33.0's TorchCompileModel skips the guards on transformer_options, so the plan of the
call that compiled it (here: no swap) would stay baked in; releases without that filter guard on
the plan and recompile per call, up to dynamo's recompile limit. A graph break at each patched
layer is no way out: dynamo then compiles the UNet's blocks one by one, up to that limit, and on
0.33.0 a block compiled for an unpatched layer runs for a patched one of the same shapes (the
patches are in transformer_options), and graphs compiled for the plain model (the inversions)
run for the patched one, and the other way round.

Kept short for the CPU: a two-level tiny UNet, an 8x8 latent, 8 DDIM steps; the compiled UNet
sees two rows a call (the inversions' cond and uncond; the transfers' outputs and appearances)
and three (with the structures)."""
import dataclasses
import logging
import time

import pytest
import torch

import node_graph
import tiny_models
from reference import Settings

# The swap switches on at step 3 and injects the structure's keys and values on steps 4 and 6,
# with contrast: the plans differ in swap, from_structure and the batch layout. AdaIN from the
# first step makes the outputs differ from the structures, so these run from step 1 on: step 0
# has two rows, steps 1-6 three (the swap switching on within one batch shape), step 7 two.
# Inverted at cfg 2: two rows a call (cond, uncond).
SHORT = Settings(inversion="ddim", steps=8, skip=0, inversion_cfg=2.0, guidance=None, adain_from=0,
                 swap_from=3, contrast=1.67, structure_every=2, structure_until=7)
# Swapping from the first step, without structure rows: two rows a call, as the inversions'.
AT_ONCE = dataclasses.replace(SHORT, swap_from=0, structure_every=0, adain_from=None)
TOLERANCE = 1e-4  # relative to the output's largest value (seen: 1e-6, float32 kernel round-off)
PLAN_KEY = "cross_image_call_plan"  # nodes/sampling/patch.py's, in transformer_options


def torch_compile_node():
    """ComfyUI's TorchCompileModel (a comfy_extras node: the test session loads only this pack's)."""
    from comfy_extras.nodes_torch_compile import TorchCompileModel
    return TorchCompileModel


@pytest.fixture
def pytorch_attention(monkeypatch):
    """ComfyUI's attention as on a GPU (PyTorch's scaled_dot_product_attention). On the CPU it
    picks its sub-quadratic attention, which reads the free memory (psutil: a graph break in
    every attention layer, compiled or not)."""
    import comfy.ldm.modules.attention as attention
    monkeypatch.setattr(attention, "optimized_attention", attention.attention_pytorch)


class Lines(logging.Handler):
    """Keeps the messages of a logger that contain `part`."""

    def __init__(self, part=""):
        super().__init__(logging.DEBUG)
        self.part, self.lines = part, []

    def emit(self, record):
        if self.part in record.getMessage():
            self.lines.append(record.getMessage())


@pytest.fixture
def dynamo():
    """Fresh dynamo state; yields (counters, recompile reasons, recompile-limit warnings). Reset
    again afterwards, so the other tests run on a clean dynamo."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    recompiles, limits = Lines(), Lines("recompile_limit")
    recompile_log = logging.getLogger("torch._dynamo.guards.__recompiles")  # torch._logging's "recompiles"
    limit_log = logging.getLogger("torch._dynamo.convert_frame")
    torch._logging.set_logs(recompiles=True)
    recompile_log.addHandler(recompiles)
    limit_log.addHandler(limits)
    try:
        yield torch._dynamo.utils.counters, recompiles.lines, limits.lines
    finally:
        recompile_log.removeHandler(recompiles)
        limit_log.removeHandler(limits)
        torch._logging.set_logs()
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()


def test_compiled_model_transfers_as_the_eager_one(node, cond, pytorch_attention, dynamo):
    with torch.inference_mode():  # as ComfyUI runs a prompt (dynamo guards on the grad mode)
        compiled_transfer_equals_eager(node, cond, *dynamo)


def compiled_transfer_equals_eager(node, cond, counters, recompiles, limits):
    # the smallest UNet with the two decoder levels the settings swap (0 and 1), each level's
    # input and output blocks alike but for the patches on the output blocks' self-attention
    model = tiny_models.tiny_model(seed=0, channel_mult=(1, 2))
    g = torch.Generator().manual_seed(3)
    structure_latent, appearance_latent = torch.randn(2, 1, 4, 8, 8, generator=g)
    context, uncond = cond[0][0], tiny_models.conditioning(1)[0][0]
    (compiled_model,) = torch_compile_node().execute(model, "inductor")

    # one compiled MODEL for every node, as a workflow wires it: the inversions run it plain
    started = time.perf_counter()
    structure = node_graph.invert(node, compiled_model, structure_latent, context, uncond, SHORT, seed=0)
    appearance = node_graph.invert(node, compiled_model, appearance_latent, context, uncond, SHORT, seed=0)
    times, frames, outputs = [time.perf_counter() - started], [], []
    for s in (AT_ONCE, SHORT, SHORT):  # AT_ONCE's calls have the inversions' batch shape
        started = time.perf_counter()
        outputs.append(node_graph.transfer(node, compiled_model, context, s, appearance, structure))
        times.append(time.perf_counter() - started)
        frames.append(counters["frames"]["ok"])
    # and the plain model again after the patched one (a re-run with other inversion settings)
    reinverted = node_graph.invert(node, compiled_model, structure_latent, context, uncond, SHORT, seed=0)

    errors = []
    for s, compiled in ((AT_ONCE, outputs[:1]), (SHORT, outputs[1:])):
        eager = node_graph.transfer(node, model, context, s, appearance, structure)
        scale = float(eager.abs().max())
        errors += [float((out - eager).abs().max()) / scale for out in compiled]
    # the plain model's retrace of the structure: what a swap that never switched on gives
    (plain,) = node("CrossImageSampler").execute(model, cond, structure, "euler", 1.0)
    swap_effect = float((eager - plain["samples"] * model.model.latent_format.scale_factor).abs().max()) / scale
    print(f"\ncompiling: inversions {times[0]:.1f} s, transfers {', '.join(f'{t:.1f}' for t in times[1:])} s; "
          f"frames compiled {frames}; graph breaks {sum(counters['graph_break'].values())}; "
          f"recompiles {len(recompiles)}; recompile limit hit {len(limits)}x; relative errors "
          f"{', '.join(f'{e:.1e}' for e in errors)}; swap's effect {swap_effect:.1e}")
    assert swap_effect > 100 * TOLERANCE  # the swap shows (and a graph that lost it would differ)
    assert max(errors) < TOLERANCE, errors
    trajectory = structure.trajectory
    reinversion_error = float((reinverted.trajectory - trajectory).abs().max() / trajectory.abs().max())
    assert reinversion_error < TOLERANCE, reinversion_error
    # The recompile reasons are captured (the batch grows from two rows to three), and none is
    # the plan: a new one each call, it must not be guarded on, nor make a transfer recompile.
    assert any("size mismatch at index 0" in line for line in recompiles), recompiles
    assert not [line for line in recompiles if PLAN_KEY in line]
    assert frames[2] == frames[1], "the second transfer with SHORT compiled again"
    # the UNet compiles whole: graph breaks in its block loop would leave the blocks to frames of
    # their own, compiled one per block up to dynamo's recompile limit
    assert not limits, limits


def test_compiled_model_with_another_attention_is_refused(node, tiny_model, cond):
    """ComfyUI's CPU attention (sub-quadratic) breaks the compiled graph inside every layer, and
    ComfyUI 0.33.0 then reuses blocks compiled for plain layers in patched ones: refused by name,
    before anything compiles or samples."""
    import comfy.ldm.modules.attention as attention
    assert attention.optimized_attention is not attention.attention_pytorch
    (compiled,) = torch_compile_node().execute(tiny_model, "inductor")
    lat = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    inversion = node("CrossImageInvertDDIM").execute(tiny_model, lat, cond, 3, "normal", 1.0)[0]
    (patched,) = node("CrossImageAttention").execute(compiled, inversion, "0", 0.0, 1.0)
    with pytest.raises(ValueError, match="model: compiled by TorchCompileModel with an attention other than"):
        node("CrossImageSampler").execute(patched, cond, inversion, "euler", 1.0)
