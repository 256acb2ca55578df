"""Accuracy and speed of a reduced-precision variant against fp32, on real labelled faces (default: LFW test split).

For each test face both pipelines (the fp32 reference on ONNX Runtime, and the variant: an int8/fp16 export on a
backend, or a bf16 backend) run through the same `Editor`:
- edits: every ROI with one seed (`Editor.edit_many`); image PSNR/SSIM of the variant's edit against fp32's;
- reconstruction: the pipeline at strength 0, PSNR/SSIM against fp32's;
- SMPN IoU per ROI against the labels (threshold 0.5), for both; the change is `iou_delta` (variant - fp32);
- edit locality per ROI (mean absolute change outside the ROI / inside, edit vs strength 0), for both;
- full-edit latency (new image, empty cache; median), and the speed ratio against fp32 ONNX Runtime.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ssae.data.transforms import to_model_array
from ssae.metrics import iou_counts, psnr, ssim

ROI_SEED = 0


@dataclass
class Variant:
    """A way to run the pipeline in reduced precision: its precision label, backend label and factory."""

    precision: str
    backend: str
    make: Callable[[], object]  # -> ssae.runtime.backend.Backend


def _t(img) -> torch.Tensor:
    return torch.from_numpy(to_model_array(np.asarray(img)))


def _locality(edit, base, mask) -> float | None:
    inside = mask > 0.5
    if not inside.any() or inside.all():
        return None
    d = np.abs(np.asarray(edit, np.float32) - np.asarray(base, np.float32)).mean(-1)
    din = d[inside].mean()
    return float(d[~inside].mean() / max(din, 1e-8))


class _Run:
    """Per-pipeline accumulators."""

    def __init__(self, rois):
        self.rois = rois
        self.inter, self.union = np.zeros(len(rois)), np.zeros(len(rois))
        self.loc = {r: [] for r in rois}
        self.ms: list[float] = []

    def iou(self) -> dict:
        return {r: (float(self.inter[i] / self.union[i]) if self.union[i] else None) for i, r in enumerate(self.rois)}

    def locality(self) -> dict:
        return {r: (float(np.mean(v)) if v else None) for r, v in self.loc.items()}


def _one_face(ed, img, rois, run: _Run, labels, labelled):
    ed._cache.clear()
    res = ed.edit(img, rois[0], seed=ROI_SEED)  # a full edit of a new image: the latency that counts
    run.ms.append(res.timings["total"])
    masks = ed.masks(img)
    pred = torch.from_numpy(np.stack([masks[r] for r in rois]))[None]
    i_, u_ = iou_counts(pred, torch.from_numpy(labels[None].astype(np.float32) / 255.0),
                        torch.from_numpy(labelled[None]))
    run.inter += i_
    run.union += u_
    edits = ed.edit_many(img, list(rois), [ROI_SEED])
    base = ed.edit_many(img, list(rois), [ROI_SEED], strength=0.0)
    for e, b in zip(edits, base):
        loc = _locality(e.image, b.image, e.mask)
        if loc is not None:
            run.loc[e.roi].append(loc)
    return edits, base


def compare_variant(reference, variant, images: np.ndarray, labels: np.ndarray, labelled: np.ndarray) -> dict:
    """Metrics of one variant backend against the fp32 reference backend on test faces.

    images: (N, S, S, 3) uint8 at the model size; labels: (N, R, S, S) uint8 (x255); labelled: (N, R) bool.
    """
    from ssae.runtime.editor import Editor

    e_ref, e_var = Editor(reference), Editor(variant)
    rois = e_ref.rois
    for ed in (e_ref, e_var):  # warm-up: compile every graph once before timing
        ed.edit_many(images[0], list(rois), [ROI_SEED])
    r_ref, r_var = _Run(rois), _Run(rois)
    p_edit, s_edit, p_rec, s_rec = [], [], [], []
    for k, img in enumerate(images):
        order = [(e_ref, r_ref), (e_var, r_var)] if k % 2 == 0 else [(e_var, r_var), (e_ref, r_ref)]
        out = {}
        for ed, run in order:  # alternate which pipeline runs first (machine noise hits both alike)
            out[id(run)] = _one_face(ed, img, rois, run, labels[k], labelled[k])
        (ea, ba), (eb, bb) = out[id(r_ref)], out[id(r_var)]
        for a, b in zip(ea, eb):
            A, B = _t(a.image), _t(b.image)
            p_edit.append(psnr(B, A).item())
            s_edit.append(ssim(B, A).item())
        A, B = _t(ba[0].image), _t(bb[0].image)
        p_rec.append(psnr(B, A).item())
        s_rec.append(ssim(B, A).item())
    iou_ref, iou_var = r_ref.iou(), r_var.iou()
    loc_ref, loc_var = r_ref.locality(), r_var.locality()
    ms_ref, ms_var = float(np.median(r_ref.ms)), float(np.median(r_var.ms))
    diff = lambda a, b: None if a is None or b is None else float(b - a)
    return {
        "images": int(len(images)),
        "psnr_db": float(np.mean(p_edit)), "ssim": float(np.mean(s_edit)),
        "reconstruction": {"psnr_db": float(np.mean(p_rec)), "ssim": float(np.mean(s_rec))},
        "iou": iou_var, "iou_fp32": iou_ref, "iou_delta": {r: diff(iou_ref[r], iou_var[r]) for r in rois},
        "locality_ratio": loc_var, "locality_ratio_fp32": loc_ref,
        "locality_delta": {r: diff(loc_ref[r], loc_var[r]) for r in rois},
        "full_edit_ms": ms_var, "full_edit_ms_fp32": ms_ref, "speedup_vs_fp32": ms_ref / ms_var,
        "reference": reference.describe(), "variant": variant.describe(),
    }


def markdown_report(report: dict) -> str:
    """The accuracy report as Markdown: one row per (precision, backend), then per-ROI IoU and locality changes."""
    lines = ["# Reduced-precision accuracy against fp32", ""]
    prov = report.get("calibration_set")
    if prov:
        lines += [f"Calibration set: {prov.get('count')} faces from {prov.get('layout')} "
                  f"({prov.get('split') or 'all'}) at {prov.get('size')} px, sha256 {str(prov.get('sha256'))[:12]}.", ""]
    test = report.get("test_set")
    if test:
        lines += [f"Test set: {test}.", ""]
    lines += ["| precision | backend | edit PSNR dB | edit SSIM | recon PSNR dB | full edit ms | fp32 ORT ms | speedup |",
              "|---|---|---|---|---|---|---|---|"]
    rows = []
    for prec, per_backend in report.get("precisions", {}).items():
        for be, r in per_backend.items():
            if "skipped" in r:
                lines.append(f"| {prec} | {be} | skipped: {r['skipped']} | | | | | |")
                continue
            rows.append((prec, be, r))
            lines.append(f"| {prec} | {be} | {r['psnr_db']:.1f} | {r['ssim']:.4f} | {r['reconstruction']['psnr_db']:.1f} "
                         f"| {r['full_edit_ms']:.1f} | {r['full_edit_ms_fp32']:.1f} | {r['speedup_vs_fp32']:.2f}x |")
    if rows:
        rois = list(rows[0][2]["iou_delta"])
        fmt = lambda v, f: "n/a" if v is None else format(v, f)
        lines += ["", "SMPN IoU change (variant - fp32) and edit-locality ratio (fp32 -> variant) per ROI:", "",
                  "| precision | backend | " + " | ".join(f"IoU Δ {r}" for r in rois) + " | "
                  + " | ".join(f"locality {r}" for r in rois) + " |",
                  "|---|---|" + "---|" * (2 * len(rois))]
        for prec, be, r in rows:
            lines.append(f"| {prec} | {be} | " + " | ".join(fmt(r["iou_delta"][x], "+.4f") for x in rois) + " | "
                         + " | ".join(f"{fmt(r['locality_ratio_fp32'][x], '.3f')} -> {fmt(r['locality_ratio'][x], '.3f')}"
                                      for x in rois) + " |")
    machine = report.get("machine")
    if machine:
        lines += ["", f"Machine: {machine}."]
    return "\n".join(lines) + "\n"
