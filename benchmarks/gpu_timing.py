"""Timing helpers shared by the GPU benchmarks (`bench_kernel_gpu.py`, `bench_runtime_gpu.py`)."""
from __future__ import annotations

import statistics
import time

import torch


def timed_ms(fn, reps: int, warmup: int, device: torch.device) -> dict:
    """Median / min / p90 milliseconds of fn(): CUDA events around each call, the calls queued back to back (one
    synchronisation at the end), on a GPU; the host clock on the CPU."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        pairs = []
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            pairs.append((s, e))
        torch.cuda.synchronize(device)
        ms = sorted(s.elapsed_time(e) for s, e in pairs)
    else:
        ms = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ms.append((time.perf_counter() - t) * 1e3)
        ms.sort()
    return dict(median_ms=statistics.median(ms), min_ms=ms[0], p90_ms=ms[int(0.9 * (len(ms) - 1))], reps=reps)


def captured(fn, device: torch.device):
    """fn replayed from one CUDA graph (captured after three warm-up calls on a side stream); returns (replay,
    the graph's static output)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out
