"""What each model call of a transfer does, decided in one place from the settings and the step.

At every sampling step the Cross-Image Sampler's guider asks plan_step for a StepPlan and runs
it; the patched attention sites read the call's CallPlan and decide nothing themselves."""
from dataclasses import dataclass, field
from typing import Optional

from .contrast import LEAST_BUDGET, budget_from_free_memory
from .regions import RegionMaps
from .rows import CallRows, SamplerRows
from .schedule import Steps
from .settings import TransferSettings


@dataclass(frozen=True)
class CallPlan:
    """One model call: its step and rows, and whether the output rows swap (take the appearance
    rows' keys and values, or with `from_structure` their structure rows'), with what contrast,
    in chunks of at most `contrast_budget` probabilities (core/contrast.py), and by region
    (`regions`, core/regions.py: each appearance where its masks say).

    With the appearances apart (another size), the call that runs them `lend`s the keys and
    values of its patched sites to `kv_store`, per site and conditioning chunk, and the next
    call's output rows `borrow` them from there. `ran` collects the sites that ran the plan,
    so that a planned patch that did not run is an error, not a silent no-op.

    latent_shape: (H, W) of the call's latents (each site's token grid follows from it);
    appearance_shape: (H, W) of the appearances' latents (where their keys sit);
    progress: how far the sampling is, step / (steps - 1), for what changes over the steps."""
    step: int
    rows: CallRows
    swap: bool
    from_structure: bool = False
    contrast: float = 1.0
    contrast_budget: int = LEAST_BUDGET
    regions: Optional[RegionMaps] = None
    kv_store: Optional[dict] = None
    lend: bool = False
    borrow: bool = False
    latent_shape: tuple = ()
    appearance_shape: tuple = ()
    progress: float = 0.0
    ran: set = field(default_factory=set, compare=False)


@dataclass(frozen=True)
class StepPlan:
    """A sampling step: the appearances' own call first when they run apart, then the main call
    (the other rows); with appearance guidance, the output rows' prediction is
    guide(plain, swap, guidance) from the main call's plain rows (core/guidance.py)."""
    apart: Optional[CallPlan]
    main: CallPlan
    guidance: Optional[float]


def plan_step(index: int, steps: Steps, rows: SamplerRows, transfer: TransferSettings,
              regions: Optional[RegionMaps], free_memory: int) -> StepPlan:
    """The StepPlan of step `index`; free_memory: the bytes free on the model's device, which
    bound the contrast's chunks."""
    swap = index in steps.swap
    scale = steps.guidance[index]  # None where the swap is off: the plain prediction is the same
    structures = rows.structures > 0 and steps.needs_structures(index)
    from_structure = structures and index in steps.injection
    budget = budget_from_free_memory(free_memory) if swap and transfer.contrast != 1.0 else LEAST_BUDGET
    call_rows = rows.call(structures=structures, plain=scale is not None)
    borrow = rows.appearances_apart and swap and not from_structure
    store = {} if borrow else None
    progress = index / max(1, steps.count - 1)
    main = CallPlan(index, call_rows, swap, from_structure, transfer.contrast, budget,
                    regions if swap and not from_structure else None, store, borrow=borrow,
                    latent_shape=tuple(rows.row_shape[-2:]), appearance_shape=tuple(rows.appearance_shape[-2:]),
                    progress=progress)
    apart = CallPlan(index, call_rows.apart(), swap=False, kv_store=store, lend=borrow,
                     latent_shape=tuple(rows.appearance_shape[-2:]), appearance_shape=tuple(rows.appearance_shape[-2:]),
                     progress=progress) \
        if rows.appearances_apart else None
    return StepPlan(apart, main, scale)
