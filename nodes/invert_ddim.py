"""Invert (DDIM): noise a VAE latent back along a sampling schedule, keeping every step."""
import comfy.samplers
import torch

from ..core.ddim import ddim_invert
from ..core.inversion import Inversion
from .inputs import numbers
from .sampling.identity import model_key
from .sampling.runner import run_inversion
from .sockets import ADVANCED, CATEGORY, InversionSocket, io


def inversion_inputs(steps_default, cfg_default, steps_tooltip, cfg_tooltip, extra=()):
    """The inputs of an Invert node: the shared ones, `extra` after them, then the optional ones."""
    return [
        io.Model.Input("model", tooltip="The diffusion model; sample later with this same model."),
        io.Latent.Input("latent", tooltip="The image to invert, from VAE Encode."),
        io.Conditioning.Input("positive", tooltip="The prompt describing the image, e.g. 'a photo of an animal'. Use "
                                                  "the same prompt when sampling."),
        io.Int.Input("steps", default=steps_default, min=1, max=1000, tooltip=steps_tooltip),
        io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="ddim_uniform", **ADVANCED,
                       tooltip="Noise schedule. ddim_uniform gives the DDIM timesteps of the paper's code."),
        io.Float.Input("cfg", default=cfg_default, min=0.0, max=30.0, step=0.1, round=0.01, tooltip=cfg_tooltip),
        *extra,
        io.Conditioning.Input("negative", optional=True,
                              tooltip="Negative prompt (the paper: an empty prompt); only used when cfg is not 1."),
    ]


def inversion_outputs(noisy_tooltip):
    return [InversionSocket.Output(display_name="inversion", tooltip=(
                "The inversion: every sampled step's latent, the schedule, which model made it. Feed it to "
                "Cross-Image Attention (appearance) or Cross-Image Sampler (structure).")),
            io.Latent.Output(display_name="noisy_latent", tooltip=noisy_tooltip)]


class CrossImageInvertDDIM(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CrossImageInvertDDIM",
            display_name="Invert (DDIM)",
            category=CATEGORY,
            description=("DDIM inversion: runs the sampler backwards from an encoded image to noise, recording the "
                         "latent at every step. Sampling from the result with the same model, prompt and steps "
                         "gives the image back; the Cross-Image nodes use it for the structure and the appearance "
                         "image."),
            inputs=inversion_inputs(
                50, 1.0, "Inversion steps; sampling uses the same schedule. More steps invert more exactly.",
                "Classifier-free guidance during inversion. 1 inverts most faithfully; higher needs a negative "
                "prompt."),
            outputs=inversion_outputs("The fully noised latent the inversion ends at."),
        )

    @classmethod
    def execute(cls, model, latent, positive, steps, scheduler, cfg, negative=None):
        ((inversion, noisy),) = cls.invert(model, {"latent": latent}, positive, steps, scheduler, cfg, negative)
        return io.NodeOutput(inversion, noisy)

    @classmethod
    def invert(cls, model, latents, positive, steps, scheduler, cfg, negative=None) -> list:
        """[(Inversion, noisy LATENT)] of each of `latents` ({input name: LATENT}), those of one
        shape in the same model calls (sampling/runner.run_inversion)."""
        (cfg,) = numbers(cls, cfg=cfg)
        sampling = model.get_model_object("model_sampling")
        sigmas = comfy.samplers.calculate_sigmas(sampling, scheduler, steps).float().cpu()
        floor = float(sampling.sigma_min)
        results = run_inversion(
            model, latents, positive, negative, cfg, sigmas,
            lambda denoise, parts, report: (ddim_invert(denoise, torch.cat(parts), sigmas, floor, report), None))
        key = model_key(model)
        return [(Inversion(sigmas=sigmas, trajectory=trajectory, model_key=key, method="ddim", guidance=guidance),
                 noisy) for trajectory, _, noisy, guidance in results]
