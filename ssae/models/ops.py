"""Small tensor operations shared by the SAE formulations (official-direct and export-friendly)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .injection import SQRT2, lrelu_bias  # noqa: F401  (one definition, shared with the kernels)


def blur_kernel_2d(taps: list[int] | tuple[int, ...], gain: float = 1.0) -> torch.Tensor:
    """Separable blur kernel outer(k, k) / sum, times `gain` (the official `make_kernel`)."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum() * gain


def l2_normalize(v: torch.Tensor) -> torch.Tensor:
    """Official util.normalize: unit L2 norm along dim 1 (per pixel for 4-D inputs)."""
    return v * torch.rsqrt(torch.sum(v * v, dim=1, keepdim=True) + 1e-8)


def rms_normalize(s: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """RMS normalisation over `dim` (SAE's style 'demodulation' with new_demodulation=True)."""
    return s * torch.rsqrt(torch.mean(s * s, dim=dim, keepdim=True) + 1e-8)


def blur2d(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """upfirdn2d with up=down=1: zero-pad (pad0, pad1) on both axes, then true 2-D convolution, per channel."""
    c = x.shape[1]
    k = torch.flip(kernel, (0, 1)).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    p0, p1 = pad
    if p0 < 0 or p1 < 0:
        h, w = x.shape[-2:]
        x = x[..., max(-p0, 0): h - max(-p1, 0), max(-p0, 0): w - max(-p1, 0)]
    x = F.pad(x, (max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)))
    return F.conv2d(x, k, groups=c)


def blur2d_native(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """`blur2d` the way the official code computes it on a CPU (`upfirdn2d_native`, up = down = 1): the B x C
    channels as B * C single-channel images, zero-padded (negative pads crop), one single-channel conv2d with the
    flipped kernel. Same result as `blur2d`; the speed baseline of the official implementation."""
    b, c, h, w = x.shape
    p0, p1 = pad
    y = F.pad(x.reshape(b * c, 1, h, w), (max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)))
    y = y[:, :, max(-p0, 0): y.shape[2] - max(-p1, 0), max(-p0, 0): y.shape[3] - max(-p1, 0)]
    out = F.conv2d(y, torch.flip(kernel, (0, 1)).to(y.dtype)[None, None])
    return out.reshape(b, c, out.shape[-2], out.shape[-1])


def full_conv_kernels(w: torch.Tensor, blur: torch.Tensor) -> torch.Tensor:
    """Full 2-D convolution of every (o, i) filter in `w` (O, I, k, k) with `blur` (b, b): (O, I, k+b-1, k+b-1)."""
    o, i, k, _ = w.shape
    b = blur.shape[0]
    x = w.reshape(o * i, 1, k, k)
    x = F.pad(x, (b - 1, b - 1, b - 1, b - 1))
    out = F.conv2d(x, torch.flip(blur, (0, 1)).to(w.dtype)[None, None])
    return out.reshape(o, i, k + b - 1, k + b - 1)


def subpixel_kernels(w: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """A stride-2 transposed conv as a stride-1 conv + pixel shuffle (sub-pixel convolution).

    w: transposed-conv weight (Cin, Cout, k, k). Output pixel 2m + p (phase p) sums x[m - j] * w[2j + p] over the
    taps j in range, so each phase is a small correlation on the input grid. Returns the conv weight
    (4 * Cout, Cin, J, J) with output channel (py * 2 + px) * Cout + co (phase-major: the order of
    `pixel_shuffle_nhwc`) and the (before, after) padding of the input (same on both axes)."""
    cin, cout, k, _ = w.shape
    js = [j for ph in (0, 1) for j in range(-k, k + 1) if 0 <= 2 * j + ph < k]
    jmin, jmax = min(js), max(js)
    size = jmax - jmin + 1
    out = w.new_zeros(2, 2, cout, cin, size, size)
    for py in (0, 1):
        for px in (0, 1):
            for u in range(size):
                ty = 2 * (jmax - u) + py
                if not 0 <= ty < k:
                    continue
                for v in range(size):
                    tx = 2 * (jmax - v) + px
                    if 0 <= tx < k:
                        out[py, px, :, :, u, v] = w[:, :, ty, tx].T
    return out.reshape(cout * 4, cin, size, size), (jmax, -jmin)


def pixel_shuffle_nhwc(y: torch.Tensor) -> torch.Tensor:
    """Pixel shuffle by 2 of phase-major channels: (B, 4C, H, W) with channel (py * 2 + px) * C + c ->
    (B, C, 2H, 2W), written channels-last (to NHWC, split the channels into (py, px, C), swap px with W, back to
    NCHW). Runtimes that run quantized convs channels-last (ONNX Runtime's CPU provider) cancel the outer
    transposes against their own layout transposes, and the middle one moves whole runs of 2C contiguous values:
    a near-free shuffle where `pixel_shuffle` (DepthToSpace) is a strided copy between two layout transposes
    (ONNX Runtime's profile of the bundled model's int8 decoder prefix: from a fifth of its time to a few
    percent). Same values as `F.pixel_shuffle` of the channel-major order."""
    c, h, w = y.shape[1] // 4, y.shape[2], y.shape[3]
    t = y.permute(0, 2, 3, 1).reshape(-1, h, w, 2, 2 * c)        # (B, H, W, py, (px, C))
    t = t.permute(0, 1, 3, 2, 4).reshape(-1, 2 * h, 2 * w, c)     # (B, H, py, W, (px, C)) -> (B, 2H, 2W, C)
    return t.permute(0, 3, 1, 2)


def upsample_pad(kernel_size: int, blur_taps: int) -> tuple[int, int]:
    """The (pad0, pad1) of the official blur that follows a stride-2 transposed conv."""
    factor = 2
    p = (blur_taps - factor) - (kernel_size - 1)
    return (p + 1) // 2 + factor - 1, p // 2 + 1


def downsample_pad(kernel_size: int, blur_taps: int, pad: int | None = None) -> tuple[int, int]:
    """The (pad0, pad1) of the official blur that precedes a stride-2 conv."""
    if pad is None:
        pad = (blur_taps - 2) + (kernel_size - 1)
    return (pad + 1) // 2, pad // 2
