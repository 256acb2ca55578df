"""Image-quality and editing metrics (PSNR, SSIM, IoU, edit locality)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB for tensors in [-1, 1] (data_range 2): (B,)."""
    mse = (x.float().clamp(-1, 1) - y.float().clamp(-1, 1)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse.clamp_min(1e-12))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5, on each channel, averaged): (B,)."""
    x, y = x.float().clamp(-1, 1), y.float().clamp(-1, 1)
    c = x.shape[1]
    g = torch.arange(window, dtype=torch.float32, device=x.device) - (window - 1) / 2
    g = torch.exp(-g ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(c, 1, window, window)
    f = lambda t: F.conv2d(t, k, groups=c)
    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def edit_locality(edited: torch.Tensor, base: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5):
    """Mean absolute change outside the ROI divided by inside (lower = more local), and the inside change.

    edited, base: (B, 3, H, W); mask (B, 1, H, W). Returns (ratio (B,), inside (B,), outside (B,))."""
    d = (edited.float() - base.float()).abs().mean(1, keepdim=True)
    inside = mask > threshold
    din = (d * inside).flatten(1).sum(1) / inside.flatten(1).sum(1).clamp_min(1)
    dout = (d * ~inside).flatten(1).sum(1) / (~inside).flatten(1).sum(1).clamp_min(1)
    return dout / din.clamp_min(1e-8), din, dout


def iou_counts(pred: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor, threshold: float = 0.5):
    """Per-channel intersection and union pixel counts over a batch, for accumulating IoU across batches.

    pred, target: (B, C, H, W) soft masks; labelled: (B, C) which target channels are known. Returns two (C,)
    numpy arrays."""
    p, t, k = pred > threshold, target > 0.5, labelled[:, :, None, None]
    return ((p & t) & k).flatten(2).sum((0, 2)).numpy(), ((p | t) & k).flatten(2).sum((0, 2)).numpy()
