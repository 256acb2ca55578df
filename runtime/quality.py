"""What users get back, measured on photos at their own resolution (`ssae eval --photos DIR`, `ssae eval --lfw`).

Per photo and ROI, between the input and the edited photo (`Editor.edit`, default output):
- `outside_psnr`: PSNR (dB) outside the region (predicted mask > 0.5) dilated by 4% of the photo's long side;
  identical pixels count as `PSNR_CAP`;
- `detail`: correlation of the high-pass detail (grey level minus its Gaussian blur, sigma = long side / 256, at
  least 1 px) of output and input inside the region: 1 when the photo's own detail survives, near 0 when the
  region is replaced by a smooth model output;
- `change`: mean absolute change inside the region, in 8-bit levels (how visible the edit is);
- `ms`: the edit's wall time (framing, every stage, compositing).
On labelled LFW photos, also the IoU of the photo-resolution masks against the labels and the edit locality (mean
absolute change outside the region / inside).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ssae.data.layouts import IMAGE_EXTS
from ssae.face.framing import gaussian_blur
from .editor import Editor, FaceNotFoundError
from .images import load_image

PSNR_CAP = 99.0


def _dilate(m: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2 radius + 1) square (two running maxima)."""
    if radius <= 0:
        return m.copy()
    out = m.copy()
    for axis in (0, 1):
        c = np.cumsum(np.pad(out.astype(np.int32), [(radius + 1, radius) if a == axis else (0, 0) for a in (0, 1)]),
                      axis=axis)
        n = out.shape[axis]
        hi = np.take(c, np.arange(2 * radius + 1, 2 * radius + 1 + n), axis=axis)
        lo = np.take(c, np.arange(0, n), axis=axis)
        out = (hi - lo) > 0
    return out


def photo_metrics(src: np.ndarray, out: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """outside_psnr, detail and change (see the module doc) of one edit; src, out uint8 (H, W, 3), mask (H, W)."""
    region = mask > 0.5
    side = max(src.shape[:2])
    outside = ~_dilate(region, int(round(0.04 * side)))
    a, b = src.astype(np.float32), out.astype(np.float32)
    res = {}
    if outside.any():
        mse = float(((a - b)[outside] ** 2).mean())
        res["outside_psnr"] = PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * np.log10(255.0 ** 2 / mse))
    if region.sum() >= 16:
        sigma = max(1.0, side / 256)
        ga, gb = a.mean(-1), b.mean(-1)
        ha, hb = (ga - gaussian_blur(ga, sigma, "edge"))[region], (gb - gaussian_blur(gb, sigma, "edge"))[region]
        ha, hb = ha - ha.mean(), hb - hb.mean()
        den = float(np.sqrt((ha ** 2).sum() * (hb ** 2).sum()))
        res["detail"] = float((ha * hb).sum() / den) if den > 0 else 1.0
        res["change"] = float(np.abs(a - b)[region].mean())
    return res


@dataclass
class PhotoReport:
    """Per-edit rows and their summary (medians, 10th percentile of outside_psnr, faces found)."""

    rows: list[dict] = field(default_factory=list)
    photos: int = 0
    faces_found: int = 0
    summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def summarise(rows: list[dict], keys: Sequence[str]) -> dict:
    out = {}
    for k in keys:
        v = np.array([r[k] for r in rows if k in r], np.float64)
        if len(v):
            out[k] = {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)), "n": int(len(v))}
    return out


def evaluate_photos(editor: Editor, photos: Sequence[str | Path], rois: Sequence[str] | None = None,
                    seeds: Sequence[int] = (0,), strength: float = 1.0) -> PhotoReport:
    """Edit every photo (largest face) for every ROI and seed, and measure what the user gets back."""
    rois = list(rois or editor.rois)
    rep = PhotoReport()
    for path in photos:
        rep.photos += 1
        src = load_image(path)
        found = True
        for roi in rois:
            for seed in seeds:
                t = time.perf_counter()
                try:
                    res = editor.edit(src, roi=roi, seed=seed, strength=strength)
                except FaceNotFoundError:
                    found = False
                    break
                ms = (time.perf_counter() - t) * 1e3
                row = {"photo": str(path), "roi": roi, "seed": seed, "ms": ms, "height": src.shape[0],
                       "width": src.shape[1]}
                row.update(photo_metrics(src, np.asarray(res.image), res.mask))
                rep.rows.append(row)
            if not found:
                break
        rep.faces_found += int(found)
    rep.summary = summarise(rep.rows, ("outside_psnr", "detail", "change", "ms"))
    rep.summary["faces_found"] = rep.faces_found / max(1, rep.photos)
    rep.summary["per_roi"] = {r: summarise([x for x in rep.rows if x["roi"] == r], ("outside_psnr", "detail",
                                                                                    "change"))
                              for r in rois}
    return rep


def list_photos(folder: str | Path) -> list[Path]:
    """Image files under a folder (recursively), sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"photo folder not found: {root}")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)


def evaluate_lfw_photos(editor: Editor, data, seeds: Sequence[int] = (0, 1), strength: float = 1.0,
                        max_images: int | None = None) -> dict:
    """On labelled photos (`ssae.data.layouts.LFWParts`-like: `names`, `photo(i)` -> (rgb, {roi: mask or None})):
    IoU of the photo-resolution masks per ROI, edit locality and change inside per ROI, faces found."""
    rois = list(editor.rois)
    n = len(data.names) if max_images is None else min(len(data.names), max_images)
    inter, union = dict.fromkeys(rois, 0.0), dict.fromkeys(rois, 0.0)
    loc, change, detail = ({r: [] for r in rois} for _ in range(3))
    found = 0
    for i in range(n):
        rgb, labels = data.photo(i)
        try:
            masks = editor.masks(rgb)
        except FaceNotFoundError:
            continue
        found += 1
        for r in rois:
            gt = labels.get(r)
            if gt is not None:
                p, g = masks[r] > 0.5, gt > 0.5
                inter[r] += float((p & g).sum())
                union[r] += float((p | g).sum())
            for s in seeds:
                out = np.asarray(editor.edit(rgb, roi=r, seed=s, strength=strength).image).astype(np.float32)
                d = np.abs(out - rgb).mean(-1)
                inside = masks[r] > 0.5
                if inside.sum() < 16:
                    continue
                m_in, m_out = float(d[inside].mean()), float(d[~inside].mean())
                change[r].append(m_in)
                loc[r].append(m_out / max(m_in, 1e-6))
                detail[r].append(photo_metrics(rgb.astype(np.uint8), out.astype(np.uint8), masks[r])["detail"])
    return {"images": n, "faces_found": found,
            "iou": {r: (inter[r] / union[r] if union[r] else None) for r in rois},
            "locality": {r: float(np.mean(loc[r])) if loc[r] else None for r in rois},
            "change_inside": {r: float(np.mean(change[r])) if change[r] else None for r in rois},
            "detail": {r: float(np.median(detail[r])) if detail[r] else None for r in rois}}
