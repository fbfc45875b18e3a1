"""Invert (DDIM): noise a VAE latent back along a sampling schedule, keeping every step."""
import comfy.model_management
import comfy.sample
import comfy.samplers
import torch

from ..core.ddim import ddim_invert
from ..core.inversion import Inversion
from .guided_sampling import make_guider, run_sampler
from .inversion_type import CATEGORY, INVERSION
from .model_info import model_key


def ddim_inversion_sampler(sigma_floor: float, record: dict):
    """A ComfyUI sampler function that inverts instead of denoising. ComfyUI hands it the
    schedule flipped (ascending) so that it starts from the clean latent without noise."""
    def invert(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}
        ones = x.new_ones([x.shape[0]])

        def denoise(latent, sigma):
            comfy.model_management.throw_exception_if_processing_interrupted()
            return model(latent, sigma * ones, **extra_args)

        def report(k, denoised, latent):
            if callback is not None:
                callback({"i": k, "denoised": denoised, "x": latent})

        record["trajectory"] = ddim_invert(denoise, x, sigmas.flip(0), sigma_floor, report)
        return record["trajectory"][0]
    return invert


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
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model; sample later with this same model."}),
                "latent": ("LATENT", {"tooltip": "The image to invert, from VAE Encode."}),
                "positive": ("CONDITIONING", {"tooltip": "The prompt describing the image, e.g. 'a photo of an animal'. Use the same prompt when sampling."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000,
                                  "tooltip": "Inversion steps; sampling uses the same schedule. More steps invert more exactly (the paper uses 100)."}),
                "scheduler": (comfy.samplers.SCHEDULER_NAMES, {"default": "ddim_uniform",
                              "tooltip": "Noise schedule. ddim_uniform gives the DDIM timesteps of the paper's code."}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance during inversion. 1 inverts most faithfully; higher needs a negative prompt."}),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt; only used when cfg is not 1."}),
            },
        }

    def invert(self, model, latent, positive, steps, scheduler, cfg, negative=None):
        samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        if samples.ndim != 4:
            raise ValueError(f"latent: expected an image latent (batch, channels, height, width), got shape {tuple(samples.shape)}")
        sampling = model.get_model_object("model_sampling")
        sigmas = comfy.samplers.calculate_sigmas(sampling, scheduler, steps).float().cpu()
        guider = make_guider(model, positive, negative, cfg)
        record = {}
        sampler = comfy.samplers.KSAMPLER(ddim_inversion_sampler(float(sampling.sigma_min), record))
        clean = model.model.process_latent_in(samples.float())
        noisy = run_sampler(guider, sampler, sigmas.flip(0), clean)
        device = comfy.model_management.intermediate_device()
        inversion = Inversion(sigmas=sigmas, trajectory=record["trajectory"].float().to(device),
                              model_key=model_key(model), method="ddim")
        return (inversion, {"samples": noisy})
