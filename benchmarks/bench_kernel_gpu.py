"""The fused masked modulated conv kernel vs the unfused torch formulation, on a CUDA GPU.

Shape: the injection layer of the paper's 256 px model (`paper256`: the last 3x3 StyledConv before ToRGB, read
from the generator), batch 1 and 4, FP32 and FP16. "unfused" is `ssae/models/injection.py:masked_modconv` run on CUDA
tensors: cuDNN conv (cudnn.benchmark on) plus the elementwise style/noise/activation ops, as the torch backend
runs the layer; for FP32 TF32 is off (the fused kernel computes in true FP32), with a TF32 row for context.
Region noise mode only: the pixel-mode kernel entries were removed after this benchmark measured them at 0.10-0.36x
the unfused speed (results/kernel_gpu_nvidia_h100_80gb_hbm3.json keeps those rows).
Times: CUDA events around each call, median of --reps after --warmup calls; each path is timed twice, launched
eagerly (as the torch backend runs it) and replayed from a captured CUDA graph (GPU time alone: the eager unfused
path's many small launches leave gaps that the graph removes).

    python benchmarks/bench_kernel_gpu.py [--reps 200] [--json PATH]

Writes benchmarks/results/kernel_gpu_<device>.json (with the GPU's name) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_timing import captured, timed_ms  # noqa: E402

from ssae.kernels import cuda as kc
from ssae.models import injection as reference
from ssae.runtime.profiling.bench import source_revision

RESULTS = Path(__file__).resolve().parent / "results"
CUDA = torch.device("cuda")


def injection_layer_shape(preset_name: str = "paper256") -> dict:
    """Cin, Cout, resolution and layer index of the preset's (first) injection layer."""
    from ssae.config import preset
    from ssae.models.sae import Generator

    cfg = preset(preset_name)
    g = Generator(cfg.sae)
    layer = g.layer(g.injection_layers[0])
    h, w = g.noise_shapes((cfg.image_size // cfg.sae.downsampling,) * 2)[layer.index]
    return dict(preset=preset_name, layer=layer.name, index=layer.index, cin=layer.cin, cout=layer.cout, h=h, w=w)


def make_inputs(shape: dict, batch: int, dtype: torch.dtype, seed: int = 0) -> dict:
    """Random layer inputs on the GPU; the mask covers a face-sized region (about 40% of the image)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    cin, cout, h, w = shape["cin"], shape["cout"], shape["h"], shape["w"]

    def rnd(*s, scale=1.0, shift=0.0):
        return (torch.randn(*s, generator=g, device="cuda") * scale + shift).to(dtype)

    mask = torch.zeros(batch, 1, h, w, device="cuda")
    mask[:, :, h // 8: h * 5 // 8, w // 6: w * 5 // 6] = 1.0
    return dict(x=rnd(batch, cin, h, w), weight=rnd(cout, cin, 3, 3, scale=(1 / (9 * cin)) ** 0.5),
                bias=rnd(cout), style=rnd(batch, cin, shift=1.0), direction=rnd(batch, cin), mask=mask.to(dtype),
                strength=torch.full((batch,), 2.0, device="cuda", dtype=dtype), xi=rnd(1, 1, h, w),
                noise_weight=rnd(1, scale=0.1))


def min_blocks_modules(values) -> dict[int, object]:
    """The kernel compiled with each SSAE_REGION_MIN_BLOCKS value (the region entries' launch bounds; the library
    builds with 3, 0 means no minimum), loaded beside the library's module: the A/B timings of the region rows,
    every build launched the same way (parameters prepared once, so host overhead stays out of the comparison)."""
    nvcc = kc.find_nvcc()
    if nvcc is None:
        return {}
    major, minor = torch.cuda.get_device_capability()
    out = {}
    for v in values:
        with tempfile.TemporaryDirectory() as tmp:
            cubin = Path(tmp) / "k.cubin"
            cmd = [nvcc, *kc.nvcc_flags("cubin", f"{major}{minor}", strict=False), f"-DSSAE_REGION_MIN_BLOCKS={v}",
                   str(kc.SOURCE), "-o", str(cubin)]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if r.returncode != 0:
                print(f"min_blocks={v}: nvcc failed:\n{r.stderr}", file=sys.stderr)
                continue
            out[v] = kc.load_module_image(cubin.read_bytes())
    return out


def bench_case(shape: dict, batch: int, dtype: torch.dtype, reps: int, warmup: int,
               variants: dict[int, object] | None = None) -> list[dict]:
    p = make_inputs(shape, batch, dtype)

    def fused():
        return kc.masked_modconv_cuda(p["x"], p["weight"], p["bias"], p["style"], p["mask"], p["strength"],
                                      direction=p["direction"], noise=p["xi"], noise_weight=p["noise_weight"])

    def unfused():
        return reference.masked_modconv(p["x"], p["weight"], p["bias"], p["style"], p["mask"], p["strength"],
                                        direction=p["direction"], noise=p["xi"], noise_weight=p["noise_weight"])

    def conv_only():  # the floor the unfused path pays for its conv alone (cuDNN, no style, no noise)
        return torch.nn.functional.conv2d(p["x"], p["weight"], padding=1)

    rows = []
    name = "fp32" if dtype == torch.float32 else "fp16"
    with torch.no_grad():
        t_conv = timed_ms(conv_only, reps, warmup, CUDA)
        ref = unfused().double()  # the reference output, computed once for every error below
        err = ((fused().double() - ref).abs().max() / ref.abs().max()).item()
        tf = timed_ms(fused, reps, warmup, CUDA)
        tu = timed_ms(unfused, reps, warmup, CUDA)
        # both replayed from a CUDA graph: GPU time alone, without the eager path's launch gaps
        try:
            tfg = timed_ms(captured(fused, CUDA)[0], reps, warmup, CUDA)
            tug = timed_ms(captured(unfused, CUDA)[0], reps, warmup, CUDA)
            graph = dict(fused_graph=tfg, unfused_graph=tug, speedup_graph=tug["median_ms"] / tfg["median_ms"])
        except RuntimeError as e:  # a capture failure is reported, not fatal to the other rows
            nan = dict(median_ms=float("nan"))
            graph = dict(fused_graph=nan, unfused_graph=nan, speedup_graph=float("nan"),
                         graph_error=str(e).splitlines()[0])
        row = dict(mode="region", dtype=name, batch=batch, fused=tf, unfused=tu, cudnn_conv_only=t_conv, **graph,
                   speedup=tu["median_ms"] / tf["median_ms"], max_rel_err_vs_unfused=err,
                   kernel=kc.ENTRY_POINTS[kc.variant_for(dtype, shape["cin"])])
        for v, module in (variants or {}).items():  # the same launch from a differently built module
            launch = kc.prepare_launch(p["x"], p["weight"], p["bias"], p["style"], p["mask"], p["strength"],
                                       direction=p["direction"], noise=p["xi"], noise_weight=p["noise_weight"])
            packed, stream = launch.packed(), torch.cuda.current_stream().cuda_stream
            run = lambda m=module, ln=launch, pk=packed: m.launch(ln.name, ln.config, pk, stream)  # noqa: E731
            y = launch.tensors["y"].fill_(float("nan"))
            run()
            torch.cuda.synchronize()
            verr = ((y.double() - ref).abs().max() / ref.abs().max()).item()
            row.setdefault("fused_min_blocks", {})[str(v)] = dict(timed_ms(run, reps, warmup, CUDA),
                                                                  max_rel_err_vs_unfused=verr)
        if dtype == torch.float32:
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cuda.matmul.allow_tf32 = True
            row["unfused_tf32"] = timed_ms(unfused, reps, warmup, CUDA)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        rows.append(row)
    return rows


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--preset", default="paper256")
    ap.add_argument("--min-blocks", type=int, nargs="*", default=[0, 3],
                    help="also time the region kernel built with each of these SSAE_REGION_MIN_BLOCKS values, each "
                         "launched the same way (prepared once): 0 = no minimum, 3 = the library's build")
    ap.add_argument("--json", type=Path, default=None, help="default: benchmarks/results/kernel_gpu_<device>.json")
    args = ap.parse_args(argv)
    reason = kc.unavailable_reason()
    if reason is not None:
        print(f"bench_kernel_gpu: skipped: {reason}", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    kc.load_module()  # compile / load outside the timings
    shape = injection_layer_shape(args.preset)
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    variants = min_blocks_modules(args.min_blocks)
    rows = []
    for dtype in (torch.float32, torch.float16):
        for b in args.batches:
            rows += bench_case(shape, b, dtype, args.reps, args.warmup, variants)
    result = dict(device=props.name, capability=f"{props.major}.{props.minor}", commit=source_revision(),
                  torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                  python=platform.python_version(),
                  layer=shape, loader=type(kc.load_module()).__name__, reps=args.reps,
                  note="unfused = ssae/models/injection.py on CUDA (cuDNN conv + elementwise); FP32 without TF32 "
                       "(unfused_tf32: with)", results=rows)
    print(f"{props.name} (sm_{props.major}{props.minor}), layer {shape['layer']}: Cin {shape['cin']}, "
          f"Cout {shape['cout']}, {shape['h']}x{shape['w']}; median ms of {args.reps}")
    print(f"{'mode':7} {'dtype':5} {'B':>2} {'fused':>9} {'unfused':>9} {'speed-up':>8} {'rel err':>9} "
          f"{'conv only':>9} {'fused g':>9} {'unfused g':>9} {'graph x':>8}")
    for r in rows:
        print(f"{r['mode']:7} {r['dtype']:5} {r['batch']:>2} {r['fused']['median_ms']:9.4f} "
              f"{r['unfused']['median_ms']:9.4f} {r['speedup']:7.2f}x {r['max_rel_err_vs_unfused']:9.2e} "
              f"{r['cudnn_conv_only']['median_ms']:9.4f} {r['fused_graph']['median_ms']:9.4f} "
              f"{r['unfused_graph']['median_ms']:9.4f} {r['speedup_graph']:7.2f}x")
    for r in rows:
        for v, t in r.get("fused_min_blocks", {}).items():
            print(f"{r['mode']:7} {r['dtype']:5} {r['batch']:>2} fused, built with SSAE_REGION_MIN_BLOCKS={v}: "
                  f"{t['median_ms']:.4f} ms, "
                  f"rel err {t['max_rel_err_vs_unfused']:.2e}")
    goal = [r for r in rows if r["mode"] == "region" and r["dtype"] == "fp16" and r["batch"] == 1]
    if goal:
        g = goal[0]
        print(f"goal (FP16 region, batch 1, fused >= 1.5x unfused): {g['speedup']:.2f}x launched eagerly "
              f"({'met' if g['speedup'] >= 1.5 else 'NOT met'}), {g['speedup_graph']:.2f}x replayed from CUDA graphs "
              f"({'met' if g['speedup_graph'] >= 1.5 else 'NOT met'})")
    out = args.json or RESULTS / f"kernel_gpu_{device_slug(props.name)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
