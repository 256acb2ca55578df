"""ONNX Runtime CPU: full edits with three thread-pool setups of the sessions ("spin": ONNX Runtime's default,
"no-spin": what `OrtBackend` uses, "global": one process-wide pool), in one run.

A full edit of a new image runs five graphs back to back (SMPN for the region, encoder, decoder prefix, edit graph,
RB). With ONNX Runtime's default, each session has its own pool whose workers keep spinning after its run while
the next graph starts, so on a machine with few cores every graph shares the CPU with the previous one's idle
workers. A global pool is per process, so each mode runs in its own worker process; rounds rotate the order of the
modes (machine noise hits all alike), and each worker times `--edits` full edits of the example face (Editor cache
cleared before each) after a warm-up. Every export folder given is timed each way (an fp32 export and, say, an
int8 one from `ssae calibrate`). "spin" and "global" exist only here (`PoolBackend`): the runtime runs "no-spin".

    python benchmarks/bench_ort_threads.py [--model lfw128] [--int8 DIR ...] [--rounds 4] [--edits 20]
        [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

POOLS = ("spin", "no-spin", "global")


def pool_backend(folder: str, pool: str):
    """An `OrtBackend` on the CPU provider whose sessions use the thread-pool setup `pool`: "no-spin" is the
    backend as it is; "spin" leaves ONNX Runtime's spinning default; "global" puts every session on one
    process-wide pool (ONNX Runtime accepts it only before its environment exists, and then every session of the
    process must use it: hence one worker process per mode)."""
    from ssae.runtime.onnx_backends import OrtBackend

    class PoolBackend(OrtBackend):
        def session_options(self, profile_prefix=None):
            if pool == "no-spin":
                return super().session_options(profile_prefix)
            so = self.ort.SessionOptions()
            so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.log_severity_level = 3
            if pool == "global":
                so.use_per_session_threads = False
            elif self.threads:
                so.intra_op_num_threads = self.threads
            return so

    if pool == "global":
        from onnxruntime.capi import _pybind_state

        _pybind_state.set_global_thread_pool_sizes(0, 1)  # 0: ONNX Runtime's default size
    return PoolBackend(folder, providers=["CPUExecutionProvider"])


def worker(folder: str, pool: str, edits: int, roi: str) -> dict:
    """Per-stage and total medians (ms) of `edits` full edits on one backend, in this process."""
    from PIL import Image

    from ssae.pretrained import ASSETS
    from ssae.runtime.editor import Editor

    be = pool_backend(folder, pool)
    ed = Editor(be)
    size = int(be.manifest["model_config"]["image_size"])
    img = np.asarray(Image.open(ASSETS / "example_face.jpg").convert("RGB").resize((size, size)))
    ed.edit(img, roi, seed=0)
    timings = []
    for k in range(edits):
        ed._cache.clear()  # a new image each time: the latency that counts
        timings.append(ed.edit(img, roi, seed=k).timings)
    keys = [k for k in timings[0] if k != "cache_hit"]
    return {k: float(np.median([t.get(k, 0.0) for t in timings])) for k in keys}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lfw128", help="model whose fp32 export is timed (default: the bundled one)")
    ap.add_argument("--int8", nargs="*", default=[], type=Path, help="more export folders to time (e.g. int8)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--roi", default="hair")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", nargs=2, metavar=("FOLDER", "POOL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.edits, args.roi)))
        return 0

    from ssae.runtime.profiling.bench import machine_info
    from ssae.runtime.registry import export_dir_for, resolve_model

    folders = [str(export_dir_for(resolve_model(args.model)))] + [str(f) for f in args.int8]
    runs: dict = {f: {p: [] for p in POOLS} for f in folders}
    for r in range(args.rounds):
        order = POOLS[r % len(POOLS):] + POOLS[: r % len(POOLS)]
        for f in folders:
            for pool in order:
                cmd = [sys.executable, __file__, "--worker", f, pool, "--edits", str(args.edits), "--roi", args.roi]
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[f][pool].append(json.loads(res.stdout.strip().splitlines()[-1]))
    out = {"machine": machine_info(), "rounds": args.rounds, "edits_per_round": args.edits, "roi": args.roi,
           "exports": []}
    print(f"full edit ({args.roi}), ms: median over {args.rounds} rounds of the median of {args.edits} edits")
    print(f"{'export':28s} {'precision':9s} " + " ".join(f"{p:>8s}" for p in POOLS)
          + "  no-spin/spin  global/spin   stages (no-spin)")
    for f in folders:
        med = {p: {k: float(np.median([d[k] for d in runs[f][p]])) for k in runs[f][p][0]} for p in POOLS}
        prec = json.loads((Path(f) / "manifest.json").read_text()).get("precision", "fp32")
        row = {"folder": f, "precision": prec, "modes": med,
               "speedup_vs_spin": {p: med["spin"]["total"] / med[p]["total"] for p in POOLS}}
        out["exports"].append(row)
        stages = ", ".join(f"{k} {v:.1f}" for k, v in med["no-spin"].items() if k != "total")
        print(f"{Path(f).name[:28]:28s} {prec:9s} " + " ".join(f"{med[p]['total']:8.1f}" for p in POOLS)
              + f"  {row['speedup_vs_spin']['no-spin']:11.2f}x {row['speedup_vs_spin']['global']:10.2f}x   {stages}")
    base = out["exports"][0]
    for row in out["exports"][1:]:
        row["vs_first_export"] = {p: base["modes"][p]["total"] / row["modes"][p]["total"] for p in POOLS}
        print(f"{Path(row['folder']).name} vs {Path(base['folder']).name}, same mode: "
              + ", ".join(f"{p} {v:.2f}x" for p, v in row["vs_first_export"].items()))
    if args.json:
        from ssae.fileio import atomic_write
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(out, indent=1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
