"""Which sampling steps each part of the method acts on: the settings' fractions of the
denoising, turned into step indices once per sampling run."""
from dataclasses import dataclass
from typing import Optional

import torch

from .guidance import guidance_scale
from .settings import GuidanceSettings, LatentAdaINSettings, TransferSettings


def to_step(fraction: float, steps: int) -> int:
    """The step a fraction of `steps` denoising steps names, rounded to the nearest
    (the paper's "from step 10 of 68" is 0.15: 0.15 * 68 = 10.2)."""
    return round(fraction * steps)


def step_range(start: float, end: float, steps: int) -> range:
    """The steps of [to_step(start), to_step(end)), within the `steps` steps."""
    return range(to_step(start, steps), min(to_step(end, steps), steps))


def step_index(schedule: torch.Tensor, sigma: float) -> int:
    """Index of the step being taken at noise level `sigma` in a descending `schedule`:
    the number of schedule sigmas above it (so sigma == schedule[i] gives i)."""
    return int((schedule > sigma * (1 + 1e-5) + 1e-8).sum())


@dataclass(frozen=True)
class Steps:
    """A transfer's steps, decided once from its settings for a schedule of `count` steps.

    swap:       the steps whose output rows take other rows' keys and values;
    injection:  those of them that take the structure's (the paper's code: step % 5 == 0 and
                step < 40 of 68, i.e. every 5 until 0.59);
    guidance:   per step, the appearance guidance scale s_i, or None (core/guidance.py);
    adain:      the steps after which the output latents take the appearances' statistics;
    diverge:    the first step at which the outputs may differ from the structures (they start
                alike and follow the same model until something acts on the outputs alone);
    inverting:  whether the structure rows' predictions give the outputs' noise maps (the
                structure inverted in the sampling calls, nodes/sampling/deferred.py)."""
    count: int
    swap: range
    injection: frozenset
    guidance: tuple
    adain: range
    diverge: int
    inverting: bool = False

    @property
    def last_injection(self) -> int:
        return max(self.injection, default=-1)

    def needs_structures(self, index: int) -> bool:
        """Whether step `index` must run the structure rows: while they equal the outputs they
        take the outputs' prediction; after the last injection step nothing reads them, unless
        they give the noise maps (every step but the last, which has none)."""
        return self.diverge <= index <= max(self.last_injection, self.count - 2 if self.inverting else -1)


def transfer_steps(count: int, transfer: TransferSettings, guidance: Optional[GuidanceSettings] = None,
                   latent_adain: Optional[LatentAdaINSettings] = None, outputs_steered: bool = False,
                   inverting: bool = False) -> Steps:
    """The Steps of a transfer over `count` sampled steps. outputs_steered: something acts on the
    output rows from the first step (a ControlNet on the prompt); inverting: see Steps."""
    swap = step_range(transfer.start, transfer.end, count)
    every, until = transfer.structure_every, to_step(transfer.structure_until, count)
    injection = frozenset(i for i in swap if every > 0 and i % every == 0 and i < until)
    guided = range(0) if guidance is None else range(max(swap.start, to_step(guidance.start, count)), swap.stop)
    scales = tuple(guidance_scale(i, count, guidance.scale, guidance.end_scale) if i in guided else None
                   for i in range(count))
    adain = step_range(latent_adain.start, latent_adain.end, count) if latent_adain is not None else range(0)
    diverge = 0 if outputs_steered else min(swap.start if swap else count, adain.start + 1 if adain else count)
    return Steps(count, swap, injection, scales, adain, diverge, inverting)
