"""The README's before/after pictures, made with the Editor exactly as users call it (default output).

1. `edits_photos.jpg`: rows of real photos (two CelebAMask-HQ samples at 1024 px, two LFW test faces at 250 px), columns:
   input, one edit per ROI, and a reference edit (the hair takes the texture of the next row's photo). Every edit
   is computed at the photo's own resolution; tiles are shown at 256 px.
2. `edits_detail.jpg`: 1:1 crops (no resizing) of a 1024 px photo, input beside edit, around the mouth (lips
   edit) and the hair (hair edit), to show that the photo keeps its sharpness.

    python scripts/readme_figure.py --shared ../shared/data --out ssae/assets [--model M] [--backend B]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ssae.face import shared_detector
from ssae.runtime import Editor
from ssae.runtime.images import load_image

SEEDS = {"hair": 1, "skin": 2, "nose": 1, "eyes": 2, "lips": 2}
TILE = 256


def tile(a: np.ndarray) -> Image.Image:
    return Image.fromarray(a).resize((TILE, TILE), Image.LANCZOS)


def label(im: Image.Image, text: str) -> Image.Image:
    d = ImageDraw.Draw(im)
    d.rectangle((0, 0, 8 + 7 * len(text), 16), fill=(0, 0, 0))
    d.text((4, 2), text, fill=(255, 255, 255))
    return im


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", required=True, help="the shared data folder (celebamask_hq_samples, lfw_parts)")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--backend", default="onnxruntime")
    a = p.parse_args()
    sh = Path(a.shared)
    photos = [sh / "celebamask_hq_samples" / "0.jpg", sh / "celebamask_hq_samples" / "3.jpg",
              sh / "lfw_parts" / "images" / "Aaron_Peirsol_0003.jpg",
              sh / "lfw_parts" / "images" / "Amanda_Beard_0001.jpg"]
    photos = [q for q in photos if q.exists()] or sorted((sh / "lfw_parts" / "images").glob("*.jpg"))[:4]
    ed = Editor.load(a.model, backend=a.backend)
    rows = []
    for i, ph in enumerate(photos):
        src = load_image(ph)
        cells = [label(tile(src), f"input {src.shape[1]}x{src.shape[0]}")]
        for roi in ed.rois:
            cells.append(label(tile(np.asarray(ed.edit(src, roi=roi, seed=SEEDS.get(roi, 1)).image)), roi))
        ref = photos[(i + 1) % len(photos)]
        cells.append(label(tile(np.asarray(ed.edit(src, roi="hair", reference=ref).image)), "hair like next row"))
        row = Image.new("RGB", (TILE * len(cells), TILE))
        for k, c in enumerate(cells):
            row.paste(c, (k * TILE, 0))
        rows.append(row)
    fig = Image.new("RGB", (rows[0].width, TILE * len(rows)))
    for k, r in enumerate(rows):
        fig.paste(r, (0, k * TILE))
    out = Path(a.out)
    fig.save(out / "edits_photos.jpg", quality=88)
    big = load_image(photos[0])
    h, w = big.shape[:2]
    face = shared_detector().detect(big)[0]
    mouth = face.landmarks[3:].mean(0)
    hair = (face.box[0] + 0.05 * (face.box[2] - face.box[0]), face.box[1] + 0.25 * (face.box[3] - face.box[1]))

    def cut(a, c):
        x0, y0 = int(np.clip(c[0] - 192, 0, w - 384)), int(np.clip(c[1] - 192, 0, h - 384))
        return np.ascontiguousarray(a[y0:y0 + 384, x0:x0 + 384])

    lips, hair_ed = (np.asarray(ed.edit(big, roi=r, seed=SEEDS[r]).image) for r in ("lips", "hair"))
    crops = [(cut(big, mouth), "input (1:1)"), (cut(lips, mouth), "lips (1:1)"), (cut(big, hair), "input (1:1)"),
             (cut(hair_ed, hair), "hair (1:1)")]
    det = Image.new("RGB", (384 * len(crops), 384))
    for k, (c, t) in enumerate(crops):
        det.paste(label(Image.fromarray(c), t), (k * 384, 0))
    det.save(out / "edits_detail.jpg", quality=90)
    print(out / "edits_photos.jpg", out / "edits_detail.jpg")


if __name__ == "__main__":
    main()
