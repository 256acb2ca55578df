"""ONNX export of every pipeline stage (torch.onnx dynamo exporter, opset >= 18, dynamic batch).

Writes one `.onnx` file per stage and `manifest.json` beside them: input/output names, shapes and dtypes, the model
config, the noise seed baked into the decoder graphs, sha256 of each file and the exporter versions. Each file is
checked with `onnx.checker` (full check) and shape inference, written to a temporary name and renamed.

The injection layer is exported two ways from the same PyTorch code: `sae_decoder_edit` (standard ops, for ONNX
Runtime and OpenVINO) and `sae_decoder_edit_plugin` (one `ssae::MaskedModConv` node carrying
`plugin_namespace`/`plugin_version`, for the TensorRT plugin; no local function is attached).

The graphs of a folder read their weights from one shared file, each tensor's bytes stored once
(`ssae.export.weights`; the five-ROI SMPN graph and the single-ROI ones hold the same weights): `finish_export`
moves them there and writes the manifest, which lists that file with its sha256 under "weights" (format
`ssae-onnx-2`; `ssae-onnx-1` folders, every graph self-contained, are still read). Every writer of an export
folder (this exporter, the fp16 conversion, int8 calibration, simulated precision) ends with it.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable

import torch

from ssae.fileio import atomic_write
from ssae.kernels import ops as fused_ops
from ssae.models.ssae_model import SSAE
from ssae.pipeline import EDIT, EDIT_PLUGIN
from .stages import CPU_ONLY_STAGES, StageSpec, build_stages, model_facts, stage_specs
from .manifest import FORMAT, MANIFEST, READ_FORMATS, ExportError, read_manifest, sha256_file  # noqa: F401
from .weights import share_weights

MAX_BATCH = 64


def example_inputs(spec: StageSpec, batch: int = 2, seed: int = 0, hw: tuple[int, int] | None = None,
                   full_hw: int | None = None) -> tuple[torch.Tensor, ...]:
    """Random inputs of the right shapes (masks in [0,1], codes L2-normalised, strengths around 1, indices in
    range).

    Dynamic spatial dims ("height", "width") take `hw` (default: the model's full size `full_hw`); the sparse edit
    graph's row tables have hw[0] * hw[1] + 1 rows and 2 * batch + 1 tiles."""
    g = torch.Generator().manual_seed(seed)
    if hw is None:
        hw = (full_hw, full_hw) if full_hw else (32, 32)
    sub = {"batch": batch, "height": hw[0], "width": hw[1], "rows": hw[0] * hw[1] + 1, "tiles": 2 * batch + 1}
    out = []
    for t in spec.inputs:
        shape = tuple(sub.get(d, d) for d in t.shape)
        if t.dtype == "int64":
            out.append(torch.randint(0, sub["rows"], shape, generator=g))
            continue
        x = torch.randn(shape, generator=g)
        if t.name in ("mask", "mask_rows"):
            x = torch.rand(shape, generator=g)
        elif t.name == "image":
            x = torch.rand(shape, generator=g) * 2 - 1
        elif t.name == "strength":
            x = torch.rand(shape, generator=g) + 0.5
        elif t.name in ("structure", "texture"):
            x = x / x.norm(dim=1, keepdim=True)
        elif t.name in ("h", "skip"):
            x = torch.nn.functional.leaky_relu(x, 0.2)
        out.append(x)
    return tuple(out)


def _export_one(module: torch.nn.Module, spec: StageSpec, path: Path, opset: int, plugin: bool, size: int) -> None:
    dims = {"batch": torch.export.Dim("batch", min=1, max=MAX_BATCH),
            "height": torch.export.Dim("height", min=4, max=size), "width": torch.export.Dim("width", min=4, max=size),
            "rows": torch.export.Dim("rows", min=2, max=size * size + 1),
            "tiles": torch.export.Dim("tiles", min=1, max=size * size)}
    # trace at a crop size (not the full size) so the exporter cannot specialise the spatial dims
    args = example_inputs(spec, batch=2, hw=(max(4, size // 2 + 3), max(4, size // 2 + 1)), full_hw=size)
    dyn = {t.name: {i: dims[d] for i, d in enumerate(t.shape) if isinstance(d, str)} for t in spec.inputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        with torch.no_grad(), fused_ops.use_fused_op(plugin):
            prog = torch.onnx.export(
                module, args, dynamo=True, opset_version=opset, verbose=False,
                input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                dynamic_shapes=dyn, custom_translation_table=fused_ops.onnx_translation() if plugin else None,
                optimize=True)
    atomic_write(path, lambda tmp: prog.save(tmp, external_data=False))


def check_onnx(path: str | os.PathLike) -> None:
    """onnx.checker full check + strict shape inference (custom-domain nodes are skipped by both)."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def export_onnx(model: SSAE, out_dir: str | os.PathLike, stages: Iterable[str] | None = None, opset: int = 18,
                plugin: bool = True, single_roi_smpn: bool = True, upsample: str = "separate",
                progress: Callable[[str], None] | None = None) -> dict:
    """Export the stages of `model` into `out_dir`; returns the manifest (also written as manifest.json).

    upsample: the layout of the decoder's upsampling convs (`ssae.models.sae.UPSAMPLE_MODES`, the same math):
    "separate" (transposed conv + blur; the default) or "subpixel" (ordinary convs + pixel shuffle, for INT8
    runtimes without an int8 transposed conv), recorded in the manifest."""
    if opset < 18:
        raise ValueError("opset must be >= 18")
    model = model.eval().freeze()
    before = model.sae.G.upsample_mode
    model.sae.G.set_upsample_mode(upsample)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _export_stages(model, out, stages, opset, plugin, single_roi_smpn, progress)
    finally:
        model.sae.G.set_upsample_mode(before)


def _export_stages(model: SSAE, out: Path, stages, opset: int, plugin: bool, single_roi_smpn: bool,
                   progress) -> dict:
    import onnx
    import onnxscript

    modules = build_stages(model, single_roi_smpn=single_roi_smpn)
    specs = stage_specs(model)
    names = list(stages) if stages is not None else list(modules)
    jobs = [(n, modules[n], specs[n], False) for n in names]
    if plugin and EDIT in names:
        plug = StageSpec(EDIT_PLUGIN, specs[EDIT].inputs, specs[EDIT].outputs)
        jobs.append((EDIT_PLUGIN, modules[EDIT], plug, True))
    entries = {}
    for name, module, spec, is_plugin in jobs:
        if progress:
            progress(name)
        path = out / f"{name}.onnx"
        _export_one(module, spec, path, opset, is_plugin, model.cfg.image_size)
        check_onnx(path)
        entries[name] = {"file": path.name, "plugin": is_plugin,
                         "cpu_only": name in CPU_ONLY_STAGES,
                         "inputs": [asdict(t) for t in spec.inputs], "outputs": [asdict(t) for t in spec.outputs]}
    manifest = {
        "format": FORMAT, **model_facts(model), "opset": opset, "max_batch": MAX_BATCH,
        "upsample_mode": model.sae.G.upsample_mode,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__},
        "stages": entries,
    }
    old = out / MANIFEST
    if old.exists():  # exporting a subset keeps the other stages' entries
        prev = json.loads(old.read_text())
        # compared as JSON (the config's tuples are lists there)
        if prev.get("model_config") == json.loads(json.dumps(manifest["model_config"])) and \
                prev.get("upsample_mode", "separate") == manifest["upsample_mode"]:
            manifest["stages"] = {**prev.get("stages", {}), **entries}
    return finish_export(out, manifest)


def finish_export(out_dir: str | os.PathLike, manifest: dict) -> dict:
    """Complete an export folder whose graphs (the manifest's stages) are written: their weights moved into the
    shared weights file (`share_weights`; graphs may hold them inline or in that file already), the file listed
    under "weights" (absent when no tensor is large enough), every stage's sha256 recorded, the format set, and
    manifest.json written last. Returns the manifest written."""
    out = Path(out_dir)
    man = {k: v for k, v in manifest.items() if k != "weights"}
    man["format"] = FORMAT
    weights = share_weights(out, [e["file"] for e in man["stages"].values()])
    if weights is not None:
        man["weights"] = weights
    man["stages"] = {n: dict(e, sha256=sha256_file(out / e["file"])) for n, e in man["stages"].items()}
    atomic_write(out / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(man, indent=1)))
    return man
