"""The TensorRT layer on a CPU machine: precision plans, FP16 graphs (structure, ONNX Runtime parity), the engine
cache's pure logic, the plugin's launch ABI, import guards and one-line errors where TensorRT is missing.

What needs TensorRT and a GPU (building engines, running them, CUDA graphs) is in tests/gpu/test_tensorrt.py.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from ssae.export import fp16, trt_build
from ssae.export.onnx_export import example_inputs, read_manifest, sha256_file
from ssae.export.precision_plan import FORMAT, PrecisionPlan, PrecisionPlanError
from ssae.export.stages import stage_specs
from ssae.kernels import ops as fused_ops
from ssae.pipeline import ROI_MASK

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
#: fp16 vs fp32 on ONNX Runtime CPU, max |diff| relative to the fp32 output's max |value|, random inputs. (ORT's CPU
#: provider computes most fp16 ops through inserted float32 Casts, so this mostly measures the fp16 rounding of
#: weights and of the tensors that cross the graph in fp16; TensorRT's fp16 kernels are checked on the GPU.)
FP16_REL_TOL = 1e-2


def _trt_missing() -> bool:
    try:
        import tensorrt  # noqa: F401
        return False
    except ImportError:
        return True


@pytest.fixture(scope="module")
def fp16_export(tmp_path_factory, tiny_export):
    out = tmp_path_factory.mktemp("fp16")
    fp16.write_export(tiny_export, out)
    return out


def _plugin_node(g):
    return next(n for n in g.graph.node if n.domain == fused_ops.PLUGIN_NAMESPACE)


def _float_init_types(g):
    return {i.name: i.data_type for i in g.graph.initializer if i.data_type in (F32, F16)}


# ------------------------------------------------------------------------------------------------ precision plan
def test_precision_plan_round_trip_and_digest(tmp_path):
    plan = PrecisionPlan("fp16", {"sae_decoder_prefix": ["node_rsqrt", "node_Sqrt_15"], "smpn": []},
                         {"source_export": "x", "images": 3})
    p = tmp_path / "plan.json"
    plan.save(p)
    back = PrecisionPlan.load(p)
    assert back == plan and back.format == FORMAT and json.loads(p.read_text())["format"] == "ssae-precision-plan/1"
    assert back.for_stage("sae_decoder_prefix") == ["node_rsqrt", "node_Sqrt_15"] and back.for_stage("refine_x") == []
    other = PrecisionPlan("fp16", {"smpn": [], "sae_decoder_prefix": ["node_Sqrt_15", "node_rsqrt"]}, {"images": 9})
    assert other.digest() == plan.digest()  # what is decided, not who decided it
    assert PrecisionPlan("fp16", {"smpn": ["a"]}).digest() != plan.digest()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary


@pytest.mark.parametrize("text, match", [
    ("{not json", "corrupt precision plan"),
    ('{"format": "other", "precision": "fp16"}', "format 'other'"),
    ('{"format": "ssae-precision-plan/1", "precision": "int4"}', "precision 'int4'"),
    ('{"format": "ssae-precision-plan/1", "keep_fp32": {"smpn": "node_a"}}', r"keep_fp32\['smpn'\]"),
    ('{"format": "ssae-precision-plan/1", "keep_fp32": {}, "extra": 1}', "unknown fields: extra"),
    ("[1, 2]", "not a JSON object"),
])
def test_precision_plan_errors_are_one_line(tmp_path, text, match):
    p = tmp_path / "plan.json"
    p.write_text(text)
    with pytest.raises(PrecisionPlanError, match=match) as e:
        PrecisionPlan.load(p)
    assert "\n" not in str(e.value)
    with pytest.raises(PrecisionPlanError, match="not found"):
        PrecisionPlan.load(tmp_path / "missing.json")


# ------------------------------------------------------------------------------------------------ fp16 graphs
def test_fp16_graphs_are_strongly_typed_with_fp32_edges(tiny_export, fp16_export):
    man = read_manifest(fp16_export)  # every sha256 verified
    src = read_manifest(tiny_export)
    assert man["precision"] == "fp16" and man["format"] == src["format"]
    assert set(man["stages"]) == {n for n, e in src["stages"].items() if not e.get("cpu_only")}
    for name, e in man["stages"].items():
        assert e["source_sha256"] == src["stages"][name]["sha256"] and e["sha256"] == sha256_file(fp16_export / e["file"])
        g = onnx.load(str(fp16_export / e["file"]))
        fp16.check_model(g)
        assert all(v.type.tensor_type.elem_type == F32 for v in list(g.graph.input) + list(g.graph.output)), name
        types = _float_init_types(g)
        resize_scales = {n.input[2] for n in g.graph.node if n.op_type == "Resize" and len(n.input) > 2}
        assert all(t == (F32 if k in resize_scales else F16) for k, t in types.items()), name
        dt = fp16.node_dtypes(g)
        casts = [n for n in g.graph.node if n.op_type == "Cast"]
        # Casts only at the edges: from each float input, into each output
        assert {n.input[0] for n in casts if dict((a.name, a.i) for a in n.attribute)["to"] == F16} <= \
            {v.name for v in g.graph.input}, name
        assert {n.output[0] for n in casts if dict((a.name, a.i) for a in n.attribute)["to"] == F32} == \
            {v.name for v in g.graph.output}, name
        for n in g.graph.node:  # every compute node is fp16 in and out (Resize scales excepted)
            if n.op_type == "Cast":
                continue
            ins, outs = dt[n.name]
            floats = [t for k, t in enumerate(ins) if t in (F32, F16) and not (n.op_type == "Resize" and k == 2)]
            assert all(t == F16 for t in floats + [t for t in outs if t in (F32, F16)]), (name, n.name, ins, outs)
        meta = {p.key: p.value for p in g.metadata_props}
        assert meta["ssae.precision"] == "fp16" and json.loads(meta["ssae.keep_fp32"]) == []


def test_kept_nodes_run_in_fp32_between_casts(tiny_export):
    g = onnx.load(str(tiny_export / "sae_decoder_edit.onnx"))
    names = [n.name for n in g.graph.node]
    keep = [n.name for n in g.graph.node if n.op_type in ("ReduceSum", "Sqrt", "Reciprocal")][:3]
    assert len(keep) == 3
    low, rep = fp16.convert_model(g, keep)
    assert rep.kept_fp32 == [k for k in names if k in keep]
    dt = fp16.node_dtypes(low)
    for k in keep:
        ins, outs = dt[k]
        assert all(t == F32 for t in ins + outs if t in (F32, F16)), k
    produced = {o: n for n in low.graph.node for o in n.output}
    for k in keep:  # an fp32 input comes from a Cast, another kept node, or an fp32 initializer/graph input
        node = next(n for n in low.graph.node if n.name == k)
        for i in node.input:
            p = produced.get(i)
            assert p is None or p.op_type == "Cast" or p.name in keep, (k, i)
    # the chain ReduceSum -> Sqrt -> Reciprocal (all kept) passes fp32 tensors directly: no round trips inside it
    sqrt = next(n for n in low.graph.node if n.name == keep[1])
    assert produced[sqrt.input[0]].name == keep[0]
    assert rep.casts > 7  # edge casts + casts into and out of the kept chain
    with pytest.raises(ValueError, match="not in graph"):
        fp16.convert_model(g, ["no_such_node"])
    with pytest.raises(ValueError, match="bf16 graphs are not made by conversion"):
        fp16.convert_model(g, [], precision="bf16")


def test_fp16_io_option_makes_edges_fp16(tiny_export):
    g = onnx.load(str(tiny_export / "refine_hair.onnx"))
    low, rep = fp16.convert_model(g, [], io="fp16")
    assert rep.casts == 0 and not [n for n in low.graph.node if n.op_type == "Cast"]
    assert all(v.type.tensor_type.elem_type == F16 for v in list(low.graph.input) + list(low.graph.output))
    sess = ort.InferenceSession(low.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.zeros((1, 3, 8, 8), np.float16)
    out = sess.run(None, {"image": x, "mask": x[:, :1]})[0]
    assert out.dtype == np.float16 and out.shape == (1, 3, 8, 8)


def test_plugin_graph_custom_node_gets_fp16_io(tiny_export, fp16_export):
    g = onnx.load(str(fp16_export / "sae_decoder_edit_plugin.onnx"))
    node = _plugin_node(g)
    assert node.op_type == fused_ops.PLUGIN_NAME and len(node.input) == len(fused_ops.ONNX_INPUTS)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"plugin_namespace": b"ssae", "plugin_version": b"1", "activate": 1}
    ins, outs = fp16.node_dtypes(g)[node.name]
    assert ins == [F16] * 9 and outs == [F16]
    assert len(g.functions) == 0
    # kept in fp32 by the plan: the node's nine inputs and its output are float32, Casts around it
    src = onnx.load(str(tiny_export / "sae_decoder_edit_plugin.onnx"))
    low, _ = fp16.convert_model(src, [node.name])
    ins, outs = fp16.node_dtypes(low)[node.name]
    assert ins == [F32] * 9 and outs == [F32]


def test_fp16_export_runs_on_onnxruntime_cpu_close_to_fp32(tiny_model, tiny_export, fp16_export):
    specs = stage_specs(tiny_model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    man = read_manifest(fp16_export)
    for name, e in man["stages"].items():
        if e["plugin"]:
            continue
        hw = (13, 9) if "height" in json.dumps(e["inputs"]) else None  # a crop where the graph allows one
        args = example_inputs(specs[name], batch=2, seed=5, hw=hw, full_hw=32)
        feed = {t.name: a.numpy() for t, a in zip(specs[name].inputs, args)}
        ref = ort.InferenceSession(str(tiny_export / e["file"]), so, providers=["CPUExecutionProvider"]).run(None, feed)
        got = ort.InferenceSession(str(fp16_export / e["file"]), so, providers=["CPUExecutionProvider"]).run(None, feed)
        for r, o in zip(ref, got):
            assert o.dtype == np.float32 and o.shape == r.shape
            rel = float(np.abs(o - r).max() / max(np.abs(r).max(), 1e-6))
            assert rel <= FP16_REL_TOL, (name, rel)
            assert rel > 0 or name.startswith("smpn"), (name, "fp16 graph computed exactly the fp32 result?")
    ops = fp16.ort_fp16_fallback_ops(fp16_export / "sae_decoder_prefix.onnx")
    assert isinstance(ops, list)  # which ops ORT's CPU provider runs through float32 Casts (informational)


def test_fp16_export_edits_like_fp32_through_the_editor(tiny_export, fp16_export):
    from ssae.runtime import Editor
    from ssae.runtime.onnx_backends import OrtBackend
    rng = np.random.default_rng(0)
    img = (rng.random((40, 36, 3)) * 255).astype(np.uint8)
    a = Editor.load(tiny_export, backend="onnxruntime").edit(img, roi="hair", seed=2, frame="whole")
    fp = Editor.load(fp16_export, backend="onnxruntime")
    assert isinstance(fp.backend, OrtBackend) and fp.backend.precision == "fp16"
    b = fp.edit(img, roi="hair", seed=2, frame="whole")
    diff = np.abs(np.asarray(a.image).astype(int) - np.asarray(b.image).astype(int))
    assert diff.max() <= 4 and diff.mean() < 0.5  # 8-bit levels


def test_write_export_with_plan_records_it(tiny_export, tmp_path):
    g = onnx.load(str(tiny_export / "sae_decoder_prefix.onnx"))
    keep = [n.name for n in g.graph.node if n.op_type == "ReduceMean"][:2]
    plan = PrecisionPlan("fp16", {"sae_decoder_prefix": keep, "not_exported": ["x"]}, {"by": "test"})
    man = fp16.write_export(tiny_export, tmp_path / "out", plan=plan, stages=["sae_decoder_prefix", "refine_hair"])
    assert set(man["stages"]) == {"sae_decoder_prefix", "refine_hair"}
    rp = man["reduced_precision"]
    assert rp["plan"]["keep_fp32"]["sae_decoder_prefix"] == keep and rp["plan_digest"] == plan.digest()
    assert rp["plan_stages_not_exported"] == ["not_exported"]
    assert man["stages"]["sae_decoder_prefix"]["conversion"]["kept_fp32"] == keep
    bad = PrecisionPlan("fp16", {"refine_hair": ["nope"]})
    with pytest.raises(ValueError, match="refine_hair: keep_fp32 names nodes not in graph"):
        fp16.write_export(tiny_export, tmp_path / "bad", plan=bad)
    with pytest.raises(ValueError, match="plan is for bf16"):
        fp16.write_export(tiny_export, tmp_path / "bad", plan=PrecisionPlan("bf16"), precision="fp16")
    with pytest.raises(ValueError, match="another folder"):
        fp16.write_export(tiny_export, tiny_export)


# ------------------------------------------------------------------------------------------------ engine cache logic
ENV = {"tensorrt": "11.1.0.106", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def test_profile_shapes_from_the_manifest(tiny_export):
    man = read_manifest(tiny_export)
    s = man["model_config"]["image_size"]
    p = trt_build.profile_shapes(man["stages"]["smpn"]["inputs"], max_batch=8, opt_batch=2, size=s)
    assert p == {"image": ((1, 3, s, s), (2, 3, s, s), (8, 3, s, s))}
    e = trt_build.profile_shapes(man["stages"]["sae_decoder_edit"]["inputs"], max_batch=4, size=s)
    assert e["xi"] == ((1, 1, 4, 4), (1, 1, s, s), (1, 1, s, s))  # xi is one map: batch dim fixed to 1
    assert e["mask"] == ((1, 1, 4, 4), (1, 1, s, s), (4, 1, s, s))
    assert e["strength"] == ((1,), (1,), (4,)) and e["noise"][2] == (4, 32)
    assert e["h"][0][1] == e["h"][2][1]  # channels fixed
    r = trt_build.profile_shapes(man["stages"]["refine_hair"]["inputs"], 2, size=s, opt_hw=16)
    assert r["image"] == ((1, 3, 4, 4), (1, 3, 16, 16), (2, 3, s, s))
    assert trt_build.shape_in_profile((2, 3, 7, 30), r["image"]) and not trt_build.shape_in_profile((3, 3, 7, 7),
                                                                                                       r["image"])
    with pytest.raises(ValueError, match="opt_batch"):
        trt_build.profile_shapes(man["stages"]["smpn"]["inputs"], max_batch=2, opt_batch=4, size=s)
    with pytest.raises(ValueError, match="model size"):
        trt_build.profile_shapes(man["stages"]["refine_hair"]["inputs"], 2)
    glue = trt_build.roi_mask_spec(5, s)
    g = trt_build.profile_shapes(glue["inputs"], 2, size=s, max_channels=glue["max_channels"])
    assert g["masks"] == ((1, 1, s, s), (1, 1, s, s), (2, 5, s, s)) and g["roi"] == ((1,), (1,), (1,))


def test_engine_cache_key_covers_every_dependency():
    shapes = {"image": ((1, 3, 32, 32), (1, 3, 32, 32), (8, 3, 32, 32))}
    k = trt_build.make_key("ab" * 32, ENV, "fp16", shapes)
    assert k.digest() == trt_build.make_key("ab" * 32, dict(ENV), "fp16", dict(shapes)).digest()
    assert trt_build.EngineKey.from_dict(json.loads(json.dumps(k.to_dict()))) == k
    variants = [trt_build.make_key("cd" * 32, ENV, "fp16", shapes),
                trt_build.make_key("ab" * 32, dict(ENV, tensorrt="11.0.0.1"), "fp16", shapes),
                trt_build.make_key("ab" * 32, dict(ENV, gpu="NVIDIA A100-SXM4-80GB"), "fp16", shapes),
                trt_build.make_key("ab" * 32, dict(ENV, compute_capability="8.0"), "fp16", shapes),
                trt_build.make_key("ab" * 32, ENV, "fp32", shapes),
                trt_build.make_key("ab" * 32, ENV, "fp16", {"image": ((1, 3, 32, 32),) * 2 + ((4, 3, 32, 32),)}),
                trt_build.make_key("ab" * 32, ENV, "fp16", shapes, plugin="aot")]
    digests = {v.digest() for v in variants} | {k.digest()}
    assert len(digests) == len(variants) + 1
    name = trt_build.engine_file_name("sae_encoder", k)
    assert name.startswith("sae_encoder.") and name.endswith(".engine") and k.digest()[:16] in name
    assert trt_build.timing_cache_name(ENV) == "timing-nvidia-h100-80gb-hbm3-sm_90-trt11.1.0.106.cache"


def _fake_engine_dir(d: Path, env: dict) -> Path:
    """An engine folder whose 'engine' is a few bytes (the pure checks never deserialize it)."""
    d.mkdir(parents=True, exist_ok=True)
    key = trt_build.make_key("00" * 32, env, "fp16", {"image": ((1, 3, 8, 8),) * 3})
    name = trt_build.engine_file_name("smpn", key)
    (d / name).write_bytes(b"not a real engine")
    side = {"format": trt_build.SIDECAR_FORMAT, "stage": "smpn", "key": key.to_dict(), "digest": key.digest(),
            "engine_sha256": sha256_file(d / name)}
    (d / (name + ".json")).write_text(json.dumps(side))
    (d / trt_build.INDEX).write_text(json.dumps({"format": trt_build.INDEX_FORMAT, "environment": env,
                                                 "engines": {"smpn": {"file": name}}, "manifest": {}}))
    return d


def test_engines_built_elsewhere_are_refused_with_one_line(tmp_path):
    d = _fake_engine_dir(tmp_path / "eng", ENV)
    assert trt_build.verify_engines(d, ENV)["engines"]["smpn"]["file"].startswith("smpn.")
    a100 = {"tensorrt": "11.1.0.106", "gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}
    with pytest.raises(trt_build.EngineMismatch) as e:
        trt_build.verify_engines(d, a100)
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith("rebuild with `ssae build`")
    assert "built for TensorRT 11.1.0.106 on NVIDIA H100 80GB HBM3 (sm_90)" in msg
    assert "this is TensorRT 11.1.0.106 on NVIDIA A100-SXM4-80GB (sm_80)" in msg
    with pytest.raises(trt_build.EngineMismatch, match="built for TensorRT 11.1.0.106 .*this is TensorRT 11.2.0"):
        trt_build.verify_engines(d, dict(ENV, tensorrt="11.2.0.1"))
    assert trt_build.sidecar_mismatch({"key": ENV}, ENV) is None
    eng = next(d.glob("*.engine"))
    eng.write_bytes(b"corrupted")
    with pytest.raises(trt_build.EngineMismatch, match="corrupt engine file"):
        trt_build.verify_engines(d, ENV)
    with pytest.raises(trt_build.EngineMismatch, match="no TensorRT engines"):
        trt_build.read_index(tmp_path / "nothing")
    with pytest.raises(trt_build.EngineMismatch, match="no valid sidecar"):
        trt_build.check_sidecar({}, ENV, "x.engine")


def test_roi_mask_glue_graph_selects_and_quantises(tiny_export):
    g = trt_build.roi_mask_graph(5, 32)
    sess = ort.InferenceSession(g.SerializeToString(), providers=["CPUExecutionProvider"])
    m = np.random.default_rng(1).random((2, 5, 32, 32)).astype(np.float32)
    out = sess.run(None, {"masks": m, "roi": np.array([3], np.int32)})[0]
    assert out.shape == (2, 1, 32, 32)
    np.testing.assert_array_equal(out, np.round(m[:, 3:4] * 255.0) / np.float32(255.0))  # the Editor's rule


def test_plugin_graph_bytes_select_aot_or_jit(tiny_export):
    path = tiny_export / "sae_decoder_edit_plugin.onnx"
    assert trt_build._model_bytes(path, "none") == path.read_bytes()
    for mode, want in (("aot", 1), ("jit", 0)):
        g = onnx.load_from_string(trt_build._model_bytes(path, mode))
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in _plugin_node(g).attribute}
        assert attrs["aot"] == want and attrs["plugin_namespace"] == b"ssae"


# ------------------------------------------------------------------------------------------------ plugin ABI
def test_plugin_launch_abi_matches_the_kernel_module():
    from ssae.kernels import cuda as kcuda
    from ssae.kernels import trt_plugin
    assert trt_plugin.INPUTS == kcuda.REGION_INPUTS == fused_ops.ONNX_INPUTS
    grid, block = trt_plugin.launch_geometry(2, 70, 33, 17)
    assert grid == ((17 + 15) // 16 * ((33 + 7) // 8), 2, 2) and block == (256, 1, 1)
    args = trt_plugin.scalar_args(2, 8, 70, 33, 17, activate=1, xi_batch=1)
    assert len(args) == len(kcuda.SCALARS) == 15
    named = dict(zip(kcuda.SCALARS, args))
    assert named["xi_mode"] == kcuda.XI_EXPLICIT and named["xi_batch_stride"] == 0 and named["full_width"] == 17
    assert dict(zip(kcuda.SCALARS, trt_plugin.scalar_args(2, 8, 70, 33, 17, 1, xi_batch=2)))["xi_batch_stride"] == 33 * 17
    assert trt_plugin.kernel_name("f32") == "ssae_masked_modconv_region_f32"
    assert trt_plugin.kernel_name("f16", trt_plugin.TACTIC_SIMT) == "ssae_masked_modconv_region_f16_simt"
    assert trt_plugin.output_shape((2, 8, 33, 17), (70, 8, 3, 3)) == (2, 70, 33, 17)


def test_plugin_ptx_defines_the_kernels_it_names():
    from ssae.kernels import cuda as kcuda
    from ssae.kernels import trt_plugin
    if kcuda.find_nvcc() is None:
        pytest.skip("nvcc not found: the AOT plugin's PTX cannot be compiled here")
    entries = kcuda.ptx_entry_points(trt_plugin.kernel_ptx(80).decode())
    for dtype, tactic in (("f32", 1), ("f16", 1), ("f16", 2)):
        assert trt_plugin.kernel_name(dtype, tactic) in entries


# ------------------------------------------------------------------------------------------------ without TensorRT
GUARDED = ("ssae.export.trt_build", "ssae.export.fp16", "ssae.export.precision_plan", "ssae.kernels.trt_plugin",
           "ssae.runtime.tensorrt_backend")


def test_tensorrt_modules_import_without_tensorrt_or_cuda_bindings():
    code = ("import sys\n"
            "for m in ('tensorrt', 'tensorrt.plugin', 'cuda', 'cuda.bindings', 'cuda.bindings.runtime'):\n"
            "    sys.modules[m] = None  # import of these now raises ImportError\n"
            f"import importlib\nfor m in {GUARDED!r}:\n    importlib.import_module(m)\n"
            "from ssae.kernels import trt_plugin\n"
            "ok, why = trt_plugin.availability()\n"
            "assert ok == {'aot': False, 'jit': False} and 'TensorRT' in why['aot'], why\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make `import tensorrt` fail here even where it is installed (blocks the import; no stand-in module)."""
    for m in ("tensorrt", "tensorrt.plugin"):
        monkeypatch.setitem(sys.modules, m, None)


def test_missing_tensorrt_gives_one_line_errors(no_tensorrt, tiny_export):
    from ssae.kernels import trt_plugin
    from ssae.runtime.backend import BackendError
    from ssae.runtime.registry import create_backend, resolve_model
    from ssae.runtime.tensorrt_backend import TensorRTBackend
    with pytest.raises(trt_build.TensorRTUnavailable, match="^TensorRT is not installed"):
        trt_build.build_engines(tiny_export)
    with pytest.raises(BackendError, match="^TensorRT is not installed") as e:
        TensorRTBackend(tiny_export)
    assert "\n" not in str(e.value)
    with pytest.raises(BackendError, match="^TensorRT is not installed"):
        create_backend("tensorrt", resolve_model(tiny_export))
    if not trt_plugin.is_registered():
        with pytest.raises(trt_plugin.PluginUnavailable, match="TensorRT is not installed"):
            trt_plugin.register_plugin()


def test_ssae_build_without_tensorrt_exits_with_the_reason(no_tensorrt, tiny_export, capsys):
    from ssae.cli import main
    rc = main(["build", "--model", str(tiny_export)])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines() == [
        "ssae build: error: TensorRT is not installed (pip install 'ssae[gpu]' on a CUDA machine)"]
    assert not (tiny_export / "tensorrt-fp16").exists()


def test_ssae_build_subprocess_exit_code():
    if not _trt_missing():
        pytest.skip("TensorRT is installed here: the missing-TensorRT path is covered in-process")
    r = subprocess.run([sys.executable, "-m", "ssae.cli", "build"], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and r.stderr.strip() == \
        "ssae build: error: TensorRT is not installed (pip install 'ssae[gpu]' on a CUDA machine)"


def test_ssae_export_precision_fp16_cli(tiny_export, tmp_path, capsys):
    from ssae.cli import main
    out = tmp_path / "fp16"
    assert main(["export", "--model", str(tiny_export), "--precision", "fp16", "--out", str(out)]) == 0
    man = read_manifest(out)
    assert man["precision"] == "fp16" and man["reduced_precision"]["source_export"] == str(tiny_export)
    assert json.loads(capsys.readouterr().out)["smpn"] == "smpn.onnx"
    bad = tmp_path / "plan.json"
    bad.write_text('{"format": "nope"}')
    rc = main(["export", "--model", str(tiny_export), "--precision", "fp16", "--plan", str(bad), "--out",
               str(tmp_path / "x")])
    assert rc == 2 and "format 'nope'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ ORT IO binding
def test_onnxruntime_io_binding_path_equals_plain_run(tiny_model, tiny_export):
    from ssae.runtime.onnx_backends import OrtBackend
    plain, bound = OrtBackend(tiny_export, iobinding=False), OrtBackend(tiny_export, iobinding=True)
    assert bound.io_device == ("cpu", 0)  # CUDA provider absent here: bound on the CPU device
    specs = stage_specs(tiny_model)
    for stage in ("sae_encoder", "sae_decoder_prefix", "sae_decoder_edit", "refine_lips"):
        feed = {t.name: a.numpy() for t, a in zip(specs[stage].inputs, example_inputs(specs[stage], 2, full_hw=32))}
        a, b = plain.run(stage, feed), bound.run(stage, feed)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    image = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 3, 32, 32), np.float32), "cpu", 0)
    vals = bound.run_ortvalues("sae_encoder", {"image": image})  # outputs stay OrtValues on the bound device
    assert set(vals) == {"structure", "texture"} and vals["texture"].device_name() == "cpu"


def test_engine_folder_staleness(tiny_export):
    man = read_manifest(tiny_export)
    idx = {"source_sha256": {n: e["sha256"] for n, e in man["stages"].items()}, "plan_digest": None}
    assert trt_build.index_is_current(idx, man)
    plan = PrecisionPlan("fp16", {"smpn": ["x"]})
    assert not trt_build.index_is_current(idx, man, plan)  # asked for another plan
    assert trt_build.index_is_current(dict(idx, plan_digest=plan.digest()), man)  # built with a plan: accepted
    other = json.loads(json.dumps(man))
    other["stages"]["smpn"]["sha256"] = "0" * 64
    assert not trt_build.index_is_current(idx, other)  # re-exported graphs


def test_chain_binds_each_output_to_the_next_input(tiny_export):
    """The pipeline's chain wiring (`ssae.pipeline`, which the TensorRT engines, the torch chain and the Triton
    ensemble all walk): every stage input is the output of an earlier stage in the chain or one of the chain's host
    inputs; the re-edit starts from what the full chain left on the device."""
    from ssae.pipeline import FULL, HELD, REEDIT, chain_stages, slot as _slot
    man = read_manifest(tiny_export)
    io = dict(man["stages"])
    io[ROI_MASK] = trt_build.roi_mask_spec(5, 32)
    host_inputs = {"image", "noise", "strength", "roi", "xi"}
    for smpn in ("smpn", "smpn_lips"):
        stages = chain_stages("lips", smpn, FULL)
        assert stages[0] == smpn and stages[-1] == "refine_lips"
        made = set()
        for st in stages:
            for t in io[st]["inputs"]:
                slot = _slot(st, t["name"])
                assert slot in made or slot in host_inputs, (st, t["name"], slot)
            made |= {_slot(st, t["name"]) for t in io[st]["outputs"]}
        assert _slot("refine_lips", "refined") == "refined" and "mask" in made
        assert set(HELD) <= made
    # the re-edit reads what the full chain left on the device
    assert chain_stages("hair", "smpn", REEDIT) == [ROI_MASK, "sae_decoder_edit", "refine_hair"]
    for st in chain_stages("hair", "smpn", REEDIT):
        for t in io[st]["inputs"]:
            assert _slot(st, t["name"]) in set(HELD) | host_inputs | {"mask", "coarse"}, (st, t["name"])
    assert _slot("sae_decoder_edit", "image") == _slot("refine_hair", "image") == "coarse"
    assert _slot("sae_decoder_edit_pixel", "noise") != _slot("sae_decoder_edit", "noise")


@pytest.fixture
def fake_builder(monkeypatch):
    """build_engines' TensorRT, GPU and plugin calls replaced: builds "succeed" for the modes in `works`, return
    bytes naming the mode, and are recorded; PTX bytes are `ptx[0]`. Everything else (job planning, the fallback
    order, cache keys, sidecars, the index) is the real code."""
    import types

    from ssae.kernels import trt_plugin
    state = types.SimpleNamespace(works={"none"}, calls=[], ptx=[b"// ptx v1"], available={"aot": True, "jit": True})
    monkeypatch.setattr(trt_build, "require_tensorrt", lambda: types.SimpleNamespace(__version__=ENV["tensorrt"]))
    monkeypatch.setattr(trt_build, "gpu_info", lambda device=0: {"gpu": ENV["gpu"],
                                                                  "compute_capability": ENV["compute_capability"]})

    def build(model_bytes, shapes, timing, opts, plugin_mode="none", name="", path=None):
        state.calls.append((name, plugin_mode))
        if plugin_mode not in state.works:
            if plugin_mode == "jit":
                raise trt_plugin.PluginUnavailable("the JIT plugin needs torch on CUDA")
            raise trt_build.BuildError(f"TensorRT could not build {name}")
        return f"engine {name} {plugin_mode}".encode()

    monkeypatch.setattr(trt_build, "build_engine", build)
    monkeypatch.setattr(trt_build, "inspect_engine", lambda blob: {"layers": []})
    monkeypatch.setattr(trt_plugin, "availability", lambda: (state.available, {"aot": "", "jit": ""}))
    monkeypatch.setattr(trt_plugin, "register_plugin", lambda: None)
    monkeypatch.setattr(trt_plugin, "kernel_ptx", lambda arch=None: state.ptx[0])
    return state


def test_plugin_build_falls_back_aot_jit_standard_and_records_it(fake_builder, tiny_export, tmp_path):
    opts = trt_build.BuildOptions(precision="fp32", max_batch=2)
    idx = trt_build.build_engines(tiny_export, tmp_path / "e", opts=opts)
    edit = idx["engines"]["sae_decoder_edit"]
    assert [m for n, m in fake_builder.calls if n in ("sae_decoder_edit_plugin.onnx", "sae_decoder_edit.onnx")] \
        == ["aot", "jit", "none"]
    assert edit["plugin"] == "none" and edit["graph"] == "sae_decoder_edit" and idx["plugin"] == "none"
    assert [a["plugin"] for a in edit["failed_first"]] == ["aot", "jit"]
    assert "could not build" in edit["failed_first"][0]["error"] and "needs torch" in edit["failed_first"][1]["error"]
    side = json.loads((tmp_path / "e" / (edit["file"] + ".json")).read_text())
    assert side["plugin"] == "none" and len(side["failed_first"]) == 2
    assert "sae_decoder_edit_sparse" not in idx["engines"]                     # cpu_only: never built
    # AOT works: the plugin graph, its key carries the PTX digest; a new PTX (kernel or nvcc change) rebuilds
    fake_builder.works, fake_builder.calls = {"aot", "none"}, []
    idx = trt_build.build_engines(tiny_export, tmp_path / "f", opts=opts)
    edit = idx["engines"]["sae_decoder_edit"]
    side = json.loads((tmp_path / "f" / (edit["file"] + ".json")).read_text())
    assert edit["plugin"] == "aot" and edit["graph"] == "sae_decoder_edit_plugin" and side["key"]["kernel"]
    assert "failed_first" not in edit
    fake_builder.calls = []
    assert trt_build.build_engines(tiny_export, tmp_path / "f", opts=opts)["engines"]["sae_decoder_edit"]["file"] \
        == edit["file"] and fake_builder.calls == []                          # same key: cached
    fake_builder.ptx[0] = b"// ptx v2"
    again = trt_build.build_engines(tiny_export, tmp_path / "f", opts=opts)["engines"]["sae_decoder_edit"]
    assert again["file"] != edit["file"] and ("sae_decoder_edit_plugin.onnx", "aot") in fake_builder.calls
    # an explicit mode never falls back
    fake_builder.works = {"none"}
    with pytest.raises(trt_build.BuildError, match="sae_decoder_edit: TensorRT could not build"):
        trt_build.build_engines(tiny_export, tmp_path / "g", opts=trt_build.BuildOptions(precision="fp32",
                                                                                          plugin="aot"))
    with pytest.raises(trt_build.BuildError, match="needs torch"):
        trt_build.build_engines(tiny_export, tmp_path / "h", opts=trt_build.BuildOptions(precision="fp32",
                                                                                          plugin="jit"))
    fake_builder.available = {"aot": False, "jit": False}
    assert trt_build.plugin_modes("auto") == ["none"]
    with pytest.raises(trt_build.TensorRTUnavailable, match="AOT plugin is not available"):
        trt_build.plugin_modes("aot")


def test_shipped_kernel_builds_do_not_treat_warnings_as_errors():
    from ssae.kernels import cuda as kc
    import inspect
    for fn in (kc.compile_kernel, kc.compile_ptx, kc.compile_cubin):
        assert inspect.signature(fn).parameters["strict"].default is False, fn.__name__
    assert "-Werror" in kc.nvcc_flags("ptx", "90", strict=True) and "-Werror" not in kc.nvcc_flags("ptx", "90", False)
