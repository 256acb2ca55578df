"""INT8 speed check: keep in float the graphs that int8 makes slower on the target runtime.

Quantization pays where the MAC-heavy convolutions dominate; on small graphs (the SMPN and RB of the bundled
model, the RBs at any size) the Q/DQ pairs and the float ops between them can cost more than the int8 convs
save. Each quantized graph is timed against its fp32 form on ONNX Runtime with one real calibration feed
(alternating, median of `runs`); graphs whose int8 form is not faster by `min_gain` are kept in float.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..export.onnx_export import read_manifest
from .int8 import Int8Config


def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def stage_speeds(fp32_dir: str | os.PathLike, quant_dir: str | os.PathLike, feeds: dict, runs: int = 9,
                 threads: int = 0) -> dict[str, dict[str, float]]:
    """{stage: {"fp32_ms", "int8_ms", "speedup"}} for every stage the quantized export holds in int8, each timed on
    its first feed, fp32 and int8 sessions alternating (one warm-up run each)."""
    fp, q = Path(fp32_dir), Path(quant_dir)
    man, qman = read_manifest(fp, verify=False), read_manifest(q, verify=False)
    out = {}
    for name, entry in qman["stages"].items():
        if entry.get("precision") != "int8" or not feeds.get(name):
            continue
        feed = feeds[name][0]
        sa, sb = _session(fp / man["stages"][name]["file"], threads), _session(q / entry["file"], threads)
        ta, tb = [], []
        for k in range(runs + 1):
            for sess, acc in ((sa, ta), (sb, tb)):
                t = time.perf_counter()
                sess.run(None, feed)
                if k:
                    acc.append((time.perf_counter() - t) * 1e3)
        a, b = float(np.median(ta)), float(np.median(tb))
        out[name] = {"fp32_ms": a, "int8_ms": b, "speedup": a / b}
    return out


def keep_slower_float(cfg: Int8Config, speeds: dict[str, dict[str, float]], min_gain: float = 1.0) -> Int8Config:
    """`cfg` with every stage whose int8 speed-up is below `min_gain` added to the stages kept in float."""
    slow = tuple(s for s, v in speeds.items() if v["speedup"] < min_gain and s not in cfg.keep_float)
    return replace(cfg, keep_float=cfg.keep_float + slow) if slow else cfg
