"""The PyTorch backend on a CUDA device, end to end, against the same backend on the CPU.

Every stage on random inputs (float outputs within 1e-3 relative: cuDNN and the fused kernel vs CPU fp32), the
region edit's injection layer through the fused kernel (the launch counter moves), whole edits through the Editor
(region edits via the device chain replayed from CUDA graphs, pixel edits via the stage path; uint8 images at most
2 levels apart), and the chain replayed from graphs against the same chain launched eagerly. The ONNX Runtime
CUDA path is in test_tensorrt.py.
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
def test_editor_on_cuda_matches_cpu(backends, noise, exact_host_paste):
    """Region edits go through the device chain (CUDA graphs: full edit, then re-edits; the crop cut and the change
    pasted on the device), pixel edits through the stage path; both equal the CPU stage path (pasted exactly, as on
    the device)."""
    cpu, gpu = backends
    assert gpu.device_chain() is not None and cpu.device_chain() is None
    rng = np.random.default_rng(5)
    face = Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))
    ea, eb = Editor(cpu), Editor(gpu)
    for roi, seed, kind in (("hair", 11, "full"), ("hair", 12, "reedit"), ("lips", 13, "full"), ("lips", 14, "reedit")):
        a = ea.edit(face, roi=roi, seed=seed, strength=2.0, noise=noise, frame="whole")
        b = eb.edit(face, roi=roi, seed=seed, strength=2.0, noise=noise, frame="whole")
        assert b.image.size == face.size
        diff = np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16))
        assert diff.max() <= 2, (roi, seed, diff.max())
        np.testing.assert_allclose(b.mask, a.mask, atol=1.5 / 255)
        if noise == "region":
            assert f"chain_{kind}" in b.timings and "frame" not in b.timings, b.timings
    if noise == "region":
        info = gpu.device_chain().info()
        assert info and all(v == "cuda graph" for v in info.values()), info


@needs_cuda
def test_device_chain_eager_equals_cuda_graphs(tiny_model):
    """The same chains launched eagerly and replayed from CUDA graphs (which share one memory pool): equal outputs
    at every step of an interleaving of full edits and re-edits over two images, several ROIs and both SMPN graphs,
    so a graph that read another's memory, or stale held codes, would show."""
    graphs = TorchBackend(copy.deepcopy(tiny_model), "cuda")
    eager = TorchBackend(copy.deepcopy(tiny_model), "cuda")
    eager.cuda_graphs = False  # before its chain exists
    rng = np.random.default_rng(9)
    s = tiny_model.cfg.image_size
    images = [rng.uniform(-1, 1, (1, 3, s, s)).astype(np.float32) for _ in range(2)]
    steps = [("full", 0, "skin", False), ("reedit", None, "nose", False), ("full", 1, "hair", False),
             ("reedit", None, "skin", False), ("full", 0, "lips", True), ("reedit", None, "lips", False),
             ("full", 1, "skin", False), ("reedit", None, "nose", False), ("reedit", None, "hair", False)]
    for k, (kind, img, roi, single) in enumerate(steps):
        outs = []
        for be in (graphs, eager):
            if kind == "full":
                outs.append(be.device_chain().full(images[img], roi=roi, seed=k, strength=1.5, single_roi=single))
            else:
                outs.append(be.device_chain().reedit(roi=roi, seed=k, strength=3.0))
        for name in outs[1]:
            np.testing.assert_allclose(outs[0][name], outs[1][name], rtol=1e-5, atol=1e-5, err_msg=f"step {k}")
    info = graphs.device_chain().info()
    # the chains captured since the held buffers last changed shape (single-ROI vs five-ROI masks)
    assert len(info) >= 3 and all(v == "cuda graph" for v in info.values()), info
    assert eager.device_chain().info() == {}


@needs_cuda
@needs_kernel
def test_fp16_backend_on_cuda(backends, tiny_model, exact_host_paste):
    """torch-fp16 on CUDA: region edits through the device chain (CUDA graphs) with the kernel's tensor-core entry,
    within 3 levels of the CPU's fp32 edits."""
    cpu, _ = backends
    fp16 = TorchBackend(copy.deepcopy(tiny_model), "cuda", "fp16")
    rng = np.random.default_rng(6)
    face = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    ea, eb = Editor(cpu), Editor(fp16)
    before = sum(v for k, v in kc.LAUNCHES.items() if k.startswith("ssae_masked_modconv_region_f16"))
    for roi, seed in (("hair", 21), ("skin", 22)):
        a = ea.edit(face, roi=roi, seed=seed, strength=2.0, frame="whole")
        b = eb.edit(face, roi=roi, seed=seed, strength=2.0, frame="whole")
        diff = np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16))
        assert diff.max() <= 3, (roi, diff.max())
    assert sum(v for k, v in kc.LAUNCHES.items() if k.startswith("ssae_masked_modconv_region_f16")) > before
    info = fp16.device_chain().info()
    assert info and all(v == "cuda graph" for v in info.values()), info


@needs_cuda
def test_photo_edits_on_the_device_eager_equal_cuda_graphs(tiny_model):
    """`DeviceChain.edit_photo` (cut, chain, strength-0 reference, paste on the device) with the chains replayed
    from CUDA graphs, which share one memory pool, against the same edits launched eagerly: equal photos over an
    interleaving of two photos, ROI switches and re-edits (a graph output read after another graph ran would show)."""
    graphs = TorchBackend(copy.deepcopy(tiny_model), "cuda")
    eager = TorchBackend(copy.deepcopy(tiny_model), "cuda")
    eager.cuda_graphs = False  # before its chain exists
    rng = np.random.default_rng(4)
    photos = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8) for _ in range(2)]
    ea, eb = Editor(graphs), Editor(eager)
    steps = [(0, "hair", 1), (0, "hair", 2), (0, "skin", 3), (1, "skin", 4), (0, "skin", 5), (1, "lips", 6),
             (1, "lips", 7)]
    for k, (p, roi, seed) in enumerate(steps):
        a = ea.edit(photos[p], roi=roi, seed=seed, strength=1.5, frame="whole")
        b = eb.edit(photos[p], roi=roi, seed=seed, strength=1.5, frame="whole")
        diff = np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16))
        assert diff.max() <= 1, (k, diff.max())
        assert any(t.startswith("chain_") for t in a.timings) and "frame" not in a.timings, a.timings
    info = graphs.device_chain().info()
    assert info and all(v == "cuda graph" for v in info.values()), info


@needs_cuda
@pytest.mark.parametrize("graphs", [True, False])
def test_concurrent_smpn_equals_the_sequential_chain(tiny_model, graphs):
    """`ChainLevers(concurrent_smpn=True)`: the SMPN on a second stream (two branches of one CUDA graph, or two
    streams launched eagerly) gives the sequential chain's outputs, full edits and re-edits over two images."""
    from ssae.runtime.torch_chain import ChainLevers

    seq = TorchBackend(copy.deepcopy(tiny_model), "cuda")
    par = TorchBackend(copy.deepcopy(tiny_model), "cuda")
    par.chain_levers = ChainLevers(concurrent_smpn=True)
    seq.cuda_graphs = par.cuda_graphs = graphs
    rng = np.random.default_rng(3)
    s = tiny_model.cfg.image_size
    for k in range(4):
        img = rng.uniform(-1, 1, (1, 3, s, s)).astype(np.float32)
        outs = [be.chain().full(img, roi="hair", seed=k, strength=1.5, single_roi=k % 2 == 0) for be in (seq, par)]
        outs += [be.chain().reedit(roi="hair", seed=k + 10, strength=2.0) for be in (seq, par)]
        for a, b in (outs[:2], outs[2:]):
            for name in a:
                np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-5, err_msg=f"{k} {name}")
    info = par.chain().info()
    assert all(v == "cuda graph" for v in info.values()) and bool(info) == graphs, info
