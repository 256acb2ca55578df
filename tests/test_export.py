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
