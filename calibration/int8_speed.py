"""INT8 speed check: keep in float the graphs that int8 makes slower on the target runtime.

Quantization pays where the MAC-heavy convolutions dominate; on small graphs (the SMPN and RB of the bundled
model, the RBs at any size) the Q/DQ pairs and the float ops between them can cost more than the int8 convs
save. Each quantized graph is timed against its fp32 form on ONNX Runtime with one real calibration feed
(alternating, median of `runs`); graphs whose int8 form is not faster by `min_gain` are kept in float.
"""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from .int8 import Int8Config


def stage_speeds(fp32_dir: str | os.PathLike, quant_dir: str | os.PathLike, feeds: dict, runs: int = 9,
                 threads: int = 0) -> dict[str, dict[str, float]]:
    """{stage: {"fp32_ms", "int8_ms", "speedup"}} for every stage the quantized export holds in int8, each timed on
    its first feed on the runtime's ONNX Runtime CPU backend, fp32 and int8 alternating (one warm-up run each)."""
    from ssae.runtime.profiling.stats import time_call
    from ssae.runtime.onnx_backends import OrtBackend

    cpu = ["CPUExecutionProvider"]
    fp, q = OrtBackend(fp32_dir, providers=cpu, threads=threads), OrtBackend(quant_dir, providers=cpu, threads=threads)
    out = {}
    for name, entry in q.manifest["stages"].items():
        if entry.get("precision") != "int8" or not feeds.get(name):
            continue
        feed = feeds[name][0]
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        for k in range(runs + 1):
            for tag, be in (("fp32", fp), ("int8", q)):
                ms = time_call(lambda: be.run(name, feed))
                if k:
                    times[tag].append(ms)
        a, b = float(np.median(times["fp32"])), float(np.median(times["int8"]))
        out[name] = {"fp32_ms": a, "int8_ms": b, "speedup": a / b}
    return out


def keep_slower_float(cfg: Int8Config, speeds: dict[str, dict[str, float]], min_gain: float = 1.0) -> Int8Config:
    """`cfg` with every stage whose int8 speed-up is below `min_gain` added to the stages kept in float."""
    slow = tuple(s for s, v in speeds.items() if v["speedup"] < min_gain and s not in cfg.keep_float)
    return replace(cfg, keep_float=cfg.keep_float + slow) if slow else cfg
