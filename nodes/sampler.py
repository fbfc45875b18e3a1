"""Cross-Image Sampler: denoise the structure's inverted latent with ComfyUI's samplers,
the appearance latent alongside it in the same batch so the patched attention can see it."""
import comfy.samplers

from ..core.inversion import Inversion
from ..core.schedule import step_range
from ..core.settings import GuidanceSettings, LatentAdaINSettings
from .inputs import numbers, require_inversion, require_settings, require_steps
from .sampling.deferred import settle
from .sampling.runner import make_guider, require_negative, run_sampler
from .sampling.transfer import noise_replay, sampler_rows, start_latents, transfer_guider, transfer_settings
from .sockets import CATEGORY, GuidanceSocket, InversionSocket, LatentAdaINSocket, io

# The samplers that land back on an inversion's latents, one model call per step (what the
# guider's per-step extras are made for). A DDIM inversion is the Euler step run backwards
# (core/ddim.py; ComfyUI's "ddim" is Euler); an edit-friendly DDPM inversion is retraced by
# ComfyUI's DDPM step replaying its noise maps. Others (multistep, ancestral, SDE, CFG++)
# land elsewhere, or crash on the batch layout.
RETRACING = {"ddim": ("euler", "ddim"), "ddpm": ("ddpm",), "flow": ("euler_ancestral",)}
INVERSION_NAMES = {"ddim": "a DDIM inversion",
                   "ddpm": "an edit-friendly DDPM inversion (it replays the inversion's noise maps)",
                   "flow": "an edit-friendly inversion of a flow model (euler_ancestral replays its noise maps)"}

# Conditioning that adds its own signal to every batch row the model runs, inside attention
# where it cannot be kept to the output rows: in the Cross-Image Sampler's batch it would act on
# the appearance and structure rows too. (ControlNets and T2I adapters are kept to the output
# rows: sampling/control.py.)
# Reference latents (ReferenceLatent: Flux Kontext, Flux.2 editing) add image tokens of their own
# to every row, which the swap's image tokens would not tell apart.
STEERING = {"gligen": "GLIGEN boxes", "reference_latents": "reference latents"}


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
                io.Model.Input("model", tooltip="A model from Cross-Image Attention (or a plain model to reconstruct "
                                                "the structure)."),
                io.Conditioning.Input("positive", tooltip="The prompt, the same one the images were inverted with."),
                InversionSocket.Input("structure", tooltip="Inversion of the structure image (layout, shape and pose "
                                                           "to keep). Sampling follows its schedule."),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="euler",
                               tooltip="ComfyUI sampler. euler (= ddim) retraces a DDIM inversion; an edit-friendly "
                                       "DDPM inversion needs ddpm, which replays its noise maps."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Text classifier-free guidance while sampling. The paper uses none (1.0); "
                                       "higher needs a negative prompt."),
                io.Conditioning.Input("negative", optional=True, tooltip="Negative prompt; only used when cfg is not "
                                                                         "1."),
                GuidanceSocket.Input("guidance", optional=True,
                                     tooltip="Appearance guidance from the Appearance Guidance node (the paper uses "
                                             "it); without it, none."),
                LatentAdaINSocket.Input("latent_adain", optional=True,
                                        tooltip="AdaIN on the output latent during sampling, from the Latent AdaIN "
                                                "node (the paper uses it); without it, none."),
            ],
            outputs=[io.Latent.Output(tooltip="The output latent, one per structure image.")],
        )

    @classmethod
    def execute(cls, model, positive, structure, sampler_name, cfg, negative=None, guidance=None, latent_adain=None):
        require_inversion(structure, "structure", model)
        (cfg,) = numbers(cls, cfg=cfg)
        require_settings("guidance", guidance, GuidanceSettings, "Appearance Guidance")
        require_settings("latent_adain", latent_adain, LatentAdaINSettings, "Latent AdaIN")
        fits = RETRACING[structure.method]
        if sampler_name not in fits:
            raise ValueError(f"sampler_name: {sampler_name} does not retrace {INVERSION_NAMES[structure.method]}; use "
                             f"{' or '.join(fits)}")
        transfer = transfer_settings(model)
        for name, extra in (("guidance", guidance), ("latent_adain", latent_adain)):
            if extra is not None and transfer is None:
                raise ValueError(f"{name}: needs a model from Cross-Image Attention (it works on the appearance "
                                 "latent)")
        if transfer is not None:
            require_transfer(transfer, structure, positive, negative, guidance, latent_adain)
        require_negative(negative, cfg)
        # Invert Pair's model calls: run now, or in the sampling calls where they are the same (deferred.py)
        structure, appearances, drawn = settle(structure, [] if transfer is None else transfer.appearances,
                                               positive, negative, cfg)
        rows = sampler_rows(structure, transfer, drawn is not None)
        guider_class = comfy.samplers.CFGGuider
        if transfer is not None:
            guider_class = transfer_guider(model, transfer, rows, structure, guidance, latent_adain, drawn)
        guider = make_guider(model, positive, negative, cfg, guider_class)
        sampler = comfy.samplers.sampler_object(sampler_name)
        if structure.method in Inversion.STOCHASTIC:
            sampler = comfy.samplers.ksampler(sampler_name, {"noise_sampler": noise_replay(rows, structure,
                                                                                           appearances, drawn)})
        samples = run_sampler(guider, sampler, structure.sigmas, start_latents(rows, structure, appearances))
        return io.NodeOutput({"samples": samples[:structure.batch_size]})


def require_transfer(transfer, structure, positive, negative, guidance, latent_adain) -> None:
    """Refuse a transfer that cannot run exactly: conditioning that would steer every row, an
    appearance that cannot be denoised beside the structure, ranges that cover no step."""
    for name, conditioning in (("positive", positive), ("negative", negative)):
        steering = sorted({key for _, extra in conditioning or [] for key in STEERING if key in extra})
        if steering:
            raise ValueError(f"{name}: carries {' and '.join(STEERING[key] for key in steering)}, which would steer "
                             "the "
                             "appearance and structure latents away from their inversions too; the Cross-Image "
                             "Sampler does not take it yet (apply it to a plain sampling of the output instead)")
    for appearance in transfer.appearances:
        structure.check_pairs_with(appearance, "structure", "appearance")
    count = structure.steps
    require_steps("model (Cross-Image Attention's start/end)", step_range(transfer.start, transfer.end, count), count,
                  "cross-image attention", transfer.start, transfer.end)
    if guidance is not None:
        start = max(guidance.start, transfer.start)
        require_steps("guidance (Appearance Guidance's start, with Cross-Image Attention's end)",
                      step_range(start, transfer.end, count), count, "appearance guidance", start, transfer.end)
    if latent_adain is not None:
        adain = step_range(latent_adain.start, latent_adain.end, count)
        require_steps("latent_adain (Latent AdaIN's start/end)", adain, count, "latent AdaIN", latent_adain.start,
                      latent_adain.end)
