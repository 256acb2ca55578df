"""The PyTorch backend on a CUDA device, end to end, against the same backend on the CPU.

Every stage on random inputs (float outputs within 1e-3 relative: cuDNN and the fused kernel vs CPU fp32), the
region edit's injection layer through the fused kernel (the launch counter moves), and whole edits of a face
through the Editor (uint8 images at most 2 levels apart). The ONNX Runtime CUDA path is in test_tensorrt.py.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from ssae.export.onnx_export import example_inputs
from ssae.export.stages import stage_specs
from ssae.kernels import cuda as kc
from ssae.runtime import Editor
from ssae.runtime.editor import _manifest_of
from ssae.runtime.torch_backend import TorchBackend

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
needs_kernel = pytest.mark.skipif(kc.unavailable_reason() is not None, reason=kc.unavailable_reason() or "")


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def backends(tiny_model):
    cpu = TorchBackend(copy.deepcopy(tiny_model), "cpu")
    gpu = TorchBackend(copy.deepcopy(tiny_model), "cuda")
    return cpu, gpu


@needs_cuda
def test_every_stage_on_cuda_matches_cpu(backends, tiny_model):
    cpu, gpu = backends
    assert gpu.fused_kernel and not cpu.fused_kernel  # the default: fused on CUDA only
    specs = stage_specs(tiny_model)
    size = tiny_model.cfg.image_size
    for stage in cpu.stages():
        feed = {t.name: a.numpy() for t, a in zip(specs[stage].inputs,
                                                  example_inputs(specs[stage], 2, seed=3, full_hw=size))}
        want, got = cpu.run(stage, feed), gpu.run(stage, feed)
        for name in want:
            assert got[name].dtype == np.float32 and got[name].shape == want[name].shape, (stage, name)
            assert _rel(got[name], want[name]) <= 1e-3, (stage, name, _rel(got[name], want[name]))


@needs_cuda
@needs_kernel
def test_region_edit_runs_the_fused_kernel(backends, tiny_model):
    cpu, gpu = backends
    specs = stage_specs(tiny_model)
    feed = {t.name: a.numpy() for t, a in zip(specs["sae_decoder_edit"].inputs,
                                              example_inputs(specs["sae_decoder_edit"], 1, seed=4,
                                                             full_hw=tiny_model.cfg.image_size))}
    before = kc.LAUNCHES["ssae_masked_modconv_region_f32"]
    got = gpu.run("sae_decoder_edit", feed)
    assert kc.LAUNCHES["ssae_masked_modconv_region_f32"] > before
    want = cpu.run("sae_decoder_edit", feed)
    for name in want:
        assert _rel(got[name], want[name]) <= 1e-3


@needs_cuda
@pytest.mark.parametrize("noise", ["region", "pixel"])
def test_editor_on_cuda_matches_cpu(backends, noise):
    cpu, gpu = backends
    rng = np.random.default_rng(5)
    face = Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))
    a = Editor(cpu, _manifest_of(cpu)).edit(face, roi="hair", seed=11, strength=2.0, noise=noise)
    b = Editor(gpu, _manifest_of(gpu)).edit(face, roi="hair", seed=11, strength=2.0, noise=noise)
    assert b.image.size == face.size
    diff = np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16))
    assert diff.max() <= 2, diff.max()
    np.testing.assert_allclose(b.mask, a.mask, atol=1e-3)
