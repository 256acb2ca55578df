"""`ssae bench`: latency of every stage on every available backend, side by side, with throughput and memory.

Backends are measured in one process, alternating round-robin per repetition so that machine noise hits all of
them alike; each sample is a synchronised wall-clock time (`Backend.synchronize`). Stage keys:
`smpn`, `encoder`, `decoder_prefix`, `edit_tail`, `refine` (one stage on full-size inputs), `full_edit` (a new
image, image in -> image out through the Editor) and `cached_reedit` (a new seed on an already-encoded image).
Statistics `p50`, `p90`, `p99`, `min` (and `mean`, `n`) in milliseconds. Throughput: edits per second of one
image edited with a batch of seeds (`Editor.edit_many`), per batch size.
"""
from __future__ import annotations

import csv
import io
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssae.pipeline import EDIT, ENCODER, PREFIX, SMPN, refine_for
from .stats import STAT_KEYS, cuda_peak_mb, peak_rss_mb, summarize, time_call

SCHEMA = "ssae-bench-1"
STAGE_KEYS = ("smpn", "encoder", "decoder_prefix", "edit_tail", "refine", "full_edit", "cached_reedit")
GRAPH_STAGE = {"smpn": SMPN, "encoder": ENCODER, "decoder_prefix": PREFIX, "edit_tail": EDIT}


@dataclass
class BenchConfig:
    model: str | None = None            # None = bundled; a checkpoint, export folder or preset
    backends: tuple[str, ...] = ()      # () = every backend available here
    repeats: int = 20
    warmup: int = 3
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    roi: str = "hair"
    image: str | None = None            # default: the bundled example face
    throughput_repeats: int = 3
    extra: dict = field(default_factory=dict)


def _example_image(path: str | None) -> np.ndarray:
    from ssae.pretrained import ASSETS
    from ssae.runtime.images import load_image
    return load_image(path or (ASSETS / "example_face.jpg"))


def source_revision() -> str | None:
    """The checkout's commit (short hash, "-dirty" with uncommitted changes to tracked files), or None outside a
    git checkout: recorded in benchmark results so that each figure names the code it measured."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("-dirty" if dirty else "")


def machine_info() -> dict:
    from ssae.info import gather
    info = gather()
    return {"cpu": info.cpu, "cores": os.cpu_count(), "isa": info.isa, "cuda_devices": info.cuda_devices,
            "python": platform.python_version(), "versions": {k: v for k, v in info.versions.items() if v}}


def run_bench(cfg: BenchConfig, log=None) -> dict:
    """Measure and return the report (JSON-serialisable)."""
    from ssae.runtime.backend import BackendError
    from ssae.runtime.editor import Editor
    from ssae.runtime.registry import ENGINES, backend_label, create_backend, resolve_model

    log = log or (lambda *_: None)
    src = resolve_model(cfg.model)
    names = list(cfg.backends) or [backend_label(e.name, p) for e in ENGINES.values() for p in e.precisions
                                   if not (e.follows_export and p != e.precisions[0])]
    img = _example_image(cfg.image)
    editors, skipped, memory = {}, {}, {}
    for name in names:
        try:
            be = create_backend(name, src)
            ed = Editor(be)
            ed.edit(img, roi=cfg.roi, seed=0)            # compile, encode
            ed.edit(img, roi=cfg.roi, seed=1)            # cached baseline
            editors[name] = ed
            memory[name] = {"host_peak_rss_mb": peak_rss_mb(), "device_peak_mb": cuda_peak_mb()}
            log(f"loaded {be.describe()}")
        except (BackendError, ImportError) as e:
            skipped[name] = str(e).splitlines()[0]
            log(f"skip {name}: {skipped[name]}")
    if not editors:
        raise BackendError("no backend could be loaded: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    # full-size inputs of the single stages, from a real encode
    first = next(iter(editors.values()))
    feeds = first.stage_feeds(img, cfg.roi)
    stage_in = {key: feeds[g] for key, g in GRAPH_STAGE.items()}
    stage_in["refine"] = feeds[refine_for(cfg.roi)]
    samples = {n: {k: [] for k in STAGE_KEYS} for n in editors}

    def one_round(record: bool, k: int) -> None:
        for n, ed in editors.items():
            be = ed.backend
            ev = be.name.startswith("torch") and be.device.startswith("cuda")
            time_call_ = (lambda f, s, ev=ev: time_call(f, s, cuda_events=ev))
            for key in STAGE_KEYS:
                if key in GRAPH_STAGE:
                    t = time_call_(lambda: be.run(GRAPH_STAGE[key], stage_in[key]), be.synchronize)
                elif key == "refine":
                    t = time_call_(lambda: be.run(refine_for(cfg.roi), stage_in["refine"]), be.synchronize)
                elif key == "full_edit":
                    ed.clear_cache()
                    t = time_call(lambda: ed.edit(img, roi=cfg.roi, seed=k), be.synchronize)
                    ed.edit(img, roi=cfg.roi, seed=k + 1)   # rebuild the cached baseline (not timed)
                else:
                    t = time_call(lambda: ed.edit(img, roi=cfg.roi, seed=k + 7), be.synchronize)
                if record:
                    samples[n][key].append(t)

    for k in range(cfg.warmup):
        one_round(False, 1000 + k)
    for k in range(cfg.repeats):
        one_round(True, k)
    throughput = {n: {} for n in editors}
    for b in cfg.batch_sizes:
        for n, ed in editors.items():
            ts = [time_call(lambda: ed.edit_many(img, [cfg.roi], list(range(b))), ed.backend.synchronize)
                  for _ in range(cfg.throughput_repeats)]
            throughput[n][str(b)] = b / (float(np.median(ts)) / 1e3)
    report = {
        "schema": SCHEMA, "machine": machine_info(), "model": cfg.model or "bundled",
        "image_size": first.size, "roi": cfg.roi, "repeats": cfg.repeats, "skipped": skipped,
        "backends": {n: {"device": ed.backend.device, "precision": ed.backend.precision,
                         "stages": {k: summarize(v) for k, v in samples[n].items()},
                         "throughput_edits_per_s": throughput[n], "memory": memory[n]}
                     for n, ed in editors.items()},
    }
    report["ratios_vs"] = base = next(iter(editors))
    report["ratios"] = {n: {k: report["backends"][base]["stages"][k]["p50"] / r["stages"][k]["p50"]
                            for k in STAGE_KEYS} for n, r in report["backends"].items()}
    return report


def validate_report(report: dict) -> None:
    """Raise ValueError unless `report` follows the bench JSON schema."""
    if report.get("schema") != SCHEMA:
        raise ValueError(f"not an ssae bench report (schema {report.get('schema')!r})")
    for n, r in report["backends"].items():
        missing = [k for k in STAGE_KEYS if k not in r["stages"]]
        if missing:
            raise ValueError(f"backend {n} lacks stages {missing}")
        for k, st in r["stages"].items():
            bad = [s for s in STAT_KEYS if not isinstance(st.get(s), float) or not np.isfinite(st[s]) or st[s] <= 0]
            if bad:
                raise ValueError(f"backend {n} stage {k}: bad statistics {bad}")


def format_table(report: dict) -> str:
    lines = [f"model {report['model']} ({report['image_size']} px), ROI {report['roi']}, {report['repeats']} runs "
             f"per stage, p50 ms (p90) | speed-up vs {report['ratios_vs']}"]
    head = ["backend"] + list(STAGE_KEYS)
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for n, r in report["backends"].items():
        cells = [f"{n} ({r['precision']})"] + [
            f"{r['stages'][k]['p50']:.2f} ({r['stages'][k]['p90']:.2f}) x{report['ratios'][n][k]:.2f}"
            for k in STAGE_KEYS]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("throughput (edits/s by batch size): " + "; ".join(
        f"{n}: " + ", ".join(f"{b}: {v:.1f}" for b, v in r["throughput_edits_per_s"].items())
        for n, r in report["backends"].items()))
    if report.get("skipped"):
        lines.append("skipped: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items()))
    return "\n".join(lines)


def to_csv(report: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["backend", "precision", "stage", *STAT_KEYS])
    for n, r in report["backends"].items():
        for k in STAGE_KEYS:
            w.writerow([n, r["precision"], k] + [f"{r['stages'][k][s]:.4f}" for s in STAT_KEYS])
    return buf.getvalue()


def compare(report: dict, baseline: dict, floor: float = 0.05) -> list[dict]:
    """Stages slower than in `baseline` by more than the noise measured in this run ((p90 - p50) / p50, at least
    `floor`). Returns one row per regression."""
    validate_report(baseline)
    out = []
    for n, r in report["backends"].items():
        old = baseline["backends"].get(n)
        if old is None:
            continue
        for k in STAGE_KEYS:
            new, prev = r["stages"][k], old["stages"][k]
            noise = max(floor, (new["p90"] - new["p50"]) / new["p50"])
            ratio = new["p50"] / prev["p50"]
            if ratio > 1 + noise:
                out.append({"backend": n, "stage": k, "baseline_p50": prev["p50"], "p50": new["p50"],
                            "slower_by": ratio - 1, "noise": noise})
    return out


def plot(report: dict, path: str | os.PathLike) -> None:
    """PNG: p50 latency per stage per backend (log-scale bars), and throughput vs batch size."""
    from PIL import Image, ImageDraw

    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    backends = list(report["backends"])
    w, h, pad = 1100, 460, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((pad, 8), f"ssae bench: {report['model']} ({report['image_size']} px), p50 latency (log ms)", fill="black")
    vals = [report["backends"][b]["stages"][k]["p50"] for b in backends for k in STAGE_KEYS]
    lo, hi = np.log10(min(vals)) - 0.2, np.log10(max(vals)) + 0.2
    left_w = 700
    x0, y0, y1 = pad, 40, h - 60
    d.line([(x0, y1), (left_w, y1)], fill="black")
    group = (left_w - x0) / len(STAGE_KEYS)
    bar = group / (len(backends) + 1)
    for i, k in enumerate(STAGE_KEYS):
        for j, b in enumerate(backends):
            v = np.log10(report["backends"][b]["stages"][k]["p50"])
            top = y1 - (v - lo) / (hi - lo) * (y1 - y0)
            xa = x0 + i * group + j * bar
            d.rectangle([xa, top, xa + bar - 2, y1], fill=colors[j % len(colors)])
        d.text((x0 + i * group, y1 + 5), k.replace("_", "\n"), fill="black")
    for t in range(int(np.floor(lo)), int(np.ceil(hi)) + 1):
        if lo <= t <= hi:
            y = y1 - (t - lo) / (hi - lo) * (y1 - y0)
            d.text((5, y - 6), f"{10 ** t:g}", fill="gray")
            d.line([(x0 - 4, y), (x0, y)], fill="gray")
    # throughput panel
    px0, px1 = left_w + 60, w - 20
    d.text((px0, 24), "throughput (edits/s) vs batch", fill="black")
    d.line([(px0, y1), (px1, y1)], fill="black")
    d.line([(px0, y0), (px0, y1)], fill="black")
    all_t = [v for b in backends for v in report["backends"][b]["throughput_edits_per_s"].values()]
    tmax = max(all_t) * 1.1 if all_t else 1.0
    for j, b in enumerate(backends):
        tp = report["backends"][b]["throughput_edits_per_s"]
        xs = list(tp)
        pts = [(px0 + (i + 0.5) / len(xs) * (px1 - px0), y1 - tp[x] / tmax * (y1 - y0)) for i, x in enumerate(xs)]
        if len(pts) > 1:
            d.line(pts, fill=colors[j % len(colors)], width=2)
        for (px, py), x in zip(pts, xs):
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colors[j % len(colors)])
            d.text((px - 4, y1 + 5), x, fill="black")
        d.text((px0 + 5, y0 + 14 * j), b, fill=colors[j % len(colors)])
    d.text((px0 - 40, y0 - 12), f"{tmax:.0f}", fill="gray")
    from ssae.fileio import atomic_write
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def save_json(report: dict, path: str | os.PathLike) -> None:
    from ssae.fileio import atomic_write
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
