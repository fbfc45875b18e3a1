"""A transfer set up for ComfyUI's sampling: the batch rows (core/rows.py), the regions at the
latents' sizes, the guider that runs each step's plan, the start latents and the DDPM noise
replay. The Cross-Image Sampler node checks its inputs and hands them here."""
import torch

from ...core.regions import RegionMaps, region_shares
from ...core.rows import SamplerRows
from ...core.schedule import step_index
from ..inputs import appearance_masks, latent_mask
from .architecture import architecture_of, site_grids
from .compiled import require_exact_when_compiled
from .guider import CrossImageGuider

SETTINGS_KEY = "cross_image_settings"  # a patched MODEL's TransferSettings, in its transformer_options


def transfer_settings(model):
    """The TransferSettings Cross-Image Attention put on `model`, or None for a plain MODEL."""
    return model.model_options.get("transformer_options", {}).get(SETTINGS_KEY)


def sampler_rows(structure, transfer, drawn: bool = False) -> SamplerRows:
    """The batch rows of a transfer of `structure`'s latents; without Cross-Image Attention
    (transfer None) the structures' latents alone, as outputs. The structures are rows with
    structure injection, or `drawn`: where their predictions give the noise maps (deferred.py)."""
    shape = tuple(structure.trajectory.shape[2:])
    if transfer is None:
        return SamplerRows(structure.batch_size, 0, 0, shape, shape)
    return SamplerRows(structure.batch_size, sum(a.batch_size for a in transfer.appearances),
                       structure.batch_size if transfer.injects_structure or drawn else 0, shape,
                       tuple(transfer.appearance.trajectory.shape[2:]))


def start_latents(rows: SamplerRows, structure, appearances: list) -> torch.Tensor:
    """The sampler's start: the outputs and the structures at the structure's noise, the
    appearances at their own."""
    noisy = torch.cat([a.noisy for a in appearances]) if appearances else structure.noisy[:0]
    return rows.join(structure.noisy, noisy, structure.noisy)


def noise_replay(rows: SamplerRows, structure, appearances: list, drawn=None):
    """A ComfyUI noise sampler that hands the DDPM sampler, at each step, every batch row's
    noise map from its inversion (outputs: the structure's), as the paper's sampling does,
    packed as the batch is (core/packing.py: zero on the padding). With `drawn` (deferred.py)
    the outputs' maps come from the step's own call, and the other rows get none: the guider
    puts them on their next draws."""
    schedule = structure.sigmas
    if drawn is not None:
        def made(sigma, sigma_next):
            z = drawn.output_noise(step_index(schedule, float(sigma)))
            return rows.join(z, z.new_zeros(drawn.appearances.shape[1:]), torch.zeros_like(z))
        return made
    appearance_noise = torch.cat([a.noise for a in appearances], dim=1) if appearances else structure.noise[:, :0]
    noise = torch.stack([rows.join(structure.noise[i], appearance_noise[i], structure.noise[i])
                         for i in range(structure.steps)])

    def replay(sigma, sigma_next):
        return noise[step_index(schedule, float(sigma))].to(sigma.device)
    return replay


def transfer_guider(model, transfer, rows: SamplerRows, structure, guidance, latent_adain, drawn=None):
    """A guider factory (patcher -> CrossImageGuider) for a patched MODEL: checks that the patch
    is still whole and runs exactly, and puts the regions and latent AdaIN's masks at the
    latents' sizes; drawn: the inversions made in the sampling calls (deferred.py), or None."""
    architecture = architecture_of(model)
    architecture.require_intact(model, transfer.sites)
    require_exact_when_compiled(model)
    regions = sampling_regions(architecture, transfer, structure, latent_adain)
    adain_masks = (None, None)
    if latent_adain is not None and regions is None:
        adain_masks = (latent_mask(latent_adain.structure_mask, structure.clean, "structure_mask"),
                       latent_mask(latent_adain.appearance_mask, transfer.appearance.clean, "appearance_mask"))
    return lambda patcher: CrossImageGuider(patcher, transfer, architecture, rows, guidance, latent_adain, regions,
                                            adain_masks, structure.guidance, drawn)


def sampling_regions(architecture, transfer, structure, latent_adain):
    """The regions of the transfer at the latents' sizes (core/regions.py), or None without
    regions. Latent AdaIN then follows them, so its own masks are refused."""
    if not transfer.regions:
        return None
    masked = latent_adain is not None and (latent_adain.structure_mask, latent_adain.appearance_mask) != (None, None)
    if masked:
        raise ValueError("latent_adain: Cross-Image Attention has masks or regions, and latent AdaIN follows them "
                         "(each region's output pixels take its appearance's statistics); disconnect Latent AdaIN's "
                         "masks")
    latent_shape = tuple(structure.clean.shape[-2:])
    structure_masks = [None if region.structure_mask is None else
                       latent_mask(region.structure_mask, structure.clean, "structure_mask")[0]
                       for region in transfer.regions]
    grids = site_grids(architecture, transfer.sites, latent_shape, tuple(transfer.appearance.clean.shape[-2:]))
    return RegionMaps(region_shares(structure_masks, latent_shape), appearance_masks(transfer.regions), grids)
