"""Invert (DDIM): noise a VAE latent back along a sampling schedule, keeping every step."""
import comfy.samplers

from ..core.ddim import ddim_invert
from ..core.inversion import Inversion
from .guided_sampling import run_inversion
from .inversion_type import CATEGORY, INVERSION
from .model_info import model_key


def inversion_inputs(steps_default, cfg_default, steps_tooltip, cfg_tooltip):
    """The inputs both Invert nodes share."""
    return {
        "model": ("MODEL", {"tooltip": "The diffusion model; sample later with this same model."}),
        "latent": ("LATENT", {"tooltip": "The image to invert, from VAE Encode."}),
        "positive": ("CONDITIONING", {"tooltip": "The prompt describing the image, e.g. 'a photo of an animal'. Use the same prompt when sampling."}),
        "steps": ("INT", {"default": steps_default, "min": 1, "max": 1000, "tooltip": steps_tooltip}),
        "scheduler": (comfy.samplers.SCHEDULER_NAMES, {"default": "ddim_uniform",
                      "tooltip": "Noise schedule. ddim_uniform gives the DDIM timesteps of the paper's code."}),
        "cfg": ("FLOAT", {"default": cfg_default, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                          "tooltip": cfg_tooltip}),
    }


class CrossImageInvertDDIM:
    DESCRIPTION = ("DDIM inversion: runs the sampler backwards from an encoded image to noise, "
                   "recording the latent at every step. Sampling from the result with the same "
                   "model, prompt and steps gives the image back; the Cross-Image nodes use it "
                   "for the structure and the appearance image.")
    CATEGORY = CATEGORY
    FUNCTION = "invert"
    RETURN_TYPES = (INVERSION, "LATENT")
    RETURN_NAMES = ("inversion", "noisy_latent")
    OUTPUT_TOOLTIPS = ("The whole inversion trajectory (every step's latent, the schedule, "
                       "which model made it). Feed it to Cross-Image Attention (appearance) or "
                       "Cross-Image Sampler (structure).",
                       "The fully noised latent the inversion ends at.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": inversion_inputs(
                50, 1.0, "Inversion steps; sampling uses the same schedule. More steps invert more exactly.",
                "Classifier-free guidance during inversion. 1 inverts most faithfully; higher needs a negative prompt."),
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt; only used when cfg is not 1."}),
            },
        }

    def invert(self, model, latent, positive, steps, scheduler, cfg, negative=None):
        sampling = model.get_model_object("model_sampling")
        sigmas = comfy.samplers.calculate_sigmas(sampling, scheduler, steps).float().cpu()
        floor = float(sampling.sigma_min)
        trajectory, _, noisy = run_inversion(
            model, latent, positive, negative, cfg, sigmas,
            lambda denoise, clean, report: (ddim_invert(denoise, clean, sigmas, floor, report), None))
        return (Inversion(sigmas=sigmas, trajectory=trajectory, model_key=model_key(model), method="ddim"), noisy)
