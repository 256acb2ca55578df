"""The sparse Winograd re-edit (`ssae.kernels.sparse_tail`, stage `sae_decoder_edit_sparse`): its fast path against
its direct reference and the dense reference conv, the tile plans, the exported graph, and the Editor using it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ssae.kernels import sparse_tail as st
from ssae.models import injection as reference


def _soft_mask(h, w, seed=0) -> np.ndarray:
    """A soft blob plus a hard patch in the image corner (tiles touching the border) and one isolated pixel."""
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.float32)
    m[h // 4: h // 2 + 3, w // 3: w - 5] = rng.uniform(0.05, 1.0, (h // 4 + 3, w - 5 - w // 3))
    m[:3, :2] = 1.0
    m[h - 2, w // 2 + 1] = 0.5
    return m


@pytest.mark.parametrize("m", st.TILES)
def test_winograd_matrices_compute_the_correlation(m):
    bt, g, at = st.winograd_matrices(m)
    rng = np.random.default_rng(m)
    d, w = rng.standard_normal(m + 2), rng.standard_normal(3)
    direct = np.array([d[i: i + 3] @ w for i in range(m)])
    np.testing.assert_allclose(at @ ((g @ w) * (bt @ d)), direct, rtol=1e-12, atol=1e-12)


def test_plan_covers_exactly_the_changed_pixels():
    mask = _soft_mask(32, 40)
    for m in st.TILES:
        plan = st.plan_tiles(mask, m)
        covered = np.zeros(32 * 40, bool)
        covered[plan.out_idx.ravel()] = True
        changed = st.changed_pixels(mask).ravel()
        assert covered[changed].all()                                   # every pixel that can change is computed
        per_tile = changed[plan.out_idx].any(axis=0)
        assert per_tile.all()                                            # and no tile is computed for nothing
        assert plan.patch_idx.max() == 32 * 40                            # the border tiles read the zero row
        assert plan.pixels == plan.n_tiles * m * m
    with pytest.raises(ValueError, match="multiple of the tile size"):
        st.plan_tiles(np.ones((30, 30)), 4)
    with pytest.raises(ValueError, match="tile must be one of"):
        st.plan_tiles(np.ones((32, 32)), 3)


@pytest.mark.parametrize("m", st.TILES)
def test_sparse_conv_matches_the_dense_reference(m):
    torch.manual_seed(m)
    cin, cout, h, w = 24, 20, 32, 28
    x = torch.randn(1, cin, h, w)
    weight = torch.randn(cout, cin, 3, 3) / 15
    a, d = torch.randn(1, cin) + 1, torch.randn(1, cin)
    strength = torch.tensor([1.7])
    mask_np = _soft_mask(h, w, m)
    mask = torch.from_numpy(mask_np)[None, None]
    dense = reference.masked_modconv(x, weight, None, a, mask, strength, direction=d, activate=False)
    plan = st.plan_tiles(mask_np, m)
    rows, mrows = torch.from_numpy(st.to_rows(x.numpy())), torch.from_numpy(st.to_rows(mask_np[None]))
    pidx = torch.from_numpy(plan.patch_idx)
    want = dense.flatten(2)[0][:, torch.from_numpy(plan.out_idx)].permute(1, 2, 0)   # (m^2, N, Cout)
    ref = st.sparse_masked_modconv_reference(rows, mrows, pidx, weight, a, d, strength)
    bt2, _, at2 = st.transform_2d(m)
    fast = st.sparse_masked_modconv(rows, mrows, pidx, st.transform_weight(weight, m), a, d, strength, bt2, at2)
    scale = want.abs().max()
    assert (ref - want).abs().max() / scale < 1e-5
    assert (fast - want).abs().max() / scale < 1e-5


def _sparse_feeds(stage_in: dict, mask: np.ndarray, tile: int, seed: int = 3, strength: float = 1.3) -> dict:
    from ssae import philox
    plan = st.plan_tiles(mask, tile)
    d = stage_in["texture"].shape[1]
    return dict(h_rows=st.to_rows(stage_in["h"]), skip_rows=st.to_rows(stage_in["skip"]),
                mask_rows=st.to_rows(mask[None]), patch_idx=plan.patch_idx, out_idx=plan.out_idx,
                texture=stage_in["texture"], noise=philox.gaussian_batch([seed], philox.STREAM_REGION, (d,)),
                strength=np.full((1,), strength, np.float32)), plan


def _dense_inputs(tiny_model, mask: np.ndarray, seed: int = 3, strength: float = 1.3) -> dict:
    from ssae.export.stages import build_stages
    from ssae import philox
    stages = build_stages(tiny_model)
    s = tiny_model.cfg.image_size
    g = torch.Generator().manual_seed(1)
    d = tiny_model.cfg.sae.downsampling
    sp = torch.randn(1, tiny_model.cfg.sae.spatial_code_ch, s // d, s // d, generator=g)
    tex = torch.randn(1, tiny_model.cfg.sae.global_code_ch, generator=g)
    with torch.no_grad():
        h, skip = stages["sae_decoder_prefix"](sp, tex)
    xi = stages["sae_decoder_edit"].noise.list()[tiny_model.sae.G.tail_noise_index]
    n = philox.gaussian_batch([seed], philox.STREAM_REGION, (tex.shape[1],))
    return stages, dict(h=h.numpy(), skip=skip.numpy(), texture=tex.numpy(), mask=mask[None, None],
                        noise=n, strength=np.full((1,), strength, np.float32), xi=xi.numpy())


def _dense_edit(stages, inputs, mask=None) -> np.ndarray:
    feed = dict(inputs) if mask is None else {**inputs, "mask": mask}
    with torch.no_grad():
        return stages["sae_decoder_edit"](*[torch.from_numpy(np.asarray(feed[k])) for k in
                                            ("h", "skip", "texture", "mask", "noise", "strength", "xi")]).numpy()


def test_sparse_stage_equals_the_dense_edit_stage(tiny_model):
    s = tiny_model.cfg.image_size
    mask = _soft_mask(s, s)
    stages, inputs = _dense_inputs(tiny_model, mask)
    dense = _dense_edit(stages, inputs)
    base = _dense_edit(stages, inputs, np.zeros_like(inputs["mask"]))
    feeds, plan = _sparse_feeds(inputs, mask, 4)
    with torch.no_grad():
        rgb = stages["sae_decoder_edit_sparse"](**{k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()})
    assert rgb.shape == (16, plan.n_tiles, 3)
    out = base.copy()
    st.scatter_rows(out, rgb.numpy(), plan.out_idx)
    assert np.abs(dense - base).max() > 1e-2                        # the edit changes something ...
    np.testing.assert_allclose(out, dense, atol=1e-5)               # ... and the sparse pass reproduces all of it


def test_exported_sparse_graph_on_onnxruntime(tiny_model, tiny_export):
    ort = pytest.importorskip("onnxruntime")
    from ssae.export.onnx_export import read_manifest
    man = read_manifest(tiny_export)
    e = man["stages"]["sae_decoder_edit_sparse"]
    assert e["cpu_only"] and man["sparse_tile"] == 4
    assert {t["name"]: t["dtype"] for t in e["inputs"]}["patch_idx"] == "int64"
    s = tiny_model.cfg.image_size
    mask = _soft_mask(s, s, 5)
    stages, inputs = _dense_inputs(tiny_model, mask, seed=7, strength=0.8)
    feeds, plan = _sparse_feeds(inputs, mask, 4, seed=7, strength=0.8)
    sess = ort.InferenceSession(str(tiny_export / e["file"]), providers=["CPUExecutionProvider"])
    (rgb,) = sess.run(None, feeds)
    with torch.no_grad():
        want = stages["sae_decoder_edit_sparse"](**{k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()})
    assert np.abs(rgb - want.numpy()).max() <= 1e-4


def test_editor_sparse_reedit_equals_the_window_reedit(tiny_export, face_path):
    from ssae.runtime.editor import Editor
    from ssae.runtime.registry import create_backend, resolve_model
    be = create_backend("onnxruntime", resolve_model(str(tiny_export)))
    assert be.sparse_reedit
    eds = {flag: Editor(be) for flag in (True, False)}
    assert eds[True].sparse
    eds[False].sparse = False
    assert eds[True].sparse and not eds[False].sparse
    user = np.zeros((250, 250), np.float32)                 # the tiny SMPN's masks cover the frame: use a blob
    user[40:120, 60:200] = 1.0
    out = {}
    for flag, ed in eds.items():
        ed.edit(face_path, roi="hair", seed=0, mask=user)  # first edit encodes; re-edits take the crop path
        res = ed.edit(face_path, roi="hair", seed=5, strength=2.0, mask=user)
        assert ("sae_decoder_edit_sparse" in res.timings) == flag
        out[flag] = np.asarray(res.image, np.int16)
    assert np.abs(out[True] - out[False]).max() <= 1


def test_backends_feed_integer_inputs(tiny_export, tiny_model):
    """Every backend passes the plan's int64 indices through (the torch backend and OpenVINO cast floats only),
    and runs the sparse graph in fp32 even when it computes the rest in bf16 (within 1e-4 of ONNX Runtime)."""
    from ssae.runtime.registry import create_backend, resolve_model
    from ssae.runtime.backend import BackendError
    s = tiny_model.cfg.image_size
    mask = _soft_mask(s, s, 2)
    _, inputs = _dense_inputs(tiny_model, mask)
    feeds, _ = _sparse_feeds(inputs, mask, 4)
    from ssae.runtime.torch_backend import TorchBackend
    src = resolve_model(str(tiny_export))
    outs = {name: TorchBackend(tiny_model, precision=p).run("sae_decoder_edit_sparse", feeds)["rgb"]
            for name, p in (("torch", "fp32"), ("torch-bf16", "bf16"))}
    for name in ("onnxruntime", "openvino", "openvino-fp32"):
        try:
            be = create_backend(name, src)
        except BackendError:
            continue
        outs[name] = be.run("sae_decoder_edit_sparse", feeds)["rgb"]
    assert "onnxruntime" in outs
    for name, o in outs.items():
        np.testing.assert_allclose(o, outs["onnxruntime"], atol=1e-4, err_msg=name)
