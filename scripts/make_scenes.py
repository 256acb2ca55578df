"""Off-centre scenes for `ssae eval --photos`: LFW test faces scaled and pasted anywhere into larger photos.

Each scene is a 250 px LFW photo scaled by 0.6-2.4 (a face 60-240 px wide) and pasted at a random position into a
canvas of 500-1600 x 400-1200 px whose background is the top-left corner (70 x 70 px, away from the face) of
another LFW photo enlarged and blurred: a photographic, not a flat, surround without a second face. Deterministic for a given --seed. `scenes.json` holds each scene's pasted rectangle (x0, y0, x1, y1).

    python scripts/make_scenes.py --lfw ../shared/data/lfw_parts --out /tmp/scenes --count 40
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def make_scene(face: Image.Image, background: Image.Image, rng: np.random.Generator):
    """(scene, (x0, y0, x1, y1) of the pasted photo in the scene)."""
    w, h = int(rng.integers(500, 1601)), int(rng.integers(400, 1201))
    scale = float(rng.uniform(0.6, 2.4))
    f = face.resize((round(face.width * scale), round(face.height * scale)), Image.LANCZOS)
    if f.width >= w or f.height >= h:
        f = f.resize((min(f.width, w - 20), min(f.height, h - 20)), Image.LANCZOS)
    bg = background.crop((0, 0, 70, 70)).resize((w, h), Image.BICUBIC).filter(ImageFilter.GaussianBlur(4))
    x, y = int(rng.integers(0, w - f.width + 1)), int(rng.integers(0, h - f.height + 1))
    bg.paste(f, (x, y))
    return bg, (x, y, x + f.width, y + f.height)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lfw", required=True, help="LFW Part Labels root (the test split's faces are used)")
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    root = Path(a.lfw)
    names = (root / "test.txt").read_text().split()
    rng = np.random.default_rng(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    picks = rng.choice(len(names), size=(a.count, 2), replace=False if 2 * a.count <= len(names) else True)
    boxes = {}
    for k, (i, j) in enumerate(picks):
        face = Image.open(root / "images" / f"{names[i]}.jpg").convert("RGB")
        bg = Image.open(root / "images" / f"{names[j]}.jpg").convert("RGB")
        img, box = make_scene(face, bg, rng)
        name = f"scene_{k:03d}_{names[i]}.jpg"
        img.save(out / name, quality=92)
        boxes[name] = box
    (out / "scenes.json").write_text(json.dumps(boxes, indent=1))
    print(f"{a.count} scenes in {out}")


if __name__ == "__main__":
    main()
