"""Reference (CPU, PyTorch) implementation of the fused masked modulated convolution.

This is the math of SSAE's mask-guided style modulation (the paper's Eq. 1) at one generator layer, written
once; the CUDA kernel (`masked_modconv.cu`), the TensorRT plugin and the ONNX standard-op decomposition all
implement exactly this function.

For a StyledConv with constant filter-normalised weights W_hat (SAE's demodulation does not depend on the style),
the texture code S is made spatial: S'(p) = S + strength * n(p) * m(p). The layer's affine A (weight A_W, bias
A_b) is linear, so its style becomes

    a'(p) = A(S'(p)) = a + strength * m(p) * d(p),   a = A(S),  d(p) = A_W n(p)

followed by per-pixel RMS normalisation over the Cin input channels:

    s(p) = a'(p) / sqrt(mean_c a'(p)^2 + eps)
    y    = act(conv(x * s, W_hat) + w_n * xi + b)

Noise modes:
- region: one n ~ N(0, I) per edit, so d is one Cin vector, and the RMS is closed-form from three scalars:
  rms^2(p) = mean(a^2) + 2 t mean(a d) + t^2 mean(d^2),  t = strength * m(p).
  The style map never needs to exist in memory.
- pixel: n(p) independent per pixel (the literal Eq. 1). A_W n(p) is Gaussian with covariance A_W A_W^T, so it is
  drawn as d(p) = L z(p) with z(p) ~ N(0, I_Cin) and L L^T = A_W A_W^T (`pixel_noise_factor`): same distribution,
  Cin instead of style_dim random numbers per pixel. z comes from the counter-based generator in `philox.py`.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

EPS = 1e-8
SQRT2 = math.sqrt(2.0)

#: A fast implementation of region-mode `masked_modconv` that the generator's injection layer calls instead of the
#: reference (same arguments as the custom op `torch.ops.ssae.masked_modconv`), per thread; None: the reference.
#: `ssae.kernels.ops.use_fused_op` installs the custom op here, so the core models never import the kernels.
_route = threading.local()


def routed_op() -> Callable | None:
    """The fast injection op installed for this thread (`route_to`), or None."""
    return getattr(_route, "op", None)


@contextlib.contextmanager
def route_to(op: Callable | None) -> Iterator[None]:
    """Within the block, region-mode injection layers of this thread call `op` instead of the reference."""
    prev = routed_op()
    _route.op = op
    try:
        yield
    finally:
        _route.op = prev


def lrelu_bias(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The fused leaky ReLU of StyleGAN2/SAE: leaky_relu(x + b, 0.2) * sqrt(2) (b per channel, dim 1)."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.dim() - 2)))
    return F.leaky_relu(x, 0.2) * SQRT2


def region_rms_terms(a: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three per-sample scalars of the closed-form RMS: mean(a^2), mean(a*d), mean(d^2), each (B,)."""
    return (a * a).mean(1), (a * d).mean(1), (d * d).mean(1)


def region_inv_rms(a: torch.Tensor, d: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """1 / rms(a + t d) per pixel, closed form. a, d: (B, Cin); t = strength * mask: (B, 1, H, W)."""
    aa, ad, dd = (v[:, None, None, None] for v in region_rms_terms(a, d))
    return torch.rsqrt(aa + 2.0 * t * ad + t * t * dd + EPS)


def style_map(a: torch.Tensor, d: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Explicit normalised style map s(p) (B, Cin, H, W). d: (B, Cin) (region) or (B, Cin, H, W) (pixel)."""
    if d.dim() == 2:
        d = d[:, :, None, None]
    s = a[:, :, None, None] + t * d
    return s * torch.rsqrt(s.pow(2).mean(1, keepdim=True) + EPS)


def modulate_input(x: torch.Tensor, a: torch.Tensor, t: torch.Tensor, direction: torch.Tensor | None = None,
                   pixel_direction: torch.Tensor | None = None) -> torch.Tensor:
    """x * s(p): the modulated conv input, without materialising the style map in region mode.

    Exactly one of `direction` (region, (B, Cin)) and `pixel_direction` (pixel, (B, Cin, H, W)) is given.
    With t == 0 everywhere this equals x * rmsnorm(a), the unedited layer.
    """
    if pixel_direction is not None:
        return x * style_map(a, pixel_direction, t)
    assert direction is not None
    r = region_inv_rms(a, direction, t)
    return (x * a[:, :, None, None] + (t * x) * direction[:, :, None, None]) * r


def pixel_noise_factor(affine_weight: torch.Tensor) -> torch.Tensor:
    """L (Cin x Cin, lower triangular) with L L^T = A_W A_W^T for the scaled affine weight A_W (Cin x style_dim)."""
    cov = affine_weight.double() @ affine_weight.double().T
    try:
        lf = torch.linalg.cholesky(cov)
    except RuntimeError:  # rank-deficient (Cin > style_dim): symmetric square root instead
        evals, evecs = torch.linalg.eigh(cov)
        lf = evecs * evals.clamp_min(0).sqrt()[None, :]
    return lf.to(affine_weight.dtype)


def pixel_direction_from_noise(z: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """d(p) = L z(p): z (B, H, W, Cin) -> (B, Cin, H, W)."""
    return torch.einsum("bhwc,dc->bdhw", z, factor)


def masked_modconv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor,
                   mask: torch.Tensor, strength: torch.Tensor, *, direction: torch.Tensor | None = None,
                   pixel_noise: torch.Tensor | None = None, pixel_factor: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None, noise_weight: torch.Tensor | float = 0.0,
                   activate: bool = True) -> torch.Tensor:
    """The fused operation, reference implementation.

    Args:
        x: (B, Cin, H, W) activations entering the layer.
        weight: (Cout, Cin, k, k) constant filter-normalised weights W_hat (odd k, stride 1, zero pad k//2).
        bias: (Cout,) activation bias b.
        a: (B, Cin) base style A(S).
        mask: (B, 1, H, W) soft ROI mask in [0, 1] at the layer's resolution.
        strength: (B,) edit strength.
        direction: region mode, (B, Cin) d = A_W n.
        pixel_noise, pixel_factor: pixel mode, z (B, H, W, Cin) and L (Cin, Cin).
        noise, noise_weight: noise-injection term xi (B or 1, 1, H, W) and its scalar weight w_n.
        activate: apply the fused leaky ReLU (x + b) -> lrelu(0.2) * sqrt(2); else just add b.
    Returns:
        (B, Cout, H, W).
    """
    t = strength.to(x.dtype).view(-1, 1, 1, 1) * mask
    pix = None if pixel_noise is None else pixel_direction_from_noise(pixel_noise, pixel_factor)
    xm = modulate_input(x, a, t, direction=direction, pixel_direction=pix)
    y = F.conv2d(xm, weight, padding=weight.shape[-1] // 2)
    if noise is not None:
        y = y + noise_weight * noise
    if activate:
        return lrelu_bias(y, bias)
    return y if bias is None else y + bias.view(1, -1, 1, 1)
