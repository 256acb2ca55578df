"""`ssae bench` and `ssae profile`: report schema, every stage measured, plot/CSV files, regression check."""
import copy
import csv
import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from ssae.runtime.profiling.bench import (STAGE_KEYS, BenchConfig, compare, format_table, plot, run_bench, to_csv,
                                  validate_report)
from ssae.runtime.profiling.profile import format_profile, run_profile


@pytest.fixture(scope="module")
def report(tiny_export):
    return run_bench(BenchConfig(model=str(tiny_export), backends=("onnxruntime", "openvino", "tensorrt"),
                                 repeats=3, warmup=1, batch_sizes=(1, 3), throughput_repeats=1))


def test_report_schema_and_every_stage(report):
    validate_report(report)
    assert "onnxruntime" in report["backends"] and "tensorrt" in report["skipped"]
    r = report["backends"]["onnxruntime"]
    assert set(r["stages"]) == set(STAGE_KEYS)
    for k in STAGE_KEYS:
        st = r["stages"][k]
        assert st["n"] == 3 and 0 < st["min"] <= st["p50"] <= st["p90"] <= st["p99"]
    assert set(r["throughput_edits_per_s"]) == {"1", "3"} and all(v > 0 for v in r["throughput_edits_per_s"].values())
    assert r["memory"]["host_peak_rss_mb"] > 0
    json.loads(json.dumps(report))  # serialisable
    bad = copy.deepcopy(report)
    del bad["backends"]["onnxruntime"]["stages"]["refine"]
    with pytest.raises(ValueError, match="lacks stages"):
        validate_report(bad)


def test_table_csv_and_plot(report, tmp_path):
    table = format_table(report)
    assert "full_edit" in table and "onnxruntime" in table
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    assert {(r["backend"], r["stage"]) for r in rows} >= {("onnxruntime", k) for k in STAGE_KEYS}
    png = tmp_path / "bench.png"
    plot(report, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        im.verify()


def test_compare_flags_only_real_regressions(report):
    assert compare(report, report) == []
    faster = copy.deepcopy(report)
    for st in faster["backends"]["onnxruntime"]["stages"].values():
        for k in ("p50", "p90", "p99", "min", "mean"):
            st[k] /= 50.0
    slow = compare(report, faster)
    assert {r["stage"] for r in slow} == set(STAGE_KEYS) and all(r["slower_by"] > 10 for r in slow)


def test_profile_onnxruntime_and_torch(tiny_export, tiny_ckpt):
    res = run_profile(str(tiny_export), "onnxruntime", "sae_decoder_prefix", runs=2, top=5)
    assert res["total_ms"] > 0 and res["by_op"] and res["by_node"]
    assert {r["name"] for r in res["by_op"]} & {"Conv", "ConvTranspose"}
    assert abs(sum(r["share"] for r in res["by_op"]) - 1) < 1e-6 or len(res["by_op"]) == 5
    t = run_profile(str(tiny_ckpt), "torch", "smpn", runs=1, top=5)
    assert any("conv" in r["name"] for r in t["by_op"])
    assert "by op type" in format_profile(t)


def test_bench_cli_writes_files(tmp_path, tiny_export):
    out = subprocess.run([sys.executable, "-m", "ssae.cli", "bench", "--model", str(tiny_export), "--backends",
                          "onnxruntime", "--repeats", "2", "--warmup", "1", "--batch-sizes", "1", "--json",
                          str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"), "--plot", str(tmp_path / "r.png")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    validate_report(json.loads((tmp_path / "r.json").read_text()))
    assert (tmp_path / "r.csv").exists() and (tmp_path / "r.png").exists()
    again = subprocess.run([sys.executable, "-m", "ssae.cli", "bench", "--model", str(tiny_export), "--backends",
                            "onnxruntime", "--repeats", "2", "--warmup", "1", "--batch-sizes", "1", "--compare",
                            str(tmp_path / "r.json")], capture_output=True, text=True, timeout=600)
    assert again.returncode in (0, 1) and ("no stage slower" in again.stdout or "slower than the baseline" in again.stdout)


def test_profile_refuses_unknown_stage_and_backend_without_profiler(tiny_export):
    from ssae.runtime import BackendError
    with pytest.raises(ValueError, match="unknown stage"):
        run_profile(str(tiny_export), "onnxruntime", "no_such_stage", runs=1)
    with pytest.raises(BackendError):
        run_profile(str(tiny_export), "tensorrt", "smpn", runs=1)


def test_source_revision_names_the_checkout_commit(tmp_path):
    """Benchmark results record the commit they measured: git's short hash of HEAD, "-dirty" with changes."""
    from pathlib import Path

    from ssae.runtime.profiling.bench import source_revision

    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    assert source_revision() == head.stdout.strip() + ("-dirty" if dirty else "")
