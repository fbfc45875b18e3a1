"""What the method needs to know of a model's architecture, behind one small interface: one
adapter a family (unet.py: the Stable Diffusion UNets). The method code (core/: plans, rows,
contrast, regions, guidance, AdaIN, inversions; and the guider) never asks which architecture it
runs on; it asks the adapter (docs/architecture.md).

An adapter knows:
- the attention *sites* the method can patch (Site: a key the hooks see, a group users name
  and the site's token grid), and how users choose them (`choose`: UNet "levels");
- which tokens of a site are image tokens (UNet self-attention: all of them; a DiT's joint
  attention: the image's, after the text's), and where the appearance's keys sit (RoPE);
- how to install the patch through ComfyUI's supported hooks (`install`) on a clone, and how to
  tell a conflicting patch of another node (`require_free`, `require_intact`);
- what to record for self-segmentation (`install_recorder`).
Each hook hands its site's q, k, v to patch.attend, which records that the site ran: the
guider raises when a planned site did not (a hook this ComfyUI release does not call)."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Site:
    """One attention site: `key` as the patch sees it, `group` (the number users choose it by:
    a UNet level) and `factor` (how many times coarser than the latent its token grid is)."""
    key: tuple
    group: int
    factor: int


class Architecture:
    """The interface; see the module docstring. `selection` names the Cross-Image Attention
    input that chooses sites (for error messages)."""
    selection = "levels"

    def __init__(self, diffusion_model):
        self.diffusion_model = diffusion_model

    @classmethod
    def fits(cls, diffusion_model) -> bool:
        raise NotImplementedError

    def sites(self) -> list:
        """Every patchable Site, grouped in order."""
        raise NotImplementedError

    def choose(self, text: str, latent_shape: tuple) -> tuple:
        """The site keys a user's selection names for a latent of `latent_shape` (H, W); errors
        name the input."""
        raise NotImplementedError

    def token_grid(self, key: tuple, latent_shape: tuple) -> tuple:
        """(rows, columns) of the image tokens at site `key` for a latent of `latent_shape`."""
        raise NotImplementedError

    def site_name(self, key: tuple) -> str:
        """How errors name a site."""
        raise NotImplementedError

    def install(self, patcher, transfer) -> None:
        """Put the patch at the sites of `transfer` (core.settings.TransferSettings) on `patcher`
        (a clone) through ComfyUI's hooks."""
        raise NotImplementedError

    def require_positions(self, positions):
        """The appearance keys' positions (core.settings.PositionSettings, or None where the
        architecture has no rotary positions) for the user's (None: not given), or a ValueError
        naming the input."""
        raise NotImplementedError

    def require_free(self, model, keys) -> None:
        """Raise a ValueError if another node's patch sits where install would overwrite it."""
        raise NotImplementedError

    def require_intact(self, model, keys) -> None:
        """Raise a ValueError if a node after Cross-Image Attention replaced its patch at `keys`."""
        raise NotImplementedError

    def install_recorder(self, patcher, recorder) -> tuple:
        """Hook `recorder` (attention_maps.AttentionRecorder) where self-segmentation reads the
        attention; returns the Sites (self-attention, cross-attention) it reads."""
        raise NotImplementedError


def architecture_of(model) -> Architecture:
    """The adapter for a ComfyUI MODEL, or a ValueError naming the input."""
    from .flux import Flux
    from .lumina import Lumina
    from .qwen_image import QwenImage
    from .sd3 import SD3
    from .unet import UNet
    diffusion_model = model.get_model_object("diffusion_model")
    for adapter in (UNet, Flux, SD3, Lumina, QwenImage):
        if adapter.fits(diffusion_model):
            return adapter(diffusion_model)
    if type(diffusion_model).__module__ == "comfy.ldm.hidream.model":
        raise ValueError("model: HiDream is not supported: its attention calls carry no block identity and ComfyUI "
                         "offers no block replacement for it, so the nodes cannot tell which block an attention call "
                         "belongs to and could not check that the planned blocks looked at the appearance")
    raise ValueError(f"model: the Cross-Image nodes do not know the {type(diffusion_model).__name__} architecture "
                     f"(they work on {SUPPORTED})")


SUPPORTED = ("Stable Diffusion UNets: SD1.x, SD2.x, SDXL; and on Flux, Flux.2, Chroma, SD3 and SD3.5, Lumina 2, "
             "Z-Image and Qwen-Image")


def is_ours(patch, kind: type) -> bool:
    """`patch` is one of ours (a `kind`), or wraps one and says so (__wrapped__, as
    functools.wraps sets): a node that composes with ours instead of replacing it."""
    while patch is not None and not isinstance(patch, kind):
        patch = getattr(patch, "__wrapped__", None)
    return patch is not None


def site_grids(architecture: Architecture, keys, latent_shape: tuple, appearance_shape: tuple) -> dict:
    """{site key: (the output's token grid, the appearance's)} for latents of these shapes (H, W)."""
    return {key: (architecture.token_grid(key, latent_shape), architecture.token_grid(key, appearance_shape))
            for key in keys}
