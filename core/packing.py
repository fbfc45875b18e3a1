"""Latents of another size in one sampler batch.

The samplers that retrace an inversion (Euler/DDIM, DDPM) step every value of their batch on
its own, so a latent of another size can ride in a batch as rows of the batch's shape: its
values laid out channel by channel (so per-channel maps still see each channel) and padded with
zeros. The padding stays zero through those steps as long as the model's prediction there is
zero too (x = 0 and denoised = 0 give a zero step, and the DDPM replay's noise is zero there)."""
import math

import torch


def rows_per_latent(shape: tuple, row_shape: tuple) -> int:
    """How many rows of `row_shape` (C, H, W) one latent of `shape` (C, h, w) takes (each may
    have a frame axis of 1 before the height: (C, 1, H, W))."""
    if shape[0] != row_shape[0]:
        raise ValueError(f"latents of {shape[0]} and {row_shape[0]} channels cannot share a batch")
    return math.ceil(math.prod(shape[1:]) / math.prod(row_shape[1:]))


def pack(latents: torch.Tensor, row_shape: tuple) -> torch.Tensor:
    """(B, C, h, w) latents as (B * k, C, H, W) rows of `row_shape`; the same tensor when the shapes agree."""
    if tuple(latents.shape[1:]) == tuple(row_shape):
        return latents
    b, c = latents.shape[:2]
    k, per_row = rows_per_latent(tuple(latents.shape[1:]), row_shape), math.prod(row_shape[1:])
    flat = torch.nn.functional.pad(latents.reshape(b, c, -1), (0, k * per_row - math.prod(latents.shape[2:])))
    return flat.reshape(b, c, k, per_row).transpose(1, 2).reshape(b * k, *row_shape)


def unpack(rows: torch.Tensor, shape: tuple) -> torch.Tensor:
    """The (B, C, h, w) latents of `shape` (C, h, w) that pack() laid out as `rows`."""
    if tuple(rows.shape[1:]) == tuple(shape):
        return rows
    row_shape = tuple(rows.shape[1:])
    k, c = rows_per_latent(shape, row_shape), shape[0]
    per_row = math.prod(row_shape[1:])
    flat = rows.reshape(-1, k, c, per_row).transpose(1, 2).reshape(-1, c, k * per_row)
    return flat[:, :, :math.prod(shape[1:])].reshape(-1, *shape)
