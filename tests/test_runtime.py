"""The runtime: backends, the Editor API, image inputs, cross-backend agreement, errors."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from ssae.runtime import BackendError, Editor, ImageError, load_image
from ssae.runtime.backend import DeviceChain
from ssae.runtime.editor import FaceNotFoundError
from ssae.runtime.onnx_backends import OrtBackend
from ssae.runtime.registry import ModelError, create_backend, resolve_model
from ssae.runtime.torch_backend import TorchBackend


@pytest.fixture(scope="module")
def editors(tiny_model, tiny_export):
    eds = {"torch": Editor(TorchBackend(tiny_model)),
           "onnxruntime": Editor.load(tiny_export, backend="onnxruntime")}
    try:
        eds["openvino"] = Editor.load(tiny_export, backend="openvino")
    except BackendError:
        pass
    return eds


def test_edit_api_shapes_and_timings(editors, face_path):
    ed = editors["onnxruntime"]
    res = ed.edit(face_path, roi="hair", seed=3, strength=1.0)
    assert res.image.size == (250, 250) and res.image.mode == "RGB"
    assert res.mask.shape == (250, 250) and res.mask.dtype == np.float32 and 0 <= res.mask.min() <= res.mask.max() <= 1
    for stage in ("detect", "frame", "smpn_hair", "sae_encoder", "sae_decoder_prefix", "sae_decoder_edit",
                  "refine_hair", "composite", "total"):
        assert res.timings[stage] > 0
    (x0, y0, x1, y1), = res.faces                                # the face crop, in photo pixels
    assert x0 < 100 < 150 < x1 and y0 < 100 < 150 < y1
    assert "smpn" not in res.timings  # a single-ROI edit runs only that ROI's SMPN graph
    again = ed.edit(face_path, roi="hair", seed=4)           # cached re-edit: no detection / SMPN / encoder / prefix
    assert "sae_encoder" not in again.timings and "detect" not in again.timings and again.timings["cache_hit"] == 1.0
    masks = ed.masks(face_path)
    assert set(masks) == {"hair", "skin", "nose", "eyes", "lips"} and masks["lips"].shape == (250, 250)


def test_single_roi_smpn_graphs_give_the_five_roi_masks(editors, face_path):
    """The per-ROI SMPN graphs a single edit runs agree with the five-ROI graph (8-bit mask levels)."""
    from ssae.runtime.editor import Editor
    ed = editors["onnxruntime"]
    full = Editor(ed.backend).masks(face_path)  # fresh cache: the five-ROI graph
    for roi in ("hair", "lips"):
        single = Editor(ed.backend)
        single.edit(face_path, roi=roi, seed=0)  # caches the single-ROI mask
        got = single.masks(face_path)[roi]
        assert np.abs(got - full[roi]).max() <= 1.5 / 255, roi


def test_same_seed_same_edit_on_every_backend(editors, face_path):
    outs = {k: np.asarray(ed.edit(face_path, roi="lips", seed=11, strength=1.5).image).astype(int)
            for k, ed in editors.items()}
    for k, v in outs.items():
        assert np.abs(v - outs["torch"]).max() <= (2 if k != "openvino" else 8), k  # openvino runs bf16 here
    a = np.asarray(editors["onnxruntime"].edit(face_path, roi="lips", seed=12).image).astype(int)
    assert np.abs(a - outs["onnxruntime"]).max() > 0


def test_edit_many_equals_single_edits(editors, face_path):
    ed = editors["onnxruntime"]
    many = ed.edit_many(face_path, ["hair", "nose"], [1, 2])
    assert [(r.roi, r.seed) for r in many] == [("hair", 1), ("hair", 2), ("nose", 1), ("nose", 2)]
    for r in many:
        one = ed.edit(face_path, roi=r.roi, seed=r.seed)
        assert np.array_equal(np.asarray(one.image), np.asarray(r.image))  # same request, same bytes


def test_edit_requests_equal_single_edits_and_report_bad_requests(tiny_export, face_path):
    """The cross-image batched pass: first edits and re-edits of two images, two ROIs, per-request strengths; a bad
    request yields its exception without failing the others."""
    from ssae.runtime import EditParams, EditRequest
    batch_ed, ref_ed = (Editor.load(tiny_export, backend="onnxruntime") for _ in range(2))
    other = np.asarray(Image.open(face_path).convert("RGB"))[:, ::-1].copy()   # a second image (mirrored)
    reqs = [EditRequest(face_path, EditParams("hair", seed=1)), EditRequest(other, EditParams("lips", 2, 1.5)),
            EditRequest(face_path, EditParams("teeth")), EditRequest(other, EditParams("hair", 3, noise="pixel"))]
    for round_ in range(2):                               # round 0: first edits; round 1: cached re-edits
        out = batch_ed.edit_requests(reqs)
        assert isinstance(out[2], ValueError) and "unknown ROI 'teeth'" in str(out[2])
        for rq, res in zip(reqs, out):
            if rq.params.roi == "teeth":
                continue
            p = rq.params
            one = ref_ed.edit(rq.image, roi=p.roi, seed=p.seed, strength=p.strength, noise=p.noise)
            assert (res.roi, res.seed, res.strength, res.noise) == (p.roi, p.seed, p.strength, p.noise)
            assert np.array_equal(np.asarray(one.image), np.asarray(res.image)), (round_, p)


def test_pixel_noise_mode_and_strength_zero(editors, face_path):
    for ed in (editors["torch"], editors["onnxruntime"]):
        p = ed.edit(face_path, roi="skin", seed=5, noise="pixel")
        assert p.image.size == (250, 250)
    a = np.asarray(editors["torch"].edit(face_path, roi="skin", seed=5, noise="pixel").image).astype(int)
    b = np.asarray(editors["onnxruntime"].edit(face_path, roi="skin", seed=5, noise="pixel").image).astype(int)
    assert np.abs(a - b).max() <= 2
    z1 = np.asarray(editors["torch"].edit(face_path, roi="skin", seed=1, strength=0.0).image)
    z2 = np.asarray(editors["torch"].edit(face_path, roi="skin", seed=2, strength=0.0).image)
    assert np.array_equal(z1, z2)  # strength 0: the seed does not matter


def test_photo_output_keeps_the_photo_outside_the_feathered_mask(editors, face_path):
    """The default output: the input bit for bit wherever the pasted feathered mask is zero, the change inside;
    output="raw" is the model's crop output at the crop size."""
    from ssae.face import feather
    from ssae.runtime.editor import FEATHER
    ed = editors["onnxruntime"]
    src = load_image(face_path)
    m = np.zeros((250, 250), np.float32)
    m[40:110, 60:190] = 1                                         # the tiny model's own masks cover everything
    res = ed.edit(face_path, roi="hair", seed=2, mask=m)
    enc = ed._photo(face_path, "face", {}).crops[0]
    soft = enc.crop.paste_mask(feather(ed._user_mask(m, src, enc)[0, 0], FEATHER))
    out = np.asarray(res.image)
    assert np.array_equal(out[soft == 0], src[soft == 0]) and (soft == 0).sum() > 1000
    assert np.abs(out.astype(int) - src)[soft > 0.5].mean() > 0.5
    raw = ed.edit(face_path, roi="hair", seed=2, output="raw")
    assert raw.image.size == (ed.size, ed.size) and raw.mask.shape == (ed.size, ed.size)


def test_reference_edits(editors, face_path):
    """A reference edit moves the region toward the reference's texture code: the same on every backend within
    2/255; the photo as its own reference changes nothing; pixel noise is refused."""
    ref = np.ascontiguousarray(load_image(face_path)[:, ::-1] // 2)   # a darker, mirrored face
    outs = {k: np.asarray(ed.edit(face_path, roi="hair", reference=ref).image).astype(int)
            for k, ed in editors.items()}
    for k, v in outs.items():
        assert np.abs(v - outs["torch"]).max() <= (2 if k != "openvino" else 8), k
    seeded = np.asarray(editors["onnxruntime"].edit(face_path, roi="hair", seed=0).image).astype(int)
    assert np.abs(seeded - outs["onnxruntime"]).max() > 0
    own = np.asarray(editors["onnxruntime"].edit(face_path, roi="hair", reference=face_path).image).astype(int)
    assert np.abs(own - load_image(face_path)).max() <= 1
    with pytest.raises(ValueError, match="noise='region'"):
        editors["onnxruntime"].edit(face_path, roi="hair", reference=ref, noise="pixel")


def test_no_face_is_an_error_unless_the_whole_frame_is_asked_for(editors):
    flat = np.full((90, 120, 3), 128, np.uint8)
    with pytest.raises(FaceNotFoundError, match="no face found"):
        editors["onnxruntime"].edit(flat, roi="hair")
    res = editors["onnxruntime"].edit(flat, roi="hair", frame="whole")
    assert res.image.size == (120, 90) and res.faces == [(0, 0, 120, 90)]


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16", "LA", "CMYK", "1"])
def test_image_modes_and_sizes(editors, mode):
    rng = np.random.default_rng(1)
    base = Image.fromarray(rng.integers(0, 255, (37, 61, 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray((rng.integers(0, 65535, (37, 61))).astype(np.uint16))
    else:
        img = base.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="TIFF" if mode in ("I;16", "CMYK") else "PNG")
    rgb = load_image(buf.getvalue())
    assert rgb.shape == (37, 61, 3) and rgb.dtype == np.uint8
    res = editors["onnxruntime"].edit(img, roi="eyes", seed=0, frame="whole")
    assert res.image.size == (61, 37)


def test_array_inputs():
    a16 = np.full((8, 9), 65535, np.uint16)
    assert load_image(a16).max() == 255
    assert load_image(np.zeros((4, 4, 4), np.uint8)).shape == (4, 4, 3)
    assert load_image(np.ones((3, 3, 3), np.float32)).max() == 255
    for bad, msg in [(np.zeros((4, 4, 2), np.uint8), "not an image"), (np.zeros((4, 4), np.int64), "dtype"),
                     (np.full((2, 2), np.nan, np.float32), "NaN")]:
        with pytest.raises(ImageError, match=msg):
            load_image(bad)


def test_bad_inputs_raise_clear_errors(editors, tmp_path, face_path):
    ed = editors["onnxruntime"]
    (tmp_path / "x.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "trunc.jpg").write_bytes(face_path.read_bytes()[:2000])
    for p, msg in [(tmp_path / "x.jpg", "not an image"), (tmp_path / "empty.png", "empty"),
                   (tmp_path / "trunc.jpg", "truncated"), (tmp_path / "nope.png", "not found")]:
        with pytest.raises(ImageError, match=msg):
            ed.edit(p)
    with pytest.raises(ValueError, match="unknown ROI"):
        ed.edit(face_path, roi="beard")
    with pytest.raises(ValueError, match="noise mode"):
        ed.edit(face_path, noise="global")
    with pytest.raises(ModelError, match="model not found"):
        resolve_model(tmp_path / "missing")
    with pytest.raises(BackendError, match="unknown backend"):
        create_backend("cudnn", resolve_model("tiny"))
    with pytest.raises(BackendError, match="TensorRT is not installed"):
        create_backend("tensorrt", resolve_model("tiny"))


@pytest.mark.parametrize("name", ["torch-bf16", "openvino"])
def test_bf16_backends_are_within_40db_of_fp32(tiny_model, tiny_export, face_path, editors, name):
    """The accuracy bar `auto` relies on: bf16 edits within 40 dB PSNR of fp32."""
    from ssae.metrics import psnr
    if name == "torch-bf16":
        bf16 = TorchBackend(tiny_model, precision="bf16")
        ed16 = Editor(bf16)
    elif "openvino" in editors:
        ed16 = editors["openvino"]
    else:
        pytest.skip("OpenVINO is not installed (pip install 'ssae[openvino]')")
    fp32 = editors["torch"]
    for roi in ("hair", "lips"):
        a = np.asarray(fp32.edit(face_path, roi=roi, seed=1).image).astype(np.float32)
        b = np.asarray(ed16.edit(face_path, roi=roi, seed=1).image).astype(np.float32)
        p = psnr(torch.from_numpy(b / 127.5 - 1)[None], torch.from_numpy(a / 127.5 - 1)[None]).item()
        assert p >= 40.0, (roi, p)


@pytest.mark.parametrize("noise", ["region", "pixel"])
def test_windowed_edits_equal_full_crop_edits(tiny_model, tiny_export, face_path, noise):
    """Every edit runs on its mask's window (or the sparse tiles) and is pasted into the unedited result: the
    same as the full-crop computation of another backend, and the same bytes on a first edit and a re-edit."""
    editors = []
    for be in (TorchBackend(tiny_model), OrtBackend(tiny_export), OrtBackend(tiny_export)):
        ed = Editor(be)
        ed.sparse = ed.sparse and len(editors) == 1
        enc = ed._photo(face_path, "face", {}).crops[0]
        ed._predict_masks(enc, ed.rois, {})
        for m in enc.masks.values():          # small ROIs (the tiny model's masks cover everything)
            m[:] = 0
        enc.masks["eyes"][0, 0, 10:14, 6:12] = 0.7
        enc.masks["lips"][0, 0, 20:24, 12:20] = 1.0
        editors.append(ed)
    t, o_sparse, o_window = editors
    assert o_sparse.sparse and not o_window.sparse and t.local
    for roi in ("lips", "eyes"):
        enc = t._photo(face_path, "face", {}).crops[0]
        assert t._window(enc.masks[roi])[1] != (0, t.size, 0, t.size)   # a window, not the full crop
        for seed in (1, 2, 3):
            ref = np.asarray(t.edit(face_path, roi=roi, seed=seed, noise=noise).image).astype(int)
            for ed in (o_sparse, o_window):
                first = np.asarray(ed.edit(face_path, roi=roi, seed=seed, noise=noise).image)
                again = np.asarray(ed.edit(face_path, roi=roi, seed=seed, noise=noise).image)
                assert np.array_equal(first, again)
                assert np.abs(first.astype(int) - ref).max() <= 1, (roi, seed)


def test_user_mask_replaces_the_smpn(editors, face_path):
    ed = editors["onnxruntime"]
    ed.clear_cache()
    m = np.zeros((250, 250), np.float32)
    m[150:190, 90:160] = 1
    first = ed.edit(face_path, roi="lips", seed=1, mask=m)
    assert "smpn" not in first.timings
    got = first.mask > 0.5
    assert (got & (m > 0.5)).sum() / (got | (m > 0.5)).sum() > 0.7  # the mask, through the 32 px crop and back
    again = ed.edit(face_path, roi="lips", seed=2, mask=m)          # cropped re-edit around the user mask
    src = np.asarray(first.image).astype(int)
    out = np.asarray(again.image).astype(int)
    assert np.array_equal(src[:100], out[:100])                      # far from the mask: unchanged
    assert np.abs(src - out)[150:190, 90:160].max() > 0
    with pytest.raises(ValueError, match="does not match"):
        ed.edit(face_path, mask=np.zeros((10, 10), np.float32))


class _HostChain(DeviceChain):
    """The `DeviceChain` contract run stage by stage on the host by an ONNX Runtime backend: lets the CPU suite
    check the Editor's dispatch to a chaining backend (the device-resident version needs TensorRT)."""

    def __init__(self, backend):
        self.be, self.calls = backend, []

    def full(self, image, roi, seed, strength, single_roi=False):
        self.calls.append("chain")
        codes = self.be.run("sae_encoder", {"image": image})
        self.state = {"image": image, "codes": codes, "pre": self.be.run("sae_decoder_prefix", codes)}
        return self._tail(roi, seed, strength)

    def reedit(self, roi, seed, strength):
        self.calls.append("reedit")
        return self._tail(roi, seed, strength)

    def _tail(self, roi, seed, strength):
        from ssae import philox
        st, man, run = self.state, self.be.manifest, self.be.run
        size = man["model_config"]["image_size"]
        mask = np.round(run(f"smpn_{roi}", {"image": st["image"]})["masks"] * 255.0) / np.float32(255.0)
        noise = philox.gaussian_batch([seed], philox.STREAM_REGION, (man["model_config"]["sae"]["global_code_ch"],))
        xi = philox.gaussian(man["noise_seed"], philox.STREAM_INJECTION + man["tail_noise_index"], size * size)
        coarse = run("sae_decoder_edit", dict(h=st["pre"]["h"], skip=st["pre"]["skip"],
                                                   texture=st["codes"]["texture"], mask=mask, noise=noise,
                                                   strength=np.full((1,), strength, np.float32),
                                                   xi=xi.reshape(1, 1, size, size)))["image"]
        return {"refined": run(f"refine_{roi}", {"image": coarse, "mask": mask})["refined"], "mask": mask}


class _OrtWithHostChain(OrtBackend):
    def __init__(self, export_dir):
        super().__init__(export_dir)
        self.host_chain = _HostChain(self)

    def device_chain(self):
        return self.host_chain


class _TorchChainedOnCPU(TorchBackend):
    """The torch backend with its device chain on the CPU too (it is on by default only on CUDA devices)."""

    def device_chain(self):
        return self.chain()


def test_editor_hands_single_region_edits_to_a_chaining_backend(tiny_export, face_path):
    chained, plain = _OrtWithHostChain(tiny_export), OrtBackend(tiny_export)
    ec, ep = Editor(chained), Editor(plain)
    for k, (roi, seed) in enumerate((("hair", 1), ("hair", 2), ("lips", 3))):
        a, b = ec.edit(face_path, roi=roi, seed=seed), ep.edit(face_path, roi=roi, seed=seed)
        assert np.abs(np.asarray(a.image).astype(int) - np.asarray(b.image).astype(int)).max() <= 1, roi
        assert np.abs(a.mask - b.mask).max() <= 1.5 / 255
        assert ("chain_full" if k == 0 else "chain_reedit") in a.timings
    # each ROI's unedited reference is the chain at strength 0, once per ROI
    calls = chained.host_chain.calls
    assert calls == ["chain", "reedit", "reedit", "reedit", "reedit"]
    ec.edit_many(face_path, ["hair", "lips"], [1])  # several edits at once: one chain re-edit each
    assert calls[5:] == ["reedit", "reedit"]


def test_torch_backend_device_chain_equals_the_stage_path(tiny_model, face_path, exact_host_paste):
    """The torch backend's device chain (`TorchChain`, walking `ssae.pipeline.chain_stages`): the Editor hands it
    single region edits of a photo, framed and pasted on the device too (`DeviceChain.edit_photo`: the host never
    cuts the crop; on CUDA the chains replay from CUDA graphs: tests/gpu). Its results are the stage path's, framed
    on the host, with the paste made exact."""
    import copy

    chained = _TorchChainedOnCPU(copy.deepcopy(tiny_model))
    plain = TorchBackend(copy.deepcopy(tiny_model))
    assert chained.device_chain() is not None and plain.device_chain() is None  # off by default on the CPU
    src = np.asarray(Image.open(face_path).convert("RGB"))
    scene = np.zeros((420, 560, 3), np.uint8) + np.array([60, 110, 150], np.uint8)
    scene[100:350, 240:490] = src                                             # the face off-centre in a larger photo
    for photo in (src, scene):
        ec, ep = Editor(chained), Editor(plain)
        # a full edit predicts its ROI's mask only: another ROI of the same photo is a full edit again
        for roi, seed, strength, kind in (("hair", 1, 1.0, "full"), ("hair", 2, 2.5, "reedit"),
                                          ("lips", 3, 1.0, "full"), ("lips", 4, 1.0, "reedit")):
            a = ec.edit(photo, roi=roi, seed=seed, strength=strength)
            b = ep.edit(photo, roi=roi, seed=seed, strength=strength)
            assert np.abs(np.asarray(a.image).astype(int) - np.asarray(b.image).astype(int)).max() <= 1, roi
            assert np.abs(a.mask - b.mask).max() <= 1.5 / 255
            assert f"chain_{kind}" in a.timings and "frame" not in a.timings, (roi, seed, a.timings)
        raw = ec.edit(photo, roi="lips", seed=3, output="raw")            # the crop output: the host cut, then the chain
        assert "frame" in raw.timings and np.array_equal(np.asarray(raw.image),
                                                         np.asarray(ep.edit(photo, roi="lips", seed=3, output="raw").image))
    # every face of a photo, each cut and pasted on the device in turn; strength 0 gives the photo back
    two = np.zeros((300, 560, 3), np.uint8) + np.array([60, 110, 150], np.uint8)
    two[25:275, 10:260], two[25:275, 300:550] = src, src[:, ::-1]
    ec, ep = Editor(chained), Editor(plain)
    a, b = ec.edit(two, roi="hair", seed=5, faces="all"), ep.edit(two, roi="hair", seed=5, faces="all")
    assert len(a.faces) == 2 and a.timings["chain_full"] > 0
    assert np.abs(np.asarray(a.image).astype(int) - np.asarray(b.image).astype(int)).max() <= 1
    changed = (np.asarray(a.image) != two).any(-1)
    assert changed[:, :280].sum() > 1000 and changed[:, 280:].sum() > 1000
    assert np.array_equal(np.asarray(ec.edit(two, roi="skin", seed=6, strength=0.0).image), two)
    # faces whose crops overlap: the second is pasted onto the first one's edit (on the host), as the stage path does
    close = np.zeros((300, 480, 3), np.uint8) + np.array([60, 110, 150], np.uint8)
    close[25:275, 0:250], close[25:275, 230:480] = src, src[:, ::-1]
    a, b = ec.edit(close, roi="skin", seed=7, faces="all"), ep.edit(close, roi="skin", seed=7, faces="all")
    (ax0, _, ax1, _), (bx0, _, bx1, _) = a.faces
    assert len(a.faces) == 2 and max(ax0, bx0) < min(ax1, bx1)
    assert np.abs(np.asarray(a.image).astype(int) - np.asarray(b.image).astype(int)).max() <= 1
    # a chain on the single-ROI SMPN holds only that mask
    img = np.zeros((1, 3, 32, 32), np.float32)
    dc = chained.device_chain()
    dc.full(img, roi="eyes", seed=0, strength=1.0, single_roi=True)
    with pytest.raises(BackendError, match="holds only the eyes mask"):
        dc.reedit(roi="hair", seed=0, strength=1.0)
    with pytest.raises(ValueError, match="unknown ROI"):
        dc.reedit(roi="ears", seed=0, strength=1.0)
    assert dc.info() == {}  # no CUDA graphs on the CPU


def test_torch_fp16_backend_matches_fp32(tiny_model, face_path, exact_host_paste):
    """torch-fp16 (half weights and activations; meant for CUDA, where the fused kernel's tensor-core path runs):
    the same edits as fp32 within 2 levels, through the device chain and the stage path (pasted exactly, as the
    device chain pastes); the registry refuses it without a CUDA device."""
    import copy


    fp32 = TorchBackend(copy.deepcopy(tiny_model))
    ref = Editor(fp32)
    for chained in (True, False):
        fp16 = (_TorchChainedOnCPU if chained else TorchBackend)(copy.deepcopy(tiny_model), precision="fp16")
        assert fp16.name == "torch-fp16" and fp16.precision == "fp16" and not fp16.sparse_reedit
        ed = Editor(fp16)
        for k, (roi, seed, noise) in enumerate((("hair", 1, "region"), ("hair", 2, "region"), ("lips", 3, "pixel"))):
            a, b = ref.edit(face_path, roi=roi, seed=seed, noise=noise), ed.edit(face_path, roi=roi, seed=seed,
                                                                                noise=noise)
            assert np.abs(np.asarray(a.image).astype(int) - np.asarray(b.image).astype(int)).max() <= 2, roi
            assert np.abs(a.mask - b.mask).max() <= 1.5 / 255
            if k == 1:  # a region re-edit: the held codes on the device, or the stage path
                assert ("chain_reedit" in b.timings) == chained
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="CUDA"):
            create_backend("torch-fp16", resolve_model("tiny"))


def test_torch_backend_routes_region_edits_through_the_custom_op(tiny_model):
    """fused_kernel=True sends the injection layer through torch.ops.ssae.masked_modconv (on CUDA: the fused
    kernel; on the CPU the op's reference), bit-identical to the plain reference path; off by default on the CPU."""
    import copy

    from ssae.export.onnx_export import example_inputs
    from ssae.export.stages import stage_specs

    plain = TorchBackend(copy.deepcopy(tiny_model))
    routed = TorchBackend(copy.deepcopy(tiny_model))
    routed.fused_kernel = True
    assert not plain.fused_kernel and routed.fused_kernel
    spec = stage_specs(tiny_model)["sae_decoder_edit"]
    feed = {t.name: a.numpy() for t, a in zip(spec.inputs, example_inputs(spec, 2, seed=7, full_hw=32))}
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpLog(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func)
            return func(*args, **(kwargs or {}))

    op = torch.ops.ssae.masked_modconv.default
    with OpLog() as log:
        got = routed.run("sae_decoder_edit", feed)
    assert op in log.ops
    want = plain.run("sae_decoder_edit", feed)
    np.testing.assert_array_equal(got["image"], want["image"])


def test_onnxruntime_sessions_have_their_own_quiet_pool(tiny_export):
    """OrtBackend sessions: a pool each, of `threads` workers that sleep when idle (no spinning workers competing
    with the next graph of a full edit)."""
    be = OrtBackend(tiny_export, threads=1)
    entry = be.manifest["stages"]["sae_encoder"]
    so = be.open_session(be.dir / entry["file"], entry).get_session_options()
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0" and so.intra_op_num_threads == 1
    assert so.use_per_session_threads


def test_prepared_photo_edits_equal_plain_edits_without_reading_the_photo_again(tiny_model, face_path):
    """`Editor.prepare`: edits of the prepared photo equal edits of the image (as edit, edit_many, masks, a
    reference), skip decoding and hashing it, keep their own pixels when the caller's array changes, outlive the
    cache, and are refused by another Editor or with another framing."""
    import copy

    ed = Editor(TorchBackend(copy.deepcopy(tiny_model)), cache_size=1)
    arr = np.array(load_image(face_path))
    photo = ed.prepare(arr)
    assert (photo.width, photo.height) == (arr.shape[1], arr.shape[0])
    want = [np.asarray(ed.edit(face_path, roi="hair", seed=s).image) for s in (1, 2)]
    arr[:] = 0                                              # the caller reuses its buffer
    ed.edit(np.full((40, 50, 3), 90, np.uint8), roi="hair", frame="whole")   # and the cache evicts the photo
    for s, w in zip((1, 2), want):
        res = ed.edit(photo, roi="hair", seed=s)
        assert np.array_equal(np.asarray(res.image), w) and "decode" not in res.timings
    many = ed.edit_many(photo, ["hair", "lips"], [1])
    assert np.array_equal(np.asarray(many[0].image), want[0])
    assert np.array_equal(ed.masks(photo)["lips"], ed.masks(face_path)["lips"])
    assert np.array_equal(np.asarray(ed.edit(face_path, roi="hair", reference=photo).image),
                          np.asarray(ed.edit(face_path, roi="hair", reference=face_path).image))
    with pytest.raises(ValueError, match="prepared with frame='face'"):
        ed.edit(photo, roi="hair", frame="whole")
    with pytest.raises(ValueError, match="another Editor"):
        Editor(TorchBackend(copy.deepcopy(tiny_model))).edit(photo, roi="hair")


def test_canvas_keeps_every_edited_box_and_copies_the_photo_once():
    """The Editor's result image: the photo plus the faces' patches in order; the photo itself is never written;
    a box counts as edited after its patch was merged into the working copy too."""
    from ssae.runtime.editor import _Canvas

    rgb = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    before = rgb.copy()
    c = _Canvas(rgb)
    assert c.current() is rgb and not c.overlaps((0, 0, 12, 10))
    c.add((2, 1, 6, 4), np.full((3, 4, 3), 7, np.uint8))
    assert c.overlaps((5, 3, 8, 8)) and not c.overlaps((6, 4, 12, 10))
    work = c.current()                                   # a second face reads the first one's edit
    assert work is not rgb and (work[1:4, 2:6] == 7).all()
    c.add((4, 2, 8, 5), np.full((3, 4, 3), 9, np.uint8))
    assert c.overlaps((2, 1, 3, 2)) and c.overlaps((7, 4, 9, 6))
    out = np.asarray(c.image())
    assert (out[2:5, 4:8] == 9).all() and (out[1, 2:6] == 7).all() and (out[1:4, 2:4] == 7).all()
    assert np.array_equal(out[6:], rgb[6:]) and np.array_equal(rgb, before)
