"""TensorRT on a GPU machine: engines built from the FP16 export (plugin graph for the edit stage), checked against
ONNX Runtime fp32; the CUDA-graph chain against stage-by-stage runs; the ONNX Runtime CUDA IO-binding path against
the CPU path; refusal of engines built elsewhere.

Skipped with the reason where TensorRT, cuda-bindings or a CUDA GPU is missing. Run on a GPU machine:
`python -m pytest -q -m tensorrt tests/gpu/test_tensorrt.py` (benchmarks/gpu_check.sh runs it).
"""
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from ssae.export import trt_build
from ssae.export.onnx_export import example_inputs, read_manifest
from ssae.export.stages import stage_specs
from ssae.pipeline import ROI_MASK

#: TensorRT FP16 engines vs ONNX Runtime fp32: max |diff| / max |fp32 output| on random inputs (fp16 has an 11-bit
#: significand; the tiny model's graphs are a few layers deep)
FP16_REL_TOL = 3e-2


def _missing() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed"
    try:
        from cuda.bindings import runtime  # noqa: F401
    except ImportError:
        return "cuda-bindings is not installed"
    try:
        trt_build.gpu_info()
    except trt_build.TensorRTUnavailable as e:
        return str(e)
    return None


MISSING = _missing()
pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]
needs_trt = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory, tiny_export):
    out = tmp_path_factory.mktemp("engines")
    trt_build.build_engines(tiny_export, out, opts=trt_build.BuildOptions(max_batch=4), progress=print)
    return out


@pytest.fixture(scope="module")
def backend(engine_dir, tiny_export):
    from ssae.runtime.tensorrt_backend import TensorRTBackend
    be = TensorRTBackend(tiny_export, engine_dir=engine_dir)
    yield be
    be.close()


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


@needs_trt
def test_build_writes_engines_sidecars_and_timing_cache(engine_dir, tiny_export, capsys):
    idx = trt_build.read_index(engine_dir)
    env = trt_build.current_environment()
    assert idx["environment"] == env and idx["precision"] == "fp16"
    src = read_manifest(tiny_export)
    # every stage but the plugin graph and the CPU-only sparse tail (the fp16 export and the build leave it out)
    want = {s for s, e in src["stages"].items() if not e["plugin"] and not e.get("cpu_only")} | {ROI_MASK}
    assert set(idx["engines"]) == want
    edit = idx["engines"]["sae_decoder_edit"]
    assert edit["graph"] == ("sae_decoder_edit_plugin" if idx["plugin"] != "none" else "sae_decoder_edit")
    for stage, e in idx["engines"].items():
        side = json.loads((engine_dir / (e["file"] + ".json")).read_text())
        assert side["key"]["gpu"] == env["gpu"] and side["key"]["precision"] == "fp16" and side["stage"] == stage
        assert (engine_dir / (e["file"][: -len(".engine")] + ".layers.json")).exists()
    assert (engine_dir / trt_build.timing_cache_name(env)).stat().st_size > 0
    assert read_manifest(engine_dir / "onnx")["precision"] == "fp16"
    mtimes = {p.name: p.stat().st_mtime_ns for p in engine_dir.glob("*.engine")}
    capsys.readouterr()
    trt_build.build_engines(tiny_export, engine_dir, opts=trt_build.BuildOptions(max_batch=4), progress=print)
    assert "cached" in capsys.readouterr().out  # same key: reused, not rebuilt
    assert {p.name: p.stat().st_mtime_ns for p in engine_dir.glob("*.engine")} == mtimes


@needs_trt
def test_inspector_shows_fp16_layers(engine_dir):
    idx = trt_build.read_index(engine_dir)
    layers = json.loads((engine_dir / (idx["engines"]["sae_encoder"]["file"][: -len(".engine")]
                                       + ".layers.json")).read_text())
    text = json.dumps(layers)
    assert "Half" in text or "FP16" in text or "fp16" in text


@needs_trt
@pytest.mark.parametrize("batch", [1, 3])
def test_engines_match_onnxruntime_fp32(backend, tiny_model, tiny_export, batch):
    specs = stage_specs(tiny_model)
    man = read_manifest(tiny_export)
    for stage in backend.stages():
        e = man["stages"][stage]
        hw = (13, 9) if "height" in json.dumps(e["inputs"]) else None
        args = example_inputs(specs[stage], batch=batch, seed=batch, hw=hw, full_hw=backend.size)
        feed = {t.name: a.numpy() for t, a in zip(specs[stage].inputs, args)}
        ref = ort.InferenceSession(str(tiny_export / e["file"]), providers=["CPUExecutionProvider"]).run(None, feed)
        got = backend.run(stage, feed)
        for t, r in zip(specs[stage].outputs, ref):
            assert got[t.name].shape == r.shape and got[t.name].dtype == np.float32
            assert _rel(got[t.name], r) <= FP16_REL_TOL, (stage, t.name, _rel(got[t.name], r))


@needs_trt
def test_inputs_outside_the_profile_are_refused(backend):
    from ssae.runtime.backend import BackendError
    s = backend.size
    with pytest.raises(BackendError, match="outside the engine's profile"):
        backend.run("smpn", {"image": np.zeros((5, 3, s, s), np.float32)})  # max batch 4


def _stage_by_stage(be, image, roi, seed, strength):
    from ssae import philox
    s = be.size
    g = int(be.manifest["model_config"]["sae"]["global_code_ch"])
    m = be.run("smpn", {"image": image})["masks"]
    mask = np.round(m[:, be.rois.index(roi): be.rois.index(roi) + 1] * 255.0) / np.float32(255.0)
    codes = be.run("sae_encoder", {"image": image})
    pre = be.run("sae_decoder_prefix", codes)
    feed = dict(h=pre["h"], skip=pre["skip"], texture=codes["texture"], mask=mask,
                noise=philox.gaussian_batch([seed], philox.STREAM_REGION, (g,)),
                strength=np.full((1,), strength, np.float32))
    if be.manifest.get("local_tail"):
        feed["xi"] = be._xi
    coarse = be.run("sae_decoder_edit", feed)["image"]
    refined = be.run(f"refine_{roi}", {"image": coarse, "mask": mask})["refined"]
    assert refined.shape == (1, 3, s, s)
    return refined, mask


@needs_trt
def test_cuda_graph_chain_equals_stage_by_stage(backend, tiny_export, engine_dir):
    from ssae.runtime.backend import BackendError
    from ssae.runtime.tensorrt_backend import TensorRTBackend
    s = backend.size
    image = (np.random.default_rng(0).random((1, 3, s, s)) * 2 - 1).astype(np.float32)
    chain = backend.device_chain()
    out = chain.full(image, roi="hair", seed=3, strength=1.0)
    if backend.index["plugin"] != "jit":  # a JIT plugin calls back into Python/torch, which may not be capturable
        assert all(v == "cuda graph" for v in chain.info().values()), chain.info()
    again = chain.reedit(roi="hair", seed=5, strength=0.5)  # cached re-edit graph
    assert "reedit/hair/smpn" in chain.info()
    full5 = chain.full(image, roi="hair", seed=5, strength=0.5)
    np.testing.assert_allclose(again["refined"], full5["refined"], atol=1e-5)
    ref, mask = _stage_by_stage(backend, image, "hair", 3, 1.0)
    # TensorRT may quantise the mask as x * (1/255) instead of x / 255: what the mask feeds (the edit) is compared
    np.testing.assert_allclose(out["mask"], mask, atol=1.01 / 255)
    np.testing.assert_allclose(out["refined"], ref, atol=1e-3)
    with pytest.raises(BackendError, match="run a full chain first"):
        chain.reedit(roi="hair", seed=1, strength=1.0)  # run() reused the buffers
    eager = TensorRTBackend(tiny_export, engine_dir=engine_dir, cuda_graphs=False)
    try:
        e = eager.device_chain().full(image, roi="hair", seed=3, strength=1.0)
        np.testing.assert_array_equal(e["refined"], out["refined"])
    finally:
        eager.close()


@needs_trt
def test_editor_on_tensorrt_matches_onnxruntime(backend, tiny_export):
    from ssae.runtime import Editor
    from ssae.runtime.onnx_backends import OrtBackend
    img = (np.random.default_rng(1).random((40, 36, 3)) * 255).astype(np.uint8)
    a = Editor(OrtBackend(tiny_export, providers=["CPUExecutionProvider"]))
    b = Editor(backend)
    for roi, seed in (("hair", 2), ("lips", 7)):
        ra, rb = a.edit(img, roi=roi, seed=seed, frame="whole"), b.edit(img, roi=roi, seed=seed, frame="whole")
        d = np.abs(np.asarray(ra.image).astype(int) - np.asarray(rb.image).astype(int))
        assert d.max() <= 8 and d.mean() < 1.0, (roi, d.max(), d.mean())


@needs_trt
def test_engine_for_another_gpu_is_refused(engine_dir, tiny_export, tmp_path):
    from ssae.runtime.backend import BackendError
    from ssae.runtime.tensorrt_backend import TensorRTBackend
    copy = tmp_path / "elsewhere"
    shutil.copytree(engine_dir, copy)
    side = next(copy.glob("sae_encoder.*.engine.json"))
    d = json.loads(side.read_text())
    d["key"]["gpu"], d["key"]["compute_capability"] = "NVIDIA Jetson AGX Orin", "8.7"
    side.write_text(json.dumps(d))
    with pytest.raises(BackendError, match=r"built for TensorRT .* on NVIDIA Jetson AGX Orin \(sm_87\); this is .*"
                                           r"rebuild with `ssae build`"):
        TensorRTBackend(tiny_export, engine_dir=copy, build=False)


@needs_trt
def test_plugin_registration_is_idempotent():
    from ssae.kernels import trt_plugin
    trt_plugin.register_plugin()
    trt_plugin.register_plugin()
    assert trt_plugin.is_registered()
    ok, why = trt_plugin.availability()
    assert ok["aot"] or ok["jit"], why


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="onnxruntime-gpu (CUDAExecutionProvider) is not installed")
def test_onnxruntime_cuda_io_binding_equals_cpu(tiny_model, tiny_export):
    from ssae.runtime.onnx_backends import OrtBackend
    cpu = OrtBackend(tiny_export, providers=["CPUExecutionProvider"])
    gpu = OrtBackend(tiny_export, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert gpu.iobinding and gpu.io_device == ("cuda", 0)
    specs = stage_specs(tiny_model)
    for stage in ("smpn", "sae_encoder", "sae_decoder_prefix", "sae_decoder_edit", "refine_hair"):
        feed = {t.name: a.numpy() for t, a in zip(specs[stage].inputs, example_inputs(specs[stage], 2, full_hw=32))}
        a, b = cpu.run(stage, feed), gpu.run(stage, feed)
        for k in a:
            assert _rel(b[k], a[k]) <= 1e-3, (stage, k)
    vals = gpu.run_ortvalues("sae_encoder", {"image": ort.OrtValue.ortvalue_from_numpy(
        np.zeros((1, 3, 32, 32), np.float32), "cuda", 0)})
    assert vals["texture"].device_name().lower() == "cuda"
    pre = gpu.run_ortvalues("sae_decoder_prefix", vals)  # chained on the device, no host copy in between
    assert set(pre) == {"h", "skip"}
