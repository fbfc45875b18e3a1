"""Cross-Image Attention: patch a clone of the MODEL so that its decoder self-attention
looks at the appearance image's keys and values."""
import logging

import comfy.patcher_extension

from ..core.levels import paper_levels
from ..core.regions import keyless
from .appearance_region import appearance_masks, region_mask, require_regions
from .attention_patch import WRAPPER_KEY, CrossImageSelfAttention, attn1_replacements, keep_call_options
from .checks import require_number
from .model_info import decoder_attention_levels, decoder_level_factors, layer_name, parse_levels, require_inversion
from .settings import SETTINGS_KEY, AppearanceRegion, ContrastSettings, CrossImageSettings
from .sockets import ADVANCED, CATEGORY, ContrastSocket, InversionSocket, RegionsSocket, io


def require_unpatched(model, layers) -> None:
    """Raise a ValueError naming the conflict if `model` was patched by a Cross-Image Attention
    node already, or has another node's attn1 replacement in one of `layers` ((output block id,
    transformer index) keys), which this patch would silently overwrite."""
    if SETTINGS_KEY in model.model_options.get("transformer_options", {}):
        raise ValueError("model: this MODEL is already patched by a Cross-Image Attention node; chaining two "
                         "would mix their settings. Connect the MODEL from before the first one and set all "
                         "settings on a single Cross-Image Attention node")
    replaced = attn1_replacements(model)
    taken = [("output",) + layer for layer in layers if ("output",) + layer in replaced]
    if taken:
        owner = replaced[taken[0]]
        raise ValueError(f"model: another node already replaced the self-attention of decoder layers "
                         f"{', '.join(layer_name(block_id, index) for _, block_id, index in taken)} "
                         f"({getattr(owner, '__module__', '')}.{getattr(owner, '__qualname__', type(owner).__qualname__)}); "
                         "Cross-Image Attention would overwrite it. Remove that node, or choose levels it does not patch")


class CrossImageAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CrossImageAttention",
            display_name="Cross-Image Attention",
            category=CATEGORY,
            description=("Cross-image attention (Alaluf et al. 2024): in the chosen decoder levels and steps, the "
                         "output's self-attention uses its own queries with the appearance image's keys and values, "
                         "so the structure is painted with the appearance. Returns a patched copy; the input MODEL "
                         "is not changed. Sample it with Cross-Image Sampler."),
            inputs=[
                io.Model.Input("model", tooltip="The model the inversions were made with."),
                InversionSocket.Input("appearance", tooltip="Inversion of the appearance image (colours, textures, materials to transfer)."),
                io.String.Input("levels", default="auto",
                                tooltip="Decoder resolution levels to swap, 0 = finest that has attention, or 'auto': the paper's choice for this model and image size, the levels whose token grids are nearest to 64x64 and 32x32 (SD1.5 and SD2 at 512 px, SDXL at 1024 px: '0,1'; SD2 at 768 px: '1,2'; SDXL at 512 px: '0'). Adding coarser levels transfers more appearance but loses more structure."),
                io.Float.Input("start", default=0.15, min=0.0, max=1.0, step=0.01, **ADVANCED,
                               tooltip="Fraction of the denoising steps after which the swap starts (paper: step 10 of 68, 0.15). Earlier starts take more appearance, risking the structure."),
                io.Float.Input("end", default=1.0, min=0.0, max=1.0, step=0.01, **ADVANCED,
                               tooltip="Fraction of the denoising steps at which the swap stops (paper: 1.0, to the end)."),
                ContrastSocket.Input("contrast", optional=True,
                                     tooltip="Attention contrast from the Attention Contrast node (the paper uses 1.67); without it, no contrast."),
                io.Int.Input("structure_every", default=5, min=0, max=1000, optional=True, **ADVANCED,
                             tooltip="Structure injection: on every n-th step of the swap, the output takes the structure image's own keys and values instead of the appearance's, re-anchoring the layout (paper's code: 5). 0 turns it off and saves a third of the sampler's work."),
                io.Float.Input("structure_until", default=0.59, min=0.0, max=1.0, step=0.01, optional=True, **ADVANCED,
                               tooltip="Fraction of the denoising steps after which structure injection stops (paper's code: step 40 of 68, 0.59). Later keeps more structure, less appearance."),
                io.Mask.Input("structure_mask", optional=True,
                              tooltip="Where the appearance goes: the structure image's pixels (at its size, e.g. from Self-Segmentation) that take the appearance; elsewhere the output keeps the structure image's own look. Without it, everywhere (with regions: wherever no region goes)."),
                io.Mask.Input("appearance_mask", optional=True,
                              tooltip="Which of the appearance image's pixels (at its size) give the look; without it, all."),
                RegionsSocket.Input("regions", optional=True,
                                    tooltip="More appearance images, each for its own region of the structure, from Appearance Region nodes."),
            ],
            outputs=[io.Model.Output(tooltip="A patched clone of the model; use it in Cross-Image Sampler.")],
        )

    @classmethod
    def execute(cls, model, appearance, levels, start, end, contrast=None, structure_every=5, structure_until=0.59,
                structure_mask=None, appearance_mask=None, regions=None):
        require_inversion(appearance, "appearance", model)
        structure_every = int(require_number("structure_every", structure_every, 0, 1000))
        structure_until = require_number("structure_until", structure_until, 0.0, 1.0)
        start, end = require_number("start", start, 0.0, 1.0), require_number("end", end, 0.0, 1.0)
        if not start < end:
            raise ValueError(f"start/end: need start < end, got start={start}, end={end}")
        if contrast is not None and not isinstance(contrast, ContrastSettings):
            raise ValueError(f"contrast: expected settings from the Attention Contrast node, got {type(contrast).__name__}")
        strength = contrast.strength if contrast is not None else 1.0
        unet = model.get_model_object("diffusion_model")
        layers = decoder_attention_levels(unet)
        chosen = parse_levels(levels, len(layers), auto=paper_levels(decoder_level_factors(unet),
                                                                    *appearance.trajectory.shape[-2:]))
        logging.info("Cross-Image Attention: decoder levels %s (%s)", ",".join(map(str, chosen)), levels)
        require_unpatched(model, [key for level in chosen for key in layers[level]])
        factors = [decoder_level_factors(unet)[level] for level in chosen]
        regions = appearance_regions(model, appearance, structure_mask, appearance_mask, regions, factors)
        patched = model.clone()
        settings = CrossImageSettings(appearance=appearance, levels=chosen, start=start, end=end, contrast=strength,
                                      structure_every=structure_every, structure_until=structure_until,
                                      regions=regions)
        attention = CrossImageSelfAttention()
        for level in chosen:
            for block_id, index in layers[level]:
                patched.set_model_attn1_replace(attention, "output", block_id, index)
        patched.model_options["transformer_options"][SETTINGS_KEY] = settings
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, keep_call_options)
        return io.NodeOutput(patched)


def appearance_regions(model, appearance, structure_mask, appearance_mask, regions, factors) -> tuple:
    """The regions of a transfer (settings.CrossImageSettings.regions): `appearance` with its
    masks first, then those of Appearance Region nodes; none when there are no masks (or only
    all-ones ones) and no more appearances: exactly the unmasked transfer. Refuses appearances
    that cannot be denoised together, and appearance masks that hold no token of a swapped
    level (`factors`: their downsampling factors)."""
    extra = require_regions(regions)
    main = AppearanceRegion(appearance, region_mask("structure_mask", structure_mask, all_ones_is_none=not extra),
                            region_mask("appearance_mask", appearance_mask))
    if not extra and main.structure_mask is None and main.appearance_mask is None:
        return ()
    if appearance.batch_size != 1:
        raise ValueError(f"appearance: with masks or regions, one appearance image, got a batch of "
                         f"{appearance.batch_size}")
    named = [("", main)] + [(f"regions (region {i + 1}): ", region) for i, region in enumerate(extra)]
    for prefix, region in named[1:]:
        require_inversion(region.appearance, prefix + "appearance", model)
        appearance.check_pairs_with(region.appearance, "appearance", prefix + "appearance")
        if region.appearance.trajectory.shape[3:] != appearance.trajectory.shape[3:]:
            raise ValueError(f"{prefix}appearance: a {tuple(region.appearance.trajectory.shape[3:])} latent, but "
                             f"appearance's is {tuple(appearance.trajectory.shape[3:])}: give every appearance image "
                             "one size (e.g. with Upscale Image)")
    masks = appearance_masks([region for _, region in named], [prefix + "appearance_mask" for prefix, _ in named])
    for r in keyless(masks, tuple(appearance.trajectory.shape[3:]), factors):
        raise ValueError(f"{named[r][0]}appearance_mask: the masked part of the appearance image is smaller than one "
                         f"attention token of a swapped level ({max(factors) * 8} px a side); draw a larger mask or "
                         "swap finer levels")
    return tuple(region for _, region in named)


class CrossImageAttentionContrast(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CrossImageAttentionContrast",
            display_name="Attention Contrast",
            category=CATEGORY,
            description=("Attention-map contrast for Cross-Image Attention (paper, sec. 4.2): after the softmax, the "
                         "output's attention to the appearance is pushed away from its mean and clipped to [0, 1], so "
                         "each output pixel follows fewer, better-matching appearance pixels. Computed in query "
                         "chunks; strength 1 is off."),
            inputs=[io.Float.Input("strength", default=1.67, min=0.0, max=10.0, step=0.01,
                                   tooltip="beta in clip((A - mean) * beta + mean, 0, 1). Paper: 1.67. Higher gives crisper, more literal appearance matches; 1 turns it off; below 1 blends more appearance pixels.")],
            outputs=[ContrastSocket.Output(display_name="contrast", tooltip="Contrast settings; connect to Cross-Image Attention.")],
        )

    @classmethod
    def execute(cls, strength):
        return io.NodeOutput(ContrastSettings(strength=require_number("strength", strength, 0.0, 10.0)))
