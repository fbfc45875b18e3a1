"""Side by side on the diffusion transformers, in one process: the pack's node graph, the
independent reference loop (tests/reference_dit.py on the family's diffusers twin: the batch of
three, two full passes a step) and one plain generation with the same steps on the same model.
Prints model calls, batch items, seconds per transfer (median of --runs) and peak working
memory, ours against the reference and against the plain generation (the goal: a transfer in at
most 3 plain generations' time), and checks that the two outputs agree.

  bash benchmarks/run.sh --model flux                       # CPU: Flux-dev's 19 + 38 blocks, 1 head
  bash benchmarks/run.sh --model flux --heads 24 --size 1024 --dtype bf16   # GPU: Flux-dev's full size
  bash benchmarks/run.sh --model qwen-image --size 64 --aspect 2 --steps 6 --runs 1   # CPU, quick

Families (FAMILIES): flux (Flux-dev), sd3, sd35-medium (its image-only second attention),
qwen-image, lumina2; --layers sets the blocks of the others (0: Qwen-Image's 60, Lumina 2's 26;
SD3's width grows with its depth in the tiny models, so 8 there, where SD3 medium has 24).

The model has random weights (speed does not depend on them), the transfer the paper's full
method: an edit-friendly flow inversion of both images by Invert Pair, the `auto` levels (Stable
Flow's vital blocks on Flux-dev, the late half of the blocks elsewhere), contrast, structure
injection, appearance guidance, latent AdaIN, attenuated positions where the model has RoPE, and
classifier-free guidance with a negative prompt on the families that use it, in the inversion
and the sampling alike (as the shipped workflows: the appearance then follows its draws)."""
import dataclasses
import os
import statistics
from typing import Callable, Optional

import torch

from benchmark import GIB, MIB, timed_on

SEED = 0  # the Invert Pair node's seed; the reference takes the same draws
TOLERANCE = 1e-3  # the sanity check of ours against the reference (the parity tests hold 1e-4)


@dataclasses.dataclass
class Family:
    name: str
    build: Callable       # (tiny_models, args) -> MODEL
    conditioning: str     # tiny_models' CONDITIONING builder (seed, tokens)
    twin: str             # module.function of the diffusers twin
    reference: str        # module.class of the reference (prompts {"positive", "negative"}; Flux: context, pooled)
    blocks: Callable      # diffusion model -> its block count
    cfg: float = 1.0      # classifier-free guidance (> 1: with a negative prompt)
    embedded: Optional[float] = None  # Flux-dev's embedded guidance
    rotary: bool = True   # RoPE: Appearance Positions applies
    frames: bool = False  # Qwen-Image: latents (16, 1, H, W)
    layers: int = 0       # default block count (--layers 0)


def flux_model(t, args):
    return t.tiny_flux_model(seed=0, kind="dev", output_scale=0.2, blocks=(19, 38), heads=args.heads)


FAMILIES = {
    "flux": Family("Flux-dev layout", flux_model, "flux_conditioning", "reference_flux.flux_twin",
                   "reference_flux.FluxReference", lambda dm: len(dm.double_blocks) + len(dm.single_blocks),
                   embedded=3.5),
    "sd3": Family("SD3", lambda t, a: t.tiny_sd3_model(seed=0, depth=a.layers, output_scale=0.2), "sd3_conditioning",
                  "reference_sd3.sd3_twin", "reference_sd3.SD3Reference", lambda dm: len(dm.joint_blocks), cfg=4.5,
                  rotary=False, layers=8),
    "sd35-medium": Family("SD3.5 medium (image-only attention in block 0)",
                          lambda t, a: t.tiny_sd3_model(seed=0, depth=a.layers, medium=True, output_scale=0.2),
                          "sd3_conditioning", "reference_sd3.sd3_twin", "reference_sd3.SD3Reference",
                          lambda dm: len(dm.joint_blocks), cfg=4.5, rotary=False, layers=8),
    "qwen-image": Family("Qwen-Image", lambda t, a: t.tiny_qwen_image_model(seed=0, layers=a.layers, output_scale=0.2),
                         "qwen_conditioning", "reference_qwen_image.qwen_image_twin",
                         "reference_qwen_image.QwenImageReference", lambda dm: len(dm.transformer_blocks), cfg=2.5,
                         frames=True, layers=60),
    "lumina2": Family("Lumina 2", lambda t, a: t.tiny_lumina_model(seed=0, layers=a.layers, output_scale=0.2),
                      "lumina_conditioning", "reference_lumina.lumina_twin", "reference_lumina.LuminaReference",
                      lambda dm: len(dm.layers), cfg=4.0, layers=26),
}


def named(path: str):
    import importlib
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def measure_dit(args):
    import headless
    nodes = headless.start_comfyui(os.environ["COMFYUI_PATH"], dynamic_vram=args.dynamic_vram)
    import comfy.model_management
    import comfy.samplers
    import comfy.utils

    import node_graph
    import tiny_models
    from reference_dit import DiTSettings
    comfy.utils.PROGRESS_BAR_ENABLED = False
    family = FAMILIES[args.model]
    args.layers = args.layers or family.layers
    node = nodes.NODE_CLASS_MAPPINGS.__getitem__
    device = comfy.model_management.get_torch_device()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    model = family.build(tiny_models, args)
    model.model.to(dtype)
    twin = named(family.twin)(model).to(device, dtype)
    height, width = args.size // 8, args.size * args.aspect // 2 // 8
    shape = (16, 1, height, width) if family.frames else (16, height, width)
    g = torch.Generator().manual_seed(0)
    structure, appearance = torch.randn(2, 1, *shape, generator=g)
    conditioning = named("tiny_models." + family.conditioning)
    if family.embedded is not None:
        cond, negative = conditioning(1, tokens=args.text_tokens, guidance=family.embedded), None
    else:
        cond = conditioning(1, tokens=args.text_tokens)
        negative = conditioning(2, tokens=args.text_tokens) if family.cfg != 1.0 else None
    sampling = model.get_model_object("model_sampling")
    steps = args.steps or 28
    sigmas = tuple(float(s) for s in comfy.samplers.calculate_sigmas(sampling, "simple", steps))
    total = family.blocks(model.model.diffusion_model)
    # the "auto" levels the nodes are given: Stable Flow's vital blocks (Flux-dev), else the late half
    blocks = (0, 1, 17, 18, 25, 28, 53, 54, 56) if args.model == "flux" else tuple(range(total // 2, total))
    s = DiTSettings(sigmas=sigmas, sigma_floor=float(sampling.sigma_min), inversion="flow",
                    skip=round(steps * 6 / 28), blocks=blocks, contrast=1.67, structure_every=5,
                    positions="attenuated" if family.rotary else None, cfg=family.cfg,
                    inversion_cfg=family.cfg,
                    embedded_guidance=family.embedded, inversion_guidance=family.embedded)
    n = steps - s.skip
    s.swap_from, s.structure_until, s.adain_from = round(0.15 * n), round(0.59 * n), round(0.29 * n)
    s.guidance = (3.5, 1.75, round(0.15 * n))
    weights = sum(p.numel() * p.element_size() for p in model.model.diffusion_model.parameters()) / GIB
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, model: {family.name}, "
          f"{total} blocks ({weights:.2f} GiB), latent {tuple(shape[1:])}, {args.text_tokens} text tokens, "
          f"cfg {family.cfg}{' with a negative prompt' if negative else ''}, {args.dtype}, {steps} steps "
          f"({n} sampled), levels auto: {len(blocks)} blocks, runs: {args.runs}")

    def prompt(conditioning):
        context, extra = conditioning[0]
        pooled = extra.get("pooled_output")
        context = context.to(device, dtype)
        return context if pooled is None else (context, pooled.to(device, dtype))

    def ours():
        counted = node_graph.counting(model)
        out = node_graph.dit_transfer(node, model, cond, s, structure, appearance, "auto", SEED, counted,
                                      negative=negative)
        return out, (sum(counted.evaluations), len(counted.evaluations))

    def reference():
        if args.model == "flux":
            ref = named(family.reference)(twin, s, *prompt(cond))
        else:
            ref = named(family.reference)(twin, s, {"positive": prompt(cond),
                                                    "negative": None if negative is None else prompt(negative)})
        # the Invert Pair node's draws from its seed, for both images
        fresh = [torch.randn((n, 1, *shape), generator=torch.Generator().manual_seed(SEED)).to(device, dtype)
                 for _ in range(2)]
        with torch.no_grad():
            out = ref.transfer(appearance.to(device, dtype), structure.to(device, dtype), *fresh)
        return out, (ref.evaluations, ref.calls)

    def plain():
        """One generation: the model's Euler sampler from noise over the same steps, one row, same CFG."""
        counted = node_graph.counting(model)
        guider = comfy.samplers.CFGGuider(counted)
        guider.inner_set_conds({"positive": cond} if negative is None else {"positive": cond, "negative": negative})
        guider.set_cfg(family.cfg)
        noise = torch.randn((1, *shape), generator=g)
        guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"),
                      torch.tensor(sigmas), disable_pbar=True, seed=0)
        return None, (sum(counted.evaluations), len(counted.evaluations))

    results, outputs = {}, {}
    for name, run in (("ours", ours), ("reference", reference), ("plain generation", plain)):
        timings = [timed_on(device, run) for _ in range(args.runs + 1)][1:]  # the first run warms up
        results[name] = statistics.median(t[0] for t in timings), timings[0][1], timings[0][2][1]
        outputs[name] = timings[0][2][0]
    (t, m, (e, c)), (t_ref, m_ref, (e_ref, c_ref)), (t_plain, m_plain, (e_plain, c_plain)) = (
        results[name] for name in ("ours", "reference", "plain generation"))
    print(f"full method   model batch items  ours {e:5d}  reference {e_ref:5d}  ratio {e / e_ref:.3f}  "
          f"(plain generation {e_plain}: ratio {e / e_plain:.2f})")
    print(f"full method   model calls        ours {c:5d}  reference {c_ref:5d}  ratio {c / c_ref:.3f}  "
          f"(plain generation {c_plain}: ratio {c / c_plain:.2f})")
    print(f"full method   seconds/transfer   ours {t:7.2f}  reference {t_ref:7.2f}  ratio {t / t_ref:.3f}")
    print(f"full method   against one plain generation of {steps} steps ({t_plain:.2f} s): ours {t / t_plain:.2f}x, "
          f"reference {t_ref / t_plain:.2f}x (goal: at most 3x)")
    if m is not None:
        print(f"full method   peak working MiB (weights apart)  ours {m / MIB:8.1f}  reference {m_ref / MIB:8.1f}  "
              f"plain generation {m_plain / MIB:8.1f}")
    difference = float((outputs["ours"].float().cpu() - outputs["reference"].float().cpu()).abs().max())
    verdict = "within" if difference < TOLERANCE else "NOT within"
    print(f"full method   output: max |ours - reference| {difference:.2e}, {verdict} {TOLERANCE:g}"
          + ("" if dtype == torch.float32 else f" ({args.dtype}: rounding expected)"))
