"""Invert Pair's edit-friendly inversions, made when a node first needs them, so that the
Cross-Image Sampler can do without the appearance's model calls.

The latents of an edit-friendly inversion are independent draws (core/edit_friendly.py), known
before any model call; the calls only give the noise maps that make a sampler's step from each
draw land on the next. The sampler needs the structure's (the outputs replay them). It does not
need the appearance's where its own call on the appearance row is the inversion's call: the
same draw (at the start, and after every step it lands on), sigma, prompt, negative prompt, CFG
and embedded guidance. The replayed step then lands on the next draw (to float round-off), so
putting the appearance row on its draws is the same sampling, one batch item a step cheaper.
Otherwise both latents are inverted together, in the same model calls, before sampling, as
Invert Pair would have done at once."""
from dataclasses import dataclass

import torch


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
    """(structure, appearances, follow) for a Cross-Image Sampler with this prompt, negative
    prompt and CFG: the structure complete, and the appearances complete or, with `follow`,
    still pending, their rows to be put on their draws at every step (their calls saved)."""
    job = structure.pending.job if structure.pending is not None else None
    if job is None:
        return structure, [appearance.resolved() for appearance in appearances], False
    shared = [appearance.shares_calls_with(structure) for appearance in appearances]
    follow = bool(appearances) and all(shared) and job.called_as(positive, negative, cfg)
    structure = job.inversion(structure.pending.name, alone=follow or not any(shared))
    return structure, appearances if follow else [appearance.resolved() for appearance in appearances], follow


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
