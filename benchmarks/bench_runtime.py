"""Per-stage CPU latency of every available backend, side by side with the official-equivalent PyTorch model.

For each model (default: the bundled lfw128 model at 128 px, and the paper's 256 config with random weights),
each backend runs every stage; runs alternate between backends (round-robin) so machine noise hits all of them
alike. Reported: median (and min) milliseconds per stage, and the goal ratios:
- cached re-edit (edit tail + RB on an already-encoded image) vs one official decoder pass;
- full edit of a new image (SMPN + encoder + prefix + edit tail + RB) vs official encode + decode.

    python benchmarks/bench_runtime.py [--models lfw128 paper256] [--repeats 7] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ssae.export.onnx_export import example_inputs
from ssae.export.stages import stage_specs
from ssae.info import gather
from ssae.models.official import OfficialEncoder, OfficialGenerator
from ssae.runtime.backend import BackendError
from ssae.runtime.registry import create_backend, load_torch_model, resolve_model

STAGES = ("smpn", "sae_encoder", "sae_decoder_prefix", "sae_decoder_edit", "refine_hair")
BACKENDS = ("torch", "torch-bf16", "onnxruntime", "openvino", "openvino-fp32")


def official_pair(model):
    """The official networks (direct formulation) holding the same weights as `model.sae`."""
    cfg = model.sae.cfg
    e, g = OfficialEncoder(cfg).eval(), OfficialGenerator(cfg).eval()
    return e, g


def stage_inputs(model, batch=1):
    specs = stage_specs(model)
    return {s: {t.name: a.numpy() for t, a in zip(specs[s].inputs, example_inputs(specs[s], batch, seed=1))}
            for s in STAGES}


def timed(fn):
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def bench_model(name: str, repeats: int, backends, threads: int) -> dict:
    torch.set_num_threads(threads)
    src = resolve_model(None if name == "bundled" else name)
    model = load_torch_model(src)
    size = model.cfg.image_size
    inputs = stage_inputs(model)
    runners = {}
    for b in backends:
        try:
            be = create_backend(b, src)
            for s in STAGES:  # warm-up (and compile)
                be.run(s, inputs[s])
            runners[b] = be
        except BackendError as e:
            print(f"  skip {b}: {e}", file=sys.stderr)
    e_off, g_off = official_pair(model)
    x = torch.from_numpy(inputs["sae_encoder"]["image"])
    with torch.no_grad():
        sp, gl = e_off(x)
        noises = [torch.zeros(1, 1, h, w) for h, w in model.sae.G.noise_shapes(sp.shape[-2:])]
        g_off(sp, gl, noises)
    times = {b: {s: [] for s in STAGES} for b in runners}
    times["official"] = {"encoder": [], "decoder": []}
    for _ in range(repeats):
        with torch.no_grad():
            times["official"]["encoder"].append(timed(lambda: e_off(x)))
            times["official"]["decoder"].append(timed(lambda: g_off(sp, gl, noises)))
        for b, be in runners.items():
            for s in STAGES:
                times[b][s].append(timed(lambda: (be.run(s, inputs[s]), be.synchronize())))
    med = {b: {s: float(np.median(v)) for s, v in d.items()} for b, d in times.items()}
    mins = {b: {s: float(np.min(v)) for s, v in d.items()} for b, d in times.items()}
    off_dec = med["official"]["decoder"]
    off_full = med["official"]["encoder"] + off_dec
    rows = {}
    for b in runners:
        m = med[b]
        cached = m["sae_decoder_edit"] + m["refine_hair"]
        full = sum(m[s] for s in STAGES)
        rows[b] = {"stages_ms": m, "stages_min_ms": mins[b], "cached_reedit_ms": cached, "full_edit_ms": full,
                   "cached_reedit_speedup_vs_official_decoder": off_dec / cached,
                   "full_edit_speedup_vs_official_encode_decode": off_full / full}
    return {"model": name, "image_size": size, "repeats": repeats, "official_ms": med["official"],
            "backends": rows}


def machine() -> dict:
    info = gather()
    return {"cpu": info.cpu, "cores": os.cpu_count(), "isa": info.isa, "python": platform.python_version(),
            "versions": {k: v for k, v in info.versions.items() if v}}


def print_table(res: dict) -> None:
    print(f"\n{res['model']} ({res['image_size']} px), median of {res['repeats']} runs, ms; official encoder "
          f"{res['official_ms']['encoder']:.1f}, official decoder {res['official_ms']['decoder']:.1f}")
    head = ["backend"] + [s.replace("sae_", "") for s in STAGES] + ["cached re-edit", "full edit", "re-edit x", "full x"]
    print(" | ".join(f"{h:>14}" for h in head))
    for b, r in res["backends"].items():
        cells = [b] + [f"{r['stages_ms'][s]:.2f}" for s in STAGES] + [
            f"{r['cached_reedit_ms']:.2f}", f"{r['full_edit_ms']:.2f}",
            f"{r['cached_reedit_speedup_vs_official_decoder']:.1f}",
            f"{r['full_edit_speedup_vs_official_encode_decode']:.1f}"]
        print(" | ".join(f"{c:>14}" for c in cells))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["bundled", "paper256"])
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    out = {"machine": machine(), "results": []}
    for m in args.models:
        res = bench_model(m, args.repeats, args.backends, args.threads)
        print_table(res)
        out["results"].append(res)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
