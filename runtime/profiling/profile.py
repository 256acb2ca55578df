"""`ssae profile`: per-layer time of one stage graph.

- onnxruntime: the session profiler's JSON (kernel events), summarised by op type and by node;
- openvino: per-node performance counters (PERF_COUNT);
- torch / torch-bf16: torch.profiler, summarised by operator;
- tensorrt: the engine inspector and IProfiler (GPU machines with TensorRT).
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def _table(rows: dict[str, float], total: float, top: int) -> list[dict]:
    items = sorted(rows.items(), key=lambda kv: -kv[1])[:top]
    return [{"name": k, "ms": v, "share": v / total if total else 0.0} for k, v in items]


def profile_onnxruntime(backend, stage: str, inputs: dict, runs: int, top: int) -> dict:
    entry = backend.manifest["stages"][stage]
    with tempfile.TemporaryDirectory() as d:
        sess = backend.open_session(backend.dir / entry["file"], entry, profile_prefix=os.path.join(d, "ort"))
        feed = {i.name: inputs[i.name] for i in sess.get_inputs()}
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    by_op, by_node = defaultdict(float), defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            ms = e["dur"] / 1e3 / runs
            by_op[e["args"].get("op_name", "?")] += ms
            by_node[e["name"][: -len("_kernel_time")]] += ms
    total = sum(by_op.values())
    return {"total_ms": total, "by_op": _table(by_op, total, top), "by_node": _table(by_node, total, top)}


def profile_openvino(backend, stage: str, inputs: dict, runs: int, top: int) -> dict:
    path = backend.dir / backend.manifest["stages"][stage]["file"]
    hint = {"bf16": "bf16", "fp32": "f32"}[backend.precision]
    cm = backend.core.compile_model(str(path), backend._dev, {"PERF_COUNT": True, "INFERENCE_PRECISION_HINT": hint})
    req = cm.create_infer_request()
    by_op, by_node = defaultdict(float), defaultdict(float)
    for _ in range(runs):
        req.infer({k: np.ascontiguousarray(v) for k, v in inputs.items()})
        for p in req.get_profiling_info():
            ms = p.real_time.total_seconds() * 1e3 / runs
            by_op[p.node_type] += ms
            by_node[p.node_name] += ms
    total = sum(by_op.values())
    return {"total_ms": total, "by_op": _table(by_op, total, top), "by_node": _table(by_node, total, top)}


def profile_torch(backend, stage: str, inputs: dict, runs: int, top: int) -> dict:
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU]
    if backend.device.startswith("cuda"):
        acts.append(ProfilerActivity.CUDA)
    with profile(activities=acts) as prof:
        for _ in range(runs):
            backend.run(stage, inputs)
    by_op = {}
    for ev in prof.key_averages():
        by_op[ev.key] = ev.self_cpu_time_total / 1e3 / runs
    total = sum(by_op.values())
    return {"total_ms": total, "by_op": _table(by_op, total, top), "by_node": []}


def run_profile(model, backend_name: str, stage: str, runs: int = 10, top: int = 15) -> dict:
    from ssae.runtime.backend import BackendError
    from ssae.runtime.editor import Editor
    from ssae.runtime.registry import create_backend, resolve_model
    be = create_backend(backend_name, resolve_model(model))
    ed = Editor(be)
    if stage not in be.stages():
        raise ValueError(f"unknown stage {stage!r} (stages: {', '.join(be.stages())})")
    from ssae.pretrained import ASSETS
    inputs = ed.stage_feeds(ASSETS / "example_face.jpg")[stage]
    if be.name.startswith("onnxruntime"):
        res = profile_onnxruntime(be, stage, inputs, runs, top)
    elif be.name.startswith("openvino"):
        res = profile_openvino(be, stage, inputs, runs, top)
    elif be.name.startswith("torch"):
        res = profile_torch(be, stage, inputs, runs, top)
    else:  # TensorRT: the engine inspector / IProfiler belong to the TensorRT backend (GPU path, not built yet)
        raise BackendError(f"per-layer profiling is not available for the {be.name} backend yet")
    return {"backend": be.describe(), "stage": stage, "runs": runs, **res}


def format_profile(res: dict) -> str:
    lines = [f"{res['stage']} on {res['backend']}: {res['total_ms']:.2f} ms per run (sum of layer times, "
             f"{res['runs']} runs)", "", "by op type:"]
    lines += [f"  {r['ms']:9.3f} ms  {100 * r['share']:5.1f}%  {r['name']}" for r in res["by_op"]]
    if res["by_node"]:
        lines += ["", "by node:"]
        lines += [f"  {r['ms']:9.3f} ms  {100 * r['share']:5.1f}%  {r['name']}" for r in res["by_node"]]
    return "\n".join(lines)
