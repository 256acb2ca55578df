"""Checkpoints (safetensors + config, no pickle, atomic) and the command line."""
import subprocess
import sys

import pytest
import torch

from ssae.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from ssae.config import PRESETS, SSAEConfig, preset
from ssae.models.ssae_model import SSAE


def test_config_json_roundtrip():
    for cfg in PRESETS.values():
        assert SSAEConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown preset"):
        preset("paper1024")


def test_checkpoint_roundtrip_file_and_component_folder(tmp_path):
    torch.manual_seed(0)
    model = SSAE(preset("tiny")).eval()
    save_checkpoint(tmp_path / "all.safetensors", model, model.cfg)
    folder = tmp_path / "parts"
    for comp in ("sae", "smpn", "rb"):
        save_checkpoint(folder / f"{comp}.safetensors", model, model.cfg, component=comp)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ref = model.freeze().edit(x, "nose", [4]).image
        for src in (tmp_path / "all.safetensors", folder):
            loaded = load_model(src)
            assert loaded.cfg == model.cfg
            assert torch.equal(loaded.edit(x, "nose", [4]).image, ref)
    assert not list(tmp_path.rglob("*.tmp"))
    raw = (tmp_path / "all.safetensors").read_bytes()
    assert b"pickle" not in raw[:2000] and raw[8:9] == b"{"  # safetensors header, not a pickle


def test_corrupt_and_foreign_checkpoints_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(bad)
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not an SSAE checkpoint"):
        read_checkpoint(tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.safetensors")


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    def boom(tensors, path, metadata=None):
        open(path, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)  # what save_checkpoint calls
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "m.safetensors", SSAE(preset("tiny")), preset("tiny"))
    assert list(tmp_path.iterdir()) == []


def test_cli_info_runs_on_a_cpu_only_machine():
    out = subprocess.run([sys.executable, "-m", "ssae.cli", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"torch          {torch.__version__}" in out.stdout
    assert "onnxruntime providers:" in out.stdout and "CPUExecutionProvider" in out.stdout
    assert "instruction sets:" in out.stdout and "avx512_vnni=" in out.stdout
    from ssae.kernels.cuda import unavailable_reason
    assert f"fused CUDA kernel: {unavailable_reason() or 'available'}" in out.stdout
    from ssae.runtime.registry import auto_backend, backend_label
    assert f"auto backend: {backend_label(*auto_backend())}" in out.stdout
