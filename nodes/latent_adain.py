"""Latent AdaIN: settings for AdaIN on the output latents during sampling (paper, sec. 4.3)."""
import torch

from .attention_patch import LatentAdaINSettings
from .inversion_type import CATEGORY, LATENT_ADAIN


class CrossImageLatentAdaIN:
    DESCRIPTION = ("AdaIN on latents (paper, sec. 4.3): after each step in the range, the output "
                   "latent takes the appearance latent's per-channel mean and standard deviation, "
                   "which carries the appearance's colours into the output. With masks, only the "
                   "object: statistics from the masked pixels, and only masked output pixels "
                   "change. Connect to Cross-Image Sampler.")
    CATEGORY = CATEGORY
    FUNCTION = "settings"
    RETURN_TYPES = (LATENT_ADAIN,)
    RETURN_NAMES = ("latent_adain",)
    OUTPUT_TOOLTIPS = ("Latent AdaIN settings; connect to Cross-Image Sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "start": ("FLOAT", {"default": 0.29, "min": 0.0, "max": 1.0, "step": 0.01,
                                    "tooltip": "Fraction of the steps after which the output latent is matched to the appearance (paper: step 20 of 68, 0.29). Earlier gives stronger colour transfer."}),
                "end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "Fraction of the steps at which matching stops (paper: 1.0, through the last step)."}),
            },
            "optional": {
                "structure_mask": ("MASK", {"tooltip": "The object in the structure image (e.g. from a mask editor or segmentation node): only these output pixels are measured and changed."}),
                "appearance_mask": ("MASK", {"tooltip": "The object in the appearance image: only these pixels give the statistics."}),
            },
        }

    def settings(self, start, end, structure_mask=None, appearance_mask=None):
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"start/end: need 0 <= start < end <= 1, got start={start}, end={end}")
        for name, mask in (("structure_mask", structure_mask), ("appearance_mask", appearance_mask)):
            if mask is not None and (not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3)):
                raise ValueError(f"{name}: expected a MASK (batch, height, width)")
            if mask is not None and float(mask.sum()) <= 1.0:
                raise ValueError(f"{name}: the mask is empty; draw the object or leave the input unconnected")
        return (LatentAdaINSettings(float(start), float(end), structure_mask, appearance_mask),)
