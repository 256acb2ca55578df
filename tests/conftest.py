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


def make_tiny_model(seed: int = 0):
    """The tiny SSAE with every component non-trivial (the RBs' zero-initialised output layers perturbed)."""
    from ssae.config import preset
    from ssae.models.ssae_model import SSAE

    torch.manual_seed(seed)
    model = SSAE(preset("tiny")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("refiners.") and ".out." in name:
                p.normal_(0, 0.05)
            if name.startswith("sae.") and ("noise_weight" in name or name.endswith(".bias")):
                p.normal_(0, 0.2)
    return model.freeze()


@pytest.fixture(scope="session")
def tiny_model():
    return make_tiny_model()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny_model):
    from ssae.checkpoint import save_checkpoint
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, tiny_model, tiny_model.cfg)
    return path


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_model):
    from ssae.export.onnx_export import export_onnx
    out = tmp_path_factory.mktemp("export")
    export_onnx(tiny_model, out, single_roi_smpn=True)
    return out


#: A small LFW Part Labels fixture shipped with the tests (32 faces, labels, derived masks; tests/fixtures).
LFW_MINI = Path(__file__).resolve().parent / "fixtures" / "lfw_mini"


@pytest.fixture(scope="session")
def lfw_mini() -> Path:
    return LFW_MINI


@pytest.fixture(scope="session")
def face_path():
    return LFW_MINI / "images" / "AJ_Cook_0001.jpg"


@pytest.fixture
def exact_host_paste(monkeypatch):
    """Make the host paste (`FaceCrop.change_patch`, which carries the change as 8-bit codes and warps large photos
    in two steps, to be fast on a CPU) exact, by running the device paste (`ssae.face.device.paste_change`) on CPU
    tensors: then a chain that pastes on the device and the stage path paste alike (exactness of both:
    tests/test_framing.py)."""
    from ssae.face import FaceCrop
    from ssae.face import device as fd

    def exact(self, rgb, change, soft):
        box = self.support_box(soft)
        if box is None:
            return None
        on_cpu = fd.DevicePhoto.upload(rgb, self, torch.device("cpu"))
        return box, fd.paste_change(on_cpu, self, torch.from_numpy(change.transpose(2, 0, 1).copy()),
                                    torch.from_numpy(soft), box).numpy()

    monkeypatch.setattr(FaceCrop, "change_patch", exact)
