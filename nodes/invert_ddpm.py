"""Invert (Edit-Friendly DDPM): the paper's inversion, with a noise map per step."""
import comfy.samplers
import torch

from ..core.ddpm import edit_friendly_invert
from ..core.inversion import Inversion
from .guided_sampling import run_inversion
from .invert_ddim import KEEP_KEYS_VALUES, inversion_inputs
from .inversion_type import CATEGORY, INVERSION
from .keys_values import recording
from .model_info import model_key


class CrossImageInvertDDPM:
    DESCRIPTION = ("Edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024), the paper's "
                   "default: every step's latent is drawn independently from the image and a noise "
                   "map per step records how a DDPM step lands on the next one. Sample with "
                   "sampler 'ddpm': the sampler replays the structure's noise maps for the output.")
    CATEGORY = CATEGORY
    FUNCTION = "invert"
    RETURN_TYPES = (INVERSION, "LATENT")
    RETURN_NAMES = ("inversion", "noisy_latent")
    OUTPUT_TOOLTIPS = ("The inversion: latents and noise maps of the steps sampling will use.",
                       "The noisy latent sampling starts from (after the skipped steps).")

    @classmethod
    def INPUT_TYPES(cls):
        required = inversion_inputs(
            100, 3.5, "Steps of the schedule (paper: 100); the first `skip` of them are not used.",
            "Classifier-free guidance of the noise predictions (paper: 3.5, with an empty negative prompt).")
        required["skip"] = ("INT", {"default": 32, "min": 0, "max": 999,
                                    "tooltip": "Steps skipped at the noisy end: sampling starts at step skip (paper: 32 of 100, t = 671). More skip keeps more of the structure image."})
        required["seed"] = ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff,
                                    "tooltip": "Seed of the independent noise draws; the same seed gives the same inversion."})
        return {
            "required": required,
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt (the paper: an empty prompt); needed when cfg is not 1."}),
                "keep_keys_values": KEEP_KEYS_VALUES,
            },
        }

    def invert(self, model, latent, positive, steps, scheduler, cfg, skip, seed, negative=None, keep_keys_values=""):
        if not 0 <= skip < steps:
            raise ValueError(f"skip: must be less than steps ({steps}), got {skip}")
        sampling = model.get_model_object("model_sampling")
        sigmas = comfy.samplers.calculate_sigmas(sampling, scheduler, steps).float().cpu()[skip:]
        generator = torch.Generator().manual_seed(seed)
        inverting, recorder = recording(model, keep_keys_values, sigmas)
        trajectory, noise, noisy = run_inversion(
            inverting, latent, positive, negative, cfg, sigmas,
            lambda denoise, clean, report: edit_friendly_invert(denoise, clean, sigmas, generator, report))
        inversion = Inversion(sigmas=sigmas, trajectory=trajectory, model_key=model_key(model),
                              method="ddpm", noise=noise, keys_values=recorder and recorder.keys_values())
        return (inversion, noisy)
