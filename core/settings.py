"""What the settings nodes hand on (plain, immutable data). Cross-Image Attention's settings
ride on the patched MODEL, the others on their own sockets; the Cross-Image Sampler reads them
all and core/plan.py decides each model call from them."""
from dataclasses import dataclass
from typing import Optional

from .inversion import Inversion


class Shared:
    """Immutable values: ComfyUI deep-copies model options on every clone; share, don't copy."""

    def __deepcopy__(self, memo):
        return self


@dataclass(frozen=True)
class ContrastSettings:
    """Attention-map contrast for the output rows at the swapped sites (1 = off)."""
    strength: float = 1.67


@dataclass(frozen=True, eq=False)
class AppearanceRegion(Shared):
    """One appearance of a regional transfer and where it goes: the structure's pixels it paints
    (a MASK; None: those no other region takes) and the appearance's pixels it takes its look
    from (a MASK; None: all)."""
    appearance: Inversion
    structure_mask: object = None
    appearance_mask: object = None


@dataclass(frozen=True)
class TransferSettings(Shared):
    """Cross-Image Attention's settings: which attention sites swap (the patch sits there; keys
    the architecture adapter names), in which fraction of the steps, with what contrast and
    structure injection; with masks or several appearances, `regions` (the first: `appearance`
    with its masks), else none."""
    appearance: Inversion
    sites: tuple
    start: float
    end: float
    contrast: float = 1.0
    structure_every: int = 0
    structure_until: float = 0.0
    regions: tuple = ()
    positions: Optional["PositionSettings"] = None  # on models with rotary positions, else None

    @property
    def appearances(self) -> list:
        """The appearance inversions the sampler denoises beside the outputs, in batch order."""
        return [region.appearance for region in self.regions] or [self.appearance]

    @property
    def injects_structure(self) -> bool:
        """Whether any step may take the structure's keys and values (core/schedule.py decides which)."""
        return self.structure_every > 0 and self.structure_until > 0


@dataclass(frozen=True)
class PositionSettings:
    """Where the appearance's keys sit when the output attends to them, on models with rotary
    position embeddings (core/positions.py): "attenuated" (their high frequency bands scaled from
    high_start at the first step to high_end at the last), "same" or "shifted"."""
    kind: str = "attenuated"
    high_start: float = 0.0
    high_end: float = 1.0


@dataclass(frozen=True)
class GuidanceSettings:
    """Appearance guidance for the Cross-Image Sampler (paper: 3.5 -> 1.75 from step 10 of 68)."""
    scale: float = 3.5
    end_scale: float = 1.75
    start: float = 0.15


@dataclass(frozen=True, eq=False)
class LatentAdaINSettings:
    """AdaIN of the output latents to the appearance latents after steps in [start, end)
    (paper: steps 20 to the end of 68), optionally within masks."""
    start: float = 0.29
    end: float = 1.0
    structure_mask: Optional[object] = None
    appearance_mask: Optional[object] = None
