"""What face framing and compositing add to a full CPU edit, per model size and photo size.

For each model (bundled lfw128, paper256 with random weights) and backend, full edits (empty cache) of the example
face at three photo sizes: as shipped (250 px), placed in a 1024 x 1024 scene and in a 3000 x 2000 scene. Each
edit's own timings are split into framing (face detection + the crop), compositing (the paste of the change and
the mask at the photo's resolution) and the model (every stage: SMPN, encoder, prefix, the unedited and the edited
tail, both RBs). Framing includes reading the photo and hashing it for the cache (`decode`). Also a cached re-edit of the hair and the lips (new seed). Median of --repeats runs, runs
alternating between configurations; "wall" is the clock around each `Editor.edit` call.

    python benchmarks/bench_framing.py [--models bundled paper256] [--backends onnxruntime openvino] [--json out]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from PIL import Image

from ssae.runtime.profiling.bench import machine_info, save_json
from ssae.pretrained import ASSETS
from ssae.runtime import BackendError, Editor

FRAMING = ("decode", "detect", "frame")
COMPOSITING = ("composite",)


def scene(w: int, h: int, face_px: int, at: tuple[float, float]) -> np.ndarray:
    """The example face resized to face_px and pasted at a relative position into a w x h smooth background."""
    yy, xx = np.mgrid[0:h, 0:w]
    bg = np.stack([xx * 160 // w + 40, yy * 120 // h + 60, (xx + yy) * 80 // (w + h) + 90], -1).astype(np.uint8)
    img = Image.fromarray(bg)
    f = Image.open(ASSETS / "example_face.jpg").convert("RGB").resize((face_px, face_px), Image.LANCZOS)
    img.paste(f, (int(at[0] * (w - face_px)), int(at[1] * (h - face_px))))
    return np.asarray(img)


def photos() -> dict[str, np.ndarray]:
    return {"250x250": np.asarray(Image.open(ASSETS / "example_face.jpg").convert("RGB")),
            "1024x1024": scene(1024, 1024, 700, (0.4, 0.3)),
            "3000x2000": scene(3000, 2000, 900, (0.8, 0.2))}


def split(t: dict, wall: float | None = None) -> dict[str, float]:
    """An edit's timings as framing, compositing, model and total (ms); `wall`: the caller's clock around the
    call (it also counts what the timings leave out, such as building the result image in older versions)."""
    fr = sum(t.get(k, 0.0) for k in FRAMING)
    co = sum(t.get(k, 0.0) for k in COMPOSITING)
    out = {"framing": fr, "compositing": co, "model": t["total"] - fr - co, "total": t["total"]}
    if wall is not None:
        out["wall"] = wall
    return out


def timed_edit(ed, image, **kw) -> dict[str, float]:
    """`split` of one `ed.edit(image, **kw)`, with the wall-clock time around the call."""
    t = time.perf_counter()
    res = ed.edit(image, **kw)
    return split(res.timings, (time.perf_counter() - t) * 1e3)


def bench(model: str, backend: str, repeats: int) -> dict:
    ed = Editor.load(None if model == "bundled" else model, backend=backend)
    ims = photos()
    for im in ims.values():  # warm-up (compile, first calls)
        ed.edit(im, roi="hair", seed=0)
    rows = {k: {"full": [], "reedit_hair": [], "reedit_lips": []} for k in ims}
    for r in range(repeats):
        for name, im in ims.items():
            ed.clear_cache()
            rows[name]["full"].append(timed_edit(ed, im, roi="hair", seed=r + 1))
            ed.edit(im, roi="lips", seed=0)           # untimed: the lips' unedited reference
            rows[name]["reedit_hair"].append(timed_edit(ed, im, roi="hair", seed=r + 2))
            rows[name]["reedit_lips"].append(timed_edit(ed, im, roi="lips", seed=r + 2))
    out = {}
    for name, kinds in rows.items():
        out[name] = {}
        for kind, runs in kinds.items():
            med = {k: float(np.median([x[k] for x in runs])) for k in runs[0]}
            med["overhead"] = (med["framing"] + med["compositing"]) / med["model"]
            out[name][kind] = med
    return {"model": model, "image_size": ed.size, "backend": ed.backend.describe(), "repeats": repeats,
            "photos": out}


def print_table(res: dict) -> None:
    print(f"\n{res['model']} ({res['image_size']} px), {res['backend']}, median of {res['repeats']} runs, ms")
    print("| photo | edit | framing | compositing | model | total | wall clock | framing + compositing / model |")
    print("|---|---|---|---|---|---|---|---|")
    for name, kinds in res["photos"].items():
        for kind, m in kinds.items():
            print(f"| {name} | {kind} | {m['framing']:.1f} | {m['compositing']:.1f} | {m['model']:.1f} | "
                  f"{m['total']:.1f} | {m.get('wall', float('nan')):.1f} | {100 * m['overhead']:.1f}% |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["bundled", "paper256"])
    ap.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    out = {"machine": machine_info(), "results": []}
    for m in args.models:
        for b in args.backends:
            try:
                res = bench(m, b, args.repeats)
            except BackendError as e:
                print(f"skip {m} on {b}: {e}", file=sys.stderr)
                continue
            print_table(res)
            out["results"].append(res)
    if args.json:
        save_json(out, args.json)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
