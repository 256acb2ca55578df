"""The official Swapping Autoencoder networks in their direct (unfolded) formulation.

Written from the architecture description in `shared/reference/sae_architecture.md` (official repository
taesungp/swapping-autoencoder-pytorch): per-sample modulated weights, grouped convolutions with `groups=B`,
stride-2 transposed conv followed by a [1,3,3,1] blur, blur-then-stride-2 encoder convs, and the official
module names, so an official `netE`/`netG` state dict loads with `load_state_dict` as is.

This module is the *reference*: the project's export-friendly networks (`ssae.models.sae`) are tested against
it, and benchmarks use it as the official-equivalent baseline. It is not used for inference.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import SAEConfig
from .ops import blur2d, blur2d_native, blur_kernel_2d, downsample_pad, l2_normalize, lrelu_bias, upsample_pad, SQRT2


class EqualConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.scale = 1.0 / math.sqrt(cin * k * k)
        self.stride, self.padding = stride, padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, self.stride, self.padding)


class EqualLinear(nn.Module):
    def __init__(self, cin: int, cout: int, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.full((cout,), float(bias_init)))
        self.scale = 1.0 / math.sqrt(cin)

    def forward(self, x):
        if x.dim() > 2:
            return F.conv2d(x, (self.weight * self.scale)[:, :, None, None], self.bias)
        return F.linear(x, self.weight * self.scale, self.bias)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return lrelu_bias(x, self.bias)


class ScaledLeakyReLU(nn.Module):
    def forward(self, x):
        return F.leaky_relu(x, 0.2) * SQRT2


class Blur(nn.Module):
    #: Compute the blur as the official code does on a CPU (`blur2d_native`: single-channel convs) instead of one
    #: depthwise conv; same result. Set on every Blur of a network with `use_native_blur`.
    native = False

    def __init__(self, taps, pad, upsample_factor: int = 1, reflection_pad: bool = False):
        super().__init__()
        self.register_buffer("kernel", blur_kernel_2d(taps, float(upsample_factor ** 2)))
        self.pad, self.reflection = tuple(pad), reflection_pad

    def forward(self, x):
        blur = blur2d_native if self.native else blur2d
        if self.reflection:
            p0, p1 = self.pad
            return blur(F.pad(x, (p0, p1, p0, p1), mode="reflect"), self.kernel, (0, 0))
        return blur(x, self.kernel, self.pad)


def use_native_blur(net: nn.Module, on: bool = True) -> nn.Module:
    """Make every Blur of `net` run the official code's CPU form (`upfirdn2d_native`); returns `net`."""
    for m in net.modules():
        if isinstance(m, Blur):
            m.native = on
    return net


class ConvLayer(nn.Sequential):
    """Official ConvLayer: [Blur] or [RefPad], EqualConv2d, [FusedLeakyReLU | ScaledLeakyReLU]."""

    def __init__(self, cin, cout, k, downsample=False, blur_kernel=(1, 3, 3, 1), bias=True, activate=True,
                 pad=None, reflection_pad=False):
        layers = []
        if downsample:
            layers.append(("Blur", Blur(blur_kernel, downsample_pad(k, len(blur_kernel), pad),
                                        reflection_pad=reflection_pad)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, (k // 2 if pad is None else pad)
            if reflection_pad:
                layers.append(("RefPad", nn.ReflectionPad2d(padding)))
                padding = 0
        layers.append(("Conv", EqualConv2d(cin, cout, k, stride, padding, bias=bias and not activate)))
        if activate:
            layers.append(("Act", FusedLeakyReLU(cout) if bias else ScaledLeakyReLU()))
        super().__init__(OrderedDict(layers))


class ResBlock(nn.Module):
    def __init__(self, cin, cout, blur_kernel, reflection_pad=False):
        super().__init__()
        self.conv1 = ConvLayer(cin, cin, 3, reflection_pad=reflection_pad)
        self.conv2 = ConvLayer(cin, cout, 3, downsample=True, blur_kernel=blur_kernel, reflection_pad=reflection_pad)
        self.skip = ConvLayer(cin, cout, 1, downsample=True, blur_kernel=blur_kernel, activate=False, bias=False)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) / SQRT2


class OfficialEncoder(nn.Module):
    """StyleGAN2ResnetEncoder."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        blur = (1, 2, 1) if cfg.use_antialias else (1,)
        nc = cfg.enc_nc
        sp, gl = cfg.netE_num_downsampling_sp, cfg.netE_num_downsampling_gl
        self.FromRGB = ConvLayer(3, nc(0), 1)
        self.DownToSpatialCode = nn.Sequential(OrderedDict(
            (f"ResBlockDownBy{2 ** i}", ResBlock(nc(i), nc(i + 1), blur, reflection_pad=True)) for i in range(sp)))
        self.ToSpatialCode = nn.Sequential(ConvLayer(nc(sp), nc(sp), 1),
                                           ConvLayer(nc(sp), cfg.spatial_code_ch, 1, activate=False))
        self.DownToGlobalCode = nn.Sequential(OrderedDict(
            (f"ConvLayerDownBy{2 ** (sp + i)}", ConvLayer(nc(sp + i), nc(sp + i + 1), 3, downsample=True,
                                                          blur_kernel=(1,), pad=0)) for i in range(gl)))
        self.ToGlobalCode = nn.Sequential(EqualLinear(nc(sp + gl), cfg.global_code_ch))

    def forward(self, x):
        mid = self.DownToSpatialCode(self.FromRGB(x))
        sp = self.ToSpatialCode(mid)
        gl = self.ToGlobalCode(self.DownToGlobalCode(mid).mean(dim=(2, 3)))
        return l2_normalize(sp), l2_normalize(gl)


class ModulatedConv2d(nn.Module):
    """SAE's ModulatedConv2d (new_demodulation=True), per-sample weights and grouped convolutions."""

    def __init__(self, cin, cout, k, style_dim, demodulate=True, upsample=False, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.cin, self.cout, self.k = cin, cout, k
        self.upsample, self.demodulate = upsample, demodulate
        if upsample:
            self.blur = Blur(blur_kernel, upsample_pad(k, len(blur_kernel)), upsample_factor=2)
        self.scale = 1.0 / math.sqrt(cin * k * k)
        self.weight = nn.Parameter(torch.randn(1, cout, cin, k, k))
        self.modulation = EqualLinear(style_dim, cin, bias_init=1.0)

    def forward(self, x, style):
        b, cin, h, w = x.shape
        if style.dim() > 2:  # the official spatial-style path (only correct for batch size 1 there)
            style = F.interpolate(style, size=(h, w), mode="bilinear", align_corners=False)
            s = self.modulation(style)
            if self.demodulate:
                s = s * torch.rsqrt(s.pow(2).mean(1, keepdim=True) + 1e-8)
        else:
            s = self.modulation(style)[:, :, None, None]
            if self.demodulate:
                s = s * torch.rsqrt(s.pow(2).mean(1, keepdim=True) + 1e-8)
        x = x * s
        weight = (self.scale * self.weight).repeat(b, 1, 1, 1, 1)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(b, self.cout, 1, 1, 1)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * cin, self.cout, self.k, self.k)
            out = F.conv_transpose2d(x.reshape(1, b * cin, h, w), weight, stride=2, groups=b)
            out = self.blur(out.view(b, self.cout, *out.shape[-2:]))
        else:
            weight = weight.view(b * self.cout, cin, self.k, self.k)
            out = F.conv2d(x.reshape(1, b * cin, h, w), weight, padding=self.k // 2, groups=b)
            out = out.view(b, self.cout, *out.shape[-2:])
        return out


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise=None):
        if noise is None:
            noise = x.new_empty(x.shape[0], 1, x.shape[2], x.shape[3]).normal_()
        return x + self.weight * noise


class StyledConv(nn.Module):
    def __init__(self, cin, cout, k, style_dim, upsample=False, blur_kernel=(1, 3, 3, 1), use_noise=True):
        super().__init__()
        self.conv = ModulatedConv2d(cin, cout, k, style_dim, upsample=upsample, blur_kernel=blur_kernel)
        self.use_noise = use_noise
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(cout)

    def forward(self, x, style, noise=None):
        out = self.conv(x, style)
        if self.use_noise:
            out = self.noise(out, noise)
        return self.activate(out)


class ToRGB(nn.Module):
    def __init__(self, cin, style_dim, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.upsample = nn.Module()
        self.upsample.register_buffer("kernel", blur_kernel_2d(blur_kernel, 4.0))  # present in checkpoints, unused
        self.conv = ModulatedConv2d(cin, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, style):
        return self.conv(x, style) + self.bias


class ResolutionPreservingResnetBlock(nn.Module):
    def __init__(self, cin, cout, style_dim):
        super().__init__()
        self.conv1 = StyledConv(cin, cout, 3, style_dim)
        self.conv2 = StyledConv(cout, cout, 3, style_dim)
        self.skip = ConvLayer(cin, cout, 1, activate=False, bias=False) if cin != cout else nn.Identity()

    def forward(self, x, style, noises=(None, None)):
        return (self.skip(x) + self.conv2(self.conv1(x, style, noises[0]), style, noises[1])) / SQRT2


class UpsamplingResnetBlock(nn.Module):
    def __init__(self, cin, cout, style_dim, blur_kernel, use_noise):
        super().__init__()
        self.conv1 = StyledConv(cin, cout, 3, style_dim, upsample=True, blur_kernel=blur_kernel, use_noise=use_noise)
        self.conv2 = StyledConv(cout, cout, 3, style_dim, use_noise=use_noise)
        self.skip = ConvLayer(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, style, noises=(None, None)):
        skip = F.interpolate(self.skip(x), scale_factor=2, mode="bilinear", align_corners=False)
        return (skip + self.conv2(self.conv1(x, style, noises[0]), style, noises[1])) / SQRT2


class GeneratorModulation(nn.Module):
    def __init__(self, style_dim, cout):
        super().__init__()
        self.scale = EqualLinear(style_dim, cout)
        self.bias = EqualLinear(style_dim, cout)

    def forward(self, x, style):
        if style.dim() > 2:
            style = F.interpolate(style, size=x.shape[-2:], mode="bilinear", align_corners=False)
            return x * self.scale(style) + self.bias(style)
        return x * self.scale(style)[:, :, None, None] + self.bias(style)[:, :, None, None]


class OfficialGenerator(nn.Module):
    """StyleGAN2ResnetGenerator. `noises`: one B x 1 x H x W tensor per StyledConv (None = fresh N(0,1))."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        blur = (1, 3, 3, 1) if cfg.use_antialias else (1,)
        sd = cfg.style_dim
        self.SpatialCodeModulation = GeneratorModulation(sd, cfg.spatial_code_ch)
        cin = cfg.spatial_code_ch
        self.n_head = cfg.netG_num_base_resnet_layers
        for i in range(self.n_head):
            cout = max(cfg.spatial_code_ch, round((i + 1) / self.n_head * cfg.gen_nf(0)))
            self.add_module(f"HeadResnetBlock{i}", ResolutionPreservingResnetBlock(cin, cout, sd))
            cin = cout
        self.up_names = []
        for j in range(cfg.netE_num_downsampling_sp):
            cout = cfg.gen_nf(j + 1)
            name = f"UpsamplingResBlock{2 ** (4 + j)}"
            self.add_module(name, UpsamplingResnetBlock(cin, cout, sd, blur, cfg.netG_use_noise))
            self.up_names.append(name)
            cin = cout
        self.ToRGB = ToRGB(cin, sd, blur)

    def blocks(self):
        return [getattr(self, f"HeadResnetBlock{i}") for i in range(self.n_head)] + \
               [getattr(self, n) for n in self.up_names]

    def forward(self, sp, gl, noises=None):
        sp, gl = l2_normalize(sp), l2_normalize(gl)
        x = self.SpatialCodeModulation(sp, gl)
        for i, block in enumerate(self.blocks()):
            pair = (None, None) if noises is None else (noises[2 * i], noises[2 * i + 1])
            x = block(x, gl, pair)
        return self.ToRGB(x, gl)
