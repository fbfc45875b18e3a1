"""The pack's ComfyUI nodes (V3 schema), registered through a ComfyExtension by the package's
__init__ (comfy_entrypoint)."""
from comfy_api.latest import ComfyExtension

from .adain_image import CrossImageAdaINImage
from .appearance_guidance import CrossImageAppearanceGuidance
from .appearance_positions import CrossImageAppearancePositions
from .appearance_region import CrossImageAppearanceRegion
from .attention_contrast import CrossImageAttentionContrast
from .cross_image_attention import CrossImageAttention
from .invert_ddim import CrossImageInvertDDIM
from .invert_ddpm import CrossImageInvertDDPM
from .invert_pair import CrossImageInvertPairDDIM, CrossImageInvertPairDDPM
from .latent_adain import CrossImageLatentAdaIN
from .inversion_files import CrossImageLoadInversion, CrossImageSaveInversion
from .sampler import CrossImageSampler
from .self_segmentation import CrossImageSelfSegmentation

NODES = [
    CrossImageInvertDDIM,
    CrossImageInvertDDPM,
    CrossImageInvertPairDDIM,
    CrossImageInvertPairDDPM,
    CrossImageAttention,
    CrossImageAttentionContrast,
    CrossImageAppearancePositions,
    CrossImageAppearanceRegion,
    CrossImageSampler,
    CrossImageAppearanceGuidance,
    CrossImageLatentAdaIN,
    CrossImageSelfSegmentation,
    CrossImageAdaINImage,
    CrossImageSaveInversion,
    CrossImageLoadInversion,
]


class CrossImageAttentionExtension(ComfyExtension):
    async def get_node_list(self):
        return list(NODES)


async def comfy_entrypoint() -> CrossImageAttentionExtension:
    return CrossImageAttentionExtension()
