"""The transfer through the pack's nodes, set up from a reference.Settings (shared by the
parity tests and the benchmark). `node(name)` gives an instance of a registered node class;
latents are in model space (what the reference works on)."""
import math

from reference import Settings


def invert(node, model, clean, cond, uncond, s: Settings, seed: int):
    """Invert a clean model-space latent (1, C, H, W) with the Invert node `s` asks for."""
    latent = {"samples": clean / model.model.latent_format.scale_factor}
    positive, negative = [[cond, {}]], [[uncond, {}]]
    if s.inversion == "ddpm":
        return node("CrossImageInvertDDPM").execute(model, latent, positive, s.steps, "ddim_uniform",
                                                   s.inversion_cfg, s.skip, seed, negative)[0]
    assert s.skip == 0, "the DDIM node samples every step it inverted"
    return node("CrossImageInvertDDIM").execute(model, latent, positive, s.steps, "ddim_uniform", s.inversion_cfg,
                                               negative)[0]


def levels(s: Settings) -> str:
    """The reference's swapped grids (latent / 2^level) as levels of a UNet with attention at every decoder level."""
    return ",".join(str(int(math.log2(grid))) for grid in s.grids)


def transfer(node, model, cond, s: Settings, appearance, structure, masks=None):
    """Patch, set up and sample as a workflow wires the nodes; returns the model-space output.
    Step numbers become fractions of the sampled steps; grids (latent / 2^level) become levels,
    as on a UNet with attention at every decoder level. masks: image-size MASKs
    (structure, appearance) for latent AdaIN."""
    n = s.steps - s.skip
    contrast = node("CrossImageAttentionContrast").execute(s.contrast)[0]
    (patched,) = node("CrossImageAttention").execute(model, appearance, levels(s), s.swap_from / n, 1.0, contrast,
                                                   s.structure_every, min(s.structure_until / n, 1.0))
    guidance = None
    if s.guidance is not None:
        guidance = node("CrossImageAppearanceGuidance").execute(s.guidance[0], s.guidance[1], s.guidance[2] / n)[0]
    adain = None
    if s.adain_from is not None:
        adain = node("CrossImageLatentAdaIN").execute(s.adain_from / n, min(s.adain_until / n, 1.0),
                                                       *(masks or (None, None)))[0]
    sampler = "ddpm" if s.inversion == "ddpm" else "euler"
    (out,) = node("CrossImageSampler").execute(patched, [[cond, {}]], structure, sampler, 1.0, None, guidance, adain)
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
