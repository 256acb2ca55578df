"""Timing helpers: synchronised wall-clock samples and their percentiles; process memory."""
from __future__ import annotations

import resource
import time
from typing import Callable

import numpy as np

STAT_KEYS = ("p50", "p90", "p99", "min", "mean")


def summarize(samples_ms) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "min": float(a.min()), "mean": float(a.mean()), "n": int(a.size)}


def time_call(fn: Callable[[], object], sync: Callable[[], None] | None = None, cuda_events: bool = False) -> float:
    """Milliseconds for one call. Host clock around the call and the backend's device synchronisation; with
    `cuda_events` (torch backends on CUDA) the time between two CUDA events recorded around the call instead."""
    if cuda_events:
        import torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return (time.perf_counter() - t) * 1e3


def peak_rss_mb() -> float:
    """Peak resident set size of this process (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cuda_peak_mb() -> float | None:
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2 ** 20
    except Exception:  # noqa: BLE001
        pass
    return None
