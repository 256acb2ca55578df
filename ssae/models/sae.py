"""Swapping Autoencoder (Park et al. 2020) in an export-friendly form, with SSAE's mask-guided style modulation.

Mathematically identical to the official networks (`ssae.models.official`), rewritten so that every conv has a
constant weight and the batch size stays dynamic (sae_architecture.md section 5):
- SAE's demodulation does not depend on the style, so each StyledConv is conv(x * rmsnorm(A(S)), W_hat) with
  W_hat the L2-normalised filters: modulation acts on activations, no per-sample weights, no `groups=B`.
- The upsampling convs are a constant 3x3 stride-2 transposed conv, then the [1,3,3,1] blur as a constant
  depthwise conv (or, for INT8 runtimes, the same math as ordinary convs + pixel shuffle: `ModConv.up_mode`).
- The encoder's blur + stride-2 conv is one 5x5 stride-2 conv (skip: 3x3).
Parameters are stored in the official (equalised learning rate) parametrisation so training behaves as in SAE;
`freeze()` caches the folded constant kernels for inference and export.

SSAE (Tomar et al. 2023, Eq. 1): at the injection layers the texture code becomes spatial,
S'(p) = S + strength * n(p) * M(p); see `ssae.models.injection` for the math.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import SAEConfig
from .. import philox
from .injection import masked_modconv, modulate_input, pixel_direction_from_noise, pixel_noise_factor, routed_op
from .ops import SQRT2, blur2d, blur_kernel_2d, downsample_pad, full_conv_kernels, l2_normalize, lrelu_bias, \
    pixel_shuffle_nhwc, rms_normalize, subpixel_kernels, upsample_pad

NoiseSpec = Union[None, int, str, Sequence[Union[torch.Tensor, None]]]
#: How upsampling convs run (ModConv.up_mode): the same math in two layouts.
UPSAMPLE_MODES = ("separate", "subpixel")


# ----------------------------------------------------------------------------------------------------------------
# Building blocks


class FoldedConv(nn.Module):
    """Equalised-lr conv with optional pre-padding and a blur folded into the kernel (blur -> stride-2 conv).

    `pad` is (left, right, top, bottom) applied with `pad_mode` before the conv; `blur` taps, if given, are
    convolved into the weight (the official Blur + Conv pair becomes one conv).

    Frozen (`freeze`), the activation's sqrt(2) gain and `out_gain` are folded into the constant weight and bias:
    one Conv with its bias, then a plain leaky ReLU (see `ModConv.out_gain`). The output is `out_gain` times the
    layer's (1 unless a residual block sets it).
    """

    def __init__(self, cin: int, cout: int, k: int, *, stride: int = 1, pad=(0, 0, 0, 0), pad_mode: str = "constant",
                 blur: Sequence[int] | None = None, act: bool = True, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.scale = 1.0 / math.sqrt(cin * k * k)
        self.stride, self.pad, self.pad_mode, self.act = stride, tuple(pad), pad_mode, act
        if blur is not None and len(blur) > 1:
            self.register_buffer("blur", blur_kernel_2d(blur), persistent=False)
        else:
            self.blur = None
        self.register_buffer("w_fold", None, persistent=False)
        self.register_buffer("b_fold", None, persistent=False)
        self.out_gain = 1.0

    def folded_weight(self) -> torch.Tensor:
        w = self.weight * self.scale
        return w if self.blur is None else full_conv_kernels(w, self.blur)

    def freeze(self, on: bool = True) -> None:
        g = self.out_gain * (SQRT2 if self.act else 1.0)
        self.w_fold = (self.folded_weight() * g).detach() if on else None
        self.b_fold = None if not on or self.bias is None else (self.bias * g).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad, mode=self.pad_mode)
        if self.w_fold is not None:
            y = F.conv2d(x, self.w_fold, self.b_fold, stride=self.stride)
            return F.leaky_relu(y, 0.2) if self.act else y
        y = F.conv2d(x, self.folded_weight(), None if self.act else self.bias, stride=self.stride)
        return lrelu_bias(y, self.bias) if self.act else y


class ModConv(nn.Module):
    """A StyledConv (ModulatedConv2d + NoiseInjection + FusedLeakyReLU) or the ToRGB conv, export-friendly.

    y = act(conv(x * s, W_hat) + w_n * noise + b), s = rmsnorm(A(S)) (ToRGB: s = A(S), W_hat = W / sqrt(fan_in)).
    """

    def __init__(self, cin: int, cout: int, k: int, style_dim: int, *, upsample: bool = False,
                 demodulate: bool = True, activate: bool = True, use_noise: bool = True,
                 blur: Sequence[int] = (1, 3, 3, 1), name: str = "", index: int = -1, noise_param: bool = True):
        super().__init__()
        self.cin, self.cout, self.k = cin, cout, k
        self.upsample, self.demodulate, self.activate, self.use_noise = upsample, demodulate, activate, use_noise
        self.name, self.index = name, index
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.affine_weight = nn.Parameter(torch.randn(cin, style_dim))
        self.affine_bias = nn.Parameter(torch.ones(cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        # Official StyledConvs always hold the NoiseInjection weight, used or not (netG_use_noise=False).
        self.noise_weight = nn.Parameter(torch.zeros(1)) if noise_param else None
        self.scale = 1.0 / math.sqrt(cin * k * k)
        self.affine_scale = 1.0 / math.sqrt(style_dim)
        if upsample:
            self.register_buffer("blur", blur_kernel_2d(blur, 4.0), persistent=False)
            self.sub_pad = subpixel_kernels(torch.zeros(1, 1, k, k))[1]
        self.register_buffer("w_fold", None, persistent=False)
        #: Set by the generator on the layers that are never edited (its prefix): frozen, the layer's output gain
        #: (the activation's sqrt(2) times out_gain, 1/sqrt(2) for a residual block's conv2) is folded into the
        #: constant weight, bias and noise strength (`gain_folded`), the bias into the conv where the conv is the
        #: layer's last op, and the activation is a plain leaky ReLU. The output is out_gain times the layer's:
        #: the same function with fewer full-resolution passes (no bias add, gain multiply or residual divide),
        #: which matters most where the convs run in int8 and those passes do not. None: the standard form
        #: (edited layers: the fused kernels take the unfolded weight and bias).
        self.out_gain: float | None = None
        self.register_buffer("w_gain", None, persistent=False)
        self.register_buffer("b_gain", None, persistent=False)
        self.register_buffer("nw_gain", None, persistent=False)
        #: How an upsampling conv runs (same math, both with constant weights):
        #: "separate" (default): 3x3 stride-2 transposed conv, then the [1,3,3,1] blur as a constant depthwise conv;
        #: "subpixel": the 3x3 transposed conv alone as a sub-pixel convolution (a 2x2 stride-1 conv to 4 * Cout
        #: channels in phase-major order + the channels-last pixel shuffle `pixel_shuffle_nhwc`; 16/9 of its MACs),
        #: then the blur as in "separate". Every conv is then an ordinary Conv, which INT8 runtimes without an int8
        #: ConvTranspose kernel (ONNX Runtime's CPU provider) run in int8: the form the INT8 export uses.
        self.up_mode = "separate"

    # -- constants --
    def filter_weight(self) -> torch.Tensor:
        """W_hat (Cout, Cin, k, k): scaled and, when demodulating, L2-normalised per output filter."""
        w = self.weight * self.scale
        if self.demodulate:
            w = w * torch.rsqrt(w.pow(2).sum([1, 2, 3], keepdim=True) + 1e-8)
        return w

    def folded_weight(self) -> torch.Tensor:
        """The constant conv kernel: W_hat; for upsampling convs in the transposed-conv layout (Cin, Cout, k, k),
        or its sub-pixel form (4 * Cout, Cin, k - 1, k - 1) when up_mode is "subpixel"."""
        w = self.filter_weight()
        if self.upsample:
            w = w.transpose(0, 1)
            if self.up_mode == "subpixel":
                w, _ = subpixel_kernels(w)
        return w

    def freeze(self, on: bool = True) -> None:
        self.w_fold = self.folded_weight().detach() if on else None
        g = None if not on or self.out_gain is None else self.out_gain * (SQRT2 if self.activate else 1.0)
        self.w_gain = None if g is None else self.w_fold * g
        self.b_gain = None if g is None else (self.bias * g).detach()
        self.nw_gain = None if g is None or self.noise_weight is None else (self.noise_weight * g).detach()

    @property
    def gain_folded(self) -> bool:
        return self.w_gain is not None

    def style(self, texture: torch.Tensor) -> torch.Tensor:
        """a = A(S): (B, Cin)."""
        return F.linear(texture, self.affine_weight * self.affine_scale, self.affine_bias)

    def direction(self, n: torch.Tensor) -> torch.Tensor:
        """d = A_W n (no bias): the style change caused by a texture-code change n. (B, Cin)."""
        return F.linear(n, self.affine_weight * self.affine_scale)

    def pixel_factor(self) -> torch.Tensor:
        return pixel_noise_factor(self.affine_weight.detach() * self.affine_scale)

    # -- forward --
    def _conv(self, xm: torch.Tensor, w: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The conv on modulated input xm with the constant kernel (w_fold unless given); `bias` is added by the
        conv itself (non-upsampling layers only)."""
        if w is None:
            w = self.w_fold if self.w_fold is not None else self.folded_weight()
        if self.upsample and self.up_mode == "subpixel":
            # phases m = 0..H (one more than 2H / 2 on the trailing side): the transposed conv's 2H + 1 outputs
            # plus a trailing row/column that is exactly zero, so the blur takes one less pad on that side
            p0, p1 = self.sub_pad
            y = pixel_shuffle_nhwc(F.conv2d(F.pad(xm, (p0, p1 + 1, p0, p1 + 1)), w))
            b0, b1 = upsample_pad(self.k, self.blur.shape[0])
            return blur2d(y, self.blur, (b0, b1 - 1))
        if self.upsample:  # "separate"
            y = F.conv_transpose2d(xm, w, stride=2)
            return blur2d(y, self.blur, upsample_pad(self.k, self.blur.shape[0]))
        return F.conv2d(xm, w, bias, padding=self.k // 2)

    def _finish(self, y: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if self.use_noise:
            if noise is None:
                noise = y.new_empty(y.shape[0], 1, y.shape[2], y.shape[3]).normal_()
            y = y + self.noise_weight * noise
        if self.activate:
            return lrelu_bias(y, self.bias)
        return y + self.bias.view(1, -1, 1, 1)

    def _finish_gain_folded(self, xm: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """conv + bias + noise + activation with the output gain folded into the constants (`out_gain`)."""
        if self.upsample:
            y = self._conv(xm, self.w_gain) + self.b_gain.view(1, -1, 1, 1)
        else:
            y = self._conv(xm, self.w_gain, self.b_gain)
        if self.use_noise:
            if noise is None:
                noise = y.new_empty(y.shape[0], 1, y.shape[2], y.shape[3]).normal_()
            y = y + self.nw_gain * noise
        return F.leaky_relu(y, 0.2) if self.activate else y

    def forward(self, x: torch.Tensor, texture: torch.Tensor, noise: torch.Tensor | None = None,
                edit: "LayerEdit | None" = None) -> torch.Tensor:
        a = self.style(texture)
        if edit is None:
            s = rms_normalize(a) if self.demodulate else a
            if self.gain_folded:
                return self._finish_gain_folded(x * s[:, :, None, None], noise)
            return self._finish(self._conv(x * s[:, :, None, None]), noise)
        if self.gain_folded and self.out_gain != 1.0:  # its block expects out_gain times the edited output
            raise ValueError(f"{self.name} carries a folded output gain (generator prefix); it cannot be edited")
        mask = resize_mask(edit.mask.to(x.dtype), x.shape[-2:])
        if not self.upsample and self.demodulate and self.k % 2 == 1:
            # The fused operation (reference path of the CUDA kernel / TensorRT plugin).
            w = self.w_fold if self.w_fold is not None else self.folded_weight()
            if not self.use_noise:
                noise, nw = x.new_zeros(1, 1, x.shape[2], x.shape[3]), x.new_zeros(1)
            else:
                nw = self.noise_weight
                if noise is None:
                    noise = x.new_empty(x.shape[0], 1, x.shape[2], x.shape[3]).normal_()
            fast = routed_op()
            if fast is not None and edit.direction is not None:
                return fast(x, w, self.bias, a, edit.direction, mask, edit.strength.to(x.dtype), noise, nw,
                            self.activate)
            return masked_modconv(x, w, self.bias, a, mask, edit.strength, direction=edit.direction,
                                  pixel_noise=edit.pixel_noise, pixel_factor=edit.pixel_factor, noise=noise,
                                  noise_weight=nw, activate=self.activate)
        t = edit.strength.to(x.dtype).view(-1, 1, 1, 1) * mask
        # General path (upsampling layers, ToRGB): explicit per-pixel style.
        if self.demodulate:
            pix = None if edit.pixel_noise is None else pixel_direction_from_noise(edit.pixel_noise, edit.pixel_factor)
            xm = modulate_input(x, a, t, direction=edit.direction, pixel_direction=pix)
        else:
            d = edit.direction[:, :, None, None] if edit.pixel_noise is None else \
                pixel_direction_from_noise(edit.pixel_noise, edit.pixel_factor)
            xm = x * (a[:, :, None, None] + t * d)
        return self._finish(self._conv(xm), noise)


def resize_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """Resize a (B, 1, H, W) mask to a layer's resolution: identity, box filter for integer downscales, else bilinear.

    Sizes stay symbolic (no int()), so graphs exported with dynamic spatial dims are not specialised."""
    h, w = size[0], size[1]
    mh, mw = mask.shape[-2], mask.shape[-1]
    if mh == h and mw == w:
        return mask
    if mh % h == 0 and mw % w == 0 and mh // h == mw // w:
        return F.avg_pool2d(mask, int(mh // h))
    return F.interpolate(mask, size=(h, w), mode="bilinear", align_corners=False)


@dataclass
class LayerEdit:
    """What one injection layer needs: mask, strength and the noise (region direction or pixel noise)."""

    mask: torch.Tensor
    strength: torch.Tensor
    direction: torch.Tensor | None = None       # region: (B, Cin) = A_W n
    pixel_noise: torch.Tensor | None = None     # pixel: (B, H, W, Cin) z
    pixel_factor: torch.Tensor | None = None    # pixel: (Cin, Cin) L


@dataclass
class StyleEdit:
    """A localized texture edit: S'(p) = S + strength * n(p) * mask(p) at the generator's injection layers.

    mask: (B, 1, H, W) soft mask in [0, 1] (any resolution; resized per layer). strength: float or (B,).
    mode: "region" (one n per edit) or "pixel" (independent per pixel). seeds: one integer per batch element;
    the noise comes from the counter-based generator (`ssae.philox`), never from a global RNG.
    `region_noise` (B, style_dim) may be given instead of seeds for region mode.
    """

    mask: torch.Tensor
    seeds: Sequence[int] | None = None
    strength: float | torch.Tensor = 1.0
    mode: str = "region"
    region_noise: torch.Tensor | None = None

    def __post_init__(self):
        if self.mode not in ("region", "pixel"):
            raise ValueError(f"unknown noise mode {self.mode!r} (region or pixel)")
        if self.mask.dim() != 4 or self.mask.shape[1] != 1:
            raise ValueError(f"mask must be (B, 1, H, W), got {tuple(self.mask.shape)}")
        if self.seeds is None and (self.mode == "pixel" or self.region_noise is None):
            raise ValueError("StyleEdit needs seeds (or region_noise in region mode)")

    def strengths(self, batch: int, device, dtype) -> torch.Tensor:
        s = torch.as_tensor(self.strength, dtype=dtype, device=device).reshape(-1)
        return s.expand(batch) if s.numel() == 1 else s

    def noise_vector(self, style_dim: int, device, dtype) -> torch.Tensor:
        """n: (B, style_dim)."""
        if self.region_noise is not None:
            return self.region_noise.to(device=device, dtype=dtype)
        return torch.from_numpy(philox.region_noise(self.seeds, style_dim)).to(device, dtype)

    def for_layer(self, layer: ModConv, texture: torch.Tensor, size) -> LayerEdit:
        b = texture.shape[0]
        st = self.strengths(b, texture.device, texture.dtype)
        mask = self.mask.to(texture.device, texture.dtype)
        if mask.shape[0] == 1 and b > 1:
            mask = mask.expand(b, -1, -1, -1)
        if self.mode == "region":
            n = self.noise_vector(texture.shape[1], texture.device, texture.dtype)
            return LayerEdit(mask, st, direction=layer.direction(n))
        z = pixel_noise(self.seeds, layer.index, (int(size[0]), int(size[1])), layer.cin)
        return LayerEdit(mask, st, pixel_noise=z.to(texture.device, texture.dtype), pixel_factor=layer.pixel_factor())


def pixel_noise(seeds: Sequence[int], layer_index: int, size, cin: int) -> torch.Tensor:
    """Pixel-mode z for one layer: (B, H, W, Cin) from the counter-based generator (HWC order)."""
    return torch.from_numpy(philox.gaussian_batch(seeds, philox.STREAM_PIXEL + layer_index,
                                                  (int(size[0]), int(size[1]), cin)))


def injection_noise(seed: int, layer_index: int, size) -> torch.Tensor:
    """Noise-injection map xi for one StyledConv: (1, 1, H, W) from the counter-based generator."""
    return torch.from_numpy(philox.injection_map(seed, layer_index, int(size[0]), int(size[1])))


# ----------------------------------------------------------------------------------------------------------------
# Encoder


class EncoderResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, blur: Sequence[int]):
        super().__init__()
        p0, p1 = downsample_pad(3, len(blur))
        s0, s1 = downsample_pad(1, len(blur))
        self.conv1 = FoldedConv(cin, cin, 3, pad=(1, 1, 1, 1), pad_mode="reflect")
        self.conv2 = FoldedConv(cin, cout, 3, stride=2, pad=(p0, p1, p0, p1), pad_mode="reflect", blur=blur)
        self.skip = FoldedConv(cin, cout, 1, stride=2, pad=(s0, s1, s0, s1), blur=blur, act=False, bias=False)
        self.conv2.out_gain = self.skip.out_gain = 1 / SQRT2  # frozen: the residual's 1/sqrt(2) in their constants

    def forward(self, x):
        if self.conv2.w_fold is not None and self.skip.w_fold is not None:
            return self.conv2(self.conv1(x)) + self.skip(x)
        return (self.conv2(self.conv1(x)) + self.skip(x)) / SQRT2


class Encoder(nn.Module):
    """StyleGAN2ResnetEncoder, export-friendly: image (B,3,H,W) in [-1,1] -> structure (B,C,H/16,W/16), texture (B,D)."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        blur = (1, 2, 1) if cfg.use_antialias else (1,)
        nc, sp, gl = cfg.enc_nc, cfg.netE_num_downsampling_sp, cfg.netE_num_downsampling_gl
        self.from_rgb = FoldedConv(3, nc(0), 1)
        self.down = nn.ModuleList(EncoderResBlock(nc(i), nc(i + 1), blur) for i in range(sp))
        self.to_spatial = nn.ModuleList([FoldedConv(nc(sp), nc(sp), 1),
                                         FoldedConv(nc(sp), cfg.spatial_code_ch, 1, act=False)])
        self.to_global_conv = nn.ModuleList(FoldedConv(nc(sp + i), nc(sp + i + 1), 3, stride=2) for i in range(gl))
        self.to_global_weight = nn.Parameter(torch.randn(cfg.global_code_ch, nc(sp + gl)))
        self.to_global_bias = nn.Parameter(torch.zeros(cfg.global_code_ch))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.from_rgb(x)
        for blk in self.down:
            x = blk(x)
        sp = self.to_spatial[1](self.to_spatial[0](x))
        for conv in self.to_global_conv:
            x = conv(x)
        w = self.to_global_weight * (1.0 / math.sqrt(self.to_global_weight.shape[1]))
        gl = F.linear(x.mean(dim=(2, 3)), w, self.to_global_bias)
        return l2_normalize(sp), l2_normalize(gl)


# ----------------------------------------------------------------------------------------------------------------
# Generator


class GenBlock(nn.Module):
    """Residual generator block: (skip(x) + conv2(conv1(x))) / sqrt(2); upsampling blocks upsample the skip."""

    def __init__(self, cin, cout, style_dim, *, upsample: bool, use_noise: bool, blur, name: str, index: int):
        super().__init__()
        self.upsample = upsample
        self.conv1 = ModConv(cin, cout, 3, style_dim, upsample=upsample, use_noise=use_noise, blur=blur,
                             name=f"{name}.conv1", index=index)
        self.conv2 = ModConv(cout, cout, 3, style_dim, use_noise=use_noise, name=f"{name}.conv2", index=index + 1)
        if cin == cout:
            self.skip = None
        elif upsample:
            self.skip = FoldedConv(cin, cout, 1)
        else:
            self.skip = FoldedConv(cin, cout, 1, act=False, bias=False)

    def skip_branch(self, x):
        s = x if self.skip is None else self.skip(x)
        return F.interpolate(s, scale_factor=2, mode="bilinear", align_corners=False) if self.upsample else s

    def fold_residual_gain(self) -> None:
        """For a block that is never edited: once frozen, conv2 and the skip conv carry the residual's 1/sqrt(2)
        in their constants (`ModConv.out_gain`), so `residual` adds without dividing."""
        self.conv1.out_gain = 1.0
        self.conv2.out_gain = 1 / SQRT2
        if self.skip is not None:
            self.skip.out_gain = 1 / SQRT2

    def residual(self, skip: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(skip + y) / sqrt(2), given skip = `skip_branch(x)` and y = conv2's output of this block."""
        if not self.conv2.gain_folded:
            return (skip + y) / SQRT2
        return y + (skip if self.skip is not None else skip * (1 / SQRT2))


class Generator(nn.Module):
    """StyleGAN2ResnetGenerator, export-friendly, with SSAE injection and a prefix/tail split.

    `prefix` runs everything before the first injection layer and returns (h, skip): the activations entering
    that layer and the skip branch of its block. `tail` runs the injection layer(s), the rest and ToRGB.
    """

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        blur = (1, 3, 3, 1) if cfg.use_antialias else (1,)
        sd = cfg.style_dim
        self.mod_scale_weight = nn.Parameter(torch.randn(cfg.spatial_code_ch, sd))
        self.mod_scale_bias = nn.Parameter(torch.zeros(cfg.spatial_code_ch))
        self.mod_bias_weight = nn.Parameter(torch.randn(cfg.spatial_code_ch, sd))
        self.mod_bias_bias = nn.Parameter(torch.zeros(cfg.spatial_code_ch))
        blocks, names, cin = [], [], cfg.spatial_code_ch
        nh = cfg.netG_num_base_resnet_layers
        for i in range(nh):
            cout = max(cfg.spatial_code_ch, round((i + 1) / nh * cfg.gen_nf(0)))
            names.append(f"HeadResnetBlock{i}")
            blocks.append(GenBlock(cin, cout, sd, upsample=False, use_noise=True, blur=blur, name=names[-1],
                                   index=2 * i))
            cin = cout
        for j in range(cfg.netE_num_downsampling_sp):
            cout = cfg.gen_nf(j + 1)
            names.append(f"UpsamplingResBlock{2 ** (4 + j)}")
            blocks.append(GenBlock(cin, cout, sd, upsample=True, use_noise=cfg.netG_use_noise, blur=blur,
                                   name=names[-1], index=2 * len(blocks)))
            cin = cout
        self.block_names = names
        self.blocks = nn.ModuleList(blocks)
        self.to_rgb = ModConv(cin, 3, 1, sd, demodulate=False, activate=False, use_noise=False, name="ToRGB",
                              index=2 * len(blocks), noise_param=False)
        self.injection_layers = self._resolve_injection(cfg.injection_layers)
        first = min(self.layer(n).index for n in self.injection_layers)
        self.split_block, self.split_conv = first // 2, first % 2 + 1
        for b in self.blocks[: self.split_block]:  # the prefix is never edited: fold its gains when frozen
            b.fold_residual_gain()
        if self.split_conv == 2:
            self.blocks[self.split_block].conv1.out_gain = 1.0

    # -- layer bookkeeping --
    def styled_convs(self) -> list[ModConv]:
        return [c for b in self.blocks for c in (b.conv1, b.conv2)]

    def layer(self, name: str) -> ModConv:
        for c in self.styled_convs():
            if c.name == name:
                return c
        raise ValueError(f"unknown generator layer {name!r}; StyledConvs are: "
                         f"{', '.join(c.name for c in self.styled_convs())}")

    def _resolve_injection(self, names: Sequence[str]) -> tuple[str, ...]:
        if not names:  # default: the last-but-one modulated conv = the last 3x3 conv before ToRGB
            return (self.styled_convs()[-1].name,)
        return tuple(self.layer(n).name for n in names)

    def noise_shapes(self, structure_hw) -> list[tuple[int, int]]:
        """Output resolution of every StyledConv (the shape of its noise map), in forward order."""
        h, w = int(structure_hw[0]), int(structure_hw[1])
        out = []
        for b in self.blocks:
            if b.upsample:
                h, w = 2 * h, 2 * w
            out += [(h, w), (h, w)]
        return out

    def seeded_noise(self, seed: int, structure_hw) -> list[torch.Tensor]:
        return [injection_noise(seed, i, hw) for i, hw in enumerate(self.noise_shapes(structure_hw))]

    def freeze(self, on: bool = True) -> None:
        for m in self.modules():
            if isinstance(m, (ModConv, FoldedConv)):
                m.freeze(on)

    @property
    def upsample_mode(self) -> str:
        return next((c.up_mode for c in self.styled_convs() if c.upsample), "separate")

    def set_upsample_mode(self, mode: str) -> None:
        """"separate" (transposed 3x3 + constant depthwise blur) or "subpixel" (the 3x3 transposed conv as a 2x2 conv
        to 4x channels + pixel shuffle, then the blur): the same math (see ModConv.up_mode). Frozen kernels are
        refolded."""
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsample mode {mode!r}")
        for c in self.styled_convs():
            c.up_mode = mode
            if c.w_fold is not None:
                c.freeze()

    # -- forward --
    def _code_modulation(self, sp, gl):
        k = 1.0 / math.sqrt(gl.shape[1])
        scale = F.linear(gl, self.mod_scale_weight * k, self.mod_scale_bias)
        bias = F.linear(gl, self.mod_bias_weight * k, self.mod_bias_bias)
        return sp * scale[:, :, None, None] + bias[:, :, None, None]

    def _conv(self, conv: ModConv, x, gl, noises, edit: StyleEdit | None):
        noise = None if noises is None else noises[conv.index]
        layer_edit = None
        if edit is not None and conv.name in self.injection_layers:
            layer_edit = edit.for_layer(conv, gl, x.shape[-2:])
        return conv(x, gl, noise, layer_edit)

    def prefix(self, sp: torch.Tensor, gl: torch.Tensor, noises=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Structure + texture -> (h, skip) entering the first injection layer."""
        sp, gl = l2_normalize(sp), l2_normalize(gl)
        x = self._code_modulation(sp, gl)
        for b in self.blocks[: self.split_block]:
            x = b.residual(b.skip_branch(x), self._conv(b.conv2, self._conv(b.conv1, x, gl, noises, None), gl, noises, None))
        b = self.blocks[self.split_block]
        skip = b.skip_branch(x)
        h = x if self.split_conv == 1 else self._conv(b.conv1, x, gl, noises, None)
        return h, skip

    def tail(self, h: torch.Tensor, skip: torch.Tensor, gl: torch.Tensor, noises=None,
             edit: StyleEdit | None = None) -> torch.Tensor:
        """(h, skip) from `prefix` -> image, applying the edit at the injection layers."""
        gl = l2_normalize(gl)
        b = self.blocks[self.split_block]
        if self.split_conv == 1:
            h = self._conv(b.conv1, h, gl, noises, edit)
        x = (skip + self._conv(b.conv2, h, gl, noises, edit)) / SQRT2
        for b in self.blocks[self.split_block + 1:]:
            x = (b.skip_branch(x) + self._conv(b.conv2, self._conv(b.conv1, x, gl, noises, edit), gl, noises, edit)) / SQRT2
        return self._conv(self.to_rgb, x, gl, None, None)

    def forward(self, sp, gl, noises=None, edit: StyleEdit | None = None):
        h, skip = self.prefix(sp, gl, noises)
        return self.tail(h, skip, gl, noises, edit)

    # -- the local tail with the skip branch projected to RGB (what the runtime caches) --
    def project_skip(self, skip: torch.Tensor, gl: torch.Tensor) -> torch.Tensor:
        """The skip branch's share of the image, (B, 3, H, W), for a local tail.

        The tail is x = (skip + conv2(h)) / sqrt(2) -> ToRGB, and ToRGB is a 1x1 modulated conv that is linear and
        never edited, so ToRGB(x) = ToRGB(conv2(h) / sqrt(2)) + [ToRGB(skip / sqrt(2)) - bias]. The bracket is
        computed once per image: the cache holds 3 channels instead of the skip's Cout."""
        if not self.tail_is_local:
            raise ValueError("project_skip needs a local tail (injection at the last block's conv2)")
        gl = l2_normalize(gl)
        return self._conv(self.to_rgb, skip / SQRT2, gl, None, None) - self.to_rgb.bias.view(1, -1, 1, 1)

    def tail_projected(self, h: torch.Tensor, skip_rgb: torch.Tensor, gl: torch.Tensor, noises=None,
                       edit: StyleEdit | None = None) -> torch.Tensor:
        """`tail` with the skip branch already projected by `project_skip` (same image)."""
        gl = l2_normalize(gl)
        y = self._conv(self.blocks[-1].conv2, h, gl, noises, edit)
        return self._conv(self.to_rgb, y / SQRT2, gl, None, None) + skip_rgb

    @property
    def tail_is_local(self) -> bool:
        """True when the tail is the last block's conv2, the skip merge and ToRGB: one 3x3 conv and pixelwise ops
        at full resolution, so an edit changes the output only within 1 pixel of the mask and the tail can run
        on a crop (the runtime's cached re-edits do)."""
        return self.split_block == len(self.blocks) - 1 and self.split_conv == 2

    @property
    def tail_noise_index(self) -> int:
        """Index of the tail's only StyledConv (its noise map is an input of the local tail)."""
        return self.blocks[-1].conv2.index


# ----------------------------------------------------------------------------------------------------------------
# The autoencoder and official-checkpoint conversion


class SwappingAutoencoder(nn.Module):
    """Encoder + generator. `encode(x)` -> (structure, texture); `decode(structure, texture)` -> image."""

    def __init__(self, cfg: SAEConfig | None = None):
        super().__init__()
        self.cfg = cfg or SAEConfig()
        self.E = Encoder(self.cfg)
        self.G = Generator(self.cfg)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.E(x)

    def resolve_noise(self, noise: NoiseSpec, structure: torch.Tensor) -> list | None:
        """None: fresh N(0,1) per call (official); int: seeded, deterministic; "none": no noise; or a list
        with one (B or 1, 1, H, W) tensor per StyledConv."""
        if noise is None:
            return None
        if isinstance(noise, str):
            if noise != "none":
                raise ValueError(f"noise must be None, a seed, 'none' or a list of tensors, got {noise!r}")
            return [torch.zeros(1, 1, h, w, dtype=structure.dtype, device=structure.device)
                    for h, w in self.G.noise_shapes(structure.shape[-2:])]
        if isinstance(noise, (int, np.integer)):
            return [n.to(structure.device, structure.dtype) for n in self.G.seeded_noise(int(noise), structure.shape[-2:])]
        noise = list(noise)
        expect = len(self.G.styled_convs())
        if len(noise) != expect:
            raise ValueError(f"expected {expect} noise maps, got {len(noise)}")
        return noise

    def decode(self, structure: torch.Tensor, texture: torch.Tensor, noise: NoiseSpec = None,
               edit: StyleEdit | None = None) -> torch.Tensor:
        return self.G(structure, texture, self.resolve_noise(noise, structure), edit)

    def forward(self, x: torch.Tensor, noise: NoiseSpec = None) -> torch.Tensor:
        return self.decode(*self.encode(x), noise=noise)

    def freeze(self, on: bool = True) -> "SwappingAutoencoder":
        """Cache the folded constant kernels (inference/export). `freeze(False)` before training."""
        self.G.freeze(on)
        for m in self.E.modules():
            if isinstance(m, FoldedConv):
                m.freeze(on)
        return self

    @classmethod
    def from_official(cls, netE, netG=None, **options) -> "SwappingAutoencoder":
        """Load official Swapping Autoencoder weights.

        netE / netG: state dicts or paths of the official `.pth` files; or netE alone as one combined checkpoint
        whose keys carry `E.` / `G.` prefixes (D and Dpatch keys are ignored). options: official option names
        (netE_scale_capacity, global_code_ch, ...); non-shaping ones such as crop_size are accepted and ignored.
        """
        e_sd, g_sd = _load_state(netE), (_load_state(netG) if netG is not None else None)
        if g_sd is None:
            if not any(k.startswith("E.") for k in e_sd):
                raise ValueError("a single checkpoint must hold E.* and G.* keys (or pass netE and netG)")
            g_sd = {k[2:]: v for k, v in e_sd.items() if k.startswith("G.")}
            e_sd = {k[2:]: v for k, v in e_sd.items() if k.startswith("E.")}
        cfg = SAEConfig.from_options(**options)
        model = cls(cfg)
        model.load_state_dict(official_to_ssae(e_sd, g_sd, model), strict=True)
        return model.eval().freeze()


def _load_state(src) -> dict[str, torch.Tensor]:
    if isinstance(src, (str, os.PathLike)):
        sd = torch.load(src, map_location="cpu", weights_only=True)
    else:
        sd = src
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return {k: v for k, v in sd.items()}


def official_to_ssae(e_sd: dict, g_sd: dict, model: SwappingAutoencoder) -> dict[str, torch.Tensor]:
    """Rename official netE/netG keys to this module's parameter names (blur kernels are recomputed, not loaded)."""
    out: dict[str, torch.Tensor] = {}
    rules_e = [
        (r"FromRGB\.Conv\.weight", "E.from_rgb.weight"), (r"FromRGB\.Act\.bias", "E.from_rgb.bias"),
        (r"DownToSpatialCode\.ResBlockDownBy(\d+)\.(conv1|conv2|skip)\.Conv\.weight", "E.down.{i}.{1}.weight"),
        (r"DownToSpatialCode\.ResBlockDownBy(\d+)\.(conv1|conv2)\.Act\.bias", "E.down.{i}.{1}.bias"),
        (r"ToSpatialCode\.0\.Conv\.weight", "E.to_spatial.0.weight"), (r"ToSpatialCode\.0\.Act\.bias", "E.to_spatial.0.bias"),
        (r"ToSpatialCode\.1\.Conv\.weight", "E.to_spatial.1.weight"), (r"ToSpatialCode\.1\.Conv\.bias", "E.to_spatial.1.bias"),
        (r"DownToGlobalCode\.ConvLayerDownBy(\d+)\.Conv\.weight", "E.to_global_conv.{g}.weight"),
        (r"DownToGlobalCode\.ConvLayerDownBy(\d+)\.Act\.bias", "E.to_global_conv.{g}.bias"),
        (r"ToGlobalCode\.0\.weight", "E.to_global_weight"), (r"ToGlobalCode\.0\.bias", "E.to_global_bias"),
    ]
    sp = model.cfg.netE_num_downsampling_sp
    for k, v in e_sd.items():
        if k.endswith("Blur.kernel"):
            continue
        for pat, tgt in rules_e:
            m = re.fullmatch(pat, k)
            if m:
                g = m.groups()
                i = int(math.log2(int(g[0]))) if g else 0
                out[tgt.format(*g, i=i, g=i - sp)] = v
                break
        else:
            raise KeyError(f"unexpected official netE key {k!r}")
    block_index = {n: i for i, n in enumerate(model.G.block_names)}
    for k, v in g_sd.items():
        if k.endswith(".kernel"):
            continue
        m = re.fullmatch(r"SpatialCodeModulation\.(scale|bias)\.(weight|bias)", k)
        if m:
            out[f"G.mod_{m.group(1)}_{m.group(2)}"] = v
            continue
        m = re.fullmatch(r"(\w+?Block\d+)\.(conv1|conv2)\.(conv\.weight|conv\.modulation\.weight|conv\.modulation\.bias"
                         r"|noise\.weight|activate\.bias)", k)
        if m:
            leaf = {"conv.weight": "weight", "conv.modulation.weight": "affine_weight",
                    "conv.modulation.bias": "affine_bias", "noise.weight": "noise_weight",
                    "activate.bias": "bias"}[m.group(3)]
            out[f"G.blocks.{block_index[m.group(1)]}.{m.group(2)}.{leaf}"] = v[0] if leaf == "weight" else v
            continue
        m = re.fullmatch(r"(\w+?Block\d+)\.skip\.(Conv\.weight|Act\.bias)", k)
        if m:
            out[f"G.blocks.{block_index[m.group(1)]}.skip.{'weight' if m.group(2) == 'Conv.weight' else 'bias'}"] = v
            continue
        m = re.fullmatch(r"ToRGB\.(bias|conv\.weight|conv\.modulation\.weight|conv\.modulation\.bias)", k)
        if m:
            leaf = {"bias": "bias", "conv.weight": "weight", "conv.modulation.weight": "affine_weight",
                    "conv.modulation.bias": "affine_bias"}[m.group(1)]
            out[f"G.to_rgb.{leaf}"] = v.reshape(-1) if leaf == "bias" else (v[0] if leaf == "weight" else v)
            continue
        raise KeyError(f"unexpected official netG key {k!r}")
    return out
