"""The injection layer on a sparse set of output tiles (Winograd F(m x m, 3 x 3)): the CPU cached re-edit.

A re-edit changes the generator's local tail (`Generator.tail_is_local`: the injection conv, the skip merge and the
1x1 ToRGB) only where the 3x3 conv sees the mask: the mask dilated by one pixel. For hair that is a small part of
the frame, while its bounding box (what a windowed re-edit computes) is most of it. This module computes
the masked modulated conv (`ssae.models.injection.masked_modconv`, region noise) only on the m x m output tiles
that touch the dilated mask, with Winograd's minimal filtering: per tile, (m + 2)^2 products of Cin x Cout
matrices instead of 9 m^2 (4x fewer multiplies for m = 4, 2.25x for m = 2). Everything is gathers and matrix
products, which ONNX Runtime's CPU kernels run at GEMM speed.

Two implementations side by side (the layout of NVlabs/stylegan2-ada-pytorch `torch_utils/ops`):
- `sparse_masked_modconv_reference`: the direct 3x3 form on the same gathered patches (no Winograd);
- `sparse_masked_modconv`: the Winograd form (what `export.stages.DecoderEditSparseStage` exports);
both are checked against the dense reference conv in tests/test_sparse_tail.py.

The tiles and the row tables they index are planned on the host by `ssae.kernels.tile_plan`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ssae.models.injection import EPS, region_rms_terms
from .tile_plan import TILES, TilePlan, changed_pixels, plan_tiles, scatter_rows, to_rows  # noqa: F401 (re-exported)


def winograd_matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T (k, k), G (k, 3), A^T (m, k)) of F(m, 3), k = m + 2, in float64: y = A^T [(G g) * (B^T d)]."""
    if m == 2:
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    elif m == 4:
        bt = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
              [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
        g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
             [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    else:
        raise ValueError(f"no Winograd matrices for output tile {m} (choose from {TILES})")
    return np.array(bt, np.float64), np.array(g, np.float64), np.array(at, np.float64)


def transform_2d(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 2-D transforms as matrices on row-major flattened tiles (float32):
    input (k^2, k^2) = B^T (x) B^T, filter (k^2, 9) = G (x) G, output (m^2, k^2) = A^T (x) A^T."""
    bt, g, at = winograd_matrices(m)
    return tuple(torch.from_numpy(np.kron(a, a)).float() for a in (bt, g, at))


def transform_weight(weight: torch.Tensor, m: int) -> torch.Tensor:
    """U = G W G^T for every filter: (Cout, Cin, 3, 3) -> (k^2, Cin, Cout), computed in float64."""
    if tuple(weight.shape[-2:]) != (3, 3):
        raise ValueError(f"Winograd F(m, 3) needs 3x3 filters, got {tuple(weight.shape[-2:])}")
    _, gg, _ = (torch.from_numpy(np.kron(a, a)).to(weight.device) for a in winograd_matrices(m))
    w = weight.detach().double().flatten(2)                # (Cout, Cin, 9)
    return torch.einsum("fk,oik->fio", gg, w).float().contiguous()


# ---------------------------------------------------------------------------------------------------------------
# The op: reference (direct 3x3 on the gathered patches) and fast (Winograd) paths


def _modulated_patches(rows: torch.Tensor, mask_rows: torch.Tensor, patch_idx: torch.Tensor, a: torch.Tensor,
                       direction: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """x(p) * s(p) for every tap of every tile: (k^2, N, Cin). s(p) = rmsnorm(a + t(p) d), t = strength * mask
    (the closed-form RMS of `ssae.models.injection.region_inv_rms`)."""
    k2, n = patch_idx.shape[0], patch_idx.shape[1]
    flat = patch_idx.reshape(-1)
    x = torch.index_select(rows, 0, flat).reshape(k2, n, rows.shape[1])
    t = torch.index_select(mask_rows, 0, flat).reshape(k2, n, 1) * strength.reshape(1, 1, 1)
    aa, ad, dd = region_rms_terms(a, direction)
    r = torch.rsqrt(aa + 2.0 * t * ad + t * t * dd + EPS)
    return x * (r * a.reshape(1, 1, -1) + (r * t) * direction.reshape(1, 1, -1))


def sparse_masked_modconv_reference(rows: torch.Tensor, mask_rows: torch.Tensor, patch_idx: torch.Tensor,
                                    weight: torch.Tensor, a: torch.Tensor, direction: torch.Tensor,
                                    strength: torch.Tensor) -> torch.Tensor:
    """conv3x3(x * s, W) at every output pixel of the plan's tiles, directly: (m^2, N, Cout).

    rows (R, Cin), mask_rows (R, 1): row tables; patch_idx (k^2, N); weight (Cout, Cin, 3, 3); a, direction (1, Cin);
    strength (1,)."""
    k = math.isqrt(patch_idx.shape[0])
    m = k - 2
    xm = _modulated_patches(rows, mask_rows, patch_idx, a, direction, strength)     # (k^2, N, Cin)
    xm = xm.reshape(k, k, xm.shape[1], xm.shape[2])
    out = []
    for oy in range(m):
        for ox in range(m):
            taps = xm[oy: oy + 3, ox: ox + 3].reshape(9, xm.shape[2], xm.shape[3])  # (9, N, Cin)
            out.append(torch.einsum("knc,ock->no", taps, weight.flatten(2)))
    return torch.stack(out)


def sparse_masked_modconv(rows: torch.Tensor, mask_rows: torch.Tensor, patch_idx: torch.Tensor,
                          u: torch.Tensor, a: torch.Tensor, direction: torch.Tensor, strength: torch.Tensor,
                          bt2: torch.Tensor, at2: torch.Tensor) -> torch.Tensor:
    """The same as `sparse_masked_modconv_reference` with Winograd F(m, 3): (m^2, N, Cout).

    u: `transform_weight(weight, m)` (k^2, Cin, Cout); bt2, at2: the input and output transforms of `transform_2d`."""
    xm = _modulated_patches(rows, mask_rows, patch_idx, a, direction, strength)     # (k^2, N, Cin)
    k2, n, cin = xm.shape
    v = (bt2 @ xm.reshape(k2, n * cin)).reshape(k2, n, cin)                          # B^T d B per tile
    mm = torch.matmul(v, u)                                                          # (k^2, N, Cout)
    cout = mm.shape[2]
    return (at2 @ mm.reshape(k2, n * cout)).reshape(at2.shape[0], n, cout)          # A^T M A per tile


def finish_rows(y: torch.Tensor, bias: torch.Tensor, noise_rows: torch.Tensor | None,
                noise_weight: torch.Tensor | None, activate: bool = True) -> torch.Tensor:
    """act(y + w_n * xi + b) for per-tile outputs (m^2, N, Cout) (`ssae.models.injection.lrelu_bias`, channels last)."""
    if noise_rows is not None:
        y = y + noise_weight * noise_rows
    y = y + bias.reshape(1, 1, -1)
    return F.leaky_relu(y, 0.2) * math.sqrt(2.0) if activate else y
