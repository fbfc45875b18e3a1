"""The rows of the Cross-Image Sampler's batch: what each row is, their order, and whose keys
and values each row attends to (eq. 2 of Alaluf et al. 2024, on a batch). Every other part of
the pack asks these objects; none writes the order out again.

The sampler steps the batch [outputs | appearances | structures] (SamplerRows): the outputs
and the structures start from the structure's noise, the appearances from their own; the
structures are there only with structure injection. An appearance of another size than the
structure rides in it packed into rows of the structure's shape (core/packing.py).

Each model call runs, per conditioning chunk (cond, uncond), [outputs | appearances |
structures | plain] (CallRows): a call may leave the structures out (steps where nothing needs
them), and may add plain rows, copies of the outputs that keep their own keys and values
(appearance guidance's prediction without the swap). Appearances of another size run apart:
in a call of their own just before, which lends their keys and values to this one."""
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import torch

from .packing import pack, rows_per_latent, unpack


@dataclass(frozen=True)
class CallRows:
    """The rows of one model call, per conditioning chunk."""
    outputs: int
    appearances: int
    structures: int = 0
    plain: int = 0
    appearances_apart: bool = False

    @property
    def in_batch_appearances(self) -> int:
        return 0 if self.appearances_apart else self.appearances

    @property
    def per_chunk(self) -> int:
        return self.outputs + self.in_batch_appearances + self.structures + self.plain

    def join(self, outputs, appearances, structures, plains) -> torch.Tensor:
        """The call's batch (one chunk) from its parts; the appearances only when in the batch."""
        return torch.cat(self.parts(outputs, appearances, structures, plains))

    def parts(self, outputs, appearances, structures, plains) -> list:
        return [outputs] + ([] if self.appearances_apart else [appearances]) + [structures, plains]

    def split(self, out: torch.Tensor) -> tuple:
        """(outputs, appearances or None when apart, structures, plains) of one chunk's result."""
        counts = [self.outputs, self.in_batch_appearances, self.structures, self.plain]
        outputs, appearances, structures, plains = out.split(counts)
        return outputs, None if self.appearances_apart else appearances, structures, plains

    def apart(self) -> "CallRows":
        """The rows of the call that runs the appearances apart: the appearances alone."""
        return CallRows(outputs=0, appearances=self.appearances)

    def output_rows(self, chunks: int) -> torch.Tensor:
        """1 for the output rows and their plain copies, 0 for appearance and structure rows,
        for a call of `chunks` conditioning chunks."""
        chunk = ([1.0] * self.outputs + [0.0] * (self.in_batch_appearances + self.structures)
                 + [1.0] * self.plain)
        return torch.tensor(chunk * chunks)

    def kv_sources(self, rows: int, from_structure: bool = False, appearance: Optional[int] = None) -> tuple:
        """For each of the call's `rows`, the row whose keys and values it attends to.

        Output row j of a chunk takes appearance row j % appearances of its chunk (one
        appearance for all outputs, or one each), or with `from_structure` its own structure
        row j (structure injection), or with `appearance` that appearance row (regions:
        core/regions.py); every other row keeps its own. With the appearances apart, a source
        past the batch, rows + i, names row i of the keys and values they lent, chunk by chunk."""
        return _kv_sources(self, rows, from_structure, appearance)


@lru_cache(maxsize=256)
def _kv_sources(layout: CallRows, rows: int, from_structure: bool, appearance: Optional[int]) -> tuple:
    per_chunk, in_batch = layout.per_chunk, layout.in_batch_appearances
    if rows % per_chunk:
        raise ValueError(f"batch of {rows} rows is not a multiple of {layout.outputs} outputs + {in_batch} appearances"
                         f" + {layout.structures} structures + {layout.plain} plain rows")
    if from_structure and layout.structures != layout.outputs:
        raise ValueError(f"structure injection needs one structure row per output ({layout.structures} for "
                         f"{layout.outputs})")
    outputs = torch.arange(layout.outputs)
    taken = outputs % layout.appearances if appearance is None else torch.full_like(outputs, appearance)
    sources = torch.arange(rows)
    for chunk, start in enumerate(range(0, rows, per_chunk)):
        if from_structure:
            sources[start:start + layout.outputs] = start + layout.outputs + in_batch + outputs
        elif layout.appearances_apart:
            sources[start:start + layout.outputs] = rows + chunk * layout.appearances + taken
        else:
            sources[start:start + layout.outputs] = start + layout.outputs + taken
    return tuple(sources.tolist())


@dataclass(frozen=True)
class SamplerRows:
    """The batch the sampler steps: [outputs | appearances | structures], each part a number of
    latents; the appearances, of shape `appearance_shape` (C, h, w), packed into rows of the
    outputs' `row_shape` (C, H, W) when the shapes differ."""
    outputs: int
    appearances: int
    structures: int
    row_shape: tuple
    appearance_shape: tuple

    @property
    def appearances_apart(self) -> bool:
        """Whether the appearances run in model calls of their own (another size)."""
        return tuple(self.appearance_shape) != tuple(self.row_shape)

    @property
    def appearance_rows(self) -> int:
        return self.appearances * rows_per_latent(tuple(self.appearance_shape), tuple(self.row_shape))

    def join(self, outputs: torch.Tensor, appearances: torch.Tensor, structures: torch.Tensor) -> torch.Tensor:
        """The sampler batch from its parts; `structures` is ignored when the batch has none."""
        return torch.cat([outputs, pack(appearances, tuple(self.row_shape)), structures[:self.structures]])

    def put(self, x: torch.Tensor, appearances: torch.Tensor, structures: torch.Tensor) -> None:
        """Set the appearance and structure rows of the sampler batch x (in place)."""
        start = self.outputs + self.appearance_rows
        x[self.outputs:start] = pack(appearances, tuple(self.row_shape))
        x[start:] = structures[:self.structures]

    def split(self, x: torch.Tensor) -> tuple:
        """(outputs, appearances at their own shape, structures) of a sampler batch."""
        n, a = self.outputs, self.appearance_rows
        return x[:n], unpack(x[n:n + a], tuple(self.appearance_shape)), x[n + a:]

    def call(self, structures: bool, plain: bool) -> CallRows:
        """The rows of a model call that runs the structures or not, and plain copies or not."""
        return CallRows(self.outputs, self.appearances, self.structures if structures else 0,
                        self.outputs if plain else 0, self.appearances_apart)
