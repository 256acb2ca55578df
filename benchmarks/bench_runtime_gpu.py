"""Full edit and cached re-edit on a CUDA GPU with the PyTorch stages: the chain the TensorRT engines would run.

For each model (default: the paper's 256 px config with random weights, and the bundled lfw128 model), batch 1:
- "device chain": the stage modules (`export/stages.py`) chained on the GPU with tensors that never leave it:
  full edit = single-ROI SMPN -> SAE encoder -> decoder prefix -> edit tail -> RB; re-edit = edit tail -> RB on
  the cached prefix outputs. Variants: fp32 / fp16 weights and activations, the injection layer unfused
  (cuDNN conv + elementwise, `ssae/models/injection.py`) or fused (`masked_modconv.cu`), launched eagerly or replayed
  from one captured CUDA graph. fp32 runs without TF32. The fused output is checked against the unfused one.
- "Editor": `Editor.edit` through `TorchBackend(device="cuda")` in fp32 and fp16 (`torch-fp16`), full edit (empty
  cache) and cached re-edit, with single region edits handed to the backend's device chain (CUDA graphs; the
  default on CUDA) and through the stage path (numpy in and out of every stage).
TensorRT is not installed on the machines this project has; its engines are timed by the same chain once it is.
Times: CUDA events around each call (Editor: host clock, synchronised), median of --reps after --warmup calls.

    python benchmarks/bench_runtime_gpu.py [--models paper256 lfw128] [--reps 100] [--json PATH]
    python benchmarks/bench_runtime_gpu.py --device cpu --models tiny --reps 2   # a smoke run without a GPU

Writes benchmarks/results/runtime_gpu_<device>.json and prints a table.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import re
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from ssae.export.stages import build_stages, stage_specs
from ssae.kernels import cuda as kc
from ssae.runtime.profiling.bench import source_revision
from ssae.kernels.ops import use_fused_op
from ssae.runtime.registry import load_torch_model, resolve_model

RESULTS = Path(__file__).resolve().parent / "results"
ROI = "hair"


def timed_ms(fn, reps: int, warmup: int, device: torch.device) -> dict:
    """Median / min / p90 milliseconds of fn(): CUDA events on a GPU, the host clock on the CPU."""
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


class DeviceChain:
    """The stages of one model on one device and dtype, with the inputs of a batch-1 edit resident there."""

    def __init__(self, model, device: torch.device, dtype: torch.dtype, seed: int = 0):
        self.model = copy.deepcopy(model).to(device=device, dtype=dtype).eval().freeze()
        self.stages = build_stages(self.model)
        for m in self.stages.values():
            m.to(device=device, dtype=dtype)
        self.model.freeze()  # re-fold the weights in this dtype
        self.device, self.dtype = device, dtype
        s = self.model.cfg.image_size
        g = torch.Generator().manual_seed(seed)
        spec = stage_specs(self.model)["sae_decoder_edit"]
        self.image = (torch.rand(1, 3, s, s, generator=g) * 2 - 1).to(device, dtype)
        noise = torch.randn(1, self.model.cfg.sae.global_code_ch, generator=g)
        self.noise = (noise / noise.norm(dim=1, keepdim=True)).to(device, dtype)
        self.strength = torch.full((1,), 2.0).to(device, dtype)
        self.xi = (torch.randn(1, 1, s, s, generator=g).to(device, dtype)
                   if any(t.name == "xi" for t in spec.inputs) else None)
        # a face-sized mask for the re-edit (the full edit uses the SMPN's own mask)
        yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        ell = (((yy - 0.45 * s) / (0.35 * s)) ** 2 + ((xx - 0.5 * s) / (0.3 * s)) ** 2 <= 1).float()
        self.mask = ell[None, None].to(device, dtype)
        with torch.no_grad():
            st, tx = self.stages["sae_encoder"](self.image)
            self.texture = tx
            self.h, self.skip = self.stages["sae_decoder_prefix"](st, tx)

    def _tail(self, h, skip, texture, mask):
        xi = () if self.xi is None else (self.xi,)
        coarse = self.stages["sae_decoder_edit"](h, skip, texture, mask, self.noise, self.strength, *xi)
        return self.stages[f"refine_{ROI}"](coarse, mask)

    def full_edit(self) -> torch.Tensor:
        mask = self.stages[f"smpn_{ROI}"](self.image)
        structure, texture = self.stages["sae_encoder"](self.image)
        h, skip = self.stages["sae_decoder_prefix"](structure, texture)
        return self._tail(h, skip, texture, mask)

    def reedit(self) -> torch.Tensor:
        return self._tail(self.h, self.skip, self.texture, self.mask)


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


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def bench_chain(model, device: torch.device, reps: int, warmup: int, log) -> list[dict]:
    rows = []
    fused_ok = device.type == "cuda" and kc.unavailable_reason() is None
    dtypes = (torch.float32, torch.float16) if device.type == "cuda" else (torch.float32,)
    refs = {}
    for dtype in dtypes:
        try:
            chain = DeviceChain(model, device, dtype)
        except Exception as e:  # noqa: BLE001 - one failing variant must not hide the others
            rows.append(dict(dtype=str(dtype).split(".")[-1], error=f"{type(e).__name__}: {e}",
                             trace=traceback.format_exc(limit=-4)))
            continue
        for fused in (False, True):
            if fused and not fused_ok:
                continue
            for graphed in ((False, True) if device.type == "cuda" else (False,)):
                for what in ("full_edit", "reedit"):
                    row = dict(what=what, dtype=str(dtype).split(".")[-1], fused=fused, cuda_graph=graphed)
                    try:
                        with torch.no_grad(), use_fused_op(fused):
                            fn = getattr(chain, what)
                            before = sum(kc.LAUNCHES.values())
                            out = fn()
                            row["fused_launches"] = sum(kc.LAUNCHES.values()) - before
                            if graphed:
                                fn, out = captured(fn, device)
                                fn()
                            t = timed_ms(fn, reps, warmup, device)
                            if device.type == "cuda":
                                torch.cuda.synchronize(device)
                        row.update(t)
                        assert torch.isfinite(out).all(), "non-finite output"
                        key = (what, row["dtype"])
                        if (key not in refs) and not fused and not graphed:
                            refs[key] = out.clone()
                        if key in refs:
                            row["rel_err_vs_unfused_eager"] = rel(out, refs[key])
                        f32 = refs.get((what, "float32"))
                        if f32 is not None and row["dtype"] != "float32":
                            row["rel_err_vs_fp32"] = rel(out.float(), f32.float())
                    except Exception as e:  # noqa: BLE001
                        row["error"] = f"{type(e).__name__}: {e}"
                        row["trace"] = traceback.format_exc(limit=-4)
                    rows.append(row)
                    log(f"  {row}")
        del chain
    return rows


def _stage_path_backend():
    from ssae.runtime.torch_backend import TorchBackend

    class StagePath(TorchBackend):
        """The torch backend without its device chain: the Editor runs single region edits stage by stage."""

        def device_chain(self):
            return None

    return StagePath


def bench_editor(model, device: torch.device, reps: int, warmup: int) -> dict:
    """Editor.edit through TorchBackend on `device` (fp32, and fp16 on CUDA), full edit (cache cleared each call) and
    cached re-edit, two ways: single region edits handed to the device chain (`Backend.device_chain`, CUDA graphs
    on CUDA), and the stage path (numpy in and out of every stage)."""
    from PIL import Image

    from ssae.pretrained import ASSETS
    from ssae.runtime import Editor
    from ssae.runtime.torch_backend import TorchBackend

    _StagePath = _stage_path_backend()
    face = Image.open(ASSETS / "example_face.jpg").convert("RGB")
    out = {}
    precisions = ("fp32", "fp16") if device.type == "cuda" else ("fp32",)
    for precision, chained in ((p, c) for p in precisions for c in (True, False)):
        key = f"{precision} {'device_chain' if chained else 'stage_path'}"
        try:
            be = TorchBackend(copy.deepcopy(model), str(device), precision) if chained else \
                _StagePath(copy.deepcopy(model), str(device), precision)
            ed = Editor(be)
            seeds = iter(range(10 ** 6))

            def full():
                ed.clear_cache()
                ed.edit(face, roi=ROI, seed=1, strength=2.0)

            def reedit():
                ed.edit(face, roi=ROI, seed=next(seeds), strength=2.0)

            row = {}
            for name, fn in (("full_edit", full), ("reedit", reedit)):
                for _ in range(warmup):
                    fn()
                ms = []
                for _ in range(reps):
                    t = time.perf_counter()
                    fn()
                    be.synchronize()
                    ms.append((time.perf_counter() - t) * 1e3)
                row[name] = dict(median_ms=statistics.median(ms), min_ms=min(ms), reps=reps)
            dc = be.device_chain()
            row.update(fused_kernel=be.fused_kernel, chains={} if dc is None else dc.info())
            out[key] = row
        except Exception as e:  # noqa: BLE001
            out[key] = dict(error=f"{type(e).__name__}: {e}", trace=traceback.format_exc(limit=-4))
    return out


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["paper256", "lfw128"])
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", type=Path, default=None, help="default: benchmarks/results/runtime_gpu_<device>.json")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_runtime_gpu: skipped: no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    log = print if args.verbose else (lambda *_: None)
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
                  python=platform.python_version(), reps=args.reps,
                  roi=ROI, batch=1, models={})
    for m in args.models:
        model = load_torch_model(resolve_model(m))
        s = model.cfg.image_size
        print(f"[{m}] {s} px: device chain ...", flush=True)
        rows = bench_chain(model, device, args.reps, args.warmup, log)
        print(f"[{m}] Editor ...", flush=True)
        editor = bench_editor(model, device, max(3, args.reps // 5), 2)
        result["models"][m] = dict(image_size=s, chain=rows, editor=editor)
    print(f"\n{name}: median ms of {args.reps}, batch 1, ROI {ROI}")
    print(f"{'model':9} {'what':9} {'dtype':8} {'fused':5} {'graph':5} {'median':>8} {'min':>8} {'err':>9}")
    for m, r in result["models"].items():
        for row in r["chain"]:
            if "error" in row:
                print(f"{m:9} {row.get('what', ''):9} {row['dtype']:8} {str(row.get('fused', '')):5} "
                      f"{str(row.get('cuda_graph', '')):5} ERROR {row['error'][:80]}")
                continue
            err = row.get("rel_err_vs_unfused_eager", float("nan"))
            print(f"{m:9} {row['what']:9} {row['dtype']:8} {str(row['fused']):5} {str(row['cuda_graph']):5} "
                  f"{row['median_ms']:8.3f} {row['min_ms']:8.3f} {err:9.2e}")
        for key, ed in r["editor"].items():
            if "error" in ed:
                print(f"{m:9} Editor ({key}) ERROR {ed['error'][:100]}")
            else:
                print(f"{m:9} Editor ({key}): full edit {ed['full_edit']['median_ms']:.2f} ms, "
                      f"re-edit {ed['reedit']['median_ms']:.2f} ms")
    out = args.json or RESULTS / f"runtime_gpu_{device_slug(name)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
