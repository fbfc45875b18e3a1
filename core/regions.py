"""Regional cross-image attention: the output takes each appearance only where its structure
mask says, and attends only to the appearance keys inside that appearance's mask.

Region r has a share S_r of every output pixel (its structure mask, at latent size); the
output's own share is what the regions leave. At a swapped layer, an output token's attention
is the shares' blend
    out = sum_r w_r softmax_c(Q K_r[in_r]^T / sqrt(d)) V_r[in_r] + w_own softmax(Q K_out^T / sqrt(d)) V_out,
with w the shares averaged over the token's area (the site's token grid), in_r the appearance
tokens whose area lies at least half inside appearance mask r, and softmax_c the attention
with contrast (core/contrast.py: its mean becomes 1 / |in_r|). With binary masks a token is
either the paper's cross-image attention or the output's own self-attention."""
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

from .settings import Shared


def region_shares(structure_masks: Sequence[Optional[torch.Tensor]], shape: tuple) -> torch.Tensor:
    """(R, H, W) shares of the output pixels of a latent of `shape` (H, W) from the regions'
    structure masks (H, W) in [0, 1]. A region without a mask (the first may lack one) takes
    what the others leave; where the masks overlap past 1 they are scaled to sum to 1."""
    given = [mask.float() for mask in structure_masks if mask is not None]
    rest = (1 - torch.stack(given).sum(0)).clamp(min=0) if given else torch.ones(shape)
    shares = torch.stack([rest if mask is None else mask for mask in structure_masks])
    return shares / shares.sum(0).clamp(min=1)


def at_grid(mask: torch.Tensor, grid: tuple) -> torch.Tensor:
    """A latent-size map (..., H, W) averaged over each token's area of a (rows, cols) grid, flattened."""
    return F.adaptive_avg_pool2d(mask[None].float(), grid)[0].flatten(-2)


@dataclass(eq=False)
class RegionMaps(Shared):
    """The shares (R, H, W) of the output latent's pixels and the appearance masks (Ha, Wa) of
    each region (None: every key) at latent size, and per patched site the token grids of the
    output and of the appearances there ({site: (rows, cols), (rows, cols)}); their forms at a
    site (LayerRegions) are made once per site and device."""
    shares: torch.Tensor
    appearance_masks: Sequence[Optional[torch.Tensor]]
    grids: dict
    _made: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return self.shares.shape[0]

    def at(self, site, device) -> "LayerRegions":
        """The regions at patched site `site`."""
        made = self._made.get((site, device))
        if made is None:
            query_grid, key_grid = self.grids[site]
            shares = at_grid(self.shares, query_grid)
            own = (1 - shares.sum(0)).clamp(min=0)
            inside = [None if mask is None else torch.nonzero(at_grid(mask, key_grid) >= 0.5)[:, 0].to(device)
                      for mask in self.appearance_masks]
            made = LayerRegions(shares[..., None].to(device), own[:, None].to(device) if bool(own.any()) else None,
                                inside)
            self._made[site, device] = made
        return made


class LayerRegions(NamedTuple):
    """The regions at one site: each region's share of every output token (R, N, 1), the own
    share (N, 1) or None where it is 0 everywhere, and per region the appearance tokens inside
    its mask (an index tensor, or None for all)."""
    shares: torch.Tensor
    own: Optional[torch.Tensor]
    inside: list


def keyless(appearance_masks: Sequence[Optional[torch.Tensor]], key_grids: Sequence[tuple]) -> list:
    """The indices of the appearance masks (latent size) that hold no key token on one of these
    token grids."""
    return sorted({r for r, mask in enumerate(appearance_masks) for grid in key_grids if mask is not None
                   and not bool((at_grid(mask, grid) >= 0.5).any())})
