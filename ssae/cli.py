"""The `ssae` command line. Subcommands register themselves in `COMMANDS`."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from .errors import SSAEError

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


class UserError(SSAEError):
    """A problem with the user's input: printed as one line, exit code 2."""


def command(name: str, add_args: Callable[[argparse.ArgumentParser], None]):
    def deco(fn):
        COMMANDS[name] = (add_args, fn)
        return fn
    return deco


@command("info", lambda p: None)
def _info(args: argparse.Namespace) -> int:
    from .info import format_info, gather
    from ssae.runtime.registry import auto_backend, backend_label

    info = gather()
    try:
        from ssae.kernels.cuda import unavailable_reason
        info.fused_kernel = unavailable_reason() or "available"
    except Exception as e:  # noqa: BLE001 - a report line, never a failure
        info.fused_kernel = f"cannot check ({type(e).__name__})"
    print(format_info(info))
    print(f"auto backend: {backend_label(*auto_backend())}")
    return 0


@command("backends", lambda p: None)
def _backends(args: argparse.Namespace) -> int:
    """The engines and precisions of the backend registry, and which run here."""
    from ssae.runtime.registry import available_backends

    for label, summary, why in available_backends():
        print(f"{label:<18} {'available' if why is None else why}")
    return 0


def _backend_args(p, default: str = "auto") -> None:
    """--backend and --precision, their choices and help from the backend registry."""
    from ssae.runtime.registry import ENGINES, PRECISIONS

    p.add_argument("--backend", default=default, choices=("auto", *ENGINES),
                   help="; ".join(["auto: the fastest here"] + [f"{e.name}: {e.summary}" for e in ENGINES.values()]))
    p.add_argument("--precision", default="auto", choices=("auto", *PRECISIONS),
                   help="auto: the engine's default; " + "; ".join(f"{e.name}: {', '.join(e.precisions)}"
                                                                for e in ENGINES.values()))


def _backend(args) -> str:
    """The backend string of the --backend and --precision flags (`registry.backend_name`)."""
    from ssae.runtime.registry import backend_name
    return backend_name(args.backend, args.precision)


def _data_args(p):
    sub = p.add_subparsers(dest="data_command", required=True)
    lm = sub.add_parser("lfw-masks", help="derive nose/eyes/lips masks for LFW Part Labels (needs ssae[labels])")
    lm.add_argument("--lfw", required=True, help="LFW Part Labels root (images/, labels/)")
    lm.add_argument("--out", default=None, help="cache folder (default: $SSAE_CACHE or ~/.cache/ssae, /lfw_masks)")
    lm.add_argument("--overwrite", action="store_true")


@command("data", _data_args)
def _data(args: argparse.Namespace) -> int:
    """Prepare training data (landmark-derived masks)."""
    import json
    from pathlib import Path

    from .data.landmarks import derive_lfw_masks
    from .fileio import default_cache_dir

    out = Path(args.out) if args.out else default_cache_dir() / "lfw_masks"
    if not (Path(args.lfw) / "images").is_dir():
        raise UserError(f"{args.lfw} is not an LFW Part Labels folder (no images/)")
    try:
        manifest = derive_lfw_masks(args.lfw, out, overwrite=args.overwrite,
                                    progress=lambda k, n: print(f"\r{k + 1}/{n}", end="", file=sys.stderr)
                                    if (k + 1) % 100 == 0 or k + 1 == n else None)
    except RuntimeError as e:
        raise UserError(str(e)) from None
    print(file=sys.stderr)
    print(json.dumps({k: v for k, v in manifest.items() if k != "no_face"} | {"no_face": len(manifest["no_face"])}))
    print(f"masks written to {out}")
    return 0


def _eval_args(p):
    p.add_argument("--model", default=None, help="checkpoint, export folder or preset (default: the bundled model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--photos", default=None,
                     help="folder of photos: what users get back at the photos' own resolution")
    src.add_argument("--lfw", default=None, help="LFW Part Labels root: model-space and photo-level metrics")
    p.add_argument("--lfw-derived", default=None, help="landmark-derived masks folder (ssae data lfw-masks)")
    p.add_argument("--split", default="test")
    _backend_args(p)
    p.add_argument("--rois", nargs="+", default=None, help="ROIs to edit (default: all)")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--seeds", type=int, default=1, help="edits per image and ROI")
    p.add_argument("--json", default=None, help="write the metrics here")


@command("eval", _eval_args)
def _eval(args: argparse.Namespace) -> int:
    """Evaluate a model: photos at their own resolution (--photos), or a labelled LFW split (--lfw: SMPN IoU,
    reconstruction PSNR/SSIM and edit locality in model space, and IoU / locality / change / detail at the photos'
    resolution through the crop and paste)."""
    import json
    from pathlib import Path

    from .fileio import atomic_write
    from ssae.runtime import BackendError, Editor
    from ssae.runtime.quality import evaluate_lfw_photos, evaluate_photos, list_photos
    from ssae.runtime.registry import ModelError

    try:
        ed = Editor.load(args.model, backend=_backend(args))
    except (ModelError, BackendError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    for r in args.rois or ():
        if r not in ed.rois:
            raise UserError(f"unknown ROI {r!r} (choose from {', '.join(ed.rois)})")
    seeds = list(range(args.seeds))
    if args.photos:
        try:
            photos = list_photos(args.photos)[: args.max_images]
        except FileNotFoundError as e:
            raise UserError(str(e)) from None
        if not photos:
            raise UserError(f"no images in {args.photos}")
        rep = evaluate_photos(ed, photos, args.rois, seeds)
        res = {"photos": str(args.photos), "backend": ed.backend.describe(), "summary": rep.summary,
               "rows": rep.rows}
        text = json.dumps(res, indent=1)
        print(json.dumps({"backend": res["backend"], **rep.summary}, indent=1))
    else:
        from .data.layouts import LFWParts
        from .data.memory import MemoryDataset
        from .evaluate import evaluate
        from .pretrained import load_pretrained

        model = load_pretrained(args.model)
        data = MemoryDataset.load(LFWParts(args.lfw, args.split, model.cfg.image_size, args.lfw_derived))
        res = evaluate(model, data, seeds_per_image=args.seeds, max_images=args.max_images)
        res["split"] = args.split
        res["photo_level"] = evaluate_lfw_photos(
            ed, LFWParts(args.lfw, args.split, model.cfg.image_size, args.lfw_derived), seeds,
            max_images=args.max_images)
        text = json.dumps(res, indent=1)
        print(text)
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    return 0


def _grid_args(p):
    p.add_argument("images", nargs="+", help="face images")
    p.add_argument("-o", "--output", required=True, help="PNG file")
    p.add_argument("--model", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strength", type=float, default=1.0)


@command("grid", _grid_args)
def _grid(args: argparse.Namespace) -> int:
    """Picture in model space: face crops x (crop, predicted masks, one edit per ROI)."""
    import numpy as np

    from .data.layouts import read_rgb
    from .data.transforms import to_model_tensor
    from .face import frame_training_image
    from .fileio import atomic_write
    from .figures import edit_grid
    from .pretrained import load_pretrained

    model = load_pretrained(args.model)
    s = model.cfg.image_size
    imgs = []
    for p in args.images:
        try:
            img = read_rgb(p)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
            raise UserError(f"cannot read image {p}: {e}") from None
        imgs.append(frame_training_image(img, s).cut_rgb(img))   # the face crop (else the whole frame)
    grid = edit_grid(model, to_model_tensor(np.stack(imgs)), seed=args.seed, strength=args.strength)
    atomic_write(args.output, lambda tmp: grid.save(tmp, format="PNG"))
    print(args.output)
    return 0


def _framing_args(p):
    """Options every edit command shares: noise, reference, framing and output."""
    p.add_argument("--noise", choices=("region", "pixel"), default="region")
    p.add_argument("--reference", default=None,
                   help="a photo whose texture the region takes (instead of the seed's random texture)")
    p.add_argument("--whole-frame", action="store_true",
                   help="edit the whole frame as one crop (no face detection; for images that are already a face)")
    p.add_argument("--all-faces", action="store_true", help="edit every face found (default: the largest)")
    p.add_argument("--raw", action="store_true",
                   help="write the model's own output for the face crop (model size) instead of the edited photo")
    p.add_argument("--max-megapixels", type=float, default=40.0,
                   help="refuse larger photos (checked before decoding; default 40)")


def _framing_kwargs(args) -> dict:
    return dict(noise=args.noise, reference=args.reference, output="raw" if args.raw else "photo",
                frame="whole" if args.whole_frame else "face", faces="all" if args.all_faces else "largest")


def _edit_args(p):
    p.add_argument("image", help="input image (any common format and mode)")
    p.add_argument("--roi", default="hair", help="hair, skin, nose, eyes, lips, or all (a grid of every ROI)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strength", type=float, default=1.0)
    _framing_args(p)
    p.add_argument("-o", "--output", required=True, help="output PNG (or any format PIL writes by extension)")
    p.add_argument("--masks-out", default=None, help="folder for the predicted masks (one PNG per ROI)")
    p.add_argument("--model", default=None, help="checkpoint, ONNX export folder or preset (default: bundled)")
    _backend_args(p)
    p.add_argument("--json", action="store_true", help="print timings and settings as JSON")


@command("edit", _edit_args)
def _edit(args: argparse.Namespace) -> int:
    """Edit the texture of one face region (or all, as a strip)."""
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from .fileio import atomic_write
    from ssae.runtime import Editor

    out = Path(args.output)
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise UserError(f"unsupported output file type {out.suffix!r} (use .png, .jpg, ...)")
    check_writable_file(out)
    if args.masks_out:
        check_writable_dir(Path(args.masks_out))
    if not np.isfinite(args.strength):
        raise UserError(f"strength must be a finite number, got {args.strength}")
    ed = Editor.load(args.model, backend=_backend(args), limits=image_limits(args))
    if args.roi != "all" and args.roi not in ed.rois:
        raise UserError(f"unknown ROI {args.roi!r} (choose from {', '.join(ed.rois)} or all)")
    rois = list(ed.rois) if args.roi == "all" else [args.roi]
    kw = _framing_kwargs(args)
    results = ed.edit_many(args.image, rois, [args.seed], strength=args.strength, **kw)
    masks = ed.masks(args.image, frame=kw["frame"], faces=kw["faces"]) if args.masks_out else None
    if args.roi == "all":
        from ssae.runtime.images import load_image
        tiles = ([load_image(args.image)] if not args.raw else []) + [np.asarray(r.image) for r in results]
        img = Image.fromarray(np.concatenate(tiles, axis=1))
    else:
        img = results[0].image
    files = {out: encode_image(img, fmt, out)}       # everything encoded in memory before anything is written
    if masks is not None:
        d = Path(args.masks_out)
        for roi, m in masks.items():
            files[d / f"{roi}.png"] = encode_image(Image.fromarray(np.round(m * 255).astype(np.uint8)), "PNG",
                                                   d / f"{roi}.png")
    for path, data in files.items():
        try:
            atomic_write(path, lambda tmp, data=data: Path(tmp).write_bytes(data))
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    if args.json:
        print(json.dumps({"output": str(out), "rois": rois, "seed": args.seed, "strength": args.strength,
                          "noise": args.noise, "reference": args.reference, "faces": results[0].faces,
                          "backend": ed.backend.describe(), "timings_ms": results[0].timings}))
    else:
        print(out)
    return 0


def image_limits(args):
    from ssae.runtime.images import ImageLimits
    if not args.max_megapixels > 0:
        raise UserError(f"--max-megapixels must be positive, got {args.max_megapixels}")
    return ImageLimits(max_pixels=int(args.max_megapixels * 1e6))


def check_writable_file(path) -> None:
    """UserError unless `path` can be written as a file: not a folder, and its nearest existing parent a folder."""
    from pathlib import Path
    p = Path(path)
    if p.is_dir():
        raise UserError(f"cannot write {p}: it is a folder")
    check_writable_dir(p.parent)


def check_writable_dir(path) -> None:
    """UserError unless `path` is a folder or can be created as one (no file in the way)."""
    from pathlib import Path
    p = Path(path).absolute()
    for q in [p, *p.parents]:
        if q.exists():
            if not q.is_dir():
                raise UserError(f"cannot write into {p}: {q} is a file, not a folder")
            if not os.access(q, os.W_OK):
                raise UserError(f"cannot write into {p}: {q} is not writable")
            return


def encode_image(img, fmt: str, path) -> bytes:
    """A PIL image encoded in `fmt` (RGB for formats without alpha); UserError when the format cannot hold it."""
    import io
    buf = io.BytesIO()
    im = img.convert("RGB") if fmt in ("JPEG",) and img.mode != "RGB" else img
    try:
        im.save(buf, format=fmt)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot write {path} as {fmt}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                        ) from None
    return buf.getvalue()


def _export_args(p):
    p.add_argument("--model", default=None, help="checkpoint or preset (default: bundled)")
    p.add_argument("dest", nargs="?", default=None, metavar="OUT_DIR", help="output folder (or --out)")
    p.add_argument("--out", default=None, help="output folder (ONNX files + manifest.json, or a Triton repository)")
    p.add_argument("--format", choices=("onnx", "triton"), default="onnx",
                   help="triton: a Triton model repository (ONNX Runtime models, TensorRT plans when built, "
                        "one edit ensemble per ROI); --model may be an export folder")
    p.add_argument("--max-batch", type=int, default=8, help="triton: max_batch_size of every model")
    p.add_argument("--engines", default=None,
                   help="triton: TensorRT engine folder (default: the export's tensorrt-* folder, if built)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--no-single-roi-smpn", action="store_true",
                   help="skip the per-ROI SMPN graphs (single-ROI edits then run the five-ROI graph)")
    p.add_argument("--no-plugin", action="store_true", help="skip the TensorRT plugin graph")
    p.add_argument("--upsample", choices=("separate", "subpixel"), default="separate",
                   help="decoder upsampling layout (same math): separate = transposed conv + blur; subpixel = ordinary "
                        "convs + pixel shuffle (for INT8 runtimes without an int8 transposed conv)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="fp16: strongly typed FP16 graphs (fp32 graph I/O; --model may be an fp32 export folder)")
    p.add_argument("--plan", default=None, help="precision plan JSON (nodes kept in fp32; ssae calibrate)")


@command("export", _export_args)
def _export(args: argparse.Namespace) -> int:
    """Export every stage to ONNX (dynamo exporter, dynamic batch) with a manifest."""
    import json

    from ssae.export.onnx_export import export_onnx
    from ssae.runtime.registry import ModelError, load_torch_model, resolve_model

    if args.out and args.dest and args.out != args.dest:
        raise UserError(f"two output folders given ({args.dest} and --out {args.out})")
    args.out = args.out or args.dest
    if not args.out:
        raise UserError("give the output folder (OUT_DIR or --out)")
    if args.format == "triton":
        return _export_triton(args)
    if args.precision == "fp16" or args.plan:
        return _export_fp16(args)
    try:
        model = load_torch_model(resolve_model(args.model))
    except ModelError as e:
        raise UserError(str(e)) from None
    man = export_onnx(model, args.out, opset=args.opset, plugin=not args.no_plugin,
                      single_roi_smpn=not args.no_single_roi_smpn, upsample=args.upsample,
                      progress=lambda n: print(f"exporting {n}", file=sys.stderr))
    print(json.dumps(_export_files(man)))
    return 0


def _export_triton(args: argparse.Namespace) -> int:
    """Triton model repository from an export folder (exported first, into the cache, for a checkpoint)."""
    import json

    from ssae.export.onnx_export import ExportError
    from ssae.runtime.backend import BackendError
    from ssae.runtime.registry import ModelError, export_dir_for, resolve_model
    from ssae.runtime.serve.triton import TritonError, TritonOptions, write_repository

    if args.precision != "fp32" or args.plan:
        raise UserError("--format triton takes an export folder as it is: convert it first "
                        "(ssae export --precision fp16 --out D), then ssae export --format triton --model D OUT_DIR")
    try:
        src = export_dir_for(resolve_model(args.model))
        summary = write_repository(src, args.out, TritonOptions(max_batch_size=args.max_batch, engines=args.engines))
    except (ModelError, ExportError, BackendError, TritonError, ValueError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    print(json.dumps({k: summary[k] for k in ("repository", "models", "tensorrt_models", "ensembles", "skipped")}))
    return 0


def _export_files(man: dict) -> dict:
    """What an export folder holds, for the export commands' output: each stage's graph and the shared weights."""
    files = {k: v["file"] for k, v in man["stages"].items()}
    return files | ({"weights": man["weights"]["file"]} if man.get("weights") else {})


def _export_fp16(args: argparse.Namespace) -> int:
    """fp16 export: convert an fp32 export folder (given, or exported first into a temporary folder)."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from ssae.export import fp16
    from ssae.export.onnx_export import ExportError, export_onnx
    from ssae.export.precision_plan import PrecisionPlan, PrecisionPlanError
    from ssae.runtime.backend import BackendError
    from ssae.runtime.registry import ModelError, load_torch_model, resolve_model

    try:
        plan = PrecisionPlan.load(args.plan) if args.plan else None
        if plan is not None and plan.precision != "fp16":
            raise UserError(f"{args.plan} is a {plan.precision} plan; ssae export converts to fp16")
        src = resolve_model(args.model)
        out = Path(args.out)
        tmp = None
        if src.kind == "export":
            fp32_dir = src.path
        else:
            model = load_torch_model(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=f".{out.name}.fp32-", dir=out.parent)
            fp32_dir = Path(tmp)
            export_onnx(model, fp32_dir, opset=args.opset, plugin=not args.no_plugin,
                        single_roi_smpn=not args.no_single_roi_smpn, upsample=args.upsample,
                        progress=lambda n: print(f"exporting {n}", file=sys.stderr))
        try:
            man = fp16.write_export(fp32_dir, out, plan=plan, precision="fp16",
                                    source_label=None if tmp is None else f"fp32 export of {args.model or 'bundled'}",
                                    progress=lambda n: print(f"fp16 {n}", file=sys.stderr))
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
    except (ModelError, BackendError, ExportError, PrecisionPlanError, ValueError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    print(json.dumps(_export_files(man)))
    return 0


def _serve_args(p):
    p.add_argument("--model", default=None, help="checkpoint, export folder or preset (default: bundled)")
    _backend_args(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, default=1, help="replicas of the editor")
    scale.add_argument("--autoscale", default=None, metavar="MIN:MAX", help="autoscale between MIN and MAX replicas")
    p.add_argument("--max-batch", type=int, default=8, help="dynamic batching: largest batch (1: off)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a replica waits to fill a batch")
    p.add_argument("--max-image-mb", type=float, default=20.0, help="larger request bodies get 413")
    p.add_argument("--cache-mb", type=float, default=512.0, help="encode cache per replica")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads per replica (onnxruntime, torch)")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray CPUs reserved per replica")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--address", default=None,
                   help="join this Ray cluster (ray start --head / KubeRay; 'auto'), deploy and return")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="Serve config YAML: written from the other options when FILE does not exist (for "
                        "`serve deploy FILE`), else deployed as it says")


@command("serve", _serve_args)
def _serve(args: argparse.Namespace) -> int:
    """Serve the editor over HTTP on Ray Serve (dynamic batching, replicas, encode cache); needs ssae[serve]."""
    import time
    from pathlib import Path

    from ssae.runtime.serve.api import TOKEN_ENV
    from ssae.runtime.serve.deployment import (
        ServeConfig,
        ServeConfigError,
        parse_autoscale,
        read_serve_config,
        write_serve_config,
    )

    try:
        cfg = ServeConfig(model=args.model, backend=_backend(args), host=args.host, port=args.port,
                          replicas=args.replicas, autoscale=parse_autoscale(args.autoscale) if args.autoscale else None,
                          max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, max_image_mb=args.max_image_mb,
                          cache_mb=args.cache_mb, threads=args.threads,
                          cpus_per_replica=args.cpus_per_replica).validate()
        overrides = None
        if args.config and not Path(args.config).exists():
            write_serve_config(cfg, args.config)
            print(f"wrote {args.config}: deploy it on a cluster with `serve deploy {args.config}`, "
                  f"or here with `ssae serve --config {args.config}`")
            return 0
        if args.config:
            cfg, overrides = read_serve_config(args.config)
    except ServeConfigError as e:
        raise UserError(str(e)) from None
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise UserError("ssae serve needs Ray Serve: pip install 'ssae[serve]'") from None
    from ssae.runtime.serve.deployment import start
    from ssae.runtime.serve.engine import prepare_model

    token = os.environ.get(TOKEN_ENV) or None
    from ssae.runtime.serve.local import warn_if_open
    if warn_if_open(cfg.host, token):
        print(f"ssae serve: WARNING: listening on {cfg.host} without a token: anyone who reaches it can use the "
              f"model (set {TOKEN_ENV})", file=sys.stderr, flush=True)
    if args.address is None:
        try:  # ONNX backends: export a checkpoint once here, not once per replica
            cfg.model = prepare_model(cfg.model, cfg.backend)
        except (ValueError, RuntimeError) as e:
            raise UserError(str(e).splitlines()[0]) from None
    try:
        start(cfg, address=args.address, overrides=overrides, num_cpus=args.num_cpus, token=token)
    except Exception as e:  # noqa: BLE001 - Ray raises many types (bad address, replica start failures)
        raise UserError(f"cannot start the deployment: {str(e).strip().splitlines()[0]}") from None
    url = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
    print(f"serving {cfg.model or 'the bundled model'} at {url} (GET /healthz, POST /edit, POST /masks)"
          + ("; bearer token required" if token else ""), flush=True)
    if args.address is not None:
        return 0  # the application lives on the cluster
    import signal

    def _interrupt(signum, frame):  # also when the parent process left SIGINT ignored (inherited across exec)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)  # containers and process managers stop servers with SIGTERM
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        _stop_serving(timeout_s=30.0)
    return 0


def _stop_serving(timeout_s: float) -> None:
    """Ctrl-C: a graceful Serve shutdown and Ray's own, each bounded (on a loaded machine they can take minutes or
    hang in exit hooks), then exit with status 0 without running those hooks again."""
    import threading

    import ray
    from ray import serve

    for step in (serve.shutdown, ray.shutdown):
        t = threading.Thread(target=step, daemon=True)
        t.start()
        t.join(timeout_s)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _edit_batch_args(p):
    p.add_argument("input", help="folder of images (recursive) or a text file listing image paths")
    p.add_argument("output", help="output folder (one PNG per image, ROI and seed)")
    p.add_argument("--roi", nargs="+", default=["hair"], help="one or more ROIs")
    p.add_argument("--seeds", default="0", help="seeds: 0-3 or 1,5,7-8")
    p.add_argument("--strength", type=float, default=1.0)
    _framing_args(p)
    p.add_argument("--model", default=None, help="checkpoint, export folder or preset (default: bundled)")
    _backend_args(p)
    p.add_argument("--workers", type=int, default=1, help="actors in the pool (one Editor each)")
    p.add_argument("--batch-size", type=int, default=4, help="images per map_batches call")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads per worker (onnxruntime, torch)")
    p.add_argument("--address", default=None, help="join this Ray cluster ('auto'); default: a local Ray")
    p.add_argument("--local", action="store_true", help="no Ray: edit in this process")
    p.add_argument("--errors", default=None, help="error list JSON (default: OUTPUT/edit-batch-errors.json)")


@command("edit-batch", _edit_batch_args)
def _edit_batch(args: argparse.Namespace) -> int:
    """Edit a folder of images with an actor pool on Ray Data; resumable; exit 1 when some inputs failed."""
    import json

    from ssae.runtime.backend import BackendError
    from ssae.runtime.registry import ModelError, model_rois, resolve_model
    from ssae.runtime.serve.batch import BatchConfig, BatchError, parse_seeds, print_progress, run_batch

    rois = model_rois(resolve_model(args.model))
    bad = [r for r in args.roi if r not in rois]
    if bad:
        raise UserError(f"unknown ROI {bad[0]!r} (this model edits {', '.join(rois)})")
    if not args.local:
        try:
            import ray  # noqa: F401
            import ray.data  # noqa: F401
        except ImportError:
            raise UserError("edit-batch needs Ray Data: pip install 'ssae[serve]' (or run with --local)") from None
    try:
        cfg = BatchConfig(rois=tuple(dict.fromkeys(args.roi)), seeds=tuple(parse_seeds(args.seeds)),
                          strength=args.strength, **_framing_kwargs(args), max_megapixels=args.max_megapixels,
                          model=args.model, backend=_backend(args), workers=args.workers, batch_size=args.batch_size,
                          cpus_per_worker=args.cpus_per_worker, threads=args.threads, address=args.address,
                          local=args.local)
        report = run_batch(args.input, args.output, cfg, args.errors, progress=print_progress)
    except (BatchError, ModelError, BackendError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    print(json.dumps({k: v for k, v in report.to_dict().items() if k != "errors"}))
    for e in report.errors:
        print(f"unreadable: {e['path']}: {e['error']}", file=sys.stderr)
    return 1 if report.failed else 0


def _build_args(p):
    p.add_argument("--model", default=None, help="checkpoint, export folder or preset (default: bundled)")
    p.add_argument("--precision", choices=("fp16", "fp32", "int8"), default="fp16",
                   help="fp16: convert an fp32 export (with --plan); fp32/int8: the export's graphs as they are")
    p.add_argument("--plan", default=None, help="precision plan JSON (nodes kept in fp32)")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch of the optimization profiles")
    p.add_argument("--opt-batch", type=int, default=1, help="batch TensorRT tunes for")
    p.add_argument("--plugin", choices=("auto", "aot", "jit", "off"), default="auto",
                   help="the edit stage through the ssae::MaskedModConv plugin (auto: AOT, else JIT, else none)")
    p.add_argument("--out", default=None, help="engine folder (default: <export>/tensorrt-<precision>)")
    p.add_argument("--rebuild", action="store_true", help="ignore cached engines")
    p.add_argument("--stages", nargs="+", default=None, help="only these stages")
    p.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")


@command("build", _build_args)
def _build(args: argparse.Namespace) -> int:
    """Build TensorRT engines (FP16, plugin, profiles, timing cache) for every stage of an export."""
    import json

    from ssae.export import trt_build
    from ssae.export.onnx_export import ExportError
    from ssae.export.precision_plan import PrecisionPlan, PrecisionPlanError
    from ssae.runtime.backend import BackendError
    from ssae.runtime.registry import ModelError, export_dir_for, resolve_model

    try:
        trt_build.require_tensorrt()  # before any export work: say at once what is missing
        trt_build.require_cudart()
        plan = PrecisionPlan.load(args.plan) if args.plan else None
        src = export_dir_for(resolve_model(args.model))
        index = trt_build.build_engines(src, args.out, plan=plan, progress=trt_build.log, opts=trt_build.BuildOptions(
            precision=args.precision, max_batch=args.max_batch, opt_batch=args.opt_batch, plugin=args.plugin,
            rebuild=args.rebuild, stages=tuple(args.stages or ()), verbose=args.verbose))
    except (trt_build.TensorRTUnavailable, trt_build.BuildError, trt_build.EngineMismatch, ModelError, BackendError,
            ExportError, PrecisionPlanError, ValueError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    print(json.dumps({"environment": index["environment"], "precision": index["precision"],
                      "plugin": index["plugin"], "engines": {k: v["file"] for k, v in index["engines"].items()}}))
    return 0


def _bench_args(p):
    p.add_argument("--model", default=None, help="checkpoint, export folder or preset (default: bundled)")
    p.add_argument("--backends", nargs="+", default=None, help="default: every backend available here")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--roi", default="hair")
    p.add_argument("--image", default=None, help="image to edit (default: the bundled example face)")
    p.add_argument("--json", default=None, help="write the report (JSON)")
    p.add_argument("--csv", default=None, help="write per-stage statistics (CSV)")
    p.add_argument("--plot", default=None, help="write a PNG plot")
    p.add_argument("--compare", default=None, help="baseline report: list stages slower than the noise")


@command("bench", _bench_args)
def _bench(args: argparse.Namespace) -> int:
    """Latency per stage and backend (p50/p90/p99/min), throughput, memory; regressions vs a baseline."""
    import json
    from pathlib import Path

    from .fileio import atomic_write
    from ssae.runtime.profiling.bench import BenchConfig, compare, format_table, plot, run_bench, save_json, to_csv
    from ssae.runtime import BackendError
    from ssae.runtime.registry import ModelError

    baseline = None
    if args.compare:
        try:
            baseline = json.loads(Path(args.compare).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read baseline {args.compare}: {e}") from None
    cfg = BenchConfig(model=args.model, backends=tuple(args.backends or ()), repeats=args.repeats,
                      warmup=args.warmup, batch_sizes=tuple(args.batch_sizes), roi=args.roi, image=args.image)
    try:
        report = run_bench(cfg, log=lambda m: print(m, file=sys.stderr))
    except (BackendError, ModelError, ValueError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    print(format_table(report))
    if args.json:
        save_json(report, args.json)
    if args.csv:
        atomic_write(args.csv, lambda tmp: Path(tmp).write_text(to_csv(report)))
    if args.plot:
        plot(report, args.plot)
    if baseline is not None:
        try:
            slow = compare(report, baseline)
        except (ValueError, KeyError) as e:
            raise UserError(f"baseline {args.compare} is not a bench report: {e}") from None
        if slow:
            print("slower than the baseline beyond this run's noise:")
            for r in slow:
                print(f"  {r['backend']} {r['stage']}: {r['baseline_p50']:.2f} -> {r['p50']:.2f} ms "
                      f"(+{100 * r['slower_by']:.0f}%, noise {100 * r['noise']:.0f}%)")
            return 1
        print("no stage slower than the baseline beyond the noise")
    return 0


def _profile_args(p):
    p.add_argument("--model", default=None)
    _backend_args(p, default="onnxruntime")
    p.add_argument("--stage", default="sae_decoder_prefix")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--json", default=None)


@command("profile", _profile_args)
def _profile(args: argparse.Namespace) -> int:
    """Per-layer time of one stage graph (ONNX Runtime / OpenVINO profilers, torch.profiler)."""
    import json
    from pathlib import Path

    from .fileio import atomic_write
    from ssae.runtime.profiling.profile import format_profile, run_profile
    from ssae.runtime import BackendError
    from ssae.runtime.registry import ModelError

    try:
        res = run_profile(args.model, _backend(args), args.stage, args.runs, args.top)
    except (BackendError, ModelError, ValueError, ImportError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    print(format_profile(res))
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(res, indent=1)))
    return 0


def _calibrate_args(p):
    p.add_argument("--precision", nargs="+", choices=("fp16", "bf16", "int8"), required=True,
                   help="fp16/bf16: precision plan (nodes kept in fp32); int8: static QDQ quantization")
    p.add_argument("--model", default=None, help="checkpoint, fp32 export folder or preset (default: bundled)")
    p.add_argument("--backend", nargs="+", default=None,
                   help="backends of the report (default: int8 onnxruntime openvino; fp16 simulated onnxruntime; "
                        "bf16 openvino torch-bf16 simulated)")
    p.add_argument("--lfw", default=None, help="LFW Part Labels root (calibration: train split; report: test split)")
    p.add_argument("--lfw-derived", default=None, help="derived nose/eyes/lips masks (labels for their IoU)")
    p.add_argument("--images", default=None, help="or a folder of faces (the report uses its last images)")
    p.add_argument("--calibration-set", default=None, help="or an existing calibration_set.npz")
    p.add_argument("--count", type=int, default=200, help="calibration images")
    p.add_argument("--report-images", type=int, default=16)
    p.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax")
    p.add_argument("--activations", choices=("s8", "u8"), default="s8",
                   help="int8 activations: s8 symmetric (TensorRT) or u8 asymmetric (ONNX Runtime on x86)")
    p.add_argument("--target-psnr", type=float, default=30.0, help="int8 exclusion search target (dB vs fp32)")
    p.add_argument("--no-search", action="store_true", help="int8: quantize every graph, no exclusion search")
    p.add_argument("--no-speed-check", action="store_true",
                   help="int8: keep graphs quantized even where int8 is slower than fp32 on ONNX Runtime")
    p.add_argument("--upsample", choices=("subpixel", "separate"), default="subpixel",
                   help="int8: decoder upsampling layout quantized (subpixel: ordinary convs, int8 on ONNX Runtime; "
                        "separate: transposed convs, float on ONNX Runtime's CPU provider)")
    p.add_argument("--out", required=True, help="output folder: calibrated graphs, plans, report.json, report.md")


@command("calibrate", _calibrate_args)
def _calibrate(args: argparse.Namespace) -> int:
    """Calibrate fp16/bf16 precision plans and INT8 graphs on real faces; report accuracy and speed vs fp32."""
    import json

    from ssae.calibration.dataset import CalibrationSetError
    from ssae.calibration.run import CalibrateConfig, calibrate
    from ssae.export.onnx_export import ExportError
    from ssae.runtime.backend import BackendError
    from ssae.runtime.registry import ModelError

    cfg = CalibrateConfig(out=args.out, precisions=tuple(args.precision), model=args.model,
                          backends=tuple(args.backend or ()), lfw=args.lfw, lfw_derived=args.lfw_derived,
                          images=args.images, calibration_set=args.calibration_set, count=args.count,
                          report_images=args.report_images, method=args.method, activations=args.activations,
                          target_psnr=args.target_psnr, search=not args.no_search,
                          speed_check=not args.no_speed_check, upsample=args.upsample)
    try:
        report = calibrate(cfg)
    except (ModelError, ExportError, BackendError, CalibrationSetError, FileNotFoundError, ValueError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    print(json.dumps({p: {k: v for k, v in report[p].items() if k != "backends"} for p in cfg.precisions}, indent=1))
    return 0


def _train_args(p):
    from .train.cli import add_args
    add_args(p)


@command("train", _train_args)
def _train(args: argparse.Namespace) -> int:
    """Train an SSAE component (smpn, sae, rb); resumable."""
    from .train.cli import run
    return run(args)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="ssae", description="SemanticStyle Autoencoder: localized face editing")
    parser.add_argument("--version", action="version", version=f"ssae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, _fn) in COMMANDS.items():
        p = sub.add_parser(name, help=(_fn.__doc__ or "").strip().splitlines()[0] if _fn.__doc__ else None)
        add_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _add, fn = COMMANDS[args.command]
    try:
        return fn(args)
    except SSAEError as e:  # every problem a user can fix: one line, exit 2
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"ssae {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
