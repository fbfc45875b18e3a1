"""Cross-Image Sampler: denoise the structure's inverted latent with ComfyUI's samplers,
the appearance latent alongside it in the same batch so the patched attention can see it."""
import comfy.samplers
import torch

from ..core.packing import pack
from ..core.regions import Regions, region_shares
from ..core.schedule import step_index
from .appearance_region import appearance_masks
from .attention_patch import BatchLayout, require_exact_when_compiled, require_own_layers
from .checks import latent_mask, require_number, require_steps
from .cross_image_guider import CrossImageGuider
from .guided_sampling import make_guider, run_sampler
from .model_info import require_inversion
from .settings import SETTINGS_KEY, GuidanceSettings, LatentAdaINSettings
from .sockets import CATEGORY, GuidanceSocket, InversionSocket, LatentAdaINSocket, io


# The samplers that land back on an inversion's latents, one model call per step (what the
# guider's per-step extras are made for). A DDIM inversion is the Euler step run backwards
# (core/ddim.py; ComfyUI's "ddim" is Euler); an edit-friendly DDPM inversion is retraced by
# ComfyUI's DDPM step replaying its noise maps. Others (multistep, ancestral, SDE, CFG++)
# land elsewhere, or crash on the batch layout.
RETRACING = {"ddim": ("euler", "ddim"), "ddpm": ("ddpm",)}
INVERSION_NAMES = {"ddim": "a DDIM inversion",
                   "ddpm": "an edit-friendly DDPM inversion (it replays the inversion's noise maps)"}


# Conditioning that adds its own signal to every batch row the model runs, inside attention
# where it cannot be kept to the output rows: in the Cross-Image Sampler's batch it would act on
# the appearance and structure rows too. (ControlNets and T2I adapters are kept to the output
# rows: control_rows.py.)
STEERING = {"gligen": "GLIGEN boxes"}


def noise_replay(row_inversions, schedule, row_shape):
    """A ComfyUI noise sampler that hands the DDPM sampler, at each step, every batch row's
    noise map from its inversion (outputs: the structure's), as the paper's sampling does,
    packed as the batch is (core/packing.py: zero on the padding)."""
    steps = schedule.shape[0] - 1
    noise = torch.cat([pack(inversion.noise.flatten(0, 1), row_shape).reshape(steps, -1, *row_shape)
                       for inversion in row_inversions], dim=1)

    def replay(sigma, sigma_next):
        return noise[step_index(schedule, float(sigma))].to(sigma.device)
    return replay


def sampling_regions(settings, structure, latent_adain):
    """The regions of Cross-Image Attention's settings at the latent sizes (core/regions.py), or
    None without regions. Latent AdaIN then follows them, so its own masks are refused."""
    if not settings.regions:
        return None
    if latent_adain is not None and (latent_adain.structure_mask is not None or latent_adain.appearance_mask is not None):
        raise ValueError("latent_adain: Cross-Image Attention has masks or regions, and latent AdaIN follows them "
                         "(each region's output pixels take its appearance's statistics); disconnect Latent AdaIN's "
                         "masks")
    structure_masks = [None if region.structure_mask is None else
                       latent_mask(region.structure_mask, structure.clean, "structure_mask")[0]
                       for region in settings.regions]
    return Regions(region_shares(structure_masks, tuple(structure.clean.shape[-2:])), appearance_masks(settings.regions),
                   tuple(settings.appearance.clean.shape[-2:]))


class CrossImageSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CrossImageSampler",
            display_name="Cross-Image Sampler",
            category=CATEGORY,
            description=("Samples the output from the structure image's inversion. With a model from Cross-Image "
                         "Attention, the appearance image is denoised in the same batch and lends its keys and "
                         "values; with a plain model this reconstructs the structure image. Decode the result with "
                         "VAE Decode."),
            inputs=[
                io.Model.Input("model", tooltip="A model from Cross-Image Attention (or a plain model to reconstruct the structure)."),
                io.Conditioning.Input("positive", tooltip="The prompt, the same one the images were inverted with."),
                InversionSocket.Input("structure", tooltip="Inversion of the structure image (layout, shape and pose to keep). Sampling follows its schedule."),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="euler",
                               tooltip="ComfyUI sampler. euler (= ddim) retraces a DDIM inversion; an edit-friendly DDPM inversion needs ddpm, which replays its noise maps."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Text classifier-free guidance while sampling. The paper uses none (1.0); higher needs a negative prompt."),
                io.Conditioning.Input("negative", optional=True, tooltip="Negative prompt; only used when cfg is not 1."),
                GuidanceSocket.Input("guidance", optional=True,
                                     tooltip="Appearance guidance from the Appearance Guidance node (the paper uses it); without it, none."),
                LatentAdaINSocket.Input("latent_adain", optional=True,
                                        tooltip="AdaIN on the output latent during sampling, from the Latent AdaIN node (the paper uses it); without it, none."),
            ],
            outputs=[io.Latent.Output(tooltip="The output latent, one per structure image.")],
        )

    @classmethod
    def execute(cls, model, positive, structure, sampler_name, cfg, negative=None, guidance=None, latent_adain=None):
        require_inversion(structure, "structure", model)
        cfg = require_number("cfg", cfg, 0.0, 100.0)
        if guidance is not None and not isinstance(guidance, GuidanceSettings):
            raise ValueError(f"guidance: expected settings from the Appearance Guidance node, got {type(guidance).__name__}")
        if latent_adain is not None and not isinstance(latent_adain, LatentAdaINSettings):
            raise ValueError(f"latent_adain: expected settings from the Latent AdaIN node, got {type(latent_adain).__name__}")
        fits = RETRACING[structure.method]
        if sampler_name not in fits:
            raise ValueError(f"sampler_name: {sampler_name} does not retrace {INVERSION_NAMES[structure.method]}; use "
                             f"{' or '.join(fits)}")
        settings = model.model_options.get("transformer_options", {}).get(SETTINGS_KEY)
        for name, extra in (("guidance", guidance), ("latent_adain", latent_adain)):
            if extra is not None and settings is None:
                raise ValueError(f"{name}: needs a model from Cross-Image Attention (it works on the appearance latent)")
        row_inversions = [structure]  # the inversion each batch row follows: [outputs | appearances | structures]
        guider_class = comfy.samplers.CFGGuider
        if settings is not None:
            for name, conditioning in (("positive", positive), ("negative", negative)):
                steering = sorted({key for _, extra in conditioning or [] for key in STEERING if key in extra})
                if steering:
                    raise ValueError(f"{name}: carries {' and '.join(STEERING[key] for key in steering)}, which would "
                                     "steer the appearance and structure latents away from their inversions too; "
                                     "the Cross-Image Sampler does not take it yet (apply it to a plain sampling "
                                     "of the output instead)")
            require_own_layers(model, settings.levels)
            require_exact_when_compiled(model)
            for appearance in settings.appearances:
                structure.check_pairs_with(appearance, "structure", "appearance")
            steps = structure.steps
            require_steps("model (Cross-Image Attention's start/end)", settings.start, settings.end, steps,
                          "cross-image attention")
            if guidance is not None:
                require_steps("guidance (Appearance Guidance's start, with Cross-Image Attention's end)",
                              max(guidance.start, settings.start), settings.end, steps, "appearance guidance")
            if latent_adain is not None:
                require_steps("latent_adain (Latent AdaIN's start/end)", latent_adain.start, latent_adain.end, steps,
                              "latent AdaIN")
            # The outputs start from the structure's noise and the appearance is denoised beside
            # them; with structure injection the structure is too, to lend its keys and values.
            injection = settings.structure_every > 0 and settings.structure_until > 0
            row_inversions += settings.appearances + ([structure] if injection else [])
            layout = BatchLayout(structure.batch_size, sum(a.batch_size for a in settings.appearances),
                                 structure.batch_size if injection else 0)
            appearance_shape = settings.appearance.trajectory.shape[2:]
            regions = sampling_regions(settings, structure, latent_adain)
            guider_class = lambda patcher: CrossImageGuider(patcher, settings, layout, appearance_shape,  # noqa: E731
                                                            guidance, latent_adain, regions)
        guider = make_guider(model, positive, negative, cfg, guider_class)
        # an appearance of another size rides in the batch as rows of the structure's shape
        row_shape = tuple(structure.trajectory.shape[2:])
        sampler = comfy.samplers.sampler_object(sampler_name)
        if structure.noise is not None:
            sampler = comfy.samplers.ksampler("ddpm", {"noise_sampler": noise_replay(row_inversions, structure.sigmas,
                                                                                     row_shape)})
        start = torch.cat([pack(inversion.noisy, row_shape) for inversion in row_inversions])
        samples = run_sampler(guider, sampler, structure.sigmas, start)
        return io.NodeOutput({"samples": samples[:structure.batch_size]})
