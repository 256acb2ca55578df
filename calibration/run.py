"""`ssae calibrate`: calibration set -> precision plans / INT8 graphs -> accuracy report (JSON + Markdown).

Output folder layout:
- `calibration_set.npz`   the faces that calibrated everything, with provenance (unless an existing set is given);
- int8: the QDQ export itself (`*.onnx`, `manifest.json`), `calibration_cache/` (tensor ranges per graph);
- fp16: `precision_plan.json`, the strongly typed FP16 export in `fp16/`, the simulated graphs in `fp16-simulated/`;
- bf16: `precision_plan.json` (`bf16-plan.json` when fp16 is calibrated too), `bf16-simulated/`;
- `report.json` and `report.md`: each precision against fp32 on the test faces (`calibration.accuracy`).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssae.fileio import atomic_write
from .dataset import CalibrationSet

PRECISIONS = ("fp16", "bf16", "int8")
DEFAULT_BACKENDS = {"int8": ("onnxruntime", "openvino"), "fp16": ("simulated", "onnxruntime"),
                    "bf16": ("openvino", "torch-bf16", "simulated")}
# "simulated": ONNX Runtime on graphs that round every tensor to the precision (`float_plan.simulate`): the
# accuracy of a real fp16/bf16 engine, measurable on this CPU (its speed is not). The first backend that ran is
# the precision's summary row.


@dataclass
class CalibrateConfig:
    out: str
    precisions: tuple[str, ...] = ("int8",)
    model: str | None = None                 # checkpoint, export folder or preset (None: bundled)
    backends: tuple[str, ...] = ()           # () = DEFAULT_BACKENDS per precision
    lfw: str | None = None                   # LFW Part Labels root: calibration from train, report on test
    lfw_derived: str | None = None           # derived nose/eyes/lips masks (labels for their IoU)
    images: str | None = None                # or any folder of faces (report on the folder's last images)
    calibration_set: str | None = None       # or an existing calibration_set.npz
    count: int = 200
    report_images: int = 16
    method: str = "minmax"
    activations: str = "s8"
    target_psnr: float = 30.0                # int8 exclusion search target (full edits vs fp32)
    search: bool = True
    speed_check: bool = True                 # int8: keep graphs that int8 makes slower on ORT in float
    upsample: str = "subpixel"               # int8: the decoder's upsampling layout quantized (see export_onnx)
    val_images: int = 4                      # held-out calibration faces for the exclusion search
    target_snr_db: float = 45.0              # fp16/bf16 plan: per-graph output SNR target


@dataclass
class TestSet:
    images: np.ndarray
    labels: np.ndarray
    labelled: np.ndarray
    description: str = ""


def _sets(cfg: CalibrateConfig, size: int, log) -> tuple[CalibrationSet, TestSet]:
    """The calibration set and the test faces (LFW: its test split, labelled; a folder: its last images)."""
    from ssae.data.layouts import LFWParts
    from ssae.data.memory import MemoryDataset

    if cfg.calibration_set:
        cs = CalibrationSet.load(cfg.calibration_set)
        if cs.size != size:
            raise ValueError(f"calibration set {cfg.calibration_set} is at {cs.size} px; the model needs {size}")
    elif cfg.lfw:
        cs = CalibrationSet.from_lfw(cfg.lfw, size, cfg.count)
    elif cfg.images:
        cs = CalibrationSet.from_folder(cfg.images, size, cfg.count + cfg.report_images)
    else:
        raise ValueError("give calibration images: --lfw LFW_PARTS_ROOT, --images DIR or --calibration-set FILE")
    if cfg.lfw:
        test = MemoryDataset.load(LFWParts(cfg.lfw, "test", size, cfg.lfw_derived))
        n = min(cfg.report_images, len(test))
        ts = TestSet(test.images[:n], test.masks[:n], test.labelled[:n],
                     f"first {n} faces of the LFW Part Labels test split (held out from training and calibration)")
    else:
        n = min(cfg.report_images, len(cs) - 1)
        if n < 1:
            raise ValueError("need at least two images: some to calibrate on, some to report on")
        imgs = cs.images[-n:]
        if not cfg.calibration_set:  # a folder: its last images are the test faces, never calibrated on
            cs = CalibrationSet(cs.names[:-n], cs.images[:-n], dict(cs.provenance, count=len(cs) - n))
        ts = TestSet(imgs, np.zeros((n, 5, size, size), np.uint8), np.zeros((n, 5), bool),
                     f"last {n} images of {cfg.images or cfg.calibration_set} (unlabelled: no IoU)")
    log(f"calibration set: {len(cs)} faces; test set: {ts.description}")
    return cs, ts


def _report_rows(fp32_dir: Path, variants, ts: TestSet, log) -> dict:
    from ssae.runtime.backend import BackendError
    from ssae.runtime.onnx_backends import OrtBackend
    from .accuracy import compare_variant

    ref = OrtBackend(fp32_dir)
    rows = {}
    for v in variants:
        try:
            be = v.make()
        except BackendError as e:
            rows[v.backend] = {"skipped": str(e)}
            continue
        log(f"report: {v.precision} on {v.backend}")
        rows[v.backend] = compare_variant(ref, be, ts.images, ts.labels, ts.labelled)
    return rows


def _summary(rows: dict, order) -> dict:
    """The issue's per-precision keys, from the first backend that ran, plus every backend's full metrics."""
    for b in order:
        r = rows.get(b)
        if r and "skipped" not in r:
            keys = ("psnr_db", "ssim", "iou_delta", "locality_ratio", "speedup_vs_fp32")
            return {"backend": b, **{k: r[k] for k in keys}}
    return {"backend": None}


def calibrate(cfg: CalibrateConfig, log=None) -> dict:
    """Run the whole calibration; returns the report (also written as report.json / report.md)."""
    from ssae.export.onnx_export import read_manifest
    from ssae.runtime.profiling.bench import machine_info
    from ssae.runtime.registry import create_backend, export_dir_for, resolve_model
    from .accuracy import Variant, markdown_report
    from .int8 import stage_feeds

    log = log or (lambda m: print(m, file=sys.stderr))
    bad = [p for p in cfg.precisions if p not in PRECISIONS]
    if bad:
        raise ValueError(f"unknown precision {bad[0]!r} (choose from {', '.join(PRECISIONS)})")
    out = Path(cfg.out)
    src = resolve_model(cfg.model)
    fp32_dir = export_dir_for(src)
    man = read_manifest(fp32_dir)
    if man.get("precision", "fp32") != "fp32":
        raise ValueError(f"{fp32_dir} is a {man['precision']} export; calibrate from an fp32 model or export")
    size = int(man["model_config"]["image_size"])
    cs, ts = _sets(cfg, size, log)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.calibration_set:
        cs.save(out / "calibration_set.npz")
    n_val = min(cfg.val_images, max(len(cs) - 1, 0))
    calib_imgs, val_imgs = cs.images[: len(cs) - n_val], cs.images[len(cs) - n_val:]
    log(f"calibration feeds: running the fp32 pipeline on {len(calib_imgs)} faces")
    feeds = stage_feeds(fp32_dir, calib_imgs)
    report: dict = {"calibration_set": cs.provenance, "test_set": ts.description, "source_export": str(fp32_dir),
                    "machine": _machine_line(machine_info()), "precisions": {}}
    for prec in cfg.precisions:
        backends = tuple(cfg.backends) or DEFAULT_BACKENDS[prec]
        variants: list[Variant] = []
        if prec == "int8":
            # the graphs quantized: the same model with ordinary convs in place of the transposed ones (ONNX
            # Runtime's CPU provider has no int8 ConvTranspose); an export folder is quantized as it is
            q_src = export_dir_for(src, upsample=cfg.upsample)
            report["int8_calibration"] = _int8(cfg, fp32_dir, q_src, out, calib_imgs, val_imgs, feeds, log)
            variants = [_onnx_variant("int8", b, out) for b in backends if b in ("onnxruntime", "openvino")]
        else:
            from .float_plan import make_plan, write_simulated_export
            log(f"{prec} plan: comparing every layer with fp32")
            plan, results = make_plan(fp32_dir, feeds, prec, cfg.target_snr_db,
                                      provenance={"calibration_set": cs.provenance.get("sha256"), "images": len(calib_imgs)},
                                      progress=lambda s: log(f"  {prec} plan: {s}"))
            name = "precision_plan.json" if len(set(cfg.precisions) - {"int8"}) == 1 else f"{prec}-plan.json"
            plan.save(out / name)
            report.setdefault("plans", {})[prec] = {"file": name, "keep_fp32": plan.keep_fp32,
                                                    "graphs": plan.provenance["graphs"]}
            sim_dir = out / f"{prec}-simulated"
            write_simulated_export(fp32_dir, sim_dir, plan)
            for b in backends:
                if b == "simulated":
                    variants.append(_onnx_variant(prec, b, sim_dir))
                elif prec == "fp16" and b == "onnxruntime":
                    from ssae.export import fp16
                    fp16.write_export(fp32_dir, out / "fp16", plan=plan, precision="fp16")
                    variants.append(_onnx_variant(prec, b, out / "fp16"))
                elif prec == "bf16" and b == "openvino":
                    variants.append(Variant(prec, b, lambda: create_backend("openvino", fp32_dir, "bf16")))
                elif prec == "bf16" and b == "torch-bf16":
                    if src.kind == "export":
                        continue
                    variants.append(Variant(prec, b, lambda: create_backend("torch", src, "bf16", device="cpu")))
        rows = _report_rows(fp32_dir, variants, ts, log)
        report["precisions"][prec] = rows
        report[prec] = dict(_summary(rows, backends), backends=rows)
    atomic_write(out / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(markdown_report(report)))
    return report


def _int8(cfg, fp32_dir, q_src, out, calib_imgs, val_imgs, feeds, log) -> dict:
    """Quantize the export `q_src` (the same model as `fp32_dir`, possibly another upsampling layout) into `out`:
    exclusion search against fp32 for accuracy, then the speed check (graphs int8 makes slower stay float)."""
    from .int8 import Int8Config, quantize_export
    from .int8_search import search_exclusions
    from .int8_speed import keep_slower_float, stage_speeds

    base = Int8Config(method=cfg.method, activations=cfg.activations)
    cache = out / "calibration_cache"
    history = []
    if cfg.search and len(val_imgs):
        log(f"int8: exclusion search (target {cfg.target_psnr} dB on {len(val_imgs)} held-out calibration faces)")
        base, history = search_exclusions(fp32_dir, calib_imgs, val_imgs, base, cfg.target_psnr,
                                          cache_dir=cache, feeds=feeds, progress=log, source_dir=q_src)
    quantize = lambda c: quantize_export(q_src, out, calib_imgs, c, cache_dir=cache, feeds=feeds,
                                         progress=lambda s: log(f"int8: quantizing {s}"))
    man = quantize(base)
    speeds = {}
    if cfg.speed_check:
        log("int8: speed check (each graph int8 vs fp32 on ONNX Runtime)")
        speeds = stage_speeds(fp32_dir, out, feeds)
        checked = keep_slower_float(base, speeds)
        if checked is not base:
            log(f"int8: kept in float (slower in int8): {', '.join(checked.keep_float[len(base.keep_float):])}")
            man = quantize(checked)
    return dict(man["calibration"], search=history, target_psnr=cfg.target_psnr if cfg.search else None,
                speed_check={s: {k: round(v, 3) for k, v in d.items()} for s, d in speeds.items()},
                upsample_mode=man.get("upsample_mode", "separate"))


def _onnx_variant(prec: str, backend: str, folder: Path):
    """The export in `folder` on ONNX Runtime ("onnxruntime", "simulated": its graphs as written) or OpenVINO
    (fp32 inference: an int8 export's kernels come from its QDQ graphs)."""
    from ssae.runtime.registry import create_backend
    from .accuracy import Variant
    if backend == "openvino":
        return Variant(prec, backend, lambda: create_backend("openvino", folder, "fp32"))
    return Variant(prec, backend, lambda: create_backend("onnxruntime", folder))


def _machine_line(m: dict) -> str:
    isa = ", ".join(k for k, v in (m.get("isa") or {}).items() if v)
    return f"{m.get('cpu')}, {m.get('cores')} cores ({isa})"
