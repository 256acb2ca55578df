"""Launches the fused kernel on the paper256 injection layer a few times, for a profiler (Nsight Compute) to
catch one launch. Inputs as in bench_kernel_gpu.py; nothing is timed here.

    ncu -k regex:ssae_masked_modconv --launch-skip 3 --launch-count 1 --section SpeedOfLight \\
        python3 benchmarks/profile_kernel_gpu.py --dtype fp16 --batch 1
    bash benchmarks/profile_kernel_gpu.sh     # the sections this project reads, both dtypes, into $OUT
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernel_gpu import injection_layer_shape, make_inputs  # noqa: E402

from ssae.kernels import cuda as kc  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=["fp32", "fp16"], default="fp16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--launches", type=int, default=5)
    args = ap.parse_args(argv)
    reason = kc.unavailable_reason()
    if reason is not None:
        print(f"profile_kernel_gpu: skipped: {reason}", file=sys.stderr)
        return 2
    shape = injection_layer_shape()
    p = make_inputs(shape, args.batch, torch.float16 if args.dtype == "fp16" else torch.float32)
    for _ in range(args.launches):
        kc.masked_modconv_cuda(p["x"], p["weight"], p["bias"], p["style"], p["mask"], p["strength"],
                               direction=p["direction"], noise=p["xi"], noise_weight=p["noise_weight"])
    torch.cuda.synchronize()
    print(f"{args.launches} launches of {kc.ENTRY_POINTS[kc.variant_for(p['x'].dtype, shape['cin'])]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
