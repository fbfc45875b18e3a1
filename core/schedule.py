"""Where the sampler is in its schedule, and whether a step range covers it."""
import torch


def step_index(schedule: torch.Tensor, sigma: float) -> int:
    """Index of the step being taken at noise level `sigma` in a descending `schedule`:
    the number of schedule sigmas above it (so sigma == schedule[i] gives i)."""
    return int((schedule > sigma * (1 + 1e-5) + 1e-8).sum())


def in_step_range(index: int, steps: int, start: float, end: float) -> bool:
    """True when step `index` of `steps` lies in [round(start * steps), round(end * steps)).

    The range is given as fractions of the denoising so one setting fits any step count
    (the paper's "from step 10 of 68" is start = 10 / 68 ~ 0.15)."""
    return round(start * steps) <= index < round(end * steps)


def injects_structure(index: int, steps: int, every: int, until: float) -> bool:
    """Structure key/value injection steps: every `every`-th step before round(until * steps)
    (the paper's code: step % 5 == 0 and step < 40 of 68, i.e. until ~ 0.59); every = 0: never."""
    return every > 0 and index % every == 0 and index < round(until * steps)
