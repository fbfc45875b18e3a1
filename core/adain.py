"""Adaptive instance normalisation (Huang & Belongie 2017, eq. 8), optionally masked:
AdaIN(x, y) = sigma(y) * (x - mu(x)) / sigma(x) + mu(y), per sample and channel."""
from typing import Optional, Sequence, Tuple

import torch


def masked_mean_std(x: torch.Tensor, weight: torch.Tensor, eps: float,
                    name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of x (B, C, N) over positions weighted by `weight` (B, 1, N).

    std = sqrt(unbiased variance + eps), the form the official code uses."""
    count = weight.sum(dim=-1, keepdim=True)
    if bool((count <= 1).any()):
        raise ValueError(f"{name}: the mask selects too few pixels to take statistics (need at least 2)")
    mean = (x * weight).sum(dim=-1, keepdim=True) / count
    var = ((x - mean) ** 2 * weight).sum(dim=-1, keepdim=True) / (count - 1)
    return mean, (var + eps).sqrt()


def adain(content: torch.Tensor, style: torch.Tensor, content_mask: Optional[torch.Tensor] = None,
          style_mask: Optional[torch.Tensor] = None, eps: float = 1e-5,
          mask_names: Tuple[str, str] = ("content_mask", "style_mask")) -> torch.Tensor:
    """Give `content` (B, C, *spatial) the per-channel statistics of `style` (B or 1, C, *spatial').

    Masks (B or 1, *spatial) in [0, 1] weight the statistics; the content mask also blends
    the change, so content outside it is returned untouched. Errors name the masks by
    `mask_names` (the caller's input names)."""
    b, c = content.shape[:2]
    if style.shape[0] not in (1, b) or style.shape[1] != c:
        raise ValueError(f"style: shape {tuple(style.shape)} does not fit content {tuple(content.shape)} "
                         "(needs the same channels and a batch of 1 or the same batch)")
    x = content.reshape(b, c, -1)
    y = style.reshape(style.shape[0], c, -1)
    w_x = _weights(content_mask, x, mask_names[0])
    w_y = _weights(style_mask, y, mask_names[1])
    mu_x, sd_x = masked_mean_std(x, w_x, eps, mask_names[0])
    mu_y, sd_y = masked_mean_std(y, w_y, eps, mask_names[1])
    moved = (x - mu_x) / sd_x * sd_y + mu_y
    out = x + w_x * (moved - x)
    return out.reshape(content.shape)


def _weights(mask: Optional[torch.Tensor], flat: torch.Tensor, name: str) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(flat[:, :1])
    w = mask.reshape(mask.shape[0], 1, -1).to(flat)
    if w.shape[-1] != flat.shape[-1]:
        raise ValueError(f"{name}: {w.shape[-1]} mask pixels for {flat.shape[-1]} image pixels")
    if w.shape[0] not in (1, flat.shape[0]):
        raise ValueError(f"{name}: batch of {w.shape[0]} masks for {flat.shape[0]} images")
    return w.expand(flat.shape[0], 1, -1)


def adain_by_regions(outputs: torch.Tensor, appearances: torch.Tensor, shares: Optional[torch.Tensor],
                     appearance_masks: Sequence[Optional[torch.Tensor]],
                     structure_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Latent AdaIN of the outputs (B, C, H, W) to the appearances. Without regions (shares
    None): one AdaIN within structure_mask and appearance_masks[0] (latent size, or None). With
    regions (core/regions.py: shares (R, H, W)), region after region: each region's share of the
    outputs takes its appearance's statistics (appearances[r], within appearance_masks[r])."""
    names = ("structure_mask", "appearance_mask")
    if shares is None:
        return adain(outputs, appearances, structure_mask, appearance_masks[0], mask_names=names)
    for r, (share, mask) in enumerate(zip(shares, appearance_masks)):
        outputs = adain(outputs, appearances[r:r + 1], share[None], None if mask is None else mask[None],
                        mask_names=names)
    return outputs
