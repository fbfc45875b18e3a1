"""Invert Pair's edit-friendly inversions, made when a node first needs them, so that the
Cross-Image Sampler can make them in its own model calls.

The latents of an edit-friendly inversion are independent draws (core/edit_friendly.py), known
before any model call; the calls only give the noise maps that make a sampler's step from each
draw land on the next. Where the sampler's call on a row at its draw is the inversion's call
(the same draw, sigma, prompt, negative prompt, CFG and embedded guidance), the two are one:
the sampler puts the appearance and structure rows on their draws before every call (where a
replayed step lands, to float round-off), and the structure rows' predictions give the noise
map each output replays (eq. 6-7 of the edit-friendly paper, in the same call). No call is
spent on the inversions: one call a sampling step in all, the structure rows riding in it from
the first step where the outputs differ from them. Otherwise both latents are inverted
together, in the same model calls, before sampling, as Invert Pair would have done at once."""
from dataclasses import dataclass

import torch

from ...core.edit_friendly import PROCESSES, noise_map


class DeferredInversions:
    """The inversions of one Invert Pair node: run(names) inverts the latents named, in the same
    model calls, and gives {name: Inversion}; conditions: (positive, negative, cfg) of the calls."""

    def __init__(self, run, names, conditions):
        self.run, self.names, self.conditions = run, tuple(names), conditions
        self.done = {}

    def inversion(self, name: str, alone: bool = False):
        """The complete inversion `name`: its calls run now unless done, with those of every
        latent still waiting (as Invert Pair does), or `alone`."""
        if name not in self.done:
            self.done.update(self.run([name] if alone else [n for n in self.names if n not in self.done]))
        return self.done[name]

    def guidance(self):
        """The embedded guidance the calls give (one prompt: the same for every latent)."""
        return self.inversion(next(iter(self.done), self.names[0])).guidance

    def called_as(self, positive, negative, cfg: float) -> bool:
        """Whether a sampler with this prompt, negative prompt and CFG calls the model on these
        latents' rows as the inversion did. Controls are refused: the sampler keeps them to
        the output rows (sampling/control.py), the inversion's calls had them."""
        inverted_positive, inverted_negative, inverted_cfg = self.conditions
        controlled = any("control" in extra for conditioning in (positive, negative, *self.conditions[:2])
                         for _, extra in conditioning or [])
        return (cfg == inverted_cfg and not controlled and same_value(positive, inverted_positive)
                and (cfg == 1.0 or same_value(negative, inverted_negative)))


@dataclass(frozen=True, eq=False)
class Pending:
    """One latent of a DeferredInversions (core/inversion.Inversion.pending)."""
    job: DeferredInversions
    name: str

    def resolve(self):
        return self.job.inversion(self.name)

    def guidance(self):
        return self.job.guidance()


def settle(structure, appearances: list, positive, negative, cfg: float) -> tuple:
    """(structure, appearances, drawn) for a Cross-Image Sampler with this prompt, negative
    prompt and CFG: where the pair's calls are the sampler's own, the inversions still pending
    and DrawnRows making them in the sampling calls; else complete (the structure alone where
    no appearance is its pair's) and None."""
    job = structure.pending.job if structure.pending is not None else None
    if job is None:
        return structure, [appearance.resolved() for appearance in appearances], None
    shared = [appearance.shares_calls_with(structure) for appearance in appearances]
    if appearances and all(shared) and job.called_as(positive, negative, cfg):
        return structure, appearances, DrawnRows(structure, appearances)
    structure = job.inversion(structure.pending.name, alone=not any(shared))
    return structure, [appearance.resolved() for appearance in appearances], None


class DrawnRows:
    """The pending inversions of a transfer made in its sampling calls: the appearance and
    structure rows put on their draws before each call, the outputs' noise maps from the
    structure rows' predictions of the same call."""

    def __init__(self, structure, appearances: list):
        self.structures, self.sigmas = structure.trajectory, structure.sigmas
        self.appearances = torch.cat([appearance.trajectory for appearance in appearances], dim=1)
        self.step = PROCESSES[structure.method][1]
        self.predicted = {}

    def place(self, rows, x: torch.Tensor, index: int) -> None:
        """Put the appearance and structure rows of the sampler batch x (in place) on step `index`'s draws."""
        rows.put(x, self.appearances[index].to(x), self.structures[index].to(x))

    def note(self, index: int, structures: torch.Tensor) -> None:
        """The structure rows' prediction (denoised) at step `index`."""
        self.predicted = {index: structures}

    def output_noise(self, index: int) -> torch.Tensor:
        """The noise map the outputs replay at step `index`: the one the structure's inversion gives."""
        if index not in self.predicted:
            raise RuntimeError(f"sampler_name: the sampler asked for the noise of step {index} before its model "
                               "call; use a sampler with one model call a step")
        denoised = self.predicted[index]
        z, _ = noise_map(self.step, self.structures[index].to(denoised), self.structures[index + 1].to(denoised),
                         denoised, float(self.sigmas[index]), float(self.sigmas[index + 1]))
        return z


def same_value(a, b) -> bool:
    """Equal CONDITIONING parts: tensors equal in shape, dtype and values; dicts, lists and
    tuples item by item; plain numbers and strings by value; anything else only itself."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and torch.equal(a, b.to(a.device)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)) and type(a) is type(b):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and isinstance(a, (int, float, str, bool)) and a == b
