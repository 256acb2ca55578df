"""Refinement Block (RB), one per region of interest.

Per the SSAE paper (Eq. 2): a few full-resolution convolutions with skip connections turn the noisy edit Y_N into
Y'; the fusion Y'' = Y' * M + Y_N * (1 - M) keeps everything outside the ROI; more convolutions give Y_ref.
The convs see the ROI mask as a fourth input channel (so they know where to refine), and both conv stacks are
residual with a zero-initialised last layer: an untrained RB is the identity, Y_ref = Y_N.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import RBConfig


class ResConv(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + F.leaky_relu(self.conv(x), 0.2)


class ConvStack(nn.Module):
    """in -> C (3x3) -> residual 3x3 convs -> 3 (3x3, zero-initialised): predicts a residual image."""

    def __init__(self, cin: int, c: int, layers: int):
        super().__init__()
        self.inp = nn.Conv2d(cin, c, 3, padding=1)
        self.body = nn.Sequential(*[ResConv(c) for _ in range(max(0, layers - 2))])
        self.out = nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x):
        return self.out(self.body(F.leaky_relu(self.inp(x), 0.2)))


class RefinementBlock(nn.Module):
    """(Y_N (B,3,H,W) in [-1,1], M (B,1,H,W) in [0,1]) -> Y_ref (B,3,H,W)."""

    def __init__(self, cfg: RBConfig | None = None):
        super().__init__()
        self.cfg = cfg or RBConfig()
        self.pre = ConvStack(4, self.cfg.channels, self.cfg.pre_layers)
        self.post = ConvStack(4, self.cfg.channels, self.cfg.post_layers)

    @property
    def radius(self) -> int:
        """Receptive-field radius in pixels (3x3 convs): an input change moves outputs at most this far."""
        return sum(2 + len(stack.body) for stack in (self.pre, self.post))

    def fuse(self, y_prime: torch.Tensor, y_noisy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Eq. 2: Y'' = Y' * M + Y_N * (1 - M)."""
        return y_prime * mask + y_noisy * (1 - mask)

    def forward(self, y_noisy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y_prime = y_noisy + self.pre(torch.cat([y_noisy, mask], 1))
        y2 = self.fuse(y_prime, y_noisy, mask)
        return y2 + self.post(torch.cat([y2, mask], 1))
