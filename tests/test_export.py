"""ONNX export: files, checks, manifest, parity with PyTorch, the plugin graph."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ssae.export.onnx_export import ExportError, example_inputs, read_manifest, sha256_file
from ssae.export.stages import build_stages, stage_specs
from ssae.kernels import ops as fused_ops

EXPECTED = {"smpn", "sae_encoder", "sae_decoder_prefix", "sae_decoder_edit", "sae_decoder_edit_pixel", "sae_decoder_edit_sparse",
            "sae_decoder_edit_plugin"} | {f"refine_{r}" for r in ("hair", "skin", "nose", "eyes", "lips")} \
    | {f"smpn_{r}" for r in ("hair", "skin", "nose", "eyes", "lips")}


def test_manifest_lists_every_stage_with_io_and_hashes(tiny_export, tiny_model):
    m = read_manifest(tiny_export)
    assert set(m["stages"]) == EXPECTED
    assert m["opset"] >= 18 and m["versions"]["torch"] == torch.__version__
    from ssae.config import SSAEConfig
    assert SSAEConfig.from_dict(m["model_config"]) == tiny_model.cfg
    for name, e in m["stages"].items():
        assert sha256_file(tiny_export / e["file"]) == e["sha256"]
        g = onnx.load(str(tiny_export / e["file"]))
        assert [i.name for i in g.graph.input] == [t["name"] for t in e["inputs"]]
        assert [o.name for o in g.graph.output] == [t["name"] for t in e["outputs"]]
        assert any(o.version >= 18 for o in g.opset_import if o.domain in ("", "ai.onnx"))
        dim0 = g.graph.input[0].type.tensor_type.shape.dim[0]
        assert dim0.dim_param and not dim0.dim_value  # dynamic batch
        if not e["plugin"]:
            onnx.checker.check_model(g, full_check=True)


def _parity(tiny_export, tiny_model, name, args):
    sess = ort.InferenceSession(str(tiny_export / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    spec = stage_specs(tiny_model)[name]
    out = sess.run(None, {t.name: a.numpy() for t, a in zip(spec.inputs, args)})
    with torch.no_grad():
        ref = build_stages(tiny_model, single_roi_smpn=True)[name](*args)
    ref = ref if isinstance(ref, tuple) else (ref,)
    return max(float(np.abs(o - r.numpy()).max()) for o, r in zip(out, ref))


@pytest.mark.parametrize("name", sorted(EXPECTED - {"sae_decoder_edit_plugin"}))
@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_pytorch_on_random_inputs(tiny_export, tiny_model, name, batch):
    spec = stage_specs(tiny_model)[name]
    assert _parity(tiny_export, tiny_model, name, example_inputs(spec, batch, seed=batch + 7)) <= 1e-4


def test_onnxruntime_matches_pytorch_on_a_real_face(tiny_export, tiny_model, face_path):
    from ssae.data.transforms import SquareFit, to_model_tensor
    from ssae.runtime.images import load_image
    rgb = load_image(face_path)
    x = to_model_tensor(SquareFit(*rgb.shape[:2], 32).forward_rgb(rgb))[None]
    with torch.no_grad():
        masks = tiny_model.masks(x)
        sp, gl = tiny_model.sae.encode(x)
        h, skip = build_stages(tiny_model)["sae_decoder_prefix"](sp, gl)
    n = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32))
    assert _parity(tiny_export, tiny_model, "smpn", (x,)) <= 1e-4
    assert _parity(tiny_export, tiny_model, "sae_encoder", (x,)) <= 1e-4
    assert _parity(tiny_export, tiny_model, "sae_decoder_prefix", (sp, gl)) <= 1e-4
    g = tiny_model.sae.G
    xi = g.seeded_noise(0, sp.shape[-2:])[g.tail_noise_index]
    assert _parity(tiny_export, tiny_model, "sae_decoder_edit",
                   (h, skip, gl, masks[:, :1], n, torch.tensor([1.0]), xi)) <= 1e-4
    assert _parity(tiny_export, tiny_model, "refine_hair", (x, masks[:, :1])) <= 1e-4


def test_plugin_graph_has_one_custom_node_and_no_local_function(tiny_export):
    g = onnx.load(str(tiny_export / "sae_decoder_edit_plugin.onnx"))
    custom = [n for n in g.graph.node if n.domain == fused_ops.PLUGIN_NAMESPACE]
    assert len(custom) == 1 and custom[0].op_type == "MaskedModConv"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in custom[0].attribute}
    assert attrs["plugin_namespace"] == b"ssae" and attrs["plugin_version"] == b"1" and attrs["activate"] == 1
    assert len(g.functions) == 0
    assert len(custom[0].input) == len(fused_ops.ONNX_INPUTS)
    # the standard graph computes the same layer with plain ops (no custom domain)
    std = onnx.load(str(tiny_export / "sae_decoder_edit.onnx"))
    assert not [n for n in std.graph.node if n.domain not in ("", "ai.onnx")]
    assert len(std.graph.node) > len(g.graph.node)


def test_custom_op_reference_equals_the_decomposition(tiny_model):
    spec = stage_specs(tiny_model)["sae_decoder_edit"]
    args = example_inputs(spec, 2, seed=3)
    stage = build_stages(tiny_model)["sae_decoder_edit"]
    with torch.no_grad():
        plain = stage(*args)
        with fused_ops.use_fused_op(True):
            fused = stage(*args)
    assert torch.allclose(plain, fused, atol=1e-6)


def test_corrupt_or_incomplete_exports_are_detected(tiny_export, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(tiny_export, bad)
    f = bad / "sae_encoder.onnx"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ExportError, match="corrupt ONNX file"):
        read_manifest(bad)
    (bad / "sae_encoder.onnx").unlink()
    with pytest.raises(ExportError, match="missing ONNX file"):
        read_manifest(bad)
    with pytest.raises(ExportError, match="no manifest.json"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("name", ["sae_decoder_edit", "sae_decoder_edit_pixel", "refine_lips"])
def test_local_stages_accept_any_crop_size(tiny_export, tiny_model, name):
    """The edit tail and the RBs have dynamic spatial dims (the runtime runs them on ROI windows)."""
    spec = stage_specs(tiny_model)[name]
    assert "height" in spec.inputs[0].shape
    for hw in ((11, 13), (32, 32), (5, 29)):
        assert _parity(tiny_export, tiny_model, name, example_inputs(spec, 2, seed=1, hw=hw)) <= 1e-4


def test_subpixel_export_has_no_transposed_conv_and_matches_the_default(tiny_export, tiny_model, tmp_path):
    """`upsample="subpixel"` (the INT8 source): the decoder prefix without ConvTranspose, its pixel shuffles
    written channels-last (Transpose/Reshape, no DepthToSpace), the same outputs as the default export on ONNX
    Runtime; the other graphs are unchanged and the model's own mode is restored."""
    from ssae.export.onnx_export import export_onnx
    m = export_onnx(tiny_model, tmp_path, stages=["sae_decoder_prefix", "sae_encoder"], plugin=False,
                    upsample="subpixel")
    assert m["upsample_mode"] == "subpixel" and read_manifest(tiny_export)["upsample_mode"] == "separate"
    assert tiny_model.sae.G.upsample_mode == "separate"
    ops = lambda d: {n.op_type for n in onnx.load(str(d / "sae_decoder_prefix.onnx")).graph.node}
    assert "ConvTranspose" in ops(tiny_export) and "ConvTranspose" not in ops(tmp_path)
    assert "DepthToSpace" not in ops(tmp_path) and "Transpose" in ops(tmp_path)
    feed = {t.name: a.numpy() for t, a in zip(stage_specs(tiny_model)["sae_decoder_prefix"].inputs,
                                             example_inputs(stage_specs(tiny_model)["sae_decoder_prefix"], 2, seed=4))}
    run = lambda d: ort.InferenceSession(str(d / "sae_decoder_prefix.onnx"),
                                         providers=["CPUExecutionProvider"]).run(None, feed)
    for a, b in zip(run(tiny_export), run(tmp_path)):
        assert np.abs(a - b).max() <= 1e-4 * max(1.0, float(np.abs(a).max()))
    with pytest.raises(ValueError, match="unknown upsample mode"):
        export_onnx(tiny_model, tmp_path / "bad", stages=["sae_encoder"], plugin=False, upsample="nearest")
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------------ shared weights
def _external_ranges(folder):
    """{(graph file, initializer name): (offset, length)} of every initializer read from the weights file, and
    the largest inline initializer (bytes)."""
    ranges, inline = {}, 0
    for f in sorted(folder.glob("*.onnx")):
        for t in onnx.load(str(f), load_external_data=False).graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                ext = {e.key: e.value for e in t.external_data}
                assert ext["location"] == "weights.onnx_data"
                ranges[(f.name, t.name)] = (int(ext["offset"]), int(ext["length"]))
            else:
                inline = max(inline, len(t.raw_data))
    return ranges, inline


def test_layout_stores_pieces_inside_the_tensor_they_make_up():
    """A tensor made of other tensors is written once and they read its slices, also for pieces made of pieces;
    equal tensors are one entry; the rest follows, aligned."""
    from ssae.export.weights import ALIGN, _digest, layout
    p = [bytes([i]) * 100 for i in range(5)]
    a, c = p[0] + p[1], p[2] + p[3]
    blobs = {_digest(x): x for x in (p[0], p[1], p[2], p[3], a + c, a, c, p[4], p[4])}
    where, written = layout(blobs)
    assert [(off, len(d)) for off, d in written] == [(0, 400), (-(-400 // ALIGN) * ALIGN, 100)]
    f = bytearray(written[-1][0] + 100)
    for off, d in written:
        f[off:off + len(d)] = d
    for k, x in blobs.items():
        off, n = where[k]
        assert bytes(f[off:off + n]) == x


def test_every_weight_is_stored_once(tiny_export):
    """The graphs read their large initializers from one shared file in which no content is stored twice: equal
    tensors share a range, the single-ROI SMPN graphs read slices of the five-ROI graph's tensors, and the file is
    no larger than its distinct ranges (plus alignment)."""
    from ssae.export.weights import ALIGN, MIN_BYTES, PAGE, PAGE_FROM
    man = read_manifest(tiny_export)
    w = tiny_export / man["weights"]["file"]
    assert man["format"] == "ssae-onnx-2" and man["weights"]["bytes"] == w.stat().st_size
    ranges, inline = _external_ranges(tiny_export)
    assert inline < MIN_BYTES and {f for f, _ in ranges} == {e["file"] for e in man["stages"].values()}
    data = w.read_bytes()
    # maximal ranges: those not inside another; their contents are distinct and they tile the file
    spans = sorted(set(ranges.values()), key=lambda r: (r[0], -r[1]))
    outer, end = [], -1
    for off, n in spans:
        if off + n > end:
            assert off >= end, "ranges overlap without nesting"
            outer.append((off, n))
            end = off + n
    contents = [data[o:o + n] for o, n in outer]
    assert len(set(contents)) == len(contents)
    pad = sum(PAGE if n >= PAGE_FROM else ALIGN for _, n in outer)
    assert sum(n for _, n in outer) <= len(data) <= sum(n for _, n in outer) + pad
    # smpn_<roi> reads the roi-th slice of smpn's tensor of the same name
    k = 0
    for i, roi in enumerate(man["rois"]):
        for (f, name), (off, n) in ranges.items():
            if f == f"smpn_{roi}.onnx" and ("smpn.onnx", name) in ranges:
                big_off, big_n = ranges[("smpn.onnx", name)]
                assert big_n == 5 * n and off == big_off + i * n
                k += 1
    assert k >= 5 * 20
    # every other equal-content pair shares its range
    by_content = {}
    for key, (off, n) in ranges.items():
        by_content.setdefault(data[off:off + n], set()).add((off, n))
    assert all(len(v) == 1 for v in by_content.values())


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_shared_weights_give_bit_identical_outputs(tiny_export, tiny_model, runtime, tmp_path):
    """Every graph computes exactly what it computes with its weights inline (the same bytes), on ONNX Runtime and
    OpenVINO; the SMPN graphs also match the PyTorch stages (as the other stages do in the parity tests above)."""
    from ssae.export.weights import load_self_contained
    man = read_manifest(tiny_export)
    if runtime == "openvino":
        ov = pytest.importorskip("openvino")
        core = ov.Core()

        def run(model, feed):
            cm = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            res = cm(feed)
            return [res[o] for o in cm.outputs]
    else:
        def run(model, feed):
            return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feed)
    specs = stage_specs(tiny_model)
    for name, e in man["stages"].items():
        if e["plugin"]:
            continue
        feed = {t.name: a.numpy() for t, a in zip(specs[name].inputs, example_inputs(specs[name], 2, seed=5))}
        inline = load_self_contained(tiny_export / e["file"])
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in inline.graph.initializer)
        onnx.save(inline, tmp_path / e["file"])
        for a, b in zip(run(str(tiny_export / e["file"]), feed), run(str(tmp_path / e["file"]), feed)):
            np.testing.assert_array_equal(a, b, err_msg=f"{runtime} {name}")
    for name in ["smpn"] + [f"smpn_{r}" for r in man["rois"]]:
        assert _parity(tiny_export, tiny_model, name, example_inputs(specs[name], 2, seed=9)) <= 1e-4


def test_missing_altered_or_escaping_weights_file_is_detected(tiny_export, tmp_path):
    import json
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(tiny_export, bad)
    w = bad / read_manifest(bad)["weights"]["file"]
    raw = bytearray(w.read_bytes())
    raw[len(raw) // 2] ^= 1
    w.write_bytes(bytes(raw))
    with pytest.raises(ExportError, match="corrupt weights file .*weights.onnx_data"):
        read_manifest(bad)
    w.unlink()
    with pytest.raises(ExportError, match="missing weights file .*weights.onnx_data"):
        read_manifest(bad)
    man = json.loads((bad / "manifest.json").read_text())
    man["weights"]["file"] = "../weights.onnx_data"
    (bad / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ExportError, match="weights file outside the export folder"):
        read_manifest(bad, verify=False)


def test_exporting_a_subset_into_a_shared_folder_keeps_the_other_graphs(tiny_export, tiny_model, tmp_path):
    """A partial export rewrites the shared file for every graph of the folder: the graphs it did not export
    still read the same values."""
    import shutil
    from ssae.export.onnx_export import export_onnx
    d = tmp_path / "e"
    shutil.copytree(tiny_export, d)
    export_onnx(tiny_model, d, stages=["refine_hair"], plugin=False)
    assert set(read_manifest(d)["stages"]) == set(read_manifest(tiny_export)["stages"])  # hashes verified
    spec = stage_specs(tiny_model)["smpn_lips"]
    feed = {"image": example_inputs(spec, 1, seed=2)[0].numpy()}
    run = lambda f: ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_array_equal(run(d / "smpn_lips.onnx"), run(tiny_export / "smpn_lips.onnx"))
