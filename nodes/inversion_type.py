"""The pack's custom ComfyUI socket types and node category."""
INVERSION = "CROSS_IMAGE_INVERSION"  # carries a core.inversion.Inversion
CONTRAST = "CROSS_IMAGE_CONTRAST"    # carries attention_patch.ContrastSettings
GUIDANCE = "CROSS_IMAGE_GUIDANCE"    # carries attention_patch.GuidanceSettings
LATENT_ADAIN = "CROSS_IMAGE_LATENT_ADAIN"  # carries attention_patch.LatentAdaINSettings
CATEGORY = "cross_image_attention"
