"""The transfer through the pack's nodes, set up from a reference.Settings (shared by the
parity tests and the benchmark). `node(name)` gives an instance of a registered node class;
latents are in model space (what the reference works on). Prompts (cond, uncond) are context
tensors, or whole CONDITIONING lists where they carry more (SDXL's pooled_output)."""
import math

from reference import Settings


def invert(node, model, clean, cond, uncond, s: Settings, seed: int):
    """Invert a clean model-space latent (1, C, H, W) with the Invert node `s` asks for."""
    return invert_with(node, "", model, [clean], cond, uncond, s, seed)[0]


def invert_pair(node, model, structure, appearance, cond, uncond, s: Settings, seed: int):
    """(structure, appearance) inversions of clean model-space latents by the Invert Pair node
    `s` asks for (each with the seed's draws, as `invert` with that seed)."""
    return invert_with(node, "Pair", model, [structure, appearance], cond, uncond, s, seed)


def invert_with(node, kind, model, cleans, cond, uncond, s: Settings, seed: int):
    latents = [{"samples": clean / model.model.latent_format.scale_factor} for clean in cleans]
    positive, negative = conditioning(cond), conditioning(uncond)
    if s.inversion == "ddpm":
        return node(f"CrossImageInvert{kind}DDPM").execute(model, *latents, positive, s.steps, "ddim_uniform",
                                                           s.inversion_cfg, s.skip, seed, negative)
    assert s.skip == 0, "the DDIM node samples every step it inverted"
    return node(f"CrossImageInvert{kind}DDIM").execute(model, *latents, positive, s.steps, "ddim_uniform",
                                                       s.inversion_cfg, negative)


def conditioning(prompt):
    """A CONDITIONING from a context tensor (nothing else in it), or the CONDITIONING given."""
    return prompt if isinstance(prompt, list) else [[prompt, {}]]


def levels(s: Settings, factors=None) -> str:
    """The reference's swapped grids (latent / grid tokens a side) as the pack's levels: indices
    into `factors`, the downsampling factors of the decoder levels with attention, finest first
    (default: attention at every level, so level = log2(grid))."""
    if factors is None:
        return ",".join(str(int(math.log2(grid))) for grid in s.grids)
    return ",".join(str(factors.index(grid)) for grid in s.grids)


def attention_factors(model) -> list:
    """Downsampling factors of the decoder levels with attention, finest first, from the UNet's
    configuration (SD1.5: 1, 2, 4; SDXL: 2, 4, its finest level has none)."""
    config = model.model.model_config.unet_config
    depth, factors, start = config["transformer_depth_output"], [], 0
    for level, blocks in enumerate(config["num_res_blocks"]):  # listed finest level first, blocks + 1 a level
        if max(depth[start:start + blocks + 1]) > 0:
            factors.append(2 ** level)
        start += blocks + 1
    return factors


def transfer(node, model, cond, s: Settings, appearance, structure, masks=None, regional=None):
    """Patch, set up and sample as a workflow wires the nodes; returns the model-space output.
    Step numbers become fractions of the sampled steps; grids (latent / 2^level) become the
    levels of the model's decoder attention (attention_factors). masks: image-size MASKs
    (structure, appearance) for latent AdaIN. regional: Cross-Image Attention's structure_mask,
    appearance_mask and regions inputs, as a dict."""
    n = s.steps - s.skip
    contrast = node("CrossImageAttentionContrast").execute(s.contrast)[0]
    (patched,) = node("CrossImageAttention").execute(model, appearance, levels(s, attention_factors(model)),
                                                   s.swap_from / n, 1.0, contrast, s.structure_every,
                                                   min(s.structure_until / n, 1.0), **(regional or {}))
    guidance = None
    if s.guidance is not None:
        guidance = node("CrossImageAppearanceGuidance").execute(s.guidance[0], s.guidance[1], s.guidance[2] / n)[0]
    adain = None
    if s.adain_from is not None:
        adain = node("CrossImageLatentAdaIN").execute(s.adain_from / n, min(s.adain_until / n, 1.0),
                                                       *(masks or (None, None)))[0]
    sampler = "ddpm" if s.inversion == "ddpm" else "euler"
    (out,) = node("CrossImageSampler").execute(patched, conditioning(cond), structure, sampler, 1.0, None, guidance,
                                               adain)
    return out["samples"].to(structure.trajectory) * model.model.latent_format.scale_factor


def counting(model):
    """A clone of `model` whose `evaluations` lists the batch size of every UNet call."""
    counted = model.clone()
    counted.evaluations = []

    def wrapper(apply_model, args):
        counted.evaluations.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])
    counted.set_model_unet_function_wrapper(wrapper)
    return counted


def with_guidance(cond, guidance):
    """A Flux CONDITIONING with its embedded guidance set (what FluxGuidance does)."""
    return [[cond[0][0], {**cond[0][1], "guidance": guidance}]]


def dit_transfer(node, model, cond, s, structure, appearance, levels: str, seed: int, counted=None, negative=None):
    """The transfer on a diffusion transformer through the nodes, as a workflow wires them, the
    settings given as tests/reference_dit.DiTSettings (its cfg and inversion_cfg with `negative`,
    Flux-dev's embedded guidance where it sets one); `structure` and `appearance` are clean
    model-space latents; returns the model-space output. counted: the MODEL the Invert Pair node
    runs (a counting clone)."""
    scale, n, steps = model.model.latent_format, len(s.sigmas) - 1 - s.skip, len(s.sigmas) - 1
    latents = [{"samples": scale.process_out(latent)} for latent in (structure, appearance)]

    def guided(conditioning, value):
        return conditioning if conditioning is None or value is None else with_guidance(conditioning, value)
    inverting, inverter = guided(cond, s.inversion_guidance), counted or model
    inverting_negative = guided(negative, s.inversion_guidance)
    if s.inversion == "euler":
        structure, appearance = node("CrossImageInvertPairDDIM").execute(
            inverter, *latents, inverting, steps, "simple", s.inversion_cfg, inverting_negative)
    else:
        structure, appearance = node("CrossImageInvertPairDDPM").execute(
            inverter, *latents, inverting, steps, "simple", s.inversion_cfg, s.skip, seed, inverting_negative)
    contrast = node("CrossImageAttentionContrast").execute(s.contrast)[0]
    positions = None if s.positions is None else node("CrossImageAppearancePositions").execute(s.positions)[0]
    (patched,) = node("CrossImageAttention").execute(
        counted or model, appearance, levels, s.swap_from / n, 1.0, contrast, s.structure_every,
        min(s.structure_until / n, 1.0), positions=positions)
    guidance = None
    if s.guidance is not None:
        guidance = node("CrossImageAppearanceGuidance").execute(s.guidance[0], s.guidance[1], s.guidance[2] / n)[0]
    adain = None
    if s.adain_from is not None:
        adain = node("CrossImageLatentAdaIN").execute(s.adain_from / n, 1.0)[0]
    sampler = "euler" if s.inversion == "euler" else "euler_ancestral"
    (out,) = node("CrossImageSampler").execute(patched, guided(cond, s.embedded_guidance), structure, sampler,
                                               s.cfg, guided(negative, s.embedded_guidance), guidance, adain)
    return scale.process_in(out["samples"])

