"""ComfyUI node classes of the pack, registered by the package's __init__."""
from .adain_image import CrossImageAdaINImage
from .appearance_guidance import CrossImageAppearanceGuidance
from .cross_image_attention import CrossImageAttention, CrossImageAttentionContrast
from .invert_ddim import CrossImageInvertDDIM
from .invert_ddpm import CrossImageInvertDDPM
from .latent_adain import CrossImageLatentAdaIN
from .inversion_files import CrossImageLoadInversion, CrossImageSaveInversion
from .sampler import CrossImageSampler
from .self_segmentation import CrossImageSelfSegmentation

NODE_CLASS_MAPPINGS = {
    "CrossImageInvertDDIM": CrossImageInvertDDIM,
    "CrossImageInvertDDPM": CrossImageInvertDDPM,
    "CrossImageAttention": CrossImageAttention,
    "CrossImageAttentionContrast": CrossImageAttentionContrast,
    "CrossImageSampler": CrossImageSampler,
    "CrossImageAppearanceGuidance": CrossImageAppearanceGuidance,
    "CrossImageLatentAdaIN": CrossImageLatentAdaIN,
    "CrossImageSelfSegmentation": CrossImageSelfSegmentation,
    "CrossImageAdaINImage": CrossImageAdaINImage,
    "CrossImageSaveInversion": CrossImageSaveInversion,
    "CrossImageLoadInversion": CrossImageLoadInversion,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "CrossImageInvertDDIM": "Invert (DDIM)",
    "CrossImageInvertDDPM": "Invert (Edit-Friendly DDPM)",
    "CrossImageAttention": "Cross-Image Attention",
    "CrossImageAttentionContrast": "Attention Contrast",
    "CrossImageSampler": "Cross-Image Sampler",
    "CrossImageAppearanceGuidance": "Appearance Guidance",
    "CrossImageLatentAdaIN": "Latent AdaIN",
    "CrossImageSelfSegmentation": "Self-Segmentation",
    "CrossImageAdaINImage": "AdaIN (Image)",
    "CrossImageSaveInversion": "Save Inversion",
    "CrossImageLoadInversion": "Load Inversion",
}
