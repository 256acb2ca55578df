"""The framing of `ssae.face.framing` on a torch device: the crop cut from a photo and the edit's change pasted
back, for chains that run on a GPU (`ssae.runtime.torch_chain`), so that an edit of a photo copies only the photo's
region under the crop in, and the edited pixels out.

Each op here is the device path of a host op in `framing.py` (the reference), and `tests/test_framing.py` compares
them:
- `cut` is `FaceCrop.cut_rgb`, bit for bit: the same plan (`FaceCrop.cut_plan`), PIL's 8-bit BOX passes (its
  fixed-point coefficients and rounding, horizontal then vertical) and PIL's AFFINE bicubic warp (cubic convolution
  with a = -1, taps clamped to the edge, truncated to 8 bits), computed in float64.
- `feather` is `framing.feather`.
- `paste_change` is `FaceCrop.paste_change`, sampled exactly: bilinear at every photo pixel, in float32 (the host
  path warps large photos in two steps and carries the change as 8-bit codes, to stay fast on a CPU). The soft mask
  is taken in 8-bit levels as on the host, so every photo pixel where it is 0 keeps the photo's value, bit for bit.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .framing import FaceCrop, gaussian_kernel


@dataclass
class DevicePhoto:
    """The part of a photo a crop reads (its cut region), resident on a device: uint8 (h, w, 3) whose pixel (0, 0)
    is the photo's (x0, y0). `key` names the photo and crop it was uploaded for."""

    pixels: torch.Tensor
    x0: int
    y0: int
    key: str = ""

    @classmethod
    def upload(cls, rgb: np.ndarray, crop: FaceCrop, device: torch.device, key: str = "") -> "DevicePhoto":
        """Copy the photo region under `crop` (its cut region, which also covers everything a paste writes) to
        `device`."""
        x0, y0, x1, y1 = crop.cut_plan().region
        staging = torch.empty((y1 - y0, x1 - x0, 3), dtype=torch.uint8, pin_memory=device.type == "cuda")
        staging.numpy()[...] = rgb[y0:y1, x0:x1]   # one host copy (page-locked for an asynchronous upload)
        return cls(staging.to(device, non_blocking=True), x0, y0, key)

    def covers(self, box: tuple[int, int, int, int]) -> bool:
        x0, y0, x1, y1 = box
        h, w = self.pixels.shape[:2]
        return x0 >= self.x0 and y0 >= self.y0 and x1 <= self.x0 + w and y1 <= self.y0 + h


# ---------------------------------------------------------------------------------------------- photo -> crop
#: PIL's fixed-point precision for 8-bit resampling (`PRECISION_BITS` in Resample.c).
_PRECISION_BITS = 22


@functools.lru_cache(maxsize=16)
def box_weights(in_size: int, out_size: int) -> np.ndarray:
    """PIL's BOX resize of 8-bit images along one axis: the (out_size, in_size) matrix of its fixed-point
    coefficients (integers in float64; output pixel i averages the input pixels whose centres fall in its
    footprint: `precompute_coeffs` with the box filter, then `normalize_coeffs_8bpc`)."""
    scale = in_size / out_size
    support = 0.5 * max(scale, 1.0)
    k = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        x = (np.arange(lo, hi) - centre + 0.5) / max(scale, 1.0)
        w = ((x > -0.5) & (x <= 0.5)).astype(np.float64)
        if w.sum():
            w /= w.sum()
        k[i, lo:hi] = np.floor(0.5 + w * (1 << _PRECISION_BITS))
    k.flags.writeable = False  # cached: shared by every caller
    return k


#: Rows per step of the horizontal pass: float64 copies of at most this many photo rows exist at a time.
_ROWS_PER_STEP = 256


def _box_pass(k: np.ndarray, x: torch.Tensor, axis: int) -> torch.Tensor:
    """One 8-bit BOX pass of (3, h, w) integer levels (uint8 or float64) along `axis` (2: horizontal, in steps of
    `_ROWS_PER_STEP` rows; 1: vertical) with PIL's integer arithmetic, exact in float64 (every partial sum stays
    below 2^31): float64 (3, h, out) or (3, out, w)."""
    k = torch.from_numpy(np.array(k)).to(x.device)

    def levels(y):
        return torch.floor((y + (1 << (_PRECISION_BITS - 1))) / (1 << _PRECISION_BITS)).clamp_(0, 255)

    if axis == 1:
        return levels(k @ x.to(torch.float64))
    return torch.cat([levels(x[:, r: r + _ROWS_PER_STEP].to(torch.float64) @ k.T)
                      for r in range(0, x.shape[1], _ROWS_PER_STEP)], 1)


def _cubic(v1, v2, v3, v4, d):
    """PIL's AFFINE bicubic along one axis (cubic convolution, a = -1), in PIL's order of operations."""
    p2 = v3 - v1
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def cut(photo: DevicePhoto, crop: FaceCrop) -> torch.Tensor:
    """`FaceCrop.cut_rgb` followed by `ssae.data.transforms.to_model_array`, on the photo's device: float32
    (1, 3, size, size) in [-1, 1]."""
    plan = crop.cut_plan()
    dev = photo.pixels.device
    x = photo.pixels.permute(2, 0, 1)                                          # (3, h, w) uint8
    rw, rh = plan.reduced
    if rw != x.shape[2]:
        x = _box_pass(box_weights(x.shape[2], rw), x, 2)
    if rh != x.shape[1]:
        x = _box_pass(box_weights(x.shape[1], rh), x, 1)
    x = x.to(torch.float64)
    pl, pt, pr, pb = plan.pad
    wp, hp = rw + pl + pr, rh + pt + pb                                        # the padded image PIL samples
    a, b, c, d, e, f = plan.affine
    s = crop.size
    u = torch.arange(s, dtype=torch.float64, device=dev) + 0.5
    xin = a * u[None, :] + b * u[:, None] + c                                  # (s, s): row v, column u
    yin = d * u[None, :] + e * u[:, None] + f
    inside = (xin >= 0) & (xin < wp) & (yin >= 0) & (yin < hp)
    xin, yin = xin - 0.5, yin - 0.5
    xf, yf = torch.floor(xin), torch.floor(yin)
    dx, dy = xin - xf, yin - yf
    taps = torch.arange(-1, 3, device=dev)
    # padded index -> region index: the edge padding is a clamp
    ix = (xf.long()[..., None] + taps - pl).clamp_(0, rw - 1)                 # (s, s, 4)
    iy = (yf.long()[..., None] + taps - pt).clamp_(0, rh - 1)
    g = x[:, iy[..., :, None], ix[..., None, :]]                               # (3, s, s, 4 rows, 4 columns)
    rows = _cubic(g[..., 0], g[..., 1], g[..., 2], g[..., 3], dx[..., None])  # (3, s, s, 4)
    v = _cubic(rows[..., 0], rows[..., 1], rows[..., 2], rows[..., 3], dy)
    v = torch.where(inside, torch.trunc(v.clamp(0, 255)), torch.zeros((), dtype=v.dtype, device=dev))
    return (v.to(torch.float32) / 127.5 - 1.0)[None]


# ---------------------------------------------------------------------------------------------- crop -> photo
def feather(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """`framing.feather` of a (size, size) float mask on its device."""
    m = mask.float().clamp(0, 1)
    if radius <= 0:
        return m
    k = torch.from_numpy(gaussian_kernel(radius)).to(m.device)
    r = len(k) // 2
    blur = F.conv2d(m[None, None], k.view(1, 1, -1, 1), padding=(r, 0))
    blur = F.conv2d(blur, k.view(1, 1, 1, -1), padding=(0, r))[0, 0]
    soft = torch.maximum(blur, m)
    return torch.where(soft < 0.5 / 255, torch.zeros_like(soft), soft)


def paste_change(photo: DevicePhoto, crop: FaceCrop, change: torch.Tensor, soft: torch.Tensor,
                 box: tuple[int, int, int, int]) -> torch.Tensor:
    """The photo's pixels in `box` (x0, y0, x1, y1; inside the uploaded region) with a crop-resolution change
    added under a soft crop mask: round(photo + w * change), clipped to [0, 255], where w is the soft mask sampled
    at each photo pixel in 8-bit levels. change: float (3, size, size) in 8-bit levels; soft: float (size, size) in
    [0, 1]. uint8 (y1 - y0, x1 - x0, 3) on the photo's device; exactly the photo where w is 0."""
    if not photo.covers(box):
        raise ValueError(f"box {box} lies outside the photo region on the device")
    x0, y0, x1, y1 = box
    dev, s = photo.pixels.device, crop.size
    xs = torch.arange(x0, x1, dtype=torch.float64, device=dev) + 0.5 - crop.tx
    ys = torch.arange(y0, y1, dtype=torch.float64, device=dev) + 0.5 - crop.ty
    det = crop.a ** 2 + crop.b ** 2
    u = (crop.a * xs[None, :] + crop.b * ys[:, None]) / det                    # crop coordinates of each pixel centre
    v = (-crop.b * xs[None, :] + crop.a * ys[:, None]) / det
    grid = torch.stack([u * (2.0 / s) - 1.0, v * (2.0 / s) - 1.0], -1).to(torch.float32)[None]
    planes = torch.cat([change.float(), soft.float()[None]], 0)[None]         # (1, 4, s, s)
    warped = F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    w = torch.round(warped[3].clamp(0, 1) * 255.0) / 255.0                     # 8-bit levels: 0 below half a level
    patch = photo.pixels[y0 - photo.y0: y1 - photo.y0, x0 - photo.x0: x1 - photo.x0].permute(2, 0, 1).float()
    out = torch.round(patch + warped[:3] * w).clamp_(0, 255)
    return out.to(torch.uint8).permute(1, 2, 0).contiguous()
