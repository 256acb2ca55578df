#!/usr/bin/env bash
# Nsight Compute report of one launch of the fused kernel (paper256 injection layer, batch 1), FP16 and FP32,
# region mode: speed of light, memory and compute workload, occupancy, warp stalls and the stall hot spots.
# Writes ncu_<dtype>.txt into $OUT (or the current folder) and prints the headline rows.
#   bash benchmarks/profile_kernel_gpu.sh [extra profile_kernel_gpu.py arguments]
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
DEST="${OUT:-.}"
for dtype in fp16 fp32; do
    ncu -k regex:ssae_masked_modconv --launch-skip 3 --launch-count 1 \
        --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
        --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
        --section InstructionStats --section SourceCounters \
        "$PY" "$ROOT/benchmarks/profile_kernel_gpu.py" --dtype "$dtype" "$@" >"$DEST/ncu_$dtype.txt" 2>&1
    echo "== $dtype (rc $?)"
    grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Issued Ipc|Shared Memory Configuration|Bank|stall" "$DEST/ncu_$dtype.txt" | head -30
done
