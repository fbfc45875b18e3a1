"""The custom ComfyUI socket type that carries a core.inversion.Inversion between nodes."""
INVERSION = "CROSS_IMAGE_INVERSION"
CATEGORY = "cross_image_attention"
