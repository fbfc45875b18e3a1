"""ComfyUI's TorchCompileModel node (torch.compile, inductor, on the CPU) before the pack: the
compiled model's transfer equals the eager one, and compiling is done once, not per model call.

Each model call of the Cross-Image Sampler carries a new CallPlan in transformer_options. If
dynamo traced the patched attention, it would read the plan while compiling: ComfyUI 0.33.0's
TorchCompileModel skips the guards on transformer_options, so the first call's plan (here: no
swap) would be baked into the graph; releases without that filter guard on the plan and
recompile per call until dynamo's recompile limit. The patched layers run eagerly instead
(a graph break each), so the compiled graphs hold only what does not change between calls.

Kept short for the CPU: the tiny model, an 8x8 latent, 8 DDIM steps at cfg 1, so the compiled
model sees two batch shapes (outputs and appearances before the swap; with the structures while
it injects them)."""
import time

import pytest
import torch

import node_graph
import tiny_models
from reference import Settings

# The swap switches on at step 3 and injects the structure's keys and values on steps 4 and 6,
# with contrast: the call plans differ in swap, from_structure, the batch layout.
SHORT = Settings(inversion="ddim", steps=8, skip=0, inversion_cfg=1.0, guidance=None, adain_from=None,
                 swap_from=3, contrast=1.67, structure_every=2, structure_until=7)
TOLERANCE = 1e-4  # relative to the output's largest value; float32 round-off of other kernels


@pytest.fixture
def dynamo():
    """Fresh dynamo state and counters, reset again afterwards for the other tests."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield torch._dynamo.utils.counters
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def torch_compile_node():
    """ComfyUI's TorchCompileModel (a comfy_extras node: the test session loads only this pack's)."""
    from comfy_extras.nodes_torch_compile import TorchCompileModel
    return TorchCompileModel


def frames_compiled(counters) -> int:
    return counters["frames"]["ok"]


def test_compiled_model_transfers_as_the_eager_one(node, tiny_model, cond, dynamo):
    g = torch.Generator().manual_seed(3)
    structure_latent, appearance_latent = torch.randn(2, 1, 4, 8, 8, generator=g)
    uncond = tiny_models.conditioning(1)[0][0]
    context = cond[0][0]
    structure = node_graph.invert(node, tiny_model, structure_latent, context, uncond, SHORT, seed=0)
    appearance = node_graph.invert(node, tiny_model, appearance_latent, context, uncond, SHORT, seed=0)

    eager = node_graph.transfer(node, tiny_model, context, SHORT, appearance, structure)
    (compiled_model,) = torch_compile_node().execute(tiny_model, "inductor")
    started = time.perf_counter()
    compiled = node_graph.transfer(node, compiled_model, context, SHORT, appearance, structure)
    first_run = time.perf_counter() - started
    first_frames = frames_compiled(dynamo)
    started = time.perf_counter()
    again = node_graph.transfer(node, compiled_model, context, SHORT, appearance, structure)
    second_run = time.perf_counter() - started
    print(f"\ncompiled transfer: first {first_run:.1f} s, again {second_run:.1f} s; frames compiled "
          f"{first_frames} then {frames_compiled(dynamo) - first_frames}; graph breaks {dict(dynamo['graph_break'])}; "
          f"stats {dict(dynamo['stats'])}")

    # the plain model's retrace of the structure: what a swap baked off (the first call's plan) gives
    (plain,) = node("CrossImageSampler").execute(tiny_model, cond, structure, "euler", 1.0)
    plain = plain["samples"] * tiny_model.model.latent_format.scale_factor
    scale = float(eager.abs().max())
    error = float((compiled - eager).abs().max()) / scale
    print(f"relative error {error:.2e}; swap changes the output by {float((eager - plain).abs().max()) / scale:.2e}")
    assert float((eager - plain).abs().max()) > 100 * TOLERANCE * scale
    assert error < TOLERANCE, error
    assert float((again - eager).abs().max()) / scale < TOLERANCE
    # compiled once per piece of the UNet between patched layers (and per batch shape), not
    # per model call: the second transfer, with the same plans over again, compiles nothing
    assert frames_compiled(dynamo) == first_frames, "the second transfer recompiled"
    assert first_frames < 2 * SHORT.steps, f"{first_frames} frames compiled for {SHORT.steps} steps"
