"""Side by side on Flux, in one process: the pack's node graph, the independent reference loop
(tests/reference_flux.py: the batch of three, two full passes a step) and one plain generation
with the same steps on the same model. Prints model calls, batch items, seconds per transfer
(median of --runs) and peak working memory, ours against the reference and against the plain
generation (the goal: a transfer in at most 3 plain generations' time).

  bash benchmarks/run.sh --model flux                       # CPU: Flux-dev's 19 + 38 blocks, 1 head
  bash benchmarks/run.sh --model flux --heads 24 --size 1024 --dtype bf16   # GPU: Flux-dev's full size

The model has random weights (speed does not depend on them), the transfer the paper's full
method: an edit-friendly flow inversion of both images by Invert Pair, Stable Flow's vital
blocks, contrast, structure injection, appearance guidance, latent AdaIN, attenuated positions."""
import os
import statistics

import torch

from benchmark import GIB, MIB, timed_on


def measure_flux(args):
    import headless
    nodes = headless.start_comfyui(os.environ["COMFYUI_PATH"], dynamic_vram=args.dynamic_vram)
    import comfy.model_management
    import comfy.samplers
    import comfy.utils

    import node_graph
    import tiny_models
    from reference_dit import DiTSettings
    from reference_flux import FluxReference, flux_twin
    comfy.utils.PROGRESS_BAR_ENABLED = False
    node = nodes.NODE_CLASS_MAPPINGS.__getitem__
    device = comfy.model_management.get_torch_device()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    model = tiny_models.tiny_flux_model(seed=0, kind="dev", output_scale=0.2, blocks=(19, 38), heads=args.heads)
    model.model.to(dtype)
    twin = flux_twin(model).to(device, dtype)
    height, width = args.size // 8, args.size * args.aspect // 2 // 8
    g = torch.Generator().manual_seed(0)
    structure, appearance = torch.randn(2, 1, 16, height, width, generator=g)
    cond = tiny_models.flux_conditioning(1, tokens=args.text_tokens, guidance=3.5)
    sampling = model.get_model_object("model_sampling")
    steps = args.steps or 28
    sigmas = tuple(float(s) for s in comfy.samplers.calculate_sigmas(sampling, "simple", steps))
    s = DiTSettings(sigmas=sigmas, sigma_floor=float(sampling.sigma_min), inversion="flow",
                     skip=round(steps * 6 / 28), blocks=(0, 1, 17, 18, 25, 28, 53, 54, 56), contrast=1.67,
                     structure_every=5, positions="attenuated")
    n = steps - s.skip
    s.swap_from, s.structure_until, s.adain_from = round(0.15 * n), round(0.59 * n), round(0.29 * n)
    s.guidance = (3.5, 1.75, round(0.15 * n))
    weights = sum(p.numel() * p.element_size() for p in model.model.diffusion_model.parameters()) / GIB
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, model: Flux-dev layout, "
          f"{args.heads * 128} channels ({weights:.2f} GiB), latent ({height}, {width}), {args.text_tokens} text "
          f"tokens, {args.dtype}, {steps} steps ({n} sampled), runs: {args.runs}")

    def ours():
        counted = node_graph.counting(model)
        out = node_graph.dit_transfer(node, model, cond, s, structure, appearance, "vital", 0, counted)
        return out, (sum(counted.evaluations), len(counted.evaluations))

    def reference():
        context, extra = cond[0]
        ref = FluxReference(twin, s, context.to(device, dtype), extra["pooled_output"].to(device, dtype))
        fresh = [torch.randn((n, 1, 16, height, width), generator=g).to(device, dtype) for _ in range(2)]
        with torch.no_grad():
            out = ref.transfer(appearance.to(device, dtype), structure.to(device, dtype), *fresh)
        return out, (ref.evaluations, ref.calls)

    def plain():
        """One generation: the model's Euler sampler from noise over the same steps, one row."""
        counted = node_graph.counting(model)
        guider = comfy.samplers.CFGGuider(counted)
        guider.inner_set_conds({"positive": cond})
        guider.set_cfg(1.0)
        noise = torch.randn((1, 16, height, width), generator=g)
        guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"),
                      torch.tensor(sigmas), seed=0)
        return None, (sum(counted.evaluations), len(counted.evaluations))

    results = {}
    for name, run in (("ours", ours), ("reference", reference), ("plain generation", plain)):
        timings = [timed_on(device, run) for _ in range(args.runs + 1)][1:]  # the first run warms up
        results[name] = statistics.median(t[0] for t in timings), timings[0][1], timings[0][2][1]
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
