"""Write benchmarks/RESULTS.md from the JSON results in benchmarks/results/.

Every `*.json` directly under the results folder and every `report.json` one folder down (the `ssae calibrate`
reports) becomes one section: what was measured, the machine, the git commit that last changed the file and its
date, then tables. The kind of a result comes from its file name (`runtime_cpu*`, `kernel_gpu_*`, ...; a report's
kind from its folder, `calibration_*`); a kind this script does not know, or a file whose layout its table does
not expect, is listed as a key/value dump rather than left out, so RESULTS.md always covers every file.

    python benchmarks/make_results.py            # (re)write benchmarks/RESULTS.md
    python benchmarks/make_results.py --check    # exit 1 when RESULTS.md is not what this would write now

Standard library only, so it runs without the package installed. The commit and date of a file are its `commit`
and `date` fields where it has them, else `git log -1` of the file; a file git does not know is "not committed".
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
OUTPUT = HERE / "RESULTS.md"
GENERIC_ROW_LIMIT = 200

#: (commit, date) of a result file, or None where neither the file nor git says.
Resolver = Callable[[Path], "tuple[str, str] | None"]


# ----------------------------------------------------------------------------------------------- formatting
def num(x: Any) -> str:
    """A value as a table cell: floats to three or four significant figures, None as n/a."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        a = abs(x)
        if a == 0:
            return "0"
        if a >= 100:
            return f"{x:.0f}"
        if a >= 10:
            return f"{x:.1f}"
        if a >= 1:
            return f"{x:.2f}"
        if a >= 0.01:
            return f"{x:.3f}"
        return f"{x:.3g}"
    if isinstance(x, (list, tuple)):
        return ", ".join(num(v) for v in x) if x else "none"
    return str(x).replace("|", "\\|").replace("\n", " ")


def ratio(x: Any) -> str:
    """A speed-up cell: 1.41x."""
    return "n/a" if x is None else f"{x:.2f}x"


def pct(x: Any) -> str:
    """A fraction as a percentage cell."""
    return "n/a" if x is None else f"{100 * x:.1f}%"


def table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    """A Markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def label(key: str) -> str:
    """A JSON key as a column label."""
    return key.replace("_", " ")


def ms(d: dict, key: str) -> str:
    """The median of a {median_ms: ...} timing dict (or a bare number) as a cell."""
    v = d.get(key)
    return num(v.get("median_ms") if isinstance(v, dict) else v)


# ------------------------------------------------------------------------------------------ machine, commit
def machine_line(data: dict) -> str:
    """Where the result was measured: the `machine` field (cpu, cores, instruction sets) or a GPU's `device`."""
    m = data.get("machine")
    if isinstance(m, str):
        return m
    if isinstance(m, dict):
        text = f"{m.get('cpu', 'unknown CPU')}, {m.get('cores', '?')} cores"
        isa = [k for k, v in (m.get("isa") or {}).items() if v]
        gpus = m.get("cuda_devices") or []
        return text + (f" ({', '.join(isa)})" if isa else "") + (f"; GPUs: {num(gpus)}" if gpus else "")
    if data.get("device"):
        extra = [f"compute capability {data['capability']}" if data.get("capability") else "",
                 f"CUDA {data['cuda']}" if data.get("cuda") else "",
                 f"torch {data['torch']}" if data.get("torch") else ""]
        extra = [e for e in extra if e]
        return data["device"] + (f" ({', '.join(extra)})" if extra else "")
    return "not recorded in the file"


def git_commit(path: Path) -> tuple[str, str] | None:
    """The abbreviated hash and date (YYYY-MM-DD) of the last commit that changed `path`, or None."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%H %cs", "--", path.name], cwd=path.parent,
                             capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None
    # A fixed 7-character abbreviation: `%h` grows with the repository, which would make --check depend on it.
    return (out[0][:7], out[1]) if len(out) == 2 else None


def provenance(data: dict, path: Path, resolve: Resolver) -> tuple[str | None, str | None]:
    """(commit, date) of a result: its own `commit`/`date` fields first, then the resolver; None where unknown."""
    found = resolve(path) or (None, None)
    commit = data.get("commit") if isinstance(data.get("commit"), str) else None
    date = data.get("date") if isinstance(data.get("date"), str) else None
    return commit or found[0], date or found[1]


# ------------------------------------------------------------------------------------------------ renderers
def render_runtime_cpu(d: dict) -> list[str]:
    """bench_runtime.py: per model, stage latency and whole edits per backend, ratios against the official SAE."""
    out: list[str] = []
    for r in d["results"]:
        out.append(f"**{r['model']}** ({r['image_size']} px, median of {r.get('repeats', '?')}). Official SAE: "
                   f"encoder {num(r['official_ms']['encoder'])} ms, decoder {num(r['official_ms']['decoder'])} ms; "
                   f"with depthwise blurs {num(r['official_depthwise_ms']['encoder'])} / "
                   f"{num(r['official_depthwise_ms']['decoder'])} ms.")
        out.append("")
        backends = r["backends"]
        stages = list(dict.fromkeys(k for b in backends.values() for k in b["stages_ms"]))
        out += table(["backend"] + [f"{label(s)}, ms" for s in stages],
                     [[name] + [num(b["stages_ms"].get(s)) for s in stages] for name, b in backends.items()])
        edits = list(dict.fromkeys(k for b in backends.values() for k in b
                                   if k.endswith("_ms") and not isinstance(b[k], dict)))
        out += table(["backend", "re-edit path"] + [f"{label(k[:-3])}, ms" for k in edits],
                     [[name, f"{b.get('reedit_path', 'n/a')} (alt: {b.get('alt_reedit_path', 'n/a')})"]
                      + [num(b.get(k)) for k in edits] for name, b in backends.items()])
        speed = list(dict.fromkeys(k for b in backends.values() for k in b if "speedup" in k))
        dw = list(dict.fromkeys(k for b in backends.values() for k in b.get("vs_official_depthwise", {})))
        out += table(["backend"] + [label(k) for k in speed] + [f"{label(k)} vs official (dw)" for k in dw],
                     [[name] + [ratio(b.get(k)) for k in speed]
                      + [ratio(b.get("vs_official_depthwise", {}).get(k)) for k in dw]
                      for name, b in backends.items()])
    return out


def render_runtime_gpu(d: dict) -> list[str]:
    """bench_runtime_gpu.py: the chain on the device (eager / CUDA graph, fused / unfused, levers) and the Editor
    (older files: a stage chain of the benchmark's own and one `Editor.edit` row of the stage path)."""
    out = [f"ROI {d.get('roi', '?')}, batch {d.get('batch', '?')}, median of {d.get('reps', '?')}; "
           f"fused kernel: {d.get('fused_kernel', 'n/a')}.", ""]
    for model, m in d["models"].items():
        out.append(f"**{model}** ({m.get('image_size', '?')} px): the chain on the device, ms.")
        out.append("")
        out += table(["what", "precision", "injection layer", "CUDA graph", "channels-last", "concurrent SMPN",
                      "compile", "median ms", "p90 ms", "launches", "rel. err vs unfused eager", "rel. err vs fp32"],
                     [[c.get("what", "?"), c.get("precision", c.get("dtype", "?")),
                       "fused kernel" if c.get("fused") else "unfused", num(c.get("cuda_graph")),
                       num(c.get("channels_last", False)), num(c.get("concurrent_smpn", False)),
                       c.get("compile_mode") or "-",
                       f"error: {c['error'][:80]}" if "error" in c else num(c.get("median_ms")), num(c.get("p90_ms")),
                       num(c.get("launches")), num(c.get("rel_err_vs_unfused_eager")), num(c.get("rel_err_vs_fp32"))]
                      for c in m["chain"]])
        ed = m.get("editor")
        if isinstance(ed, dict) and ed:
            out.append(f"`Editor.edit` on CUDA (stage path): full edit {ms(ed, 'full_edit')} ms, cached re-edit "
                       f"{ms(ed, 'reedit')} ms (fused kernel: {num(ed.get('fused_kernel'))}).")
            out.append("")
        elif ed:
            out.append("`Editor.edit` on photos, ms: total (framing / model / compositing); device framing: the crop "
                       "cut and the change pasted on the device, inside the model time.")
            out.append("")

            def cell(e):
                return f"{num(e['total'])} ({num(e['framing'])} / {num(e['model'])} / {num(e['compositing'])})"

            kinds = [("full_edit", "full edit"), ("reedit", "re-edit"), ("reedit_prepared", "re-edit, prepared photo")]
            out += table(["precision", "way", "photo"] + [name for _, name in kinds],
                         [[r.get("precision", "?"), r.get("way", "?"), r.get("photo", "-")]
                          + ([f"error: {r['error'][:80]}"] + [""] * (len(kinds) - 1) if "error" in r else
                             [cell(r[k]) if k in r else "n/a" for k, _ in kinds]) for r in ed])
    return out


def render_kernel_gpu(d: dict) -> list[str]:
    """bench_kernel_gpu.py: the fused injection-layer kernel against the unfused ops and cuDNN's conv alone."""
    lay = d.get("layer", {})
    out = [f"Layer: {lay.get('preset', '?')} {lay.get('layer', '?')} (Cin {lay.get('cin', '?')}, Cout "
           f"{lay.get('cout', '?')}, {lay.get('h', '?')} x {lay.get('w', '?')}), median ms of {d.get('reps', '?')}."
           + (f" {d['note']}." if d.get("note") else ""), ""]
    out += table(["mode", "precision", "batch", "fused", "unfused", "unfused TF32", "cuDNN conv alone",
                  "speed-up", "max rel. err", "kernel"],
                 [[r["mode"], r["dtype"], num(r["batch"]), ms(r, "fused"), ms(r, "unfused"),
                   ms(r, "unfused_tf32"), ms(r, "cudnn_conv_only"), ratio(r.get("speedup")),
                   num(r.get("max_rel_err_vs_unfused")), num(r.get("kernel"))] for r in d["results"]])
    return out


def render_framing(d: dict) -> list[str]:
    """bench_framing.py: framing and compositing against the model's time, per photo size."""
    out: list[str] = []
    for r in d["results"]:
        out.append(f"**{r['model']}** ({r.get('image_size', '?')} px), {r['backend']}, median of "
                   f"{r.get('repeats', '?')}; ms.")
        out.append("")
        out += table(["photo", "edit", "framing", "compositing", "model", "total", "wall clock",
                      "framing + compositing vs model"],
                     [[photo, label(case), num(t["framing"]), num(t["compositing"]), num(t["model"]),
                       num(t["total"]), num(t.get("wall")), pct(t.get("overhead"))]
                      for photo, cases in r["photos"].items() for case, t in cases.items()])
    return out


def render_face_finding(d: dict) -> list[str]:
    """bench_face_finding.py: faces found and time per photo set, per locator."""
    rows = [[method, name, pct(s["found"]), num(s["n"]), num(s.get("median_ms"))]
            for method, sets in d["results"].items() for name, s in sets.items()]
    return table(["locator", "photos", "found", "photos in set", "median ms"], rows)


def render_eval(d: dict) -> list[str]:
    """ssae eval --photos: what users get back, over every photo, ROI and seed."""
    s = d["summary"]
    out = [f"Backend {d.get('backend', 'n/a')}; {len(d.get('rows', []))} edits; faces found: "
           f"{pct(s.get('faces_found'))}.", ""]
    metrics = [k for k, v in s.items() if isinstance(v, dict) and "median" in v]
    out += table(["metric", "median", "10th percentile", "edits"],
                 [[label(k), num(s[k]["median"]), num(s[k].get("p10")), num(s[k].get("n"))] for k in metrics])
    per = s.get("per_roi", {})
    cols = list(dict.fromkeys(k for v in per.values() for k in v))
    out += table(["ROI"] + [f"{label(c)}: median / p10" for c in cols],
                 [[roi] + [f"{num(v[c]['median'])} / {num(v[c].get('p10'))}" if c in v else "n/a" for c in cols]
                  for roi, v in per.items()])
    return out


def render_serve(d: dict) -> list[str]:
    """bench_serve.py: a load test of `ssae serve` per replica and batching configuration."""
    st = d.get("settings", {})
    out = [f"Model {d.get('model', '?')}, backend {d.get('backend', '?')}; {st.get('clients', '?')} clients, "
           f"{st.get('faces', '?')} faces, batch wait {num(st.get('batch_wait_ms'))} ms, Ray CPUs "
           f"{num(st.get('ray_cpus'))}. Workload: {st.get('workload', 'n/a')}.", ""]
    out += table(["configuration", "completed", "failed", "retried", "req/s", "p50 ms", "p99 ms", "mean batch",
                  "threads per replica"],
                 [[r.get("label", "?"), f"{r['completed']}/{r['requests']}", num(r["failed"]), num(r["retried"]),
                   num(r["throughput_rps"]), num(r["p50_ms"]), num(r["p99_ms"]), num(r["mean_batch"]),
                   num(r.get("threads_per_replica"))] for r in d["runs"]])
    for r in d["runs"]:
        if r.get("kill"):
            k = r["kill"]
            out += [f"{r.get('label', '?')}: a replica was killed after {k.get('at_request', '?')} requests and "
                    f"replaced after {num(k.get('replaced_after_s'))} s.", ""]
    return out


def render_int8_ort(d: dict) -> list[str]:
    """bench_int8_ort.py: each s8 graph on ONNX Runtime as written and as loaded (uint8 zero points)."""
    out: list[str] = []
    for e in d["exports"]:
        out.append(f"**{e.get('image_size', '?')} px** (median of {d.get('repeats', '?')}), int8 folder "
                   f"`{e.get('folder', '?')}`; ms and speed-ups against the fp32 graph it was quantized from.")
        out.append("")
        out += table(["graph", "fp32", "s8 as written", "s8 as loaded", "standard fp32 export", "as written",
                      "as loaded", "as loaded vs standard export", "float convs as written / as loaded"],
                     [[g, num(s.get("fp32_ms")), num(s.get("s8_as_written_ms")), num(s.get("s8_as_u8_ms")),
                       num(s.get("fp32_reference_ms")), ratio(s.get("speedup_as_written")),
                       ratio(s.get("speedup_as_u8")), ratio(s.get("speedup_as_u8_vs_reference")),
                       f"{num(s.get('float_convs_as_written'))} / {num(s.get('float_convs_as_u8'))}"]
                      for g, s in e["stages"].items()])
    return out


def render_ort_threads(d: dict) -> list[str]:
    """bench_ort_threads.py: full edits per ONNX Runtime thread-pool mode, fp32 and int8 graphs."""
    out = [f"{d.get('rounds', '?')} rounds x {d.get('edits_per_round', '?')} edits, ROI {d.get('roi', '?')}; "
           "median ms per graph and for the whole edit.", ""]
    stages = list(dict.fromkeys(k for e in d["exports"] for m in e["modes"].values() for k in m))
    out += table(["graphs", "thread pool"] + [label(s) for s in stages] + ["vs spin"],
                 [[e.get("precision", "?"), mode] + [num(t.get(s)) for s in stages]
                  + [ratio(e.get("speedup_vs_spin", {}).get(mode))]
                  for e in d["exports"] for mode, t in e["modes"].items()])
    return out


def render_calibration(d: dict) -> list[str]:
    """ssae calibrate's report.json: each precision and backend against fp32, and how the int8 graphs were made."""
    cs = d.get("calibration_set", {})
    out = [f"Calibration set: {cs.get('count', '?')} {cs.get('layout', '?')} {cs.get('split', '?')} images at "
           f"{cs.get('size', '?')} px. Report: {d.get('test_set', 'n/a')}.", ""]
    rois = list(dict.fromkeys(r for p in d["precisions"].values() for b in p.values()
                              for r in b.get("iou_delta", {})))
    out += table(["precision", "backend", "edit PSNR dB", "SSIM", "reconstruction PSNR dB"]
                 + [f"IoU change {r}" for r in rois] + ["full edit ms", "fp32 ms", "vs fp32"],
                 [[prec, be, num(b.get("psnr_db")), num(b.get("ssim")),
                   num(b.get("reconstruction", {}).get("psnr_db"))]
                  + [num(b.get("iou_delta", {}).get(r)) for r in rois]
                  + [num(b.get("full_edit_ms")), num(b.get("full_edit_ms_fp32")), ratio(b.get("speedup_vs_fp32"))]
                  for prec, bes in d["precisions"].items() for be, b in bes.items()])
    q = d.get("int8_calibration")
    if q:
        search = q.get("search") or []
        out += [f"INT8: {q.get('format', '?')}, weights {q.get('weights', '?')}, activations "
                f"{q.get('activations', '?')}, {q.get('method', '?')} ranges over {q.get('images', '?')} images, "
                f"layout {q.get('upsample_mode', '?')}; exclusion search target {num(q.get('target_psnr'))} dB"
                + (f", last step {num(search[-1].get('psnr_db'))} dB" if search else "")
                + f"; kept float: {num(q.get('kept_float') or [])}.", ""]
        sc = q.get("speed_check") or {}
        out += table(["graph", "fp32 ms", "int8 ms", "int8 vs fp32"],
                     [[g, num(s.get("fp32_ms")), num(s.get("int8_ms")), ratio(s.get("speedup"))]
                      for g, s in sc.items()])
    for prec, plan in (d.get("plans") or {}).items():
        kept = sum(len(v) for v in plan.get("keep_fp32", {}).values())
        out += [f"{prec} plan (`{plan.get('file', '?')}`): {kept} nodes kept in fp32 in "
                f"{len(plan.get('keep_fp32', {}))} graphs.", ""]
    return out


def flatten(obj: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted path, scalar) pairs of a JSON value; short lists of scalars stay one value."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list) and not (len(obj) <= 12 and all(not isinstance(v, (dict, list)) for v in obj)):
        for i, v in enumerate(obj):
            yield from flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def render_generic(d: Any) -> list[str]:
    """Any JSON: its values as a key/value table (the first GENERIC_ROW_LIMIT)."""
    pairs = [(k, v) for k, v in flatten(d) if k not in ("machine", "commit", "date")
             and not k.startswith("machine.")]
    out = table(["key", "value"], [[f"`{k}`", num(v)] for k, v in pairs[:GENERIC_ROW_LIMIT]])
    if len(pairs) > GENERIC_ROW_LIMIT:
        out += [f"... and {len(pairs) - GENERIC_ROW_LIMIT} more values in the file.", ""]
    return out


def render_ssae_bench(d: dict) -> list[str]:
    """`ssae bench --json`: p50 (p90) ms per stage and backend."""
    keys = list(next(iter(d["backends"].values()))["stages"]) if d.get("backends") else []
    out = [f"Model {d.get('model', '?')} ({d.get('image_size', '?')} px), ROI {d.get('roi', '?')}, "
           f"{d.get('repeats', '?')} runs per stage; p50 (p90) ms." + (f" {d['note']}." if d.get("note") else ""), ""]
    out += table(["backend", *keys],
                 [[f"{name} ({b.get('precision', '?')})",
                   *[f"{num(b['stages'][k]['p50'])} ({num(b['stages'][k]['p90'])})" for k in keys]]
                  for name, b in d["backends"].items()])
    return out


#: (file-stem prefix, kind, what was measured, renderer); the first matching prefix wins.
KINDS: list[tuple[str, str, str, Callable[[dict], list[str]]]] = [
    ("runtime_cpu_wide_hair", "runtime_cpu",
     "CPU latency per stage and whole edits per backend, with re-edits of a hair mask whose bounding box fills the "
     "frame (`benchmarks/bench_runtime.py`; `wide` columns).", render_runtime_cpu),
    ("runtime_cpu", "runtime_cpu",
     "CPU latency per stage and whole edits (`Editor.edit`, photo in, photo out) per backend, against the "
     "official SAE networks (`benchmarks/bench_runtime.py`).", render_runtime_cpu),
    ("runtime_gpu_", "runtime_gpu",
     "The chain on a CUDA device (eager and CUDA graph, fused kernel and unfused ops) and `Editor.edit` with the "
     "torch backend on CUDA (`benchmarks/bench_runtime_gpu.py`).", render_runtime_gpu),
    ("chain_levers_gpu_", "runtime_gpu",
     "The device chain's levers on a CUDA device: channels-last and torch.compile (Inductor) under the chain's CUDA "
     "graphs or Inductor's own (`benchmarks/bench_runtime_gpu.py --variants levers`).", render_runtime_gpu),
    ("kernel_gpu_", "kernel_gpu",
     "The fused masked modulated conv kernel against the unfused cuDNN conv + elementwise ops "
     "(`benchmarks/bench_kernel_gpu.py`).", render_kernel_gpu),
    ("framing_cpu", "framing_cpu",
     "What face framing (decode, detection, crop) and compositing (the paste) add to full edits and re-edits, "
     "per photo size (`benchmarks/bench_framing.py`).", render_framing),
    ("face_finding_cpu", "face_finding_cpu",
     "MTCNN against the SMPN as a whole-frame face locator: faces found and time per photo set "
     "(`benchmarks/bench_face_finding.py`).", render_face_finding),
    ("eval_photos", "eval",
     "What users get back on photos at their own resolution (CelebAMask-HQ samples and LFW test photos): PSNR "
     "outside the region, detail kept and change inside, latency (`ssae eval --photos`).", render_eval),
    ("eval_scenes", "eval",
     "What users get back on off-centre scenes (`scripts/make_scenes.py`, a face pasted into a larger photo): PSNR "
     "outside the region, detail kept and change inside, latency (`ssae eval --photos`).", render_eval),
    ("eval_", "eval",
     "What users get back on photos at their own resolution: PSNR outside the region, detail kept and change "
     "inside, latency (`ssae eval --photos`).", render_eval),
    ("serve_cpu", "serve_cpu",
     "Load test of `ssae serve` on Ray Serve over loopback: replicas, dynamic batching, a replica killed "
     "(`benchmarks/bench_serve.py`).", render_serve),
    ("int8_ort_", "int8_ort",
     "Each s8 QDQ graph on ONNX Runtime's CPU provider as written and as loaded with uint8 zero points, against "
     "its fp32 source (`benchmarks/bench_int8_ort.py`).", render_int8_ort),
    ("ort_threads_", "ort_threads",
     "Full edits per ONNX Runtime thread-pool mode (spin, no-spin, global), fp32 and int8 graphs "
     "(`benchmarks/bench_ort_threads.py`).", render_ort_threads),
    ("ssae_bench_", "ssae_bench",
     "Latency per stage and backend, whole edits and cached re-edits (`ssae bench --json`; two reports of one "
     "session compare with `ssae bench --compare`).", render_ssae_bench),
    ("calibration_", "calibration",
     "Reduced precision against fp32 on held-out LFW faces: accuracy, IoU change and full-edit speed per "
     "precision and backend; how the INT8 graphs were made (`ssae calibrate`).", render_calibration),
]


def kind_of(rel: Path) -> tuple[str, str, Callable[[dict], list[str]]]:
    """(kind, what was measured, renderer) of a result file from its name (a report.json: its folder's)."""
    stem = rel.parent.name if rel.name == "report.json" and rel.parent.name else rel.stem
    for prefix, kind, what, fn in KINDS:
        if stem.startswith(prefix):
            return kind, what, fn
    return "unknown", "A result kind this script has no table for: every value in the file.", render_generic


# ---------------------------------------------------------------------------------------------------- files
def result_files(results: Path) -> list[Path]:
    """Every `*.json` in the results folder and every `report.json` one folder down, sorted."""
    return sorted([*results.glob("*.json"), *results.glob("*/report.json")],
                  key=lambda p: p.relative_to(results).as_posix())


def other_files(results: Path, used: set[Path]) -> list[Path]:
    """Files in the results folder that are not result JSONs (notes, profiles, plans, Markdown reports)."""
    return sorted((p for p in results.rglob("*") if p.is_file() and p not in used),
                  key=lambda p: p.relative_to(results).as_posix())


def section(path: Path, results: Path, link_base: str, resolve: Resolver) -> tuple[list[str], list[str]]:
    """(Markdown lines of one result's section, its row in the index table)."""
    rel = path.relative_to(results)
    title = rel.as_posix()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return [f"## {title}", "", f"Not readable as JSON: {e}.", ""], [title, "unreadable", "", "", ""]
    kind, what, fn = kind_of(rel)
    commit, date = provenance(data if isinstance(data, dict) else {}, path, resolve)
    machine = machine_line(data) if isinstance(data, dict) else "not recorded in the file"
    lines = [f"## {title}", "", f"What was measured: {what}", "",
             f"Machine: {machine}. "
             + (f"Last changed in commit {commit} ({date or 'date unknown'})" if commit else "Not in the git history")
             + f". File: [{title}]({link_base}/{title})"
             + (f", report: [{rel.parent.as_posix()}/report.md]({link_base}/{rel.parent.as_posix()}/report.md)"
                if rel.name == "report.json" and (path.parent / "report.md").exists() else "") + ".", ""]
    try:
        body = fn(data)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        # The file's layout is not the one this kind's table expects (an older or newer benchmark): every value.
        body = [f"(The file's layout is not the one the `{kind}` table expects; its values follow.)", "",
                *render_generic(data)]
    anchor = title.lower().replace("/", "").replace(".", "")  # GitHub drops punctuation but - and _
    return lines + body, [f"[{title}](#{anchor})", kind, machine.split(" (")[0], commit or "n/a", date or "n/a"]


def render(results: Path = RESULTS_DIR, link_base: str = "results", resolve: Resolver = git_commit) -> str:
    """The whole RESULTS.md for a results folder."""
    files = result_files(results)
    sections, index = [], []
    for p in files:
        lines, row = section(p, results, link_base, resolve)
        sections += lines
        index.append(row)
    out = ["# Benchmark results", "",
           "Generated by `python benchmarks/make_results.py` from the JSON files in `benchmarks/results/`; do not "
           "edit by hand (`--check` says whether this file is current). Each section names the machine, the commit "
           "that last changed its JSON (or the JSON's own `commit` field) and that commit's date. Times are "
           "milliseconds.", ""]
    out += table(["result", "kind", "machine", "commit", "date"], index)
    out += sections
    others = other_files(results, set(files))
    if others:
        out += ["## Other files", ""]
        out += [f"- [{p.relative_to(results).as_posix()}]({link_base}/{p.relative_to(results).as_posix()})"
                for p in others]
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str] | None = None, resolve: Resolver = git_commit) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS_DIR, help="results folder (default: benchmarks/results)")
    ap.add_argument("--out", type=Path, default=OUTPUT, help="Markdown file (default: benchmarks/RESULTS.md)")
    ap.add_argument("--check", action="store_true", help="exit 1 if the file is not what would be written now")
    a = ap.parse_args(argv)
    results, out = a.results.resolve(), a.out.resolve()
    try:
        link_base = results.relative_to(out.parent).as_posix()
    except ValueError:
        link_base = results.as_posix()
    text = render(results, link_base, resolve)
    if a.check:
        current = out.read_text() if out.exists() else None
        if current != text:
            print(f"{out} is stale: run python benchmarks/make_results.py", file=sys.stderr)
            return 1
        return 0
    out.write_text(text)
    print(f"wrote {out} ({len(result_files(results))} results)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
