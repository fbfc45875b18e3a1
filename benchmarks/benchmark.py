"""Side by side, in one process: the pack's node graph and the in-repo reference implementation
(tests/reference.py, the official algorithm's structure) on the same random-weight model.

Prints, ours vs reference and as ratios:
  - UNet batch items and UNet calls per transfer (counted by instrumenting the model call), at
    the paper's defaults and at the cheapest faithful setting (paper defaults, inversion without CFG);
  - wall time per transfer (both inversions and the sampling), median of --runs;
  - peak working memory per transfer above the UNet's weights (CUDA: allocations; CPU: the
    process's resident size, only when run with MALLOC_MMAP_THRESHOLD_=65536, so that glibc
    returns big blocks at once instead of keeping them; that slows the run, so time apart);
  - each speed-up on its own, against ours without it: the images inverted apart (two Invert
    nodes instead of Invert Pair), the contrast in the least chunks instead of chunks from the
    free memory (and with --compile, ours under ComfyUI's TorchCompileModel);
  - the cost of regions against the unmasked transfer: masks on both images (object only), and
    a second appearance by region (its inversion included);
  - with --structures, one appearance onto N structures in one run: time per image;
  - with --appearance-size, ours with an appearance of that size against a same-size one;
  - one decoder attention step at 4096 tokens (a 64x64 latent), contrast on: peak memory and
    time, chunks from the free memory and the least chunks; and the patch's own cost per layer.

  bash benchmarks/run.sh                                       # CPU: tiny UNet, 32x48 latent
  bash benchmarks/run.sh --model sd15 --size 512 --dtype fp16 --structures 1,4,8  # GPU: full SD1.5 UNet
  bash benchmarks/run.sh --model sdxl --size 1024 --dtype fp16 # GPU: SDXL-family UNet (KOALA-1B layout)
  bash benchmarks/run.sh --model flux                          # Flux: benchmark_dit.py
  bash benchmarks/run.sh --model qwen-image                    # also sd3, sd35-medium, lumina2: benchmark_dit.py
"""
import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch


SD15_UNET = dict(  # the full SD1.5 UNet architecture (ComfyUI's detected config)
    use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, model_channels=320,
    num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1,
    context_dim=768, num_heads=8, use_spatial_transformer=True, legacy=False, adm_in_channels=None,
    use_linear_in_transformer=False, use_temporal_attention=False, use_temporal_resblock=False)
# An SDXL-family UNet as ComfyUI detects KOALA-1B: SDXL's width, heads, context_dim 2048 and
# vector conditioning (pooled text 1280 + 6 x 256 sizes), no attention at the finest level, one
# res block a level (1.16 G parameters; SDXL's own, 2.6 G, does not fit twice in fp32 in 23 GB).
SDXL_UNET = dict(
    use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, model_channels=320,
    num_res_blocks=[1, 1, 1], channel_mult=[1, 2, 4], transformer_depth=[0, 2, 6],
    transformer_depth_output=[0, 0, 2, 2, 6, 6], transformer_depth_middle=6, context_dim=2048, num_heads=-1,
    num_head_channels=64, use_spatial_transformer=True, legacy=False, adm_in_channels=2816, num_classes="sequential",
    use_linear_in_transformer=True, use_temporal_attention=False, use_temporal_resblock=False)
GIB, MIB = 2 ** 30, 2 ** 20
DIT_FAMILIES = ("flux", "sd3", "sd35-medium", "qwen-image", "lumina2")  # benchmark_dit.FAMILIES
ATTENTION = dict(tokens=4096, heads=8, inner=320)  # SD1.5's finest decoder attention at 512 px


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_on(device, run):
    """(seconds, peak memory above what was in use before, in bytes: CUDA allocations, or on the
    CPU the process's resident size, None without MALLOC_MMAP_THRESHOLD_; result) of run()."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = reset_resident_peak()
    start = time.perf_counter()
    result = run()
    synchronize(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        return seconds, torch.cuda.max_memory_allocated() - before, result
    if not os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return seconds, None, result  # glibc's heap would hide what is freed and reused
    return seconds, (resident_kib("VmHWM") - before) * 1024, result


def measure(args):
    import headless
    import node_graph
    import tiny_models
    from reference import Reference, Settings, diffusers_twin
    folder = tempfile.mkdtemp(prefix="cia-benchmark-")
    if args.compile:  # the pack runs compiled models with ComfyUI's PyTorch attention only: all runners use it
        headless.use_comfyui(os.environ["COMFYUI_PATH"])
        from comfy.cli_args import args as comfy_args
        comfy_args.use_pytorch_cross_attention = True
    nodes = headless.start_comfyui(os.environ["COMFYUI_PATH"], input_dir=folder, output_dir=folder,
                                   dynamic_vram=args.dynamic_vram)
    import comfy.model_management
    import comfy.utils
    comfy.utils.PROGRESS_BAR_ENABLED = False
    pack = headless.pack_module()
    structures = [int(n) for n in args.structures.split(",")] if args.structures else []
    device = comfy.model_management.get_torch_device()
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    unet = {"sd15": SD15_UNET, "sdxl": SDXL_UNET}.get(args.model) or tiny_models.tiny_unet_config()
    family = "sdxl" if args.model == "sdxl" else "sd15"
    model = tiny_models.random_model(unet, device=device, dtype=dtype, family=family)
    twin = diffusers_twin(model).to(device, dtype)
    latent = args.size // 8
    g = torch.Generator().manual_seed(0)
    config = model.model.model_config.unet_config
    cond, uncond = (torch.randn(1, 77, config["context_dim"], generator=g) for _ in range(2))
    clean = {name: torch.randn(1, 4, latent, latent * args.aspect // 2, generator=g)
             for name in ("appearance", "structure")}
    clean["second appearance"] = torch.randn(clean["appearance"].shape, generator=g)
    masks = {name: object_mask(clean[name].shape[-2:]) for name in ("structure", "appearance")}
    clean["more structures"] = torch.randn(max(structures + [1]) - 1, 4, latent, latent * args.aspect // 2, generator=g)
    if args.appearance_size:  # an appearance of another size; the same-size one is timed beside it
        height, width = (int(side) // 8 for side in args.appearance_size.split("x"))
        clean["same-size appearance"] = clean["appearance"]
        clean["appearance"] = torch.randn(1, 4, height, width, generator=g)
    prompts, pooled = (cond, uncond), {}  # as the nodes take them; pooled: the reference's extra inputs
    if args.model == "sdxl":  # SDXL's prompts carry a pooled text embedding too
        pooled = {name: torch.randn(1, config["adm_in_channels"] - 6 * 256, generator=g)
                  for name in ("pooled", "uncond_pooled")}
        prompts = ([[cond, {"pooled_output": pooled["pooled"]}]],
                   [[uncond, {"pooled_output": pooled["uncond_pooled"]}]])
    node = nodes.NODE_CLASS_MAPPINGS.__getitem__  # node("CrossImageSampler").execute(...)
    weights = sum(p.numel() * p.element_size() for p in model.model.diffusion_model.parameters()) / GIB
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, model: {args.model}, "
          f"latent {tuple(clean['structure'].shape[2:])}, appearance latent {tuple(clean['appearance'].shape[2:])}, "
          f"{args.dtype}, runs: {args.runs}")

    def timed(run):
        return timed_on(device, run)

    def ours(s, appearance="appearance", structures=1, pair=True, patcher=model, regional=None):
        """One transfer through the nodes: the images inverted by Invert Pair (`pair`) or by two
        Invert nodes (the same seed: the same inversions), one appearance onto `structures`;
        regional: "object" (masks on both images) or "two appearances" (the second by region)."""
        counted = node_graph.counting(patcher)
        structure = torch.cat([clean["structure"], clean["more structures"][:structures - 1]])

        def run():
            if pair:
                inverted, appearing = node_graph.invert_pair(node, counted, structure, clean[appearance], *prompts,
                                                             s, 0)
            else:
                appearing, inverted = (node_graph.invert(node, counted, latent, *prompts, s, 0)
                                       for latent in (clean[appearance], structure))
            inputs = None
            if regional == "object":
                inputs = {"structure_mask": masks["structure"], "appearance_mask": masks["appearance"]}
            elif regional == "two appearances":
                second = node_graph.invert(node, counted, clean["second appearance"], *prompts, s, 0)
                inputs = {"regions": node("CrossImageAppearanceRegion").execute(second, masks["structure"])[0]}
            return node_graph.transfer(node, counted, prompts[0], s, appearing, inverted, regional=inputs)
        seconds, peak, out = timed(run)
        return seconds, peak, (sum(counted.evaluations), len(counted.evaluations)), out

    def least_chunks(s):
        """Ours with the contrast in chunks of the least budget, whatever the free memory."""
        plan = pack.core.plan
        chosen = plan.budget_from_free_memory
        plan.budget_from_free_memory = lambda free_bytes: pack.core.contrast.LEAST_BUDGET
        try:
            return ours(s)
        finally:
            plan.budget_from_free_memory = chosen

    def reference(s):
        ref = Reference(twin, s, cond.to(device, dtype), uncond.to(device, dtype),
                        **{name: p.to(device, dtype) for name, p in pooled.items()})
        draws = [torch.randn((s.steps, 1) + clean[name].shape[1:], generator=g).to(device, dtype)
                 for name in ("appearance", "structure")]

        def run():
            with torch.no_grad():
                return ref.transfer(clean["appearance"].to(device, dtype), clean["structure"].to(device, dtype), *draws)
        seconds, peak, out = timed(run)
        return seconds, peak, (ref.evaluations, ref.calls), out

    paper = scaled(Settings(), args.steps) if args.steps else Settings()
    if args.model == "sdxl":  # no attention at latent/1: the paper's grids at 1024 px are latent/2 and /4
        paper = dataclasses.replace(paper, grids=(2, 4))
    settings = {"paper defaults": paper, "cheapest faithful": dataclasses.replace(paper, inversion_cfg=1.0)}
    runners = {"ours": ours, "reference": reference, "ours, images inverted apart": lambda s: ours(s, pair=False),
               "ours, least contrast chunks": least_chunks,
               "ours, object only (masks)": lambda s: ours(s, regional="object"),
               "ours, two appearances by region": lambda s: ours(s, regional="two appearances")}
    if args.compile:
        from comfy_extras.nodes_torch_compile import TorchCompileModel  # not in the registry headless loads
        compiled = TorchCompileModel.execute(model, "inductor")[0]
        runners["ours, TorchCompileModel"] = lambda s: ours(s, patcher=compiled)
    if args.appearance_size:
        runners["ours, same-size appearance"] = lambda s: ours(s, "same-size appearance")
    for label, s in settings.items():
        results = {}
        for name, run in runners.items():
            runs = [run(s) for _ in range(args.runs + 1)][1:]  # the first run warms up (and compiles)
            results[name] = (statistics.median(r[0] for r in runs), runs[0][1], runs[0][2], runs[0][3])
        t_ref, m_ref, (e_ref, c_ref), _ = results["reference"]
        t, m, (e, c), out = results["ours"]
        print(f"{label:18s} UNet batch items  ours {e:5d}  reference {e_ref:5d}  ratio {e / e_ref:.3f}")
        print(f"{label:18s} UNet calls        ours {c:5d}  reference {c_ref:5d}  ratio {c / c_ref:.3f}")
        print(f"{label:18s} seconds/transfer  ours {t:7.2f}  reference {t_ref:7.2f}  ratio {t / t_ref:.3f}")
        # the UNet's weights are in memory before and counted apart
        if m is not None:
            print(f"{label:18s} peak working MiB (weights {weights:.2f} GiB apart)  ours {m / MIB:8.1f}  "
                  f"reference {m_ref / MIB:8.1f}  ratio {m / m_ref:.3f}")
        for name in [name for name in results if name.startswith("ours, ") and "same-size" not in name]:
            t_other, m_other, (e_other, c_other), out_other = results[name]
            memory = "" if m is None else f", working MiB {m_other / MIB:.1f} vs {m / MIB:.1f}"
            print(f"{label:18s} {name[6:]} vs ours: items {e_other} vs {e}, calls {c_other} vs {c}, "
                  f"seconds {t_other:.2f} vs {t:.2f}  "
                  f"ratio {t_other / t:.3f}{memory}, output max |difference| "
                  f"{float((out_other - out).abs().max()):.1e}")
        if args.appearance_size:
            t_same, m_same, (e_same, c_same), _ = results["ours, same-size appearance"]
            memory = "" if m is None else f", working MiB {m / MIB:.1f} vs {m_same / MIB:.1f}"
            print(f"{label:18s} appearance of another size vs the same size (ours): items {e} vs {e_same}, "
                  f"calls {c} vs {c_same}, seconds {t:.2f} vs {t_same:.2f}  ratio {t / t_same:.3f}{memory}")
        if label == "paper defaults":
            for n in structures:
                t_n = statistics.median(ours(s, structures=n)[0] for _ in range(args.runs))
                print(f"{label:18s} one appearance onto {n} structure(s): seconds per image  ours {t_n / n:7.2f}  "
                      f"reference {t_ref:7.2f}  ratio {t_n / n / t_ref:.3f}  (ours for one: {t:.2f})")
    for which in ("ours", "ours, least chunks", "reference"):
        peak, seconds = attention_step_cost(which, args.dtype)
        whole_map = ATTENTION["heads"] * ATTENTION["tokens"] ** 2 * 4 / MIB  # the output row's float32 probabilities
        print(f"attention step, {ATTENTION['tokens']} tokens, contrast 1.67, {which:18s} peak MiB {peak:8.1f} "
              f"({peak / whole_map:.3f} of one whole map, {whole_map:.0f} MiB)  ms {seconds * 1000:8.1f}")
    patched, alone = patch_cost(pack, device, dtype)
    print(f"patched layer, no contrast, 2 rows x 64 tokens: us per call  patch {patched * 1e6:.1f}  "
          f"ComfyUI's attention alone {alone * 1e6:.1f}  (the patch's own work: {(patched - alone) * 1e6:.1f})")


def object_mask(latent_shape) -> torch.Tensor:
    """An image-size MASK (1, 8h, 8w) of an ellipse filling the middle of the image: an object."""
    h, w = (8 * side for side in latent_shape)
    rows, cols = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return ((rows / 0.7) ** 2 + (cols / 0.6) ** 2 <= 1).float()[None]


def patch_cost(pack, device, dtype, calls: int = 2000):
    """Seconds per call of a patched attn1 layer (a swapping plan, no contrast) and of ComfyUI's
    attention on the same small inputs alone: what the patch adds per layer in Python and kernels."""
    import comfy.ldm.modules.attention as comfy_attention
    q, k, v = (torch.randn(2, 64, 320, device=device, dtype=dtype) for _ in range(3))
    plan = pack.core.plan.CallPlan(step=0, rows=pack.core.rows.CallRows(1, 1), swap=True)
    options = {"n_heads": 8, "block": ("output", 0), "block_index": 0, pack.nodes.sampling.patch.PLAN_KEY: plan}
    replacement = pack.nodes.sampling.unet.SELF_ATTENTION
    timings = []
    for run in (lambda: replacement(q, k, v, options), lambda: comfy_attention.optimized_attention(q, k, v, heads=8)):
        run()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            run()
        synchronize(device)
        timings.append((time.perf_counter() - start) / calls)
    return timings


def scaled(s, steps: int):
    """The paper's settings on a schedule of `steps` instead of 100 (for quick checks)."""
    sampled_before = s.steps - s.skip
    skip = round(s.skip * steps / s.steps)
    at = lambda step: round(step * (steps - skip) / sampled_before)  # noqa: E731
    return dataclasses.replace(s, steps=steps, skip=skip, swap_from=at(s.swap_from),
                               structure_until=at(s.structure_until),
                               guidance=s.guidance[:2] + (at(s.guidance[2]),), adain_from=at(s.adain_from))


def attention_step_cost(which: str, dtype: str) -> tuple:
    """(peak memory in MiB above the inputs, seconds) of one decoder attention step on the batch
    [output, appearance, structure], in a fresh process (CPU: the process's peak resident size
    above its size before the step; CUDA: torch's peak allocation)."""
    # glibc keeps freed blocks below its (growing) mmap threshold in the heap, which would make
    # the resident size overstate what is live; a fixed threshold returns big blocks at once
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, "--attention-step", which, "--dtype", dtype],
                         check=True, capture_output=True, text=True, env=env).stdout
    peak, seconds = out.strip().splitlines()[-1].split()
    return float(peak), float(seconds)


def attention_step(which: str, dtype: str) -> str:
    from functools import partial
    import headless
    headless.use_comfyui(os.environ["COMFYUI_PATH"])
    from comfy.cli_args import args
    args.use_pytorch_cross_attention = True  # rows without contrast: PyTorch SDPA, ComfyUI's choice on NVIDIA
    headless.start_comfyui(os.environ["COMFYUI_PATH"])
    import comfy.ldm.modules.attention as comfy_attention
    import comfy.model_management
    from reference import APP, NaiveAttention
    pack = headless.pack_module()
    device = comfy.model_management.get_torch_device()
    kind = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    heads, tokens, inner = ATTENTION["heads"], ATTENTION["tokens"], ATTENTION["inner"]
    sources = pack.core.rows.CallRows(1, 1, 1).kv_sources(3)
    attention = partial(comfy_attention.optimized_attention, heads=heads, skip_reshape=True)
    split = pack.nodes.sampling.patch.heads_first
    contrast = pack.core.contrast
    budget = contrast.LEAST_BUDGET  # "ours, least chunks"; "ours": what the guider gives a call
    if which == "ours":
        budget = contrast.budget_from_free_memory(comfy.model_management.get_free_memory(device))
    swapped = partial(contrast.contrast_attention, strength=1.67, budget_elements=budget)

    def run(q, k, v):
        if which == "reference":
            return NaiveAttention.attend(q, k, v, heads, APP, 1.67)
        return pack.core.kv_swap.swapped_attention(*split(heads, q, k, v), sources, attention, swapped)

    small = [torch.randn(3, 64, inner, device=device, dtype=kind) for _ in range(3)]
    run(*small)  # load kernels before measuring
    q, k, v = (torch.randn(3, tokens, inner, device=device, dtype=kind) for _ in range(3))
    if device.type == "cuda":
        run(q, k, v)  # warm: the allocator's blocks and the kernels for this size
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        run(q, k, v)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return f"{(torch.cuda.max_memory_allocated() - before) / MIB} {seconds}"
    before = reset_resident_peak()
    start = time.perf_counter()
    run(q, k, v)
    seconds = time.perf_counter() - start
    return f"{(resident_kib('VmHWM') - before) / 1024} {seconds}"


def reset_resident_peak() -> int:
    """Linux: reset the process's peak resident size (VmHWM) to the current one; returns it in KiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return resident_kib("VmRSS")


def resident_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "sd15", "sdxl") + tuple(DIT_FAMILIES), default="tiny",
                        help="sdxl: an SDXL-family UNet (KOALA-1B layout), with pooled text and size conditioning; "
                             "flux: Flux-dev's layout; sd3, sd35-medium, qwen-image, lumina2: those diffusion "
                             "transformers (benchmark_dit.py)")
    parser.add_argument("--heads", type=int, default=1, help="flux: heads of 128 channels (Flux-dev: 24)")
    parser.add_argument("--layers", type=int, default=0,
                        help="sd3, sd35-medium, qwen-image, lumina2: blocks (0: 8 on SD3, whose tiny width is 64 per "
                             "block; Qwen-Image's 60; Lumina 2's 26)")
    parser.add_argument("--text-tokens", type=int, default=64,
                        help="diffusion transformers: text tokens (Flux-dev's T5: 256 or 512)")
    parser.add_argument("--size", type=int, default=256, help="image height in pixels (latent = size / 8)")
    parser.add_argument("--aspect", type=int, default=3, help="width = size * aspect / 2 (3: non-square)")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--runs", type=int, default=3, help="timed runs (after one warm-up run), at least 1")
    parser.add_argument("--steps", type=int, default=0, help="schedule length instead of the paper's 100 (quick "
                                                             "checks)")
    parser.add_argument("--appearance-size", metavar="HxW", default="",
                        help="an appearance image of this size in pixels (e.g. 320x192); ours is also timed with a "
                             "same-size appearance beside it")
    parser.add_argument("--structures", metavar="N,N,..", default="",
                        help="also one appearance onto N structures in one run, per image time (e.g. 1,4,8)")
    parser.add_argument("--compile", action="store_true",
                        help="also ours under ComfyUI's TorchCompileModel (inductor; the warm-up run compiles)")
    parser.add_argument("--dynamic-vram", action="store_true",
                        help="ComfyUI 0.33.0's DynamicVRAM model loading, as its main.py turns it on (NVIDIA only)")
    parser.add_argument("--attention-step", choices=("ours", "ours, least chunks", "reference"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs: at least 1")
    if args.attention_step:
        with torch.no_grad():
            print(attention_step(args.attention_step, args.dtype))
    elif args.model in DIT_FAMILIES:
        from benchmark_dit import measure_dit
        measure_dit(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
