"""The GPU check and the GPU benchmarks, run on the CPU: device time is short, so the scripts a GPU machine runs
must not fail on their own plumbing (imports, arguments, result files) when it is lent."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour (a CUDA device is present)")
def test_gpu_check_runs_every_step_and_each_benchmark_only_finds_no_gpu(tmp_path):
    """`bash benchmarks/gpu_check.sh` on a machine without a GPU: every step runs and is listed in the summary,
    TensorRT is ABSENT (not passed), each GPU benchmark stops with its "no CUDA device" status (2), not an error, and
    the logs come back in one archive."""
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path), TOTAL_BUDGET="200")
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                       timeout=400, env=env, cwd=ROOT)
    summary = r.stdout[r.stdout.rindex("=== summary"):]
    assert r.returncode == 1, summary                                       # not everything passed here
    status = dict(re.findall(r"^\S+\s+(\S+)\s+rc=(\d+)", summary, re.M))
    for name in ("nvcc", "python-packages", "pytest-gpu"):
        assert status.get(name) == "0", summary
    for name in ("bench_kernel_gpu", "bench_runtime_gpu", "chain_levers_gpu"):
        assert status.get(name) == "2", summary
    assert re.search(r"^ABSENT tensorrt", summary, re.M), summary
    assert "Traceback" not in r.stdout + r.stderr
    with tarfile.open(tmp_path / "gpu_check_logs.tar.gz") as t:
        names = t.getnames()
    assert "./summary.txt" in names and "./bench_runtime_gpu.log" in names and "./pytest-gpu.xml" in names
    assert not list(tmp_path.glob("*.json"))  # no GPU result was measured, and older ones are not passed off as new


def test_runtime_gpu_benchmark_smoke_run_on_the_cpu(tmp_path):
    """`bench_runtime_gpu.py --device cpu` on the tiny model: the chain rows, and the Editor on the three photo
    sizes three ways (framed on the device, framed on the host, the stage path), saved as JSON."""
    out = tmp_path / "runtime.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_runtime_gpu.py"), "--device", "cpu",
                        "--models", "tiny", "--reps", "1", "--warmup", "0", "--editor-reps", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())["models"]["tiny"]
    assert [(row["what"], row["precision"]) for row in res["chain"]] == [("full_edit", "fp32"), ("reedit", "fp32")]
    assert all("error" not in row and row["median_ms"] > 0 for row in res["chain"])
    editor = {(row["way"], row["photo"]): row for row in res["editor"]}
    assert len(editor) == 9 and all("error" not in row for row in editor.values())
    for photo in ("250x250", "1024x1024", "3000x2000"):
        for kind in ("full_edit", "reedit", "reedit_prepared"):
            assert np.isfinite(editor[("device framing", photo)][kind]["total"])
        assert editor[("device framing", photo)]["reedit_prepared"]["framing"] == 0  # not read or hashed again
    assert "| tiny | fp32 | device framing | 3000x2000 |" in r.stdout


def test_chain_levers_compile_and_channels_last_give_the_same_edit(tiny_model):
    """`ChainLevers`: the chain in channels-last memory format and compiled by torch.compile (Inductor, here for
    the CPU) edits as the eager chain does (full edit and re-edit, within float rounding)."""
    import copy

    from ssae.runtime.torch_backend import TorchBackend
    from ssae.runtime.torch_chain import ChainLevers

    img = np.random.RandomState(0).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    eager = TorchBackend(copy.deepcopy(tiny_model)).chain()
    want = eager.full(img, "hair", 1, 1.0), eager.reedit("lips", 2, 2.0)
    for levers in (ChainLevers(channels_last=True), ChainLevers(channels_last=True, compile_mode="default")):
        be = TorchBackend(copy.deepcopy(tiny_model))
        be.chain_levers = levers
        chain = be.chain()
        assert chain._image.is_contiguous(memory_format=torch.channels_last)
        got = chain.full(img, "hair", 1, 1.0), chain.reedit("lips", 2, 2.0)
        for w, g in zip(want, got):
            for k in w:
                assert np.abs(w[k] - g[k]).max() < 1e-5, (levers, k)
