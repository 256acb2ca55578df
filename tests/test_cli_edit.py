"""`ssae edit` / `ssae export` end to end: outputs written, one-line errors, nothing half-written."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def ssae(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "ssae.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=e)


def test_edit_writes_png_masks_and_json(tmp_path, tiny_export, face_path):
    out = tmp_path / "out.png"
    r = ssae("edit", face_path, "--model", tiny_export, "--backend", "onnxruntime", "--roi", "nose", "--seed", 3,
             "--strength", 1.2, "-o", out, "--masks-out", tmp_path / "masks", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["rois"] == ["nose"] and info["timings_ms"]["sae_decoder_edit"] > 0
    assert Image.open(out).size == (250, 250)
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # what open() gives, not the temporary file's 0o600
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == [f"{r}.png" for r in
                                                                      sorted(["hair", "skin", "nose", "eyes", "lips"])]
    r = ssae("edit", face_path, "--model", tiny_export, "--backend", "onnxruntime", "--roi", "all", "-o",
             tmp_path / "all.jpg")
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "all.jpg").size == (250 * 6, 250)


def test_edit_with_a_checkpoint_on_the_torch_backend(tmp_path, tiny_ckpt, tiny_export, face_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert ssae("edit", face_path, "--model", tiny_ckpt, "--backend", "torch", "-o", a).returncode == 0
    assert ssae("edit", face_path, "--model", tiny_export, "--backend", "onnxruntime", "-o", b).returncode == 0
    diff = np.abs(np.asarray(Image.open(a)).astype(int) - np.asarray(Image.open(b)).astype(int))
    assert diff.max() <= 2


@pytest.fixture()
def bad_files(tmp_path, face_path, tiny_export):
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "trunc.jpg").write_bytes(face_path.read_bytes()[:3000])
    corrupt = tmp_path / "corrupt_export"
    shutil.copytree(tiny_export, corrupt)
    (corrupt / "sae_decoder_edit.onnx").write_bytes(b"\x08\x07garbage")
    return tmp_path, corrupt


@pytest.mark.parametrize("case", ["text", "empty", "trunc", "roi", "model", "onnx", "missing_image", "suffix"])
def test_bad_input_one_line_error_and_no_output(bad_files, tiny_export, face_path, case):
    tmp, corrupt = bad_files
    out = tmp / "o.png"
    args = {
        "text": (tmp / "text.jpg", "--model", tiny_export, "--backend", "onnxruntime"),
        "empty": (tmp / "empty.png", "--model", tiny_export, "--backend", "onnxruntime"),
        "trunc": (tmp / "trunc.jpg", "--model", tiny_export, "--backend", "onnxruntime"),
        "roi": (face_path, "--roi", "beard", "--model", tiny_export),
        "model": (face_path, "--model", tmp / "no_such_model"),
        "onnx": (face_path, "--model", corrupt, "--backend", "onnxruntime"),
        "missing_image": (tmp / "nope.png", "--model", tiny_export, "--backend", "onnxruntime"),
        "suffix": (face_path, "--model", tiny_export, "--backend", "onnxruntime"),
    }[case]
    if case == "suffix":
        out = tmp / "o.notanimage"
    r = ssae("edit", *args, "-o", out)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("ssae edit: error: "), r.stderr
    want = {"text": "not an image", "empty": "empty", "trunc": "truncated", "roi": "unknown ROI",
            "model": "model not found", "onnx": "corrupt ONNX", "missing_image": "not found",
            "suffix": "unsupported output file type"}[case]
    assert want in lines[0]
    assert not out.exists() and not list(tmp.glob(".o.*"))


def two_faces(path):
    """Two copies of the example face side by side, the right one smaller, on a grey canvas."""
    from ssae.pretrained import ASSETS
    f = Image.open(ASSETS / "example_face.jpg").convert("RGB")
    canvas = Image.new("RGB", (620, 330), (120, 120, 120))
    canvas.paste(f, (10, 40))
    canvas.paste(f.resize((180, 180)), (400, 70))
    canvas.save(path)
    return path


def test_edit_framing_options(tmp_path, tiny_export, face_path):
    """--reference, --whole-frame, --raw and --all-faces through the CLI; no face: one line, exit 2, no file."""
    base = ("--model", tiny_export, "--backend", "onnxruntime", "--roi", "lips", "--seed", 2)
    r = ssae("edit", face_path, *base, "--reference", two_faces(tmp_path / "two.png"), "-o", tmp_path / "ref.png",
             "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["reference"].endswith("two.png") and Image.open(tmp_path / "ref.png").size == (250, 250)
    assert ssae("edit", face_path, *base, "--raw", "-o", tmp_path / "raw.png").returncode == 0
    assert Image.open(tmp_path / "raw.png").size == (32, 32)            # the tiny model's crop
    r = ssae("edit", tmp_path / "two.png", *base, "--all-faces", "-o", tmp_path / "all.png", "--json")
    assert r.returncode == 0, r.stderr
    boxes = json.loads(r.stdout)["faces"]
    assert len(boxes) == 2 and boxes[0][0] < 300 < boxes[1][2]          # the larger face first
    flat = tmp_path / "flat.png"
    Image.new("RGB", (200, 150), (90, 90, 90)).save(flat)
    r = ssae("edit", flat, *base, "-o", tmp_path / "none.png")
    assert r.returncode == 2 and "no face found" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "none.png").exists()
    assert ssae("edit", flat, *base, "--whole-frame", "-o", tmp_path / "whole.png").returncode == 0
    assert Image.open(tmp_path / "whole.png").size == (200, 150)


def test_eval_photos_reports_what_users_get_back(tmp_path, tiny_export):
    from ssae.pretrained import ASSETS
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(ASSETS / "example_face.jpg", photos / "a.jpg")
    two_faces(photos / "b.png")
    Image.new("RGB", (64, 64), (10, 200, 30)).save(photos / "c.png")     # no face
    r = ssae("eval", "--photos", photos, "--model", tiny_export, "--backend", "onnxruntime", "--rois", "hair", "lips",
             "--json", tmp_path / "q.json")
    assert r.returncode == 0, r.stderr
    q = json.loads((tmp_path / "q.json").read_text())
    s = q["summary"]
    assert s["faces_found"] == 2 / 3 and len(q["rows"]) == 4
    assert s["outside_psnr"]["median"] >= 40 and s["ms"]["median"] > 0   # (the tiny model's masks are random)
    assert {row["roi"] for row in q["rows"]} == {"hair", "lips"}
    r = ssae("eval", "--photos", tmp_path / "missing", "--model", tiny_export)
    assert r.returncode == 2 and "photo folder not found" in r.stderr


def _resave(src, dst, meta=None, keep=None):
    """A copy of a safetensors checkpoint with other metadata and/or only the tensors whose names start with keep."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    with safe_open(str(src), framework="pt") as f:
        m = dict(f.metadata())
    t = load_file(str(src))
    if keep:
        t = {k: v for k, v in t.items() if k.startswith(keep)}
    save_file(t, str(dst), metadata=m if meta is None else meta(m))
    return dst


@pytest.mark.parametrize("case", ["no_config", "nested_key", "top_key", "partial", "no_stages", "escape",
                                  "parent_is_file", "xbm", "masks_into_file"])
def test_every_failure_is_one_line_exit_2_and_writes_nothing(tmp_path, tiny_ckpt, tiny_export, face_path, case):
    out = tmp_path / "o.png"
    model = tiny_ckpt
    extra = []
    if case in ("no_config", "nested_key", "top_key"):
        def meta(m, case=case):
            cfg = json.loads(m["config"])
            if case == "no_config":
                m.pop("config")
            elif case == "nested_key":
                cfg["sae"]["no_such_option"] = 1
            else:
                cfg["colour"] = "blue"
            if case != "no_config":
                m["config"] = json.dumps(cfg)
            return m
        model = _resave(tiny_ckpt, tmp_path / "m.safetensors", meta)
    elif case == "partial":
        model = _resave(tiny_ckpt, tmp_path / "sae.safetensors", keep="sae.")
    elif case in ("no_stages", "escape"):
        model = tmp_path / "export"
        shutil.copytree(tiny_export, model)
        man = json.loads((model / "manifest.json").read_text())
        if case == "no_stages":
            man.pop("stages")
        else:
            man["stages"]["sae_encoder"]["file"] = "../../etc/passwd"
        (model / "manifest.json").write_text(json.dumps(man))
    elif case == "parent_is_file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "o.png"
    elif case == "xbm":
        out = tmp_path / "o.xbm"
    elif case == "masks_into_file":
        (tmp_path / "m").write_text("x")
        extra = ["--masks-out", tmp_path / "m"]
    backend = "torch" if model.suffix == ".safetensors" else "onnxruntime"
    r = ssae("edit", face_path, "--model", model, "--backend", backend, "-o", out, *extra)
    want = {"no_config": "no model config", "nested_key": "no_such_option", "top_key": "unknown model config key",
            "partial": "lacks the rb, smpn component", "no_stages": "has no stages",
            "escape": "outside the export folder", "parent_is_file": "is a file, not a folder",
            "xbm": "cannot write", "masks_into_file": "is a file, not a folder"}[case]
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and want in lines[0], r.stderr
    assert not out.exists() and not list(tmp_path.glob("*.png")) and not list(tmp_path.rglob(".*.tmp"))


def test_grid_writes_the_model_space_picture(tmp_path, tiny_ckpt, face_path):
    out = tmp_path / "grid.png"
    r = ssae("grid", face_path, face_path, "--model", tiny_ckpt, "-o", out)
    assert r.returncode == 0, r.stderr
    w, h = Image.open(out).size
    assert h >= 2 * 32 and w >= 7 * 32          # two face crops x (crop, masks, five edits) at the tiny model's size
