"""Discriminators used only in training: SAE's image D and patch co-occurrence D, and the RB's ROI discriminator.

Built from the official StyleGAN2 layers (`ssae.models.official`), as in the Swapping Autoencoder: the image
discriminator is StyleGAN2's without minibatch-stddev; the patch co-occurrence discriminator scores a query patch
against aggregated reference patches of the same image (sae_architecture.md section 3).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .official import ConvLayer, EqualLinear, ResBlock

BLUR = (1, 3, 3, 1)



class ImageDiscriminator(nn.Module):
    """StyleGAN2 discriminator (no minibatch stddev): 1x1 FromRGB, ResBlocks down to 4x4, 3x3 conv, 2 linears."""

    def __init__(self, size: int, base_ch: int = 32, max_ch: int = 256):
        super().__init__()
        log = int(math.log2(size))
        chans = {2 ** i: min(max_ch, base_ch * 2 ** (log - i)) for i in range(2, log + 1)}
        self.from_rgb = ConvLayer(3, chans[size], 1)
        blocks, res = [], size
        while res > 4:
            blocks.append(ResBlock(chans[res], chans[res // 2], BLUR))
            res //= 2
        self.blocks = nn.Sequential(*blocks)
        self.final_conv = ConvLayer(chans[4], chans[4], 3)
        self.final_linear = EqualLinear(chans[4] * 16, chans[4])
        self.out = EqualLinear(chans[4], 1)

    def forward(self, x):
        h = self.final_conv(self.blocks(self.from_rgb(x)))
        h = F.leaky_relu(self.final_linear(h.flatten(1)), 0.2) * math.sqrt(2)
        return self.out(h)


class PatchDiscriminator(nn.Module):
    """Patch co-occurrence discriminator: features of (patch_size)^2 crops; scores [ref, query] feature pairs."""

    def __init__(self, patch_size: int = 64, base_ch: int = 32, max_ch: int = 256):
        super().__init__()
        log = int(math.log2(patch_size))
        chans = {2 ** i: min(max_ch, base_ch * 2 ** (log - i)) for i in range(2, log + 1)}
        layers = [ConvLayer(3, chans[patch_size], 3)]
        res = patch_size
        while res > 4:
            layers.append(ResBlock(chans[res], chans[res // 2], BLUR))
            res //= 2
        c = chans[4]
        layers += [ConvLayer(c, 2 * c, 3), ConvLayer(2 * c, c, 3, pad=0)]
        self.trunk = nn.Sequential(*layers)
        feat = c * 4
        self.feat_dim = feat
        self.head = nn.Sequential(EqualLinear(2 * feat, 2 * feat), nn.LeakyReLU(0.2),
                                  EqualLinear(2 * feat, feat), nn.LeakyReLU(0.2), EqualLinear(feat, 1))

    def extract_features(self, patches: torch.Tensor, num_crops: int, aggregate: bool = False) -> torch.Tensor:
        """patches (B*num_crops, 3, P, P) -> features (B, num_crops or 1, F)."""
        f = self.trunk(patches).flatten(1)
        f = f.view(-1, num_crops, f.shape[1])
        return f.mean(1, keepdim=True) if aggregate else f

    def discriminate(self, ref: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """ref (B, 1 or n, F), query (B, n, F) -> scores (B*n, 1)."""
        ref = ref.expand(-1, query.shape[1], -1)
        return self.head(torch.cat([ref, query], 2).flatten(0, 1))


def random_crops(x: torch.Tensor, num_crops: int, size: int, min_scale: float, max_scale: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """`num_crops` random square crops per image (side min..max_scale of the image, random horizontal flip),
    resampled to size x size with grid_sample: (B * num_crops, C, size, size)."""
    b = x.shape[0]
    n = b * num_crops
    dev = x.device
    scale = torch.rand(n, generator=generator, device="cpu").to(dev) * (max_scale - min_scale) + min_scale
    cx = (torch.rand(n, generator=generator, device="cpu").to(dev) * 2 - 1) * (1 - scale)
    cy = (torch.rand(n, generator=generator, device="cpu").to(dev) * 2 - 1) * (1 - scale)
    flip = torch.where(torch.rand(n, generator=generator, device="cpu").to(dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, (n, x.shape[1], size, size), align_corners=False)
    src = x.repeat_interleave(num_crops, 0)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class MaskedPatchDiscriminator(nn.Module):
    """RB discriminator: a conv PatchGAN on (image, mask) whose score map is averaged inside the ROI."""

    def __init__(self, channels: int = 32, layers: int = 4):
        super().__init__()
        mods, c = [nn.Conv2d(4, channels, 4, 2, 1), nn.LeakyReLU(0.2)], channels
        for _ in range(layers - 2):
            mods += [nn.Conv2d(c, min(4 * channels, 2 * c), 4, 2, 1), nn.LeakyReLU(0.2)]
            c = min(4 * channels, 2 * c)
        mods += [nn.Conv2d(c, 1, 3, 1, 1)]
        self.net = nn.Sequential(*mods)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (score map, mask weights at the score map's resolution)."""
        s = self.net(torch.cat([image, mask * 2 - 1], 1))
        w = F.adaptive_avg_pool2d(mask, s.shape[-2:])
        return s, w


def masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of `values` weighted by `weights` (per sample), averaged over the batch."""
    num = (values * weights).flatten(1).sum(1)
    den = weights.flatten(1).sum(1).clamp_min(1e-6)
    return (num / den).mean()
