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
