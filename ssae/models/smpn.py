"""Semantic Mask Prediction Network (SMPN): a ResNet18-encoder U-Net per region of interest.

Per the SSAE paper: ResNet18 encoder with four levels, parallel conv blocks at every level, a decoder with two
convolutions per level followed by upsampling, and a sigmoid; trained with BCE against ground-truth masks.
Decoder skips are additive (the parallel block projects each encoder level to the decoder width).

One class serves both uses: `SMPN(cfg, n_rois=1)` is one network whose encoder parameter names are torchvision's
`resnet18` names (ImageNet weights load with `load_resnet18_weights`); `SMPN(cfg, n_rois=5)` runs all five ROI
networks as one batched graph by giving every conv `groups=n_rois` (the stem conv shares the RGB input). The two
are numerically the same network: `SMPN.stack` / `unstack` convert between them.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import SMPNConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv(cin, cout, k, n, stride=1, dilation=1, bias=False):
    return nn.Conv2d(cin * n, cout * n, k, stride, padding=dilation * (k // 2), dilation=dilation, groups=n, bias=bias)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (same parameter names), grouped over ROIs."""

    def __init__(self, cin, cout, n, stride=1):
        super().__init__()
        self.conv1 = _conv(cin, cout, 3, n, stride)
        self.bn1 = nn.BatchNorm2d(cout * n)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(cout, cout, 3, n)
        self.bn2 = nn.BatchNorm2d(cout * n)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(_conv(cin, cout, 1, n, stride), nn.BatchNorm2d(cout * n))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin, cout, k, n, dilation=1):
        super().__init__(_conv(cin, cout, k, n, dilation=dilation), nn.BatchNorm2d(cout * n), nn.ReLU(inplace=True))


class ParallelBlock(nn.Module):
    """Parallel convolutions on one encoder level (1x1, 3x3, dilated 3x3), summed: multi-scale context."""

    def __init__(self, cin, cout, n):
        super().__init__()
        self.branches = nn.ModuleList([ConvBNReLU(cin, cout, 1, n), ConvBNReLU(cin, cout, 3, n),
                                       ConvBNReLU(cin, cout, 3, n, dilation=2)])

    def forward(self, x):
        out = self.branches[0](x)
        for b in self.branches[1:]:
            out = out + b(x)
        return out


def _up(x):
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class SMPN(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] -> mask logits (B, n_rois, H, W). `predict` applies the sigmoid.

    H and W must be multiples of 32.
    """

    def __init__(self, cfg: SMPNConfig | None = None, n_rois: int | None = None):
        super().__init__()
        self.cfg = cfg or SMPNConfig()
        n = len(self.cfg.rois) if n_rois is None else n_rois
        self.n_rois = n
        w = self.cfg.width
        enc = [w, 2 * w, 4 * w, 8 * w]
        dec = [max(4, int(round(c * self.cfg.decoder_ratio))) for c in enc]
        # ResNet18 encoder (torchvision names)
        self.conv1 = nn.Conv2d(3, w * n, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w * n)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = w
        for i, c in enumerate(enc):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, c, n, stride), BasicBlock(c, c, n)))
            cin = c
        # parallel blocks and decoder
        self.parallel = nn.ModuleList(ParallelBlock(e, d, n) for e, d in zip(enc, dec))
        self.decoder = nn.ModuleList(
            nn.Sequential(ConvBNReLU(dec[i], dec[i], 3, n), ConvBNReLU(dec[i], dec[max(i - 1, 0)], 3, n))
            for i in range(4))
        self.head = nn.Sequential(ConvBNReLU(dec[0], dec[0], 3, n), )
        self.classifier = _conv(dec[0], 1, 1, n, bias=True)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x + 1) * 0.5 - self.mean) / self.std  # [-1, 1] -> ImageNet normalisation
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            feats.append(x)
        y = None
        for i in reversed(range(4)):
            p = self.parallel[i](feats[i])
            y = p if y is None else _up(y) + p
            y = self.decoder[i](y)
        y = self.head(_up(y))                 # H/2
        return self.classifier(_up(y))        # H

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Soft masks in [0, 1]: (B, n_rois, H, W)."""
        return torch.sigmoid(self(x))

    # -- conversion between per-ROI networks and the batched bank --
    @classmethod
    def stack(cls, nets: Sequence["SMPN"]) -> "SMPN":
        """Batch several single-ROI SMPNs into one grouped network (same outputs, one graph)."""
        assert all(m.n_rois == 1 for m in nets)
        bank = cls(nets[0].cfg, n_rois=len(nets))
        sds = [m.state_dict() for m in nets]
        bank.load_state_dict({k: (torch.cat([sd[k] for sd in sds]) if sds[0][k].dim() else sds[0][k])
                              for k in sds[0]})
        return bank.train(nets[0].training)

    def unstack(self) -> list["SMPN"]:
        """Split a grouped bank into single-ROI networks."""
        n, sd = self.n_rois, self.state_dict()
        nets = []
        for i in range(n):
            m = SMPN(self.cfg, n_rois=1)
            m.load_state_dict({k: (v.chunk(n)[i] if v.dim() else v) for k, v in sd.items()})
            nets.append(m.train(self.training))
        return nets


def load_resnet18_weights(model: SMPN, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Load torchvision `resnet18` (ImageNet) encoder weights into every ROI of an SMPN (width 64 only).

    Returns the names loaded. The classifier (`fc.*`) is ignored.
    """
    if model.cfg.width != 64:
        raise ValueError("ImageNet ResNet18 weights need SMPNConfig.width == 64")
    own = model.state_dict()
    loaded = {}
    for k, v in state_dict.items():
        if k.startswith("fc.") or k not in own:
            continue
        loaded[k] = torch.cat([v] * model.n_rois) if v.dim() else v
    model.load_state_dict(loaded, strict=False)
    return sorted(loaded)
