"""INT8 calibration (QDQ, per-channel symmetric weights) on real faces: structure, accuracy, CLI report."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from ssae.calibration.int8 import Int8Config, quantize_export
from ssae.calibration.report import compare_exports
from ssae.export.onnx_export import read_manifest


@pytest.fixture(scope="module")
def faces(shared_dir):
    from ssae.data.layouts import LFWParts
    from ssae.data.memory import MemoryDataset
    ds = LFWParts(shared_dir / "data" / "lfw_parts", "train", 32)
    ds.names = ds.names[:12]
    return MemoryDataset.load(ds).images


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, tiny_export, faces):
    out = tmp_path_factory.mktemp("int8")
    quantize_export(tiny_export, out, faces[:8], Int8Config(method="minmax"))
    return out


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
    assert zps and all(np.all(z == 0) for z in zps)  # symmetric
    assert man["stages"]["sae_decoder_edit_plugin"]["plugin"]  # the plugin graph is carried over unchanged


def test_int8_edits_stay_close_to_fp32(tiny_export, int8_export, faces):
    rep = compare_exports(tiny_export, int8_export, faces[8:], backends=("onnxruntime",))
    r = rep["onnxruntime"]
    assert r["psnr_db"] >= 25.0 and r["ssim"] > 0.8 and r["speedup_vs_fp32"] > 0


def test_unknown_method_is_rejected(tiny_export, tmp_path, faces):
    with pytest.raises(ValueError, match="calibration method"):
        quantize_export(tiny_export, tmp_path, faces[:2], Int8Config(method="kl"))


def test_calibrate_cli_writes_report(tmp_path, tiny_export, shared_dir):
    out = tmp_path / "q"
    r = subprocess.run([sys.executable, "-m", "ssae.cli", "calibrate", "--precision", "int8", "--model",
                        str(tiny_export), "--lfw", str(shared_dir / "data" / "lfw_parts"), "--count", "6",
                        "--report-images", "2", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["int8"]["onnxruntime"]["psnr_db"] > 20 and rep["calibration"]["format"] == "QDQ"
