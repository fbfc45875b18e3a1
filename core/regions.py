"""Regional cross-image attention: the output takes each appearance only where its structure
mask says, and attends only to the appearance keys inside that appearance's mask.

Region r has a share S_r of every output pixel (its structure mask, at latent size); the
output's own share is what the regions leave. At a swapped layer, an output token's attention
is the shares' blend
    out = sum_r w_r softmax_c(Q K_r[in_r]^T / sqrt(d)) V_r[in_r] + w_own softmax(Q K_out^T / sqrt(d)) V_out,
with w the shares averaged over the token's area (the layer's grid), in_r the appearance
tokens whose area lies at least half inside appearance mask r, and softmax_c the attention
with contrast (core/contrast.py: its mean becomes 1 / |in_r|). With binary masks a token is
either the paper's cross-image attention or the output's own self-attention."""
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .levels import token_grid


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
class Regions:
    """The shares (R, H, W) of the output latent's pixels and the appearance masks (Ha, Wa) of
    each region (None: every key) at latent size; their token-grid forms are made once per
    layer size and device."""
    shares: torch.Tensor
    appearance_masks: Sequence[Optional[torch.Tensor]]
    appearance_shape: tuple  # (Ha, Wa)
    _made: dict = field(default_factory=dict, repr=False)

    def __deepcopy__(self, memo):
        return self  # immutable; ComfyUI deep-copies model options on every clone

    def __len__(self) -> int:
        return self.shares.shape[0]

    def at(self, queries: int, keys: int, device) -> tuple:
        """(region shares (R, queries, 1), own share (queries, 1) or None where it is 0 everywhere,
        per region the key tokens inside its mask as an index tensor or None for all) at the
        layer of `queries` output tokens and `keys` appearance tokens."""
        made = self._made.get((queries, keys, device))
        if made is None:
            grid = grid_of(self.shares.shape[-2:], queries)
            shares = at_grid(self.shares, grid)
            own = (1 - shares.sum(0)).clamp(min=0)
            key_grid = grid_of(self.appearance_shape, keys)
            inside = [None if mask is None else torch.nonzero(at_grid(mask, key_grid) >= 0.5)[:, 0].to(device)
                      for mask in self.appearance_masks]
            made = (shares[..., None].to(device), own[:, None].to(device) if bool(own.any()) else None, inside)
            self._made[queries, keys, device] = made
        return made


def keyless(appearance_masks: Sequence[Optional[torch.Tensor]], appearance_shape: tuple, factors: Sequence[int]) -> list:
    """The indices of the appearance masks (latent size) that hold no key token at a level of one
    of these downsampling factors."""
    return sorted({r for r, mask in enumerate(appearance_masks) for factor in factors if mask is not None
                   and not bool((at_grid(mask, token_grid(*appearance_shape, factor)) >= 0.5).any())})


def grid_of(shape: tuple, tokens: int) -> tuple:
    """The token grid of a layer with `tokens` tokens on a latent of `shape` (H, W)."""
    factor = 1
    while True:
        grid = token_grid(*shape, factor)
        if grid[0] * grid[1] == tokens:
            return grid
        if grid == (1, 1):
            raise ValueError(f"no token grid of {tokens} tokens on a {shape[0]}x{shape[1]} latent")
        factor *= 2
