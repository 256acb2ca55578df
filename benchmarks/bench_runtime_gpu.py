"""A region edit on a CUDA GPU with the PyTorch stages: the device chain (`runtime/torch_chain.py`) and the Editor
on real photos, batch 1.

For each model (default: the paper's 256 px config with random weights, and the bundled lfw128 model):
- "chain": `TorchChain` timed on the device (CUDA events around the chain alone, the image already on the device):
  full edit = single-ROI SMPN -> encoder -> decoder prefix -> edit tail -> RB; re-edit = edit tail -> RB on the
  held codes. Variants (`--variants`):
    base: fp32 / fp16, the injection layer unfused (cuDNN conv + elementwise) or fused (`masked_modconv.cu`),
          eager or replayed from CUDA graphs (fp32 without TF32);
    levers: fp16 with the chain levers (`ChainLevers`): channels-last, the SMPN on a second stream beside the
          encoder and prefix, torch.compile (Inductor "default",
          "max-autotune-no-cudagraphs" under the chain's CUDA graphs; "max-autotune" with Inductor's own graphs),
          with the fused kernel, and once with the unfused injection layer left to Inductor to fuse.
  Each output is checked against the unfused eager chain of its dtype (and fp16 against fp32); "launches" counts
  the kernels one eager run launches (on a CPU: top-level ATen ops).
- "editor": `Editor.edit` on photos of three sizes (the example face; a 1024 x 1024 and a 3000 x 2000 scene), full
  edit (empty cache), re-edit (new seed) and re-edit of a prepared photo (`Editor.prepare`: not read or hashed
  again), split into framing, model and compositing: the device chain with
  framing and compositing on the device (`DeviceChain.edit_photo`, the default), the device chain framed on the
  host, and the stage path (numpy in and out of every stage).
TensorRT is not installed on the machines this project has; its engines run the same chain once it is.

    python benchmarks/bench_runtime_gpu.py [--models paper256 lfw128] [--variants base levers] [--reps 100]
    python benchmarks/bench_runtime_gpu.py --device cpu --models tiny --reps 1 --warmup 0   # a smoke run on a CPU

Writes benchmarks/results/runtime_gpu_<device>.json (chain_levers_gpu_<device>.json for --variants levers; after every row: a run stopped by a time limit keeps what it
measured) and prints a table.
"""
from __future__ import annotations

import argparse
import copy
import platform
import re
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from bench_framing import photos, timed_edit
from gpu_timing import timed_ms
from ssae.kernels import cuda as kc
from ssae.pipeline import FULL, REEDIT, smpn_for
from ssae.runtime.profiling.bench import save_json, source_revision
from ssae.runtime.registry import load_torch_model, resolve_model
from ssae.runtime.torch_backend import TorchBackend
from ssae.runtime.torch_chain import ChainLevers

RESULTS = Path(__file__).resolve().parent / "results"
ROI = "hair"
#: (precision, fused kernel, CUDA graphs, levers) of each chain variant
VARIANTS = {
    "base": [("fp32", False, False, ChainLevers()), ("fp32", False, True, ChainLevers()),
             ("fp32", True, True, ChainLevers()),
             ("fp16", False, False, ChainLevers()), ("fp16", False, True, ChainLevers()),
             ("fp16", True, False, ChainLevers()), ("fp16", True, True, ChainLevers())],
    "levers": [("fp16", True, True, ChainLevers(channels_last=True)),
               ("fp16", True, True, ChainLevers(concurrent_smpn=True)),
               ("fp16", True, True, ChainLevers(channels_last=True, concurrent_smpn=True)),
               ("fp16", True, True, ChainLevers(compile_mode="default")),
               ("fp16", True, True, ChainLevers(channels_last=True, compile_mode="default")),
               ("fp16", False, True, ChainLevers(channels_last=True, compile_mode="default")),
               ("fp16", True, True, ChainLevers(channels_last=True, compile_mode="max-autotune-no-cudagraphs")),
               ("fp16", True, False, ChainLevers(channels_last=True, compile_mode="max-autotune"))],
}


class _Chained(TorchBackend):
    """The torch backend with its device chain on every device (the default on CUDA; the CPU smoke run too)."""

    def device_chain(self):
        return self.chain()


def launches(chain, kind: str, smpn: str) -> int:
    """How many device kernels (and copies) one eager run of a chain launches (a CPU: top-level ATen ops): the
    number a CUDA graph replays, and what fusion reduces."""
    cuda = chain.device.type == "cuda"
    acts = [torch.profiler.ProfilerActivity.CUDA] if cuda else [torch.profiler.ProfilerActivity.CPU]
    with torch.no_grad(), chain._context(), torch.profiler.profile(activities=acts) as prof:
        chain._forward(kind, ROI, smpn)
        if cuda:
            torch.cuda.synchronize(chain.device)
    events = prof.events()
    if cuda:
        return sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return sum(1 for e in events if e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def bench_chain(model, device: torch.device, variants: list, reps: int, warmup: int, emit) -> None:
    """One row per (variant, full edit / re-edit), passed to `emit` as soon as it is measured."""
    fused_ok = device.type == "cuda" and kc.unavailable_reason() is None
    s = model.cfg.image_size
    image = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0)) * 2 - 1
    refs: dict[tuple[str, str], torch.Tensor] = {}
    for precision, fused, graphs, levers in variants:
        if device.type != "cuda" and (precision == "fp16" or graphs or fused):
            continue
        base = dict(precision=precision, fused=fused and fused_ok, cuda_graph=graphs, **asdict(levers))
        if fused and not fused_ok:
            base["fused_note"] = kc.unavailable_reason() or "no CUDA device"
        try:
            be = TorchBackend(copy.deepcopy(model), str(device), precision)
            be.fused_kernel, be.cuda_graphs, be.chain_levers = fused and fused_ok, graphs, levers
            chain = be.chain()
            chain._image.copy_(image)
            smpn = smpn_for(ROI)
            t0 = time.perf_counter()
            with torch.no_grad():
                chain._full(ROI, 1, 2.0, smpn)          # the first run compiles or captures
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            base["first_run_s"] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - one failing variant must not hide the others
            emit(dict(base, what="setup", error=f"{type(e).__name__}: {e}", trace=traceback.format_exc(limit=-4)))
            continue
        for what, fn in (("full_edit", lambda: chain._full(ROI, 1, 2.0, smpn)),
                         ("reedit", lambda: chain._reedit(ROI, 2, 2.0))):
            row = dict(base, what=what)
            try:
                with torch.no_grad():
                    out = fn()["refined"]
                    row.update(timed_ms(fn, reps, warmup, device))
                    out = fn()["refined"].clone()
                assert torch.isfinite(out).all(), "non-finite output"
                key = (what, precision)
                if key not in refs and not fused and not graphs and levers == ChainLevers():
                    refs[key] = out
                if key in refs:
                    row["rel_err_vs_unfused_eager"] = rel(out, refs[key])
                if precision != "fp32" and (what, "fp32") in refs:
                    row["rel_err_vs_fp32"] = rel(out.float(), refs[(what, "fp32")].float())
                row["chains"] = chain.info()
                row["launches"] = launches(chain, FULL if what == "full_edit" else REEDIT,
                                           smpn if what == "full_edit" else "held1")
            except Exception as e:  # noqa: BLE001
                row.update(error=f"{type(e).__name__}: {e}", trace=traceback.format_exc(limit=-4))
            emit(row)
        del chain, be
        if device.type == "cuda":
            torch.cuda.empty_cache()


def bench_editor(model, device: torch.device, reps: int, emit) -> None:
    """Editor.edit on photos of three sizes (`bench_framing.photos`): the device chain framing on the device, the
    device chain framing on the host, and the stage path; full edit (cache cleared) and re-edit (new seed)."""
    from ssae.runtime import Editor

    precisions = ("fp16", "fp32") if device.type == "cuda" else ("fp32",)
    ways = ("device framing", "host framing", "stage path")
    for precision in precisions:
        for way in ways:
            try:
                be = (TorchBackend if way == "stage path" else _Chained)(copy.deepcopy(model), str(device), precision)
                if way == "stage path":
                    be.device_chain = lambda: None
                ed = Editor(be)
                if way == "host framing":
                    ed._device_chain.edit_photo = lambda *a, **k: None
            except Exception as e:  # noqa: BLE001
                emit(dict(precision=precision, way=way, error=f"{type(e).__name__}: {e}"))
                continue
            for name, photo in photos().items():
                row = dict(precision=precision, way=way, photo=name)
                try:
                    seeds = iter(range(1, 10 ** 6))
                    ed.edit(photo, roi=ROI, seed=0, strength=2.0)         # warm-up: capture, detector
                    runs = {"full_edit": [], "reedit": [], "reedit_prepared": []}
                    for _ in range(reps):
                        ed.clear_cache()
                        runs["full_edit"].append(timed_edit(ed, photo, roi=ROI, seed=next(seeds), strength=2.0))
                        runs["reedit"].append(timed_edit(ed, photo, roi=ROI, seed=next(seeds), strength=2.0))
                    prepared = ed.prepare(photo)
                    for _ in range(reps):
                        runs["reedit_prepared"].append(timed_edit(ed, prepared, roi=ROI, seed=next(seeds), strength=2.0))
                    for kind, rr in runs.items():
                        row[kind] = {k: float(np.median([r[k] for r in rr])) for k in rr[0]}
                    dc = be.device_chain()
                    row["chains"] = {} if dc is None else dc.info()
                except Exception as e:  # noqa: BLE001
                    row.update(error=f"{type(e).__name__}: {e}", trace=traceback.format_exc(limit=-4))
                emit(row)
            del ed, be


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def print_table(result: dict) -> None:
    print(f"\n{result['device']}: median ms, batch 1, ROI {ROI}")
    print("| model | what | precision | fused | graph | channels-last | concurrent SMPN | compile | median | min | "
          "first run s | launches | err vs unfused eager | err vs fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m, r in result["models"].items():
        for row in r["chain"]:
            head = (f"| {m} | {row['what']} | {row['precision']} | {row['fused']} | {row['cuda_graph']} | "
                    f"{row['channels_last']} | {row['concurrent_smpn']} | {row['compile_mode'] or '-'} |")
            if "error" in row:
                print(f"{head} ERROR {row['error'][:90]} |")
                continue
            print(f"{head} {row['median_ms']:.3f} | {row['min_ms']:.3f} | {row.get('first_run_s', 0):.1f} | "
                  f"{row.get('launches', '-')} | {row.get('rel_err_vs_unfused_eager', float('nan')):.2e} | "
                  f"{row.get('rel_err_vs_fp32', float('nan')):.2e} |")
    print("\n| model | precision | way | photo | full edit (framing / model / compositing) | re-edit | re-edit, "
          "prepared photo |")
    print("|---|---|---|---|---|---|---|")
    for m, r in result["models"].items():
        for row in r["editor"]:
            head = f"| {m} | {row['precision']} | {row['way']} | {row.get('photo', '-')} |"
            if "error" in row:
                print(f"{head} ERROR {row['error'][:90]} | | |")
                continue
            cells = [f"{e['total']:.2f} ({e['framing']:.2f} / {e['model']:.2f} / {e['compositing']:.2f})"
                     for e in (row["full_edit"], row["reedit"], row["reedit_prepared"])]
            print(f"{head} {' | '.join(cells)} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["paper256", "lfw128"])
    ap.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["base", "levers"])
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--editor-reps", type=int, default=10)
    ap.add_argument("--no-editor", action="store_true", help="time the chain only")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", type=Path, default=None,
                    help="default: benchmarks/results/{runtime,chain_levers}_gpu_<device>.json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_runtime_gpu: skipped: no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        props = torch.cuda.get_device_properties(device)
        name, extra = props.name, dict(capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                                       cudnn=torch.backends.cudnn.version(),
                                       fused_kernel=kc.unavailable_reason() or "available")
    else:
        name, extra = platform.processor() or "cpu", {}
    result = dict(device=name, **extra, commit=source_revision(), torch=torch.__version__,
                  python=platform.python_version(), reps=args.reps, roi=ROI, batch=1, models={})
    stem = "chain_levers" if args.variants == ["levers"] else "runtime"
    out = args.json or RESULTS / f"{stem}_gpu_{device_slug(name)}.json"
    variants = [v for group in args.variants for v in VARIANTS[group]]
    for m in args.models:
        model = load_torch_model(resolve_model(m))
        entry = result["models"][m] = dict(image_size=model.cfg.image_size, chain=[], editor=[])

        def emit(row, into):
            into.append(row)
            print(f"[{m}] {({k: v for k, v in row.items() if k != 'trace'})}", flush=True)
            save_json(result, out)

        bench_chain(model, device, variants, args.reps, args.warmup, lambda r: emit(r, entry["chain"]))
        if not args.no_editor:
            bench_editor(model, device, args.editor_reps, lambda r: emit(r, entry["editor"]))
    print_table(result)
    save_json(result, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
