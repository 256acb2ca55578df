"""INT8 exclusion search: keep in float the graphs whose quantization costs the most accuracy, until the full
edit meets a PSNR target against fp32.

Accuracy is measured on held-out calibration faces (never the test split): full edits through the `Editor` on
ONNX Runtime, int8 against fp32. Each round quantizes one group of graphs at a time (`graph_group`; all
others float) to rank them by the PSNR they cost, then keeps the worst group in float. Ranges come from the
calibration cache, so a round costs QDQ rewrites and edits, not calibration passes.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from ssae.data.transforms import to_model_array
from ssae.export.onnx_export import read_manifest
from ssae.pipeline import EDIT, SMPN, is_smpn
from .int8 import Int8Config, quantize_export


def graph_group(stage: str) -> str:
    """Graphs that are kept in float together: all SMPN graphs, both edit graphs, all RBs; others alone."""
    if is_smpn(stage):
        return SMPN
    if stage.startswith(EDIT):
        return EDIT
    if stage.startswith("refine_"):
        return "refine"
    return stage


def edit_psnr(fp32_dir, quant_dir, images: np.ndarray, roi: str = "hair") -> float:
    """Mean PSNR (dB) of full edits (new image, one seed per face) with the quantized export against fp32, on ORT."""
    import torch

    from ssae.metrics import psnr
    from ssae.runtime.editor import Editor
    from ssae.runtime.onnx_backends import OrtBackend

    a, b = OrtBackend(fp32_dir), OrtBackend(quant_dir)
    ea, eb = Editor(a, cache_size=1), Editor(b, cache_size=1)
    t = lambda im: torch.from_numpy(to_model_array(np.asarray(im)))  # noqa: E731
    vals = [psnr(t(eb.edit(img, roi, seed=k).image), t(ea.edit(img, roi, seed=k).image)).item()
            for k, img in enumerate(images)]
    return float(np.mean(vals))


def search_exclusions(fp32_dir: str | os.PathLike, calib_images: np.ndarray, val_images: np.ndarray,
                      cfg: Int8Config, target_psnr: float = 30.0, max_rounds: int = 3,
                      cache_dir: str | os.PathLike | None = None, feeds: dict | None = None,
                      progress=None, source_dir: str | os.PathLike | None = None) -> tuple[Int8Config, list[dict]]:
    """The config with the fewest graphs kept in float (greedy, at most `max_rounds`) whose full edits reach
    `target_psnr` on `val_images`; and the search history (one entry per evaluated config). source_dir: the
    export quantized (default `fp32_dir`, the reference)."""
    source_dir = fp32_dir if source_dir is None else source_dir
    manifest = read_manifest(fp32_dir)
    groups: dict[str, tuple[str, ...]] = {}
    for s, e in manifest["stages"].items():
        if not e.get("plugin"):
            groups.setdefault(graph_group(s), ())
            groups[graph_group(s)] += (s,)
    history: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ssae-int8-search-") as tmp:
        def measure(c: Int8Config, tag: str) -> float:
            out = Path(tmp) / tag
            quantize_export(source_dir, out, calib_images, c, cache_dir=cache_dir, feeds=feeds)
            p = edit_psnr(fp32_dir, out, val_images)
            history.append({"keep_float": list(c.keep_float), "quantized_only": list(c.stages), "psnr_db": p})
            if progress:
                progress(f"int8 search: {tag}: {p:.2f} dB")
            return p

        best = cfg
        if measure(best, "all") >= target_psnr:
            return best, history
        for rnd in range(max_rounds):
            left = [g for g, members in groups.items() if not set(members) <= set(best.keep_float)]
            if not left:
                break
            cost = {g: measure(replace(best, stages=groups[g]), f"r{rnd}-{g}") for g in left}
            worst = min(cost, key=cost.get)
            best = replace(best, keep_float=best.keep_float + groups[worst])
            if measure(best, f"r{rnd}-keep") >= target_psnr:
                break
    return best, history
