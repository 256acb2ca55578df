"""benchmarks/make_results.py: RESULTS.md from result JSONs, with machine and commit per section, and --check.

Runs on a copy of small fixtures (tests/fixtures/results_md), never on benchmarks/results, so it does not change
when benchmarks are re-run; commits come from a fake resolver or from the JSON's own `commit` field.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "make_results.py"
FIXTURES = Path(__file__).parent / "fixtures" / "results_md"


def _load():
    spec = importlib.util.spec_from_file_location("make_results", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mr = _load()


def fake_commit(path: Path) -> tuple[str, str]:
    return "abc1234", "2026-02-03"


@pytest.fixture
def results(tmp_path: Path) -> Path:
    d = tmp_path / "results"
    shutil.copytree(FIXTURES, d)
    return d


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def _generate(results: Path, out: Path, *extra: str) -> int:
    return mr.main(["--results", str(results), "--out", str(out), *extra], resolve=fake_commit)


def test_sections_hold_the_numbers_machine_and_commit(results, tmp_path):
    out = tmp_path / "RESULTS.md"
    assert _generate(results, out) == 0
    text = out.read_text()

    rt = _section(text, "runtime_cpu.json")
    assert "Machine: Fixture CPU 9000, 4 cores (avx2, amx_bf16)." in rt
    assert "Last changed in commit abc1234 (2026-02-03)" in rt
    assert "What was measured: CPU latency per stage" in rt
    assert "encoder 40.5 ms, decoder 81.5 ms" in rt
    assert "| onnxruntime | 1.25 | 2.75 | 6.50 | 1.50 | 0.875 |" in rt            # stages_ms, in file order
    assert "| onnxruntime | sparse (alt: window) | 12.5 | 3.75 |" in rt          # full edit, cached re-edit
    assert "21.50x" in rt and "9.75x" in rt and "4.88x" in rt

    k = _section(text, "kernel_gpu_fixture_gpu.json")
    # A GPU file names its device; its own commit and date fields win over git.
    assert "Machine: Fixture GPU X1 (compute capability 8.9, CUDA 12.8, torch 2.9.0)." in k
    assert "Last changed in commit feedbee (2026-01-15)" in k and "abc1234" not in k
    assert "| region | fp16 | 1 | 0.125 | 0.250 | n/a | 0.062 | 2.00x | 0.000875 | fixture_kernel_f16 |" in k

    cal = _section(text, "calibration_fixture/report.json")
    assert "Machine: Fixture CPU 9000, 4 cores (avx2)." in cal
    assert "| int8 | onnxruntime | 38.2 | 0.953 | 39.5 | -0.00325 | 0.0015 | 17.8 | 25.5 | 1.44x |" in cal
    assert "| sae_encoder | 3.88 | 2.25 | 1.72x |" in cal
    assert "(results/calibration_fixture/report.md)" in cal

    # An unknown kind, and a known kind in a layout its table does not expect, are dumped, not skipped.
    unk = _section(text, "mystery_probe.json")
    assert "| `probe.latency_ms` | 7.25 |" in unk and "| `sizes` | 64, 128 |" in unk
    assert "Fixture CPU 9000, 4 cores" in unk
    fr = _section(text, "framing_cpu.json")
    assert "not the one the `framing_cpu` table expects" in fr and "| `results[0].photo_ms` | 4.62 |" in fr

    # The index lists every result with its machine and commit.
    assert "| [runtime_cpu.json](#runtime_cpujson) | runtime_cpu | Fixture CPU 9000, 4 cores | abc1234 |" in text
    assert text.count("\n## ") == 5 + 1                     # five results and "Other files"
    assert "[calibration_fixture/report.md](results/calibration_fixture/report.md)" in text


def test_check_fails_on_a_stale_file_and_passes_on_a_fresh_one(results, tmp_path):
    out = tmp_path / "RESULTS.md"
    assert _generate(results, out, "--check") == 1          # missing
    assert _generate(results, out) == 0
    assert _generate(results, out, "--check") == 0
    before = out.read_text()

    data = json.loads((results / "runtime_cpu.json").read_text())
    data["results"][0]["backends"]["onnxruntime"]["full_edit_ms"] = 99.5
    (results / "runtime_cpu.json").write_text(json.dumps(data))
    assert _generate(results, out, "--check") == 1          # a result changed
    assert out.read_text() == before                        # --check never writes
    assert _generate(results, out) == 0 and "| 99.5 |" in out.read_text()
    assert _generate(results, out, "--check") == 0

    out.write_text(out.read_text() + "hand edit\n")
    assert _generate(results, out, "--check") == 1          # edited by hand
    assert mr.main(["--results", str(results), "--out", str(out), "--check"],
                   resolve=lambda p: ("0000000", "2026-02-03")) == 1   # a JSON last changed in another commit


def test_command_line_exit_codes(results, tmp_path):
    # The real git resolver on a folder outside any repository: every file is "not committed".
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path.parent)}
    out = tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(SCRIPT), "--results", str(results), "--out", str(out)]
    assert subprocess.run(cmd + ["--check"], env=env, capture_output=True).returncode == 1
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    assert "Not in the git history." in _section(out.read_text(), "runtime_cpu.json")
    assert subprocess.run(cmd + ["--check"], env=env, capture_output=True).returncode == 0


def test_runtime_gpu_tables_read_both_formats():
    """The GPU runtime table reads the current rows (precision, levers, errors, the Editor per photo and way) and
    the older ones (dtype, one stage-path Editor row)."""
    new = {"roi": "hair", "batch": 1, "reps": 5, "models": {"paper256": {"image_size": 256, "chain": [
        {"what": "full_edit", "precision": "fp16", "fused": True, "cuda_graph": True, "channels_last": True,
         "compile_mode": "default", "median_ms": 1.234, "p90_ms": 1.3, "launches": 212},
        {"what": "setup", "precision": "fp16", "fused": True, "cuda_graph": False, "channels_last": True,
         "compile_mode": "max-autotune", "error": "RuntimeError: capture failed"}],
        "editor": [{"precision": "fp16", "way": "device framing", "photo": "1024x1024",
                    "full_edit": {"total": 9.0, "framing": 5.0, "model": 3.5, "compositing": 0.5},
                    "reedit": {"total": 4.0, "framing": 2.0, "model": 1.5, "compositing": 0.5}}]}}}
    text = "\n".join(mr.render_runtime_gpu(new))
    assert "| full_edit | fp16 | fused kernel | yes | yes | no | default | 1.23 | 1.30 | 212 |" in text
    assert "error: RuntimeError: capture failed" in text
    assert "| fp16 | device framing | 1024x1024 | 9.00 (5.00 / 3.50 / 0.500) | 4.00 (2.00 / 1.50 / 0.500) | n/a |" in text
    old = {"models": {"lfw128": {"image_size": 128, "chain": [
        {"what": "reedit", "dtype": "float32", "fused": False, "cuda_graph": False, "median_ms": 0.5}],
        "editor": {"full_edit": {"median_ms": 15.1}, "reedit": {"median_ms": 4.8}, "fused_kernel": True}}}}
    text = "\n".join(mr.render_runtime_gpu(old))
    assert "| reedit | float32 | unfused | no | no | no | - | 0.500 |" in text and "full edit 15.1 ms" in text
