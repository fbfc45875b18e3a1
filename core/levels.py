"""The paper's choice of decoder levels, translated to any UNet and image size.

The paper swaps keys and values in SD1.5's two finest decoder levels at 512 px: token grids of
64x64 and 32x32 (latent/1 and latent/2 of a 64x64 latent). Another model or size has other
grids (SDXL has no attention at latent/1; a 768 px image has a 96x96 latent), so the levels
that keep the paper's meaning are those whose grids are nearest to 64 and 32 tokens a side."""
import math

PAPER_GRIDS = (64, 32)  # tokens a side of the paper's swapped levels


def token_grid(height: int, width: int, factor: int) -> tuple:
    """(rows, columns) of tokens of a level `factor` times coarser than a height x width latent:
    the UNet halves sizes rounding up (stride-2 convolutions with padding 1)."""
    return -(-height // factor), -(-width // factor)


def grid_side(height: int, width: int, factor: int) -> float:
    """Tokens a side of that level; the geometric mean of the two sides for non-square latents."""
    rows, columns = token_grid(height, width, factor)
    return math.sqrt(rows * columns)


def paper_levels(factors: list, height: int, width: int) -> tuple:
    """The decoder levels (indices into `factors`, each level's downsampling factor, finest
    first) whose token grids are nearest, on a log scale, to the paper's 64 and 32 a side."""
    sides = [grid_side(height, width, factor) for factor in factors]
    return tuple(sorted({min(range(len(sides)), key=lambda level: abs(math.log2(sides[level] / target)))
                         for target in PAPER_GRIDS}))
