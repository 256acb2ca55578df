#!/usr/bin/env bash
# The one script a CUDA machine runs for the GPU path (no network needed; a few minutes):
#   1. nvidia-smi and the toolchain (nvcc, python packages);
#   2. makes `ssae` importable (pip install --no-deps, offline; else a symlinked package on PYTHONPATH);
#   3. pytest -m "gpu or tensorrt" tests/gpu (the fused kernel vs the reference; TensorRT tests where present);
#   4. benchmarks/bench_kernel_gpu.py (fused kernel vs unfused torch, JSON with the GPU's name);
#   5. benchmarks/bench_runtime_gpu.py: the chain on the device and the Editor on photos, then the chain levers
#      (channels-last, torch.compile) in a step of its own; then any other benchmarks/bench_*_gpu.py;
#   6. compute-sanitizer memcheck over the kernel tests at small sizes (out-of-bounds accesses), when installed.
# Every step runs under a time limit, its exit status is recorded, and a failure does not stop the rest.
# This run's results (benchmarks/results/*gpu*.json) and the logs, junit XML and step summary end in one folder:
# $OUT when it is set (the logs as gpu_check_logs.tar.gz), else the log folder the script names at the end.
# The summary table lists each step (ok, FAIL, TIMEOUT, SKIP) and TensorRT apart: ABSENT when its tests were skipped
# because TensorRT is not installed, which is not a pass. Exit status: 0 when every step passed, 1 otherwise.
#
#   bash benchmarks/gpu_check.sh            # env: OUT, STEP_TIMEOUT (s, default 240), TOTAL_BUDGET (s, default 470),
#                                           #      LEVERS_TIMEOUT (s, default 120)
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
PY="${PYTHON:-$(command -v python3 || command -v python)}"
STEP_TIMEOUT="${STEP_TIMEOUT:-240}"
TOTAL_BUDGET="${TOTAL_BUDGET:-470}"
LOGDIR="$(mktemp -d -t ssae_gpu_check.XXXXXX)"
SUMMARY="$LOGDIR/summary.txt"
START=$(date +%s)
FAILED=0
: >"$SUMMARY"
touch "$LOGDIR/.start"

# step NAME CMD...: run CMD with a time limit (never past the total budget), log it, record its exit status.
step() {
    local name="$1"; shift
    local left=$((TOTAL_BUDGET - ($(date +%s) - START)))
    local limit=$((left < STEP_TIMEOUT ? left : STEP_TIMEOUT))
    if [ "$limit" -le 5 ]; then
        echo "SKIP  $name (time budget spent)" | tee -a "$SUMMARY"
        FAILED=1
        return 0
    fi
    echo "=== $name (limit ${limit}s)"
    local t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOGDIR/$name.log"
    local rc=${PIPESTATUS[0]}
    local status="ok"
    [ "$rc" -ne 0 ] && { status="FAIL"; FAILED=1; }
    [ "$rc" -eq 124 ] && status="TIMEOUT"
    printf '%-5s %-28s rc=%-3s %4ss\n' "$status" "$name" "$rc" "$(($(date +%s) - t0))" | tee -a "$SUMMARY"
}

step nvidia-smi nvidia-smi
TOOLCHAIN_PY='
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
for m in ("cuda.bindings.driver", "triton", "onnxruntime", "tensorrt"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "importable"))
    except Exception as e:
        print(m, "missing:", type(e).__name__)
'
step nvcc bash -c 'command -v nvcc && nvcc --version | tail -n 2'
step python-packages "$PY" -c "$TOOLCHAIN_PY"

# Make `ssae` importable without the network: an offline editable install (PEP 660, the machine's own setuptools),
# else a symlinked package tree on PYTHONPATH with PYTHONSAFEPATH=1, so that the checkout's ssae/ (which lacks the
# root folders export/, runtime/, kernels/, calibration/) does not shadow it from the working directory.
if ! "$PY" -c "import ssae.kernels.cuda" >/dev/null 2>&1; then
    step install "$PY" -m pip install --no-deps --no-index --no-build-isolation --use-pep517 -e .
    if ! "$PY" -c "import ssae.kernels.cuda" >/dev/null 2>&1; then
        SITE="$LOGDIR/site"
        mkdir -p "$SITE" && cp -rs "$ROOT/ssae" "$SITE/ssae"
        for d in export runtime kernels calibration; do
            [ -d "$ROOT/$d" ] && ln -sfn "$ROOT/$d" "$SITE/ssae/$d"
        done
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
        step import-fallback "$PY" -c "import ssae.kernels.cuda as k; print('ssae from', k.__file__)"
    fi
fi

step pytest-gpu "$PY" -m pytest -m "gpu or tensorrt" tests/gpu -rs -q -p no:cacheprovider \
    --junitxml="$LOGDIR/pytest-gpu.xml"
# TensorRT's part of the summary: "absent" (its tests skipped: not installed) is not "passed"
JUNIT_PY='
import sys, xml.etree.ElementTree as ET
cases = [c for c in ET.parse(sys.argv[1]).getroot().iter("testcase") if "tensorrt" in c.get("classname", "")]
skipped = [c.find("skipped") for c in cases if c.find("skipped") is not None]
failed = [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
why = skipped[0].get("message", "")[:70] if skipped else ""
if not cases:
    print("ABSENT tensorrt             (no TensorRT test collected)")
elif len(skipped) == len(cases):
    print("ABSENT tensorrt             (%d tests skipped: %s)" % (len(cases), why))
else:
    print("%s tensorrt             (%d passed, %d failed, %d skipped)" % (
        "FAIL " if failed else "ok   ", len(cases) - len(skipped) - len(failed), len(failed), len(skipped)))
'
[ -f "$LOGDIR/pytest-gpu.xml" ] && "$PY" -c "$JUNIT_PY" "$LOGDIR/pytest-gpu.xml" | tee -a "$SUMMARY"
step bench_kernel_gpu "$PY" benchmarks/bench_kernel_gpu.py
# the chain and the Editor on photos first; the chain levers (torch.compile: minutes of compilation) in a step of
# their own, so that a slow compile costs only its own rows (each row is saved as soon as it is measured)
step bench_runtime_gpu "$PY" benchmarks/bench_runtime_gpu.py --variants base --editor-reps 5
STEP_TIMEOUT="${LEVERS_TIMEOUT:-120}" step chain_levers_gpu "$PY" benchmarks/bench_runtime_gpu.py --variants levers \
    --models paper256 --no-editor --reps 50
for bench in benchmarks/bench_*_gpu.py; do
    [ -e "$bench" ] || continue
    case "$bench" in benchmarks/bench_kernel_gpu.py|benchmarks/bench_runtime_gpu.py) continue ;; esac
    step "$(basename "$bench" .py)" "$PY" "$bench"
done

if command -v compute-sanitizer >/dev/null 2>&1; then
    STEP_TIMEOUT=120 step memcheck compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 9 \
        "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/gpu/test_masked_modconv_cuda.py \
        -k "simt or no_noise or window_equals or generated_xi_in_a_window"
fi

echo "=== summary ($(($(date +%s) - START))s)"
cat "$SUMMARY"
# this run's JSON results (not older ones in the checkout) and the logs, in one folder
FRESH="$(find benchmarks/results -maxdepth 1 -name '*gpu*.json' -newer "$LOGDIR/.start" 2>/dev/null)"
if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/gpu_check_logs.tar.gz" -C "$LOGDIR" --exclude=site --exclude=.start . 2>/dev/null
    [ -n "$FRESH" ] && cp $FRESH "$OUT/"
    echo "results and logs in $OUT"
else
    [ -n "$FRESH" ] && cp $FRESH "$LOGDIR/"
    echo "results and logs in $LOGDIR"
fi
exit "$FAILED"
