"""Where the appearance's keys sit when the output attends to them, on models with rotary
position embeddings (RoPE: Flux, Flux.2, Chroma, ...).

RoPE turns each 2-D pair of a head's channels by its position times the pair's frequency, so a
query and a key score by their relative position as much as by their content: keys at the
output's own positions dominate, and the output copies the appearance image's layout instead of
matching by meaning (reported by Stable Flow, arXiv 2411.14430, and analysed by Untwisting RoPE,
arXiv 2602.05013). The choices, for the appearance's image keys only:

- "same": the positions they were embedded at (Stable Flow);
- "shifted": moved to positions next to the output's, none shared (AlignedGen's ShiftPE): the
  embedded keys are turned further by the offset, exactly, since rotations add;
- "attenuated": their pairs scaled by frequency band, s_b = s_high + (s_low - s_high) b^beta
  (b = 0 for an axis's highest frequency .. 1 for its lowest), the high bands more the earlier
  the step (2602.05013's frequency-aware modulation and its timestep schedule: s_high rising
  linearly from 0 at the first step to 1 at the last, s_low = 1, beta = 1; the paper's own
  values are not published): early steps match by content and coarse position, late ones
  follow the appearance closely for texture.

Keys are heads first (..., d), their pairs adjacent channels (2j, 2j + 1), as Flux lays them."""
from dataclasses import dataclass

import torch

POSITIONS = ("attenuated", "same", "shifted")


@dataclass(frozen=True)
class Rope:
    """A head's rotary embedding, per pair of channels: its axis, frequency and band (0 = the
    axis's highest frequency .. 1 = its lowest)."""
    axis: torch.Tensor
    omega: torch.Tensor
    band: torch.Tensor


def rope_of(axes_dim, theta: float) -> Rope:
    """The embedding of a model that gives axis a the next axes_dim[a] channels of a head, its
    pair j turning by theta^(-2j / axes_dim[a]) a position (Flux's EmbedND)."""
    axis, omega, band = [], [], []
    for a, dim in enumerate(axes_dim):
        pairs = torch.arange(dim // 2, dtype=torch.float64)
        axis.append(torch.full((dim // 2,), a))
        omega.append(theta ** (-2 * pairs / dim))
        band.append(pairs / max(1, dim // 2 - 1))
    return Rope(torch.cat(axis), torch.cat(omega), torch.cat(band))


def rotate(keys: torch.Tensor, rope: Rope, offset) -> torch.Tensor:
    """Keys turned further by `offset` positions on each axis: R(p) k becomes R(p + offset) k."""
    angle = torch.tensor(offset, dtype=torch.float64)[rope.axis] * rope.omega
    cos, sin = angle.cos().to(keys), angle.sin().to(keys)
    pairs = keys.unflatten(-1, (-1, 2))
    x, y = pairs[..., 0], pairs[..., 1]
    return torch.stack([cos * x - sin * y, sin * x + cos * y], dim=-1).flatten(-2)


def band_scales(rope: Rope, progress: float, axes, high_start: float = 0.0, high_end: float = 1.0,
                low: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """s_b per pair at `progress` (0 at the first step .. 1 at the last), s_high from high_start
    to high_end linearly, s_low fixed, on the pairs of `axes` (the image's rows and columns;
    pairs of other axes, whose position is the same for every image token, keep scale 1)."""
    high = high_start + (high_end - high_start) * progress
    scales = high + (low - high) * rope.band ** beta
    return torch.where(torch.isin(rope.axis, torch.tensor(list(axes))), scales, torch.ones_like(scales))


def scale_bands(keys: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Keys with each pair of channels scaled by its band's scale."""
    return (keys.unflatten(-1, (-1, 2)) * scales.to(keys)[:, None]).flatten(-2)
