"""`ssae edit-batch`: edit a folder (or a list) of images with an actor pool of Editors on Ray Data.

For every input image and every (ROI, seed) one PNG is written into the output folder (the input's subfolders
are kept): `<file name>_<roi>_seed<seed>_<job>.png`, e.g. `a.png_hair_seed0_1f3c9a2e.png`. The input's full file
name makes names unique per input (`a.png`, `a.jpg` and `a_png.jpg` never share one; names that differ only in case
get a hash of their path too, for case-insensitive file systems), and `<job>` is a hash of everything else that
changes the output (the model's weights, the backend, strength, noise, reference, output, framing). Writes are
atomic (temporary file + rename), so an interrupted job leaves no half-written PNG, and a rerun of the same job
skips every output that exists (resumable) while a job with other settings writes its own files. Any per-image
failure (unreadable file, no face, out of memory, a runtime error) does not stop the job: it is collected with
its one-line reason into a JSON error list (default `<output>/edit-batch-errors.json`, rewritten by every run).

The driver lists the inputs, drops those whose outputs all exist, and hands the rest to Ray Data
(`from_items` -> `map_batches` with an actor pool of `EditWorker`s, each loading one Editor and reading its own
files, so an unreadable file fails only its own row). `local=True` runs the same worker in this process without
Ray (small jobs, tests).
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ssae.errors import SSAEError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif")
ERRORS_NAME = "edit-batch-errors.json"
MAX_SEEDS = 10_000


class BatchError(SSAEError, ValueError):
    """Bad edit-batch input (one-line reason)."""


def parse_seeds(text: str) -> list[int]:
    """"0-3" -> [0, 1, 2, 3]; "1,5,7-8" -> [1, 5, 7, 8] (order kept, duplicates dropped)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise BatchError(f"empty item in seeds {text!r}")
        lo_s, dash, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if dash else lo
        except ValueError:
            raise BatchError(f"seeds must look like 0-3 or 1,5,7-8, got {text!r}") from None
        if lo < 0 or hi < lo:
            raise BatchError(f"bad seed range {part!r} (need 0 <= first <= last)")
        if hi - lo + 1 + len(out) > MAX_SEEDS:
            raise BatchError(f"more than {MAX_SEEDS} seeds in {text!r}")
        out.extend(range(lo, hi + 1))
    return list(dict.fromkeys(out))


def list_inputs(src: str | os.PathLike) -> tuple[list[Path], Path]:
    """The input files and the folder their output names are relative to. `src` is a folder (every file with an
    image extension, recursively, sorted) or a text file with one path per line (`#` comments; relative paths are
    relative to the list file's folder; listed files need not exist: missing ones are reported as errors)."""
    p = Path(src)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS
                       and not f.name.startswith("."))
        return files, p
    if not p.exists():
        raise BatchError(f"input not found: {p}")
    try:
        lines = p.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BatchError(f"{p} is neither a folder nor a text file listing image paths ({e})") from None
    files = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            f = Path(line)
            files.append(f if f.is_absolute() else p.parent / f)
    files = list(dict.fromkeys(Path(os.path.abspath(f)) for f in files))
    if not files:
        raise BatchError(f"{p} lists no image paths")
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    return files, root


@dataclass(frozen=True)
class Task:
    """One input image and the outputs it owes: ((roi, seed, output path), ...)."""

    path: str
    outputs: tuple[tuple[str, int, str], ...]


def plan(files: Sequence[Path], root: Path, out_dir: Path, rois: Sequence[str], seeds: Sequence[int],
         job: str = "") -> list[Task]:
    """Output paths of every input (see the module docstring for the names); `job` from `job_key`."""
    import hashlib
    rels = [f.relative_to(root) if f.is_relative_to(root) else Path(f.name) for f in files]
    folded = Counter(str(r).lower() for r in rels)
    tasks = []
    for f, r in zip(files, rels):
        base = r.name
        if folded[str(r).lower()] > 1:  # differs from another input only in case
            base += "_" + hashlib.sha1(str(r).encode()).hexdigest()[:6]
        suffix = f"_{job}" if job else ""
        outs = tuple((roi, int(s), str(out_dir / r.parent / f"{base}_{roi}_seed{int(s)}{suffix}.png"))
                     for roi in rois for s in seeds)
        tasks.append(Task(str(f), outs))
    return tasks


def job_key(cfg: "BatchConfig") -> str:
    """8 hex digits naming everything but the ROI and seed that changes an output: the model's weights (or its
    export), the backend, strength, noise, reference (its bytes), output and framing."""
    import hashlib

    from ssae.runtime.registry import backend_label, parse_backend, resolve_model
    src = resolve_model(cfg.model)
    h = hashlib.sha256(src.key().encode())
    if src.kind == "export":
        h.update((src.path / "manifest.json").read_bytes())
    backend = backend_label(*parse_backend(cfg.backend))
    h.update(json.dumps([backend, repr(float(cfg.strength)), cfg.noise, cfg.output, cfg.frame, cfg.faces]).encode())
    if cfg.reference:
        h.update(Path(cfg.reference).read_bytes())
    return h.hexdigest()[:8]


@dataclass
class BatchConfig:
    """An edit-batch job."""

    rois: tuple[str, ...] = ("hair",)
    seeds: tuple[int, ...] = (0,)
    strength: float = 1.0
    noise: str = "region"
    reference: str | None = None   # a photo whose texture the regions take (instead of the seeds')
    output: str = "photo"          # photo | raw (see ssae.runtime.editor.OUTPUTS)
    frame: str = "face"            # face | whole
    faces: str = "largest"         # largest | all
    max_megapixels: float = 40.0   # larger inputs are refused (checked before decoding)
    model: str | None = None
    backend: str = "auto"
    workers: int = 1               # actors in the pool (one Editor each)
    batch_size: int = 4            # images per map_batches call
    cpus_per_worker: float = 1.0
    threads: int = 0               # intra-op threads per worker (onnxruntime, torch); 0: default
    address: str | None = None     # Ray cluster to join (None: start a local Ray)
    local: bool = False            # no Ray: run the worker in this process

    def validate(self) -> "BatchConfig":
        from ssae.runtime.editor import choice_problem
        if not self.rois or not self.seeds:
            raise BatchError("need at least one ROI and one seed")
        for name in ("noise", "output", "frame", "faces"):
            why = choice_problem(name, getattr(self, name))
            if why:
                raise BatchError(why)
        if self.reference is not None and not os.path.isfile(self.reference):
            raise BatchError(f"reference image not found: {self.reference}")
        if not np.isfinite(self.strength):
            raise BatchError(f"strength must be a finite number, got {self.strength}")
        if self.workers < 1 or self.batch_size < 1:
            raise BatchError("workers and batch size must be >= 1")
        return self


@dataclass
class BatchReport:
    """What a job did."""

    inputs: int = 0
    written: int = 0               # PNGs written by this run
    skipped: int = 0               # outputs that existed already
    failed: int = 0                # inputs that could not be read or edited
    seconds: float = 0.0
    errors: list[dict] = field(default_factory=list)   # [{"path": ..., "error": ...}]
    errors_file: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class EditWorker:
    """map_batches callable: loads one Editor, edits each row's image, writes the missing outputs atomically.

    Row in: `path` (str), `outputs` (JSON list of [roi, seed, output path]). Row out: `path`, `written`,
    `skipped`, `error` ("" when none)."""

    def __init__(self, cfg: dict):
        from .engine import EngineConfig, load_editor
        self.cfg = BatchConfig(**{**cfg, "rois": tuple(cfg["rois"]), "seeds": tuple(cfg["seeds"])})
        self.editor = load_editor(EngineConfig(self.cfg.model, self.cfg.backend, self.cfg.threads, 256.0))
        self.editor.cache_size = 1  # each image is edited once
        from ssae.runtime.images import ImageLimits
        self.editor.limits = ImageLimits(max_pixels=int(self.cfg.max_megapixels * 1e6))

    def one(self, path: str, outputs: list) -> tuple[int, int, str]:
        from ssae.fileio import atomic_write
        from ssae.runtime.images import ImageError, load_image

        todo = [(roi, int(s), out) for roi, s, out in outputs if not os.path.exists(out)]
        skipped = len(outputs) - len(todo)
        if not todo:
            return 0, skipped, ""
        try:
            rgb = load_image(path, self.editor.limits)
        except ImageError as e:
            return 0, skipped, str(e).splitlines()[0]
        except OSError as e:
            return 0, skipped, f"cannot read {path}: {e.strerror or e}"
        except MemoryError:
            return 0, skipped, f"cannot read {path}: out of memory"
        rois = list(dict.fromkeys(r for r, _, _ in todo))
        seeds = list(dict.fromkeys(s for _, s, _ in todo))
        c = self.cfg
        written = 0
        try:
            results = self.editor.edit_many(rgb, rois, seeds, strength=c.strength, noise=c.noise,
                                            reference=c.reference, output=c.output, frame=c.frame, faces=c.faces)
            by_key = {(r.roi, r.seed): r.image for r in results}
            for roi, s, out in todo:
                img = by_key[(roi, s)]
                atomic_write(out, lambda tmp, img=img: img.save(tmp, format="PNG"))
                written += 1
        except MemoryError:
            return written, skipped, f"cannot edit {path}: out of memory"
        except Exception as e:  # noqa: BLE001 - any per-image failure goes to the error list; the job goes on
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            return written, skipped, f"cannot edit {path}: {why}"
        return written, skipped, ""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        res = [self.one(p, json.loads(str(o))) for p, o in zip(paths, batch["outputs"])]
        return {"path": np.array(paths, dtype=object),
                "written": np.array([r[0] for r in res], dtype=np.int64),
                "skipped": np.array([r[1] for r in res], dtype=np.int64),
                "error": np.array([r[2] for r in res], dtype=object)}


def _worker_config(cfg: BatchConfig) -> dict:
    d = asdict(cfg)
    d["rois"], d["seeds"] = list(cfg.rois), list(cfg.seeds)
    return d


def _rows_local(cfg: BatchConfig, rows: list[dict]) -> Iterable[dict]:
    worker = EditWorker(_worker_config(cfg))
    for i in range(0, len(rows), cfg.batch_size):
        chunk = rows[i: i + cfg.batch_size]
        out = worker({"path": np.array([r["path"] for r in chunk], dtype=object),
                      "outputs": np.array([r["outputs"] for r in chunk], dtype=object)})
        for k in range(len(chunk)):
            yield {name: out[name][k] for name in out}


def _rows_ray(cfg: BatchConfig, rows: list[dict]) -> Iterable[dict]:
    import ray

    if not ray.is_initialized():
        kw = {"include_dashboard": False, "log_to_driver": False}
        if cfg.address:
            ray.init(address=cfg.address, **kw)
        else:
            ray.init(num_cpus=max(os.cpu_count() or 1, int(np.ceil(cfg.workers * cfg.cpus_per_worker))), **kw)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # this module reports progress itself
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * cfg.workers)))
    ds = ds.map_batches(EditWorker, fn_constructor_args=(_worker_config(cfg),), batch_size=cfg.batch_size,
                        batch_format="numpy", concurrency=max(1, min(cfg.workers, len(rows))),
                        num_cpus=cfg.cpus_per_worker)
    yield from ds.iter_rows()


def run_batch(src: str | os.PathLike, out_dir: str | os.PathLike, cfg: BatchConfig,
              errors_path: str | os.PathLike | None = None,
              progress: Callable[[int, int, BatchReport], None] | None = None) -> BatchReport:
    """Run an edit-batch job; returns its report and writes the error list (JSON, atomically)."""
    from ssae.fileio import atomic_write

    cfg.validate()
    t0 = time.perf_counter()
    out = Path(out_dir)
    files, root = list_inputs(src)
    if Path(src).is_dir() and (out.resolve() == root.resolve() or root.resolve() in out.resolve().parents):
        raise BatchError("the output folder must be outside the input folder (its PNGs would be read as inputs)")
    tasks = plan(files, root, out, cfg.rois, cfg.seeds, job_key(cfg))
    report = BatchReport(inputs=len(tasks))
    rows = []
    for t in tasks:
        if all(os.path.exists(o) for _, _, o in t.outputs):
            report.skipped += len(t.outputs)
        else:
            rows.append({"path": t.path, "outputs": json.dumps([list(o) for o in t.outputs])})
    done = len(tasks) - len(rows)
    if progress:
        progress(done, len(tasks), report)
    if rows:
        if not cfg.address:
            from .engine import prepare_model
            cfg = BatchConfig(**{**asdict(cfg), "model": prepare_model(cfg.model, cfg.backend)})
        stream = _rows_local(cfg, rows) if cfg.local else _rows_ray(cfg, rows)
        for r in stream:
            report.written += int(r["written"])
            report.skipped += int(r["skipped"])
            if r["error"]:
                report.failed += 1
                report.errors.append({"path": str(r["path"]), "error": str(r["error"])})
            done += 1
            if progress:
                progress(done, len(tasks), report)
    report.errors.sort(key=lambda e: e["path"])
    report.seconds = round(time.perf_counter() - t0, 3)
    ep = Path(errors_path) if errors_path else out / ERRORS_NAME
    body = json.dumps({"inputs": report.inputs, "failed": report.failed, "errors": report.errors}, indent=1)
    atomic_write(ep, lambda tmp: Path(tmp).write_text(body))
    report.errors_file = str(ep)
    return report


def print_progress(done: int, total: int, report: BatchReport) -> None:
    """One self-overwriting progress line on stderr."""
    end = "\n" if done == total else ""
    print(f"\r{done}/{total} images: {report.written} written, {report.skipped} skipped, "
          f"{report.failed} unreadable", end=end, file=sys.stderr, flush=True)
