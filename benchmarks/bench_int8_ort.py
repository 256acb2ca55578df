"""ONNX Runtime CPU: symmetric int8 (s8) QDQ graphs loaded as written vs as the runtime loads them (uint8
activation zero points, `runtime/qdq_u8.py`), against their fp32 source graphs, in one run.

For each int8 export folder (`ssae calibrate --precision int8 --out DIR`), every int8 graph is timed three ways on
one calibration-style feed (the fp32 outputs of the stages before it, from the example face): the fp32 graph it was
quantized from, the s8 file as written, and the s8 file with uint8 zero points. When the folder's calibration
report names another fp32 export as the reference of its speed check (the standard export, where the int8 files
come from the subpixel one), that export is timed too ("fp32 reference": what `ssae calibrate` compares against).
Runs alternate (round-robin) so machine noise hits all three alike; medians and the ratios are printed and written
as JSON. The script also counts the convs ONNX Runtime leaves in float (not fused into QLinearConv) in each form.
The "as written" form exists only here (`as_written_backend`): the runtime always loads the uint8 form.

    python benchmarks/bench_int8_ort.py DIR [DIR ...] [--repeats 15] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def loaded_float_convs(backend, stage: str) -> int:
    """Convs left in float after ONNX Runtime's QDQ fusions, in the graph as `backend` loads it."""
    from ssae.runtime.qdq_u8 import float_convs

    entry = backend.manifest["stages"][stage]
    return float_convs(backend.model_as_loaded(backend.dir / entry["file"], entry))


def as_written_backend(folder: Path, providers: list[str]):
    """An `OrtBackend` whose sessions load every graph file as written (s8 activations left as they are), with the
    backend's own session options."""
    from ssae.runtime.onnx_backends import OrtBackend

    class AsWritten(OrtBackend):
        def open_session(self, path, entry, profile_prefix=None):
            return self.ort.InferenceSession(str(path), self.session_options(profile_prefix),
                                             providers=self.providers)

        def model_as_loaded(self, path, entry):
            import onnx
            return onnx.load(str(path))

    return AsWritten(folder, providers=providers)


def bench_folder(folder: Path, repeats: int) -> dict:
    from PIL import Image

    from ssae.calibration.int8 import stage_feeds
    from ssae.runtime.profiling.stats import time_call
    from ssae.runtime.onnx_backends import OrtBackend

    cpu = ["CPUExecutionProvider"]
    q_u8 = OrtBackend(folder, providers=cpu)
    q_s8 = as_written_backend(folder, cpu)
    src = q_u8.manifest["calibration"]["source_export"]
    fp = OrtBackend(src, providers=cpu)
    report = folder / "report.json"
    ref_dir = json.loads(report.read_text()).get("source_export") if report.is_file() else None
    ref = OrtBackend(ref_dir, providers=cpu) if ref_dir and Path(ref_dir) != Path(src) else None
    size = int(q_u8.manifest["model_config"]["image_size"])
    face = Path(__file__).resolve().parents[1] / "ssae" / "assets" / "example_face.jpg"
    img = np.asarray(Image.open(face).convert("RGB").resize((size, size)))[None]
    feeds = stage_feeds(src, img)
    rows = {}
    for stage, entry in q_u8.manifest["stages"].items():
        if entry.get("precision") != "int8" or stage not in feeds:
            continue
        feed = feeds[stage][0]
        runs = [("fp32", fp), ("s8_as_written", q_s8), ("s8_as_u8", q_u8)]
        if ref is not None and stage in ref.stages():
            runs.append(("fp32_reference", ref))
        times = {tag: [] for tag, _ in runs}
        for k in range(repeats + 1):
            for tag, be in runs:
                ms = time_call(lambda: be.run(stage, feed))
                if k:
                    times[tag].append(ms)
        med = {t: float(np.median(v)) for t, v in times.items()}
        rows[stage] = {**{f"{t}_ms": v for t, v in med.items()},
                       "speedup_as_written": med["fp32"] / med["s8_as_written"],
                       "speedup_as_u8": med["fp32"] / med["s8_as_u8"],
                       "float_convs_as_written": loaded_float_convs(q_s8, stage),
                       "float_convs_as_u8": loaded_float_convs(q_u8, stage)}
        if "fp32_reference" in med:
            rows[stage]["speedup_as_u8_vs_reference"] = med["fp32_reference"] / med["s8_as_u8"]
    return {"folder": str(folder), "image_size": size, "source_export": src, "reference_export": ref_dir,
            "stages": rows}


def main(argv=None) -> int:
    from ssae.runtime.profiling.bench import machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    out = {"machine": machine_info(), "repeats": args.repeats, "exports": []}
    for folder in args.folders:
        r = bench_folder(folder, args.repeats)
        out["exports"].append(r)
        print(f"\n{folder} ({r['image_size']} px), median ms of {args.repeats}:")
        print(f"{'stage':26s} {'fp32':>8s} {'s8 as written':>14s} {'s8 as u8':>9s} {'x written':>9s} {'x u8':>6s} "
              f"{'float convs written/u8':>22s} {'fp32 ref':>9s} {'x u8 vs ref':>11s}")
        for stage, v in r["stages"].items():
            ref_cols = (f" {v['fp32_reference_ms']:9.2f} {v['speedup_as_u8_vs_reference']:10.2f}x"
                        if "fp32_reference_ms" in v else "")
            print(f"{stage:26s} {v['fp32_ms']:8.2f} {v['s8_as_written_ms']:14.2f} {v['s8_as_u8_ms']:9.2f} "
                  f"{v['speedup_as_written']:8.2f}x {v['speedup_as_u8']:5.2f}x "
                  f"{v['float_convs_as_written']:>14d} / {v['float_convs_as_u8']}{ref_cols}")
    if args.json:
        from ssae.fileio import atomic_write
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(out, indent=1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
