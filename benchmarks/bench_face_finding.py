"""How the framing step should find the face: MTCNN (ONNX Runtime) against the project's own SMPN as a locator.

Candidates, each giving the face's centre in photo pixels:
- `mtcnn`: the detector `ssae.face` uses (largest face; centre of its five landmarks);
- `smpn`: the bundled SMPN run on the whole frame (the photo fitted into the model's square), the face as the
  centroid of its skin + nose + eyes + lips masks (> 0.5); the first pass of a two-pass locator.
A photo counts as found when the centre lies in the true face box: LFW test photos and the CelebAMask-HQ samples
(the bounding box of the labelled face skin), and off-centre scenes (`scripts/make_scenes.py`: the central half of
the pasted 250 px LFW photo, where its face is). Median milliseconds per photo.

    python benchmarks/bench_face_finding.py --shared ../shared/data [--lfw-count 200] [--scenes 40] [--json out]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ssae.face import shared_detector
from ssae.runtime.profiling.bench import machine_info
from ssae.runtime import Editor
from ssae.runtime.images import load_image

FACE_ROIS = ("skin", "nose", "eyes", "lips")


def box_of(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    return (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(ys) else None


def sets(shared: Path, lfw_count: int, scenes: int, tmp: Path) -> dict[str, list]:
    """{set name: [(photo path, true face box)]}."""
    lfw = shared / "lfw_parts"
    names = (lfw / "test.txt").read_text().split()[:lfw_count]
    out = {"lfw_test": [], "celebamask_hq": [], "scenes": []}
    for n in names:
        lab = np.asarray(Image.open(lfw / "labels" / f"{n}.png"))
        b = box_of(lab == 1)
        if b:
            out["lfw_test"].append((lfw / "images" / f"{n}.jpg", b))
    for p in sorted((shared / "celebamask_hq_samples").glob("*.jpg")):
        lab = np.asarray(Image.open(p.with_suffix(".png")).resize((1024, 1024), Image.NEAREST))
        out["celebamask_hq"].append((p, box_of(lab == 1)))
    import subprocess
    subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "scripts" / "make_scenes.py"),
                    "--lfw", str(lfw), "--out", str(tmp), "--count", str(scenes)], check=True, capture_output=True)
    for name, (x0, y0, x1, y1) in json.loads((tmp / "scenes.json").read_text()).items():
        w, h = x1 - x0, y1 - y0
        out["scenes"].append((tmp / name, (x0 + w / 4, y0 + h / 4, x1 - w / 4, y1 - h / 4)))
    return out


def mtcnn_centre(rgb, _ed):
    faces = shared_detector().detect(rgb)
    return faces[0].landmarks.mean(0) if faces else None


def smpn_centre(rgb, ed):
    m = ed.masks(rgb, frame="whole")
    face = np.maximum.reduce([m[r] for r in FACE_ROIS]) > 0.5
    ys, xs = np.nonzero(face)
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5]) if len(ys) else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", required=True)
    ap.add_argument("--lfw-count", type=int, default=200)
    ap.add_argument("--scenes", type=int, default=40)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    ed = Editor.load(backend="onnxruntime")
    with tempfile.TemporaryDirectory() as tmp:
        data = sets(Path(a.shared), a.lfw_count, a.scenes, Path(tmp))
        res = {}
        for method, fn in (("mtcnn", mtcnn_centre), ("smpn", smpn_centre)):
            for name, items in data.items():
                hits, ms = 0, []
                for path, (x0, y0, x1, y1) in items:
                    rgb = load_image(path)
                    ed.clear_cache()
                    t = time.perf_counter()
                    c = fn(rgb, ed)
                    ms.append((time.perf_counter() - t) * 1e3)
                    hits += int(c is not None and x0 <= c[0] <= x1 and y0 <= c[1] <= y1)
                res.setdefault(method, {})[name] = {"found": hits / len(items), "n": len(items),
                                                    "median_ms": float(np.median(ms))}
    print("| method | " + " | ".join(data) + " |")
    print("|---|" + "---|" * len(data))
    for method, r in res.items():
        print(f"| {method} | " + " | ".join(f"{v['found']:.0%} of {v['n']} ({v['median_ms']:.1f} ms)"
                                           for v in r.values()) + " |")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"machine": machine_info(), "results": res}, indent=1))
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
