"""Cross-Image Attention: patch a clone of the MODEL so that its attention at the chosen sites
(the decoder's self-attention on UNets) looks at the appearance image's keys and values."""
import logging

from ..core.regions import keyless
from ..core.settings import AppearanceRegion, ContrastSettings, PositionSettings, TransferSettings
from .inputs import (appearance_masks, numbers, region_mask, require_inversion, require_range, require_regions,
                     require_settings)
from .sampling.architecture import architecture_of
from .sampling.compiled import keep_options_of_calls
from .sampling.transfer import SETTINGS_KEY, transfer_settings
from .sockets import ADVANCED, CATEGORY, ContrastSocket, InversionSocket, PositionsSocket, RegionsSocket, io


class CrossImageAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CrossImageAttention",
            display_name="Cross-Image Attention",
            category=CATEGORY,
            description=("Cross-image attention (Alaluf et al. 2024): in the chosen decoder levels (UNets) or blocks "
                         "(Flux) and steps, the output's attention uses its own queries with the appearance image's "
                         "keys and values (on Flux: its image tokens', the output keeping its own text), so the "
                         "structure is painted with the appearance. Returns a patched copy; the input MODEL is not "
                         "changed. Sample it with Cross-Image Sampler."),
            inputs=[
                io.Model.Input("model", tooltip="The model the inversions were made with."),
                InversionSocket.Input("appearance", tooltip="Inversion of the appearance image (colours, textures, "
                                                            "materials to transfer)."),
                io.String.Input("levels", default="auto",
                                tooltip="Where to swap. UNets (SD1.x, SD2.x, SDXL): decoder resolution levels, 0 = "
                                        "finest that has attention, or 'auto': the paper's choice for this model and "
                                        "image size, the levels whose token grids are nearest to 64x64 and 32x32 "
                                        "(SD1.5 and SD2 at 512 px, SDXL at 1024 px: '0,1'; SD2 at 768 px: '1,2'; SDXL "
                                        "at 512 px: '0'); coarser levels transfer more appearance, keep less "
                                        "structure. Flux, Chroma: blocks, numbered double blocks first (Flux: 0-18) "
                                        "then single blocks (19-56), or a preset: 'vital' (Stable Flow's 0,1,17,18,"
                                        "25,28,53,54,56 of Flux), 'all', 'late' or 'early' (the second or first half); "
                                        "'auto' is vital where published, else late."),
                io.Float.Input("start", default=0.15, min=0.0, max=1.0, step=0.01, **ADVANCED,
                               tooltip="Fraction of the denoising steps after which the swap starts (paper: step 10 "
                                       "of 68, 0.15). Earlier starts take more appearance, risking the structure."),
                io.Float.Input("end", default=1.0, min=0.0, max=1.0, step=0.01, **ADVANCED,
                               tooltip="Fraction of the denoising steps at which the swap stops (paper: 1.0, to the "
                                       "end)."),
                ContrastSocket.Input("contrast", optional=True,
                                     tooltip="Attention contrast from the Attention Contrast node (the paper uses "
                                             "1.67); without it, no contrast."),
                io.Int.Input("structure_every", default=5, min=0, max=1000, optional=True, **ADVANCED,
                             tooltip="Structure injection: on every n-th step of the swap, the output takes the "
                                     "structure image's own keys and values instead of the appearance's, re-anchoring "
                                     "the layout (paper's code: 5). 0 turns it off and saves a third of the sampler's "
                                     "work."),
                io.Float.Input("structure_until", default=0.59, min=0.0, max=1.0, step=0.01, optional=True, **ADVANCED,
                               tooltip="Fraction of the denoising steps after which structure injection stops "
                                       "(paper's code: step 40 of 68, 0.59). Later keeps more structure, less "
                                       "appearance."),
                io.Mask.Input("structure_mask", optional=True,
                              tooltip="Where the appearance goes: the structure image's pixels (at its size, e.g. "
                                      "from Self-Segmentation) that take the appearance; elsewhere the output keeps "
                                      "the structure image's own look. Without it, everywhere (with regions: wherever "
                                      "no region goes)."),
                io.Mask.Input("appearance_mask", optional=True,
                              tooltip="Which of the appearance image's pixels (at its size) give the look; without "
                                      "it, all."),
                RegionsSocket.Input("regions", optional=True,
                                    tooltip="More appearance images, each for its own region of the structure, from "
                                            "Appearance Region nodes."),
                PositionsSocket.Input("positions", optional=True,
                                      tooltip="Flux and Chroma: where the appearance's keys sit when the output "
                                              "attends to them, from Appearance Positions; without it, attenuated "
                                              "(the output matches by content and keeps its own layout). UNets have "
                                              "no such positions."),
            ],
            outputs=[io.Model.Output(tooltip="A patched clone of the model; use it in Cross-Image Sampler.")],
        )

    @classmethod
    def execute(cls, model, appearance, levels, start, end, contrast=None, structure_every=5, structure_until=0.59,
                structure_mask=None, appearance_mask=None, regions=None, positions=None):
        require_inversion(appearance, "appearance", model)
        structure_every, structure_until, start, end = numbers(
            cls, structure_every=structure_every, structure_until=structure_until, start=start, end=end)
        require_range(start, end)
        require_settings("contrast", contrast, ContrastSettings, "Attention Contrast")
        if transfer_settings(model) is not None:
            raise ValueError("model: this MODEL is already patched by a Cross-Image Attention node; chaining two "
                             "would mix their settings. Connect the MODEL from before the first one and set all "
                             "settings on a single Cross-Image Attention node")
        architecture = architecture_of(model)
        positions = architecture.require_positions(require_settings("positions", positions, PositionSettings,
                                                                    "Appearance Positions"))
        sites = architecture.choose(levels, tuple(appearance.trajectory.shape[-2:]))
        logging.info("Cross-Image Attention: sites %s (%s)", ", ".join(map(architecture.site_name, sites)), levels)
        architecture.require_free(model, sites)
        key_grids = {architecture.token_grid(site, tuple(appearance.trajectory.shape[-2:])) for site in sites}
        regions = appearance_regions(model, appearance, structure_mask, appearance_mask, regions, sorted(key_grids))
        patched = model.clone()
        transfer = TransferSettings(appearance=appearance, sites=sites, start=start, end=end,
                                    contrast=1.0 if contrast is None else contrast.strength,
                                    structure_every=structure_every, structure_until=structure_until, regions=regions,
                                    positions=positions)
        architecture.install(patched, transfer)
        patched.model_options["transformer_options"][SETTINGS_KEY] = transfer
        keep_options_of_calls(patched)
        return io.NodeOutput(patched)


def appearance_regions(model, appearance, structure_mask, appearance_mask, regions, key_grids) -> tuple:
    """The regions of a transfer (core.settings.TransferSettings.regions): `appearance` with its
    masks first, then those of Appearance Region nodes; none when there are no masks (or only
    all-ones ones) and no more appearances: exactly the unmasked transfer. Refuses appearances
    that cannot be denoised together, and appearance masks that hold no token of a swapped
    site (`key_grids`: the appearance's token grids there)."""
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
    for r in keyless(masks, key_grids):
        raise ValueError(f"{named[r][0]}appearance_mask: the masked part of the appearance image is smaller than one "
                         "attention token of a swapped site; draw a larger mask or swap finer levels")
    return tuple(region for _, region in named)
