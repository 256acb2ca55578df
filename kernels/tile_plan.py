"""Tile plans of the sparse re-edit (host side, numpy only: the runtime plans without PyTorch).

Data layout ("rows"): an activation map (C, H, W) of the full image is stored pixel-major as an (H * W + 1, C)
table whose last row is zero; a gather index equal to H * W therefore reads the conv's zero padding. A `TilePlan`
holds, for N tiles, the (m + 2)^2 patch row indices of each tile and the m^2 output pixel indices. The op that
runs on a plan is `ssae.kernels.sparse_tail`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Output tile sizes with Winograd matrices here. F(4, 3) uses the interpolation points 0, +-1, +-2 (Lavin & Gray
#: 2016); its float32 error on this layer is ~1e-6 relative (tests/test_sparse_tail.py).
TILES = (2, 4)


@dataclass(frozen=True)
class TilePlan:
    """The tiles of an (H, W) output touching a mask: N tiles of m x m pixels."""

    tile: int
    size: tuple[int, int]
    patch_idx: np.ndarray   # (k^2, N) int64: rows of the (H * W + 1)-row table, tap-major; H * W = zero padding
    out_idx: np.ndarray     # (m^2, N) int64: output pixel index y * W + x of each tile's pixels

    @property
    def n_tiles(self) -> int:
        return int(self.patch_idx.shape[1])

    @property
    def pixels(self) -> int:
        return self.n_tiles * self.tile * self.tile


def changed_pixels(mask: np.ndarray) -> np.ndarray:
    """Boolean (H, W): the pixels a 3x3 conv of a mask-modulated input can change (mask > 0 dilated by 1)."""
    nz = np.asarray(mask) > 0
    p = np.pad(nz, 1)
    h, w = nz.shape
    out = np.zeros_like(nz)
    for dy in range(3):
        for dx in range(3):
            out |= p[dy: dy + h, dx: dx + w]
    return out


def plan_tiles(mask: np.ndarray, tile: int = 4) -> TilePlan:
    """The tiles touching `mask` (H, W) dilated by one pixel. H and W must be multiples of `tile`."""
    if tile not in TILES:
        raise ValueError(f"tile must be one of {TILES}, got {tile}")
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    h, w = mask.shape
    if h % tile or w % tile:
        raise ValueError(f"image size {h}x{w} is not a multiple of the tile size {tile}")
    th, tw = h // tile, w // tile
    hit = changed_pixels(mask).reshape(th, tile, tw, tile).any(axis=(1, 3))
    ty, tx = np.nonzero(hit)
    k = tile + 2
    # patch taps: rows y0 - 1 .. y0 + tile, cols x0 - 1 .. x0 + tile; outside the image -> the zero row
    py = (ty * tile - 1)[None, :] + np.repeat(np.arange(k), k)[:, None]          # (k^2, N)
    px = (tx * tile - 1)[None, :] + np.tile(np.arange(k), k)[:, None]
    inside = (py >= 0) & (py < h) & (px >= 0) & (px < w)
    patch = np.where(inside, py * w + px, h * w).astype(np.int64)
    oy = (ty * tile)[None, :] + np.repeat(np.arange(tile), tile)[:, None]       # (m^2, N)
    ox = (tx * tile)[None, :] + np.tile(np.arange(tile), tile)[:, None]
    return TilePlan(tile, (h, w), patch, (oy * w + ox).astype(np.int64))


def to_rows(x: np.ndarray) -> np.ndarray:
    """(1, C, H, W) or (C, H, W) -> the (H * W + 1, C) float32 row table (last row zero)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError("to_rows takes one image")
        x = x[0]
    c = x.shape[0]
    rows = np.zeros((x.shape[1] * x.shape[2] + 1, c), np.float32)
    rows[:-1] = x.reshape(c, -1).T
    return rows


def scatter_rows(image: np.ndarray, values: np.ndarray, out_idx: np.ndarray) -> None:
    """Write per-tile outputs (m^2, N, C) into `image` (1, C, H, W) in place at the plan's pixels."""
    c = image.shape[1]
    flat = image.reshape(c, -1)
    flat[:, out_idx.reshape(-1)] = values.reshape(-1, c).T
