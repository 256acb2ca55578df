"""Shared fixtures and helpers for the CPU test suite."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ssae.config import SAEConfig
from ssae.models.official import OfficialEncoder, OfficialGenerator

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SSAE_SHARED", ROOT.parent / "shared"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def shaping_options(cfg: SAEConfig) -> dict:
    """The official option names that shape the networks, as from_official takes them."""
    return {k: getattr(cfg, k) for k in (
        "netE_scale_capacity", "netE_num_downsampling_sp", "netE_num_downsampling_gl", "netE_nc_steepness",
        "spatial_code_ch", "global_code_ch", "netG_scale_capacity", "netG_num_base_resnet_layers",
        "netG_use_noise", "use_antialias")}


def random_official(cfg: SAEConfig, seed: int = 0) -> tuple[OfficialEncoder, OfficialGenerator]:
    """Official networks with random weights, including non-zero biases and noise strengths (which are zero at
    the official initialisation and would hide mistakes)."""
    torch.manual_seed(seed)
    e, g = OfficialEncoder(cfg).eval(), OfficialGenerator(cfg).eval()
    with torch.no_grad():
        for name, p in list(e.named_parameters()) + list(g.named_parameters()):
            if name.endswith("bias") or "noise" in name:
                p.normal_(0.0, 0.5)
    return e, g


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.exists():
        pytest.skip(f"shared data folder not found at {SHARED}")
    return SHARED
