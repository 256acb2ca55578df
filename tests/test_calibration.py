"""Calibration: calibration sets, fp16/bf16 precision plans, INT8 QDQ graphs and cache, exclusion search, report."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from ssae.calibration.accuracy import compare_variant, markdown_report
from ssae.calibration.dataset import CalibrationSet, CalibrationSetError
from ssae.calibration.float_plan import make_plan, plan_graph, round_array, simulate
from ssae.calibration.int8 import Int8Config, quantize_export, stage_feeds
from ssae.calibration.int8_search import graph_group, search_exclusions
from ssae.export.onnx_export import read_manifest
from ssae.runtime.onnx_backends import OrtBackend


@pytest.fixture(scope="module")
def cset(lfw_mini):
    return CalibrationSet.from_lfw(lfw_mini, 32, count=12)


@pytest.fixture(scope="module")
def faces(cset):
    return cset.images


@pytest.fixture(scope="module")
def test_faces(lfw_mini):
    from ssae.data.layouts import LFWParts
    from ssae.data.memory import MemoryDataset
    ds = LFWParts(lfw_mini, "test", 32)
    ds.names = ds.names[:3]
    return MemoryDataset.load(ds)


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, tiny_export, faces):
    out = tmp_path_factory.mktemp("int8")
    quantize_export(tiny_export, out, faces[:8], Int8Config(method="minmax"), cache_dir=out / "cache")
    return out


# ------------------------------------------------------------------------------------------- calibration set
def test_calibration_set_round_trip_with_provenance(cset, tmp_path):
    path = cset.save(tmp_path / "set.npz")
    back = CalibrationSet.load(path)
    assert np.array_equal(back.images, cset.images) and back.names == cset.names
    p = back.provenance
    assert p["layout"] == "LFWParts" and p["split"] == "train" and p["count"] == 12 and p["size"] == 32
    assert len(p["sha256"]) == 64
    z = dict(np.load(path))
    z["images"] = z["images"].copy()
    z["images"][0, 0, 0, 0] ^= 1  # one pixel changed: the recorded hash no longer matches
    np.savez(tmp_path / "bad.npz", **z)
    with pytest.raises(CalibrationSetError, match="sha256"):
        CalibrationSet.load(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CalibrationSetError, match="not a calibration set"):
        CalibrationSet.load(tmp_path / "junk.npz")


# ------------------------------------------------------------------------------------------- fp16 / bf16 plans
def test_rounding_matches_torch_half_and_bfloat16():
    a = np.random.default_rng(0).standard_normal(10000).astype(np.float32) * np.float32(300.0)
    a[:3] = [70000.0, 1e-9, -65520.0]
    for prec, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        want = torch.from_numpy(a).to(dt).float().numpy()
        assert np.array_equal(round_array(a, prec), want, equal_nan=True), prec


def _square_mean_graph():
    """y = ReduceMean(x * x) * 0.5: x*x overflows fp16 for |x| > 256."""
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"], name="square"),
             helper.make_node("ReduceMean", ["sq"], ["m"], name="mean", keepdims=1),
             helper.make_node("Mul", ["m", "half"], ["y"], name="scale")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], [half])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_fp16_plan_keeps_the_overflowing_node_in_fp32():
    model = _square_mean_graph()
    feeds = [{"x": np.full((1, 64), 400.0, np.float32)}]
    sim = simulate(model, "fp16")
    from ssae.calibration.float_plan import _session
    assert not np.isfinite(_session(sim).run(None, feeds[0])[0]).all()  # the simulation overflows like fp16 would
    res = plan_graph(model, feeds, "fp16", target_snr_db=45.0)
    assert "square" in res.overflow_nodes and "square" in res.keep_fp32
    assert res.snr_db_all_low == float("-inf") and res.snr_db >= 45.0
    bf = plan_graph(model, feeds, "bf16", target_snr_db=20.0)  # bf16 has the fp32 range: nothing overflows
    assert bf.overflow_nodes == [] and bf.snr_db > 20.0


def test_plans_for_every_graph_of_an_export(tiny_export, faces, tmp_path):
    feeds = stage_feeds(tiny_export, faces[:3])
    plan, results = make_plan(tiny_export, feeds, "fp16")
    runnable = {s for s, e in read_manifest(tiny_export)["stages"].items()
                if not e.get("plugin") and not e.get("cpu_only")}  # the sparse re-edit graph runs fp32 only
    assert set(results) == runnable
    for r in results.values():
        assert r.snr_db >= r.snr_db_all_low and r.snr_db > 40.0
    plan.save(tmp_path / "plan.json")
    from ssae.export.precision_plan import PrecisionPlan
    back = PrecisionPlan.load(tmp_path / "plan.json")
    assert back.precision == "fp16" and back.provenance["target_snr_db"] == 45.0


# ------------------------------------------------------------------------------------------- int8
def test_qdq_graphs_with_per_channel_symmetric_weights(int8_export):
    man = read_manifest(int8_export)  # hashes verified
    assert man["precision"] == "int8" and man["calibration"]["images"] == 8
    g = onnx.load(str(int8_export / "sae_decoder_prefix.onnx"))
    ops = [n.op_type for n in g.graph.node]
    assert ops.count("QuantizeLinear") > 5 and ops.count("DequantizeLinear") > 5 and "Conv" in ops
    inits = {i.name: i for i in g.graph.initializer}
    axes = [a.i for n in g.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    assert axes, "per-channel weight quantization carries an axis"
    zps = [onnx.numpy_helper.to_array(inits[n.input[2]]) for n in g.graph.node
           if n.op_type == "DequantizeLinear" and len(n.input) > 2 and n.input[2] in inits]
    assert zps and all(np.all(z == 0) for z in zps)  # symmetric: int8 activations/weights, int32 biases
    assert {z.dtype for z in zps} <= {np.dtype(np.int8), np.dtype(np.int32)} and np.dtype(np.int8) in {z.dtype for z in zps}
    assert man["calibration"]["op_types"] == ["Conv", "ConvTranspose", "Gemm", "MatMul"]
    conv_inputs = {i for n in g.graph.node if n.op_type == "Conv" for i in n.input}
    dq_out = {n.output[0] for n in g.graph.node if n.op_type == "DequantizeLinear"}
    assert all(len(set(n.input) & dq_out) >= 2 for n in g.graph.node if n.op_type == "Conv")  # int8 x and W
    assert conv_inputs & dq_out
    assert man["stages"]["sae_decoder_edit_plugin"]["plugin"]  # the plugin graph is carried over unchanged


def test_calibration_cache_replaces_the_calibration_pass(tiny_export, int8_export, tmp_path):
    cache = int8_export / "cache"
    assert len(list(cache.glob("*.json"))) >= 5
    again = tmp_path / "again"
    # no images at all: every range must come from the cache
    quantize_export(tiny_export, again, np.zeros((0, 32, 32, 3), np.uint8), Int8Config(method="minmax"),
                    cache_dir=cache)
    for f in ("sae_decoder_prefix.onnx", "refine_hair.onnx", "smpn.onnx"):
        assert (again / f).read_bytes() == (int8_export / f).read_bytes(), f


def test_u8_activations_for_onnxruntime_on_x86(tiny_export, faces, tmp_path):
    quantize_export(tiny_export, tmp_path, faces[:4], Int8Config(activations="u8", stages=("refine_hair",)))
    g = onnx.load(str(tmp_path / "refine_hair.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in g.graph.initializer}
    q = [n for n in g.graph.node if n.op_type == "QuantizeLinear"]
    assert q and all(inits[n.input[2]].dtype == np.uint8 for n in q)
    cal = read_manifest(tmp_path)["calibration"]
    assert cal["activations"] == "uint8 asymmetric" and "ConvTranspose" not in cal["op_types"]
    with pytest.raises(ValueError, match="activation type"):
        quantize_export(tiny_export, tmp_path / "x", faces[:2], Int8Config(activations="fp8"))


def test_onnxruntime_runs_s8_graphs_as_u8_bit_identical_with_every_conv_fused(tiny_export, int8_export, faces,
                                                                             tmp_path):
    import onnxruntime as ort
    from ssae.runtime.qdq_u8 import float_convs, u8_activations
    feeds = stage_feeds(tiny_export, faces[:1])
    be = OrtBackend(int8_export, providers=["CPUExecutionProvider"])
    for stage in ("smpn", "sae_encoder", "sae_decoder_prefix", "refine_hair"):
        path = int8_export / be.manifest["stages"][stage]["file"]
        model = onnx.load(str(path))
        n = u8_activations(model)
        assert n > 0, stage
        zps = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        q = [nd for nd in model.graph.node if nd.op_type == "QuantizeLinear"]
        assert q and all(zps[nd.input[2]].dtype == np.uint8 and np.all(zps[nd.input[2]] == 128) for nd in q)
        w = [nd for nd in model.graph.node if nd.op_type == "DequantizeLinear" and nd.input[0] in zps]
        assert w and all(zps[nd.input[2]].dtype in (np.int8, np.int32) for nd in w)  # weights and biases untouched
        assert float_convs(model) == 0, stage
        # the backend's outputs equal the s8 file run as it is, to the bit
        raw = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = feeds[stage][0]
        want = dict(zip([o.name for o in raw.get_outputs()], raw.run(None, feed)))
        got = be.run(stage, feed)
        for k, v in want.items():
            assert np.array_equal(got[k], v), (stage, k)
    # `ssae profile` times the graph the backend runs: int8 convs only
    from ssae.runtime.profiling.profile import profile_onnxruntime
    ops = {r["name"] for r in profile_onnxruntime(be, "smpn", feeds["smpn"][0], runs=2, top=100)["by_op"]}
    assert "QLinearConv" in ops and "Conv" not in ops, ops
    assert u8_activations(onnx.load(str(tiny_export / "smpn.onnx"))) == 0  # fp32: nothing to convert
    u8 = tmp_path / "u8"
    quantize_export(tiny_export, u8, faces[:2], Int8Config(activations="u8", stages=("refine_hair",)))
    assert u8_activations(onnx.load(str(u8 / "refine_hair.onnx"))) == 0  # already uint8


def test_int8_report_against_fp32_on_labelled_faces(tiny_export, int8_export, test_faces):
    r = compare_variant(OrtBackend(tiny_export), OrtBackend(int8_export), test_faces.images, test_faces.masks,
                        test_faces.labelled)
    assert r["psnr_db"] >= 25.0 and r["ssim"] > 0.8
    assert set(r["iou_delta"]) == {"hair", "skin", "nose", "eyes", "lips"}
    assert r["iou_delta"]["hair"] is not None and abs(r["iou_delta"]["hair"]) <= 0.05  # 25 dB apart: same masks
    assert r["iou_delta"]["nose"] is None  # no derived labels given: no IoU for nose
    md = markdown_report({"precisions": {"int8": {"onnxruntime": r}}})
    assert "| int8 | onnxruntime |" in md and "IoU Δ hair" in md


def test_unknown_method_is_rejected(tiny_export, tmp_path, faces):
    with pytest.raises(ValueError, match="calibration method"):
        quantize_export(tiny_export, tmp_path, faces[:2], Int8Config(method="kl"))


def test_exclusion_search_keeps_the_costliest_group_in_float(tiny_export, faces, tmp_path):
    assert graph_group("smpn_lips") == "smpn" and graph_group("refine_eyes") == "refine"
    cfg, hist = search_exclusions(tiny_export, faces[:6], faces[10:12], Int8Config(), target_psnr=500.0,
                                  max_rounds=1, cache_dir=tmp_path / "cache")
    assert hist[0]["keep_float"] == [] and len(hist) >= 3
    kept = set(cfg.keep_float)
    groups = {graph_group(s) for s in kept}
    assert len(groups) == 1 and kept == {s for s in read_manifest(tiny_export)["stages"]
                                         if graph_group(s) in groups and not s.endswith("_plugin")}
    ranked = [h for h in hist if h["quantized_only"]]
    worst = min(ranked, key=lambda h: h["psnr_db"])
    assert set(worst["quantized_only"]) == kept  # the group that cost the most PSNR alone is the one kept


def test_speed_check_keeps_the_graphs_int8_makes_slower_in_float():
    from ssae.calibration.int8_speed import keep_slower_float
    cfg = Int8Config(keep_float=("smpn",))
    speeds = {"smpn_hair": {"speedup": 0.8}, "sae_decoder_prefix": {"speedup": 1.6}, "refine_hair": {"speedup": 0.99},
              "smpn": {"speedup": 0.5}}
    assert keep_slower_float(cfg, speeds).keep_float == ("smpn", "smpn_hair", "refine_hair")
    assert keep_slower_float(cfg, {"sae_encoder": {"speedup": 1.2}}) is cfg
    assert keep_slower_float(cfg, speeds, min_gain=2.0).keep_float == ("smpn", "smpn_hair", "sae_decoder_prefix",
                                                                      "refine_hair")


def test_int8_quantizes_the_subpixel_decoder_and_times_every_graph(tiny_export, tiny_model, faces, tmp_path):
    """The INT8 path of `ssae calibrate` on a subpixel export: every conv of the decoder prefix is int8 (no float
    ConvTranspose left), the calibration record names the layout, and the speed check timed each int8 graph
    against fp32 (stages it found slower are kept float and say so in the manifest)."""
    from ssae.calibration.run import CalibrateConfig, _int8
    from ssae.export.onnx_export import export_onnx
    sub = tmp_path / "sub"
    export_onnx(tiny_model, sub, stages=["sae_decoder_prefix", "sae_encoder"], plugin=False, upsample="subpixel")
    feeds = stage_feeds(tiny_export, faces[:6])
    out = tmp_path / "q"
    rec = _int8(CalibrateConfig(out=str(out), search=False), tiny_export, sub, out, faces[:6], faces[6:8], feeds,
                log=lambda m: None)
    assert rec["upsample_mode"] == "subpixel" and set(rec["speed_check"]) == {"sae_decoder_prefix", "sae_encoder"}
    for v in rec["speed_check"].values():
        assert v["fp32_ms"] > 0 and v["int8_ms"] > 0 and v["speedup"] == pytest.approx(v["fp32_ms"] / v["int8_ms"], rel=1e-2)
    man = read_manifest(out)
    slow = {s for s, v in rec["speed_check"].items() if v["speedup"] < 1.0}
    assert set(man["calibration"]["kept_float"]) == slow
    for s in ("sae_decoder_prefix", "sae_encoder"):
        assert man["stages"][s].get("precision") == (None if s in slow else "int8")
    if "sae_decoder_prefix" not in slow:
        g = onnx.load(str(out / "sae_decoder_prefix.onnx")).graph
        prod = {o: n for n in g.node for o in n.output}
        convs = [n for n in g.node if n.op_type in ("Conv", "ConvTranspose")]
        assert convs and all(n.op_type == "Conv" for n in convs)
        assert all(prod[n.input[0]].op_type == "DequantizeLinear" for n in convs)


# ------------------------------------------------------------------------------------------- CLI
def test_calibrate_cli_writes_plans_graphs_and_report(tmp_path, tiny_export, lfw_mini):
    out = tmp_path / "c"
    r = subprocess.run([sys.executable, "-m", "ssae.cli", "calibrate", "--precision", "int8", "fp16", "bf16",
                        "--model", str(tiny_export), "--lfw", str(lfw_mini),
                        "--count", "6", "--report-images", "2", "--no-search", "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    for prec in ("int8", "fp16", "bf16"):
        s = rep[prec]
        assert s["backend"] is not None, prec
        assert s["psnr_db"] > 20 and set(s["iou_delta"]) == {"hair", "skin", "nose", "eyes", "lips"}
        assert set(s["locality_ratio"]) == set(s["iou_delta"])
    assert rep["fp16"]["backend"] == "simulated" and rep["fp16"]["psnr_db"] > 40
    assert rep["int8_calibration"]["format"] == "QDQ" and rep["calibration_set"]["count"] == 6
    assert CalibrationSet.load(out / "calibration_set.npz").provenance["split"] == "train"
    assert read_manifest(out / "fp16")["precision"] == "fp16" and (out / "fp16-plan.json").exists()
    assert read_manifest(out)["precision"] == "int8"
    md = (out / "report.md").read_text()
    assert "| fp16 | simulated |" in md and "| bf16 |" in md and "Calibration set: 6 faces" in md


def test_calibrate_cli_bad_calibration_set_is_one_line(tmp_path, tiny_export):
    r = subprocess.run([sys.executable, "-m", "ssae.cli", "calibrate", "--precision", "int8", "--model",
                        str(tiny_export), "--calibration-set", str(tmp_path / "none.npz"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "calibration set not found" in r.stderr
