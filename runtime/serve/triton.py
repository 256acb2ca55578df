"""An NVIDIA Triton Inference Server model repository from an ONNX export (`ssae export --format triton OUT`).

Layout (one folder per model, version 1):

    <stage>/config.pbtxt, <stage>/1/model.onnx       every exported graph on the `onnxruntime` backend
    roi_mask_<roi>/...                               glue: that ROI's SMPN channel quantised to 8-bit levels
    <stage>_trt/config.pbtxt, <stage>_trt/1/model.plan   TensorRT engines, when `ssae build` made them
    ssae_edit_<roi>/config.pbtxt                     ensemble: image, noise, strength -> edited, mask
    ssae_edit_<roi>_trt/config.pbtxt                 the same ensemble on the TensorRT engines

Every model has dynamic batching (`max_batch_size`, `dynamic_batching`) and an `instance_group`; dims are taken
from the ONNX graphs themselves (-1 where the graph's dim is symbolic). The ensemble chains
SMPN -> roi_mask -> encoder -> decoder prefix -> edit -> RB: the same computation as `Editor.edit` on the full
image (the first edit of an image; `run_ensemble` runs an ensemble with ONNX Runtime, and the tests compare it
with the Editor).

What the client does (the Editor does it on the host; `prepare_inputs` / `finish` here do it for a Triton client):
- cuts the largest face's crop at the model size (`ssae.face`, as `Editor.edit` does) and scales it to [-1, 1]:
  input `image` (3, S, S);
- draws the edit noise from the seed with the counter-based generator (`ssae.philox`): input `noise`
  (global_code_ch,) of region mode. Noise stays on the client so an edit is a pure function of (image, seed) on
  every server; a Philox graph in ONNX would need integer ops the backends do not all support;
- `strength` (1,).
The ROI's mask selection and quantisation run on the server, in the `roi_mask_<roi>` helper graph
(`ssae.export.trt_build.roi_mask_graph` with the ROI baked in), so the client never sends a mask.

Two graph changes for Triton, both exact: the edit graphs take the generator's tail noise map `xi` as an input of
shape (1, 1, H, W), which has no batch dimension and so cannot be batched by Triton; here it is baked into the graph
as a constant (its value is fixed by the model's noise seed) and the spatial dims are fixed to the model size
(Triton runs full-image edits; the window re-edits of the Editor need its per-image cache). The TensorRT edit
engine keeps `xi` as an input, so the TensorRT ensemble runs the edit step on the ONNX Runtime model. The
`sae_decoder_edit_plugin` graph (TensorRT plugin node) is not added: ONNX Runtime cannot run it.

`validate_repository` parses every config.pbtxt into Triton's `ModelConfig` protobuf (`tritonclient[grpc]`) and
checks names, types and dims against the ONNX graphs and the ensembles' tensor wiring.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ssae.errors import SSAEError
from ssae.pipeline import (
    EDIT, EDIT_PIXEL, EDIT_PLUGIN, ENCODER, FULL, PREFIX, ROI_MASK, SMPN, chain_stages, refine_for, slot, smpn_for,
)

ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 11: "TYPE_FP64", 6: "TYPE_INT32",
                  7: "TYPE_INT64", 2: "TYPE_UINT8", 3: "TYPE_INT8", 9: "TYPE_BOOL"}
NAME_TO_TRITON = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int32": "TYPE_INT32",
                  "int64": "TYPE_INT64", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "bool": "TYPE_BOOL"}
TRITON_TO_NUMPY = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64}
ENSEMBLE_PREFIX = "ssae_edit_"
GLUE_PREFIX = "roi_mask_"
TRT_SUFFIX = "_trt"
SKIP_STAGES = (EDIT_PLUGIN,)
EDIT_STAGES = (EDIT, EDIT_PIXEL)


class TritonError(SSAEError, ValueError):
    """The export or engine folder cannot be turned into a repository, or a repository is invalid (one line)."""


@dataclass(frozen=True)
class TritonOptions:
    """Scheduling options written into every config.pbtxt."""

    max_batch_size: int = 8
    max_queue_delay_us: int = 500        # dynamic batching: how long Triton waits to fill a batch
    instances: int = 1                   # instance_group count per model
    kind: str = "KIND_AUTO"              # ONNX Runtime models (GPU when the server has one, else CPU)
    engines: str | None = None           # TensorRT engine folder (default: <export>/tensorrt-{fp16,fp32,int8})

    def validate(self) -> "TritonOptions":
        if not 1 <= self.max_batch_size <= 64:
            raise TritonError(f"max batch size must be in 1..64 (the export's limit), got {self.max_batch_size}")
        if self.instances < 1 or self.max_queue_delay_us < 0:
            raise TritonError("instances must be >= 1 and the queue delay >= 0")
        if self.kind not in ("KIND_AUTO", "KIND_GPU", "KIND_CPU"):
            raise TritonError(f"kind must be KIND_AUTO, KIND_GPU or KIND_CPU, got {self.kind}")
        return self


@dataclass(frozen=True)
class TensorIO:
    """One input/output of a model config: dims exclude the batch dim; `reshape` maps dims [1] to a scalar."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None


@dataclass
class ModelSpec:
    """A model of the repository (its config; the file is written separately)."""

    name: str
    platform: str                        # "onnxruntime" (backend), "tensorrt_plan", "ensemble"
    inputs: list[TensorIO]
    outputs: list[TensorIO]
    max_batch_size: int
    kind: str = "KIND_AUTO"
    steps: list[dict] = field(default_factory=list)   # ensembles: {"model", "inputs": {}, "outputs": {}}


# ------------------------------------------------------------------------------------------------ ONNX graphs
def onnx_io(model) -> tuple[list[tuple[str, int, list]], list[tuple[str, int, list]]]:
    """(name, ONNX elem type, dims: int or symbol name) of the graph's inputs and outputs (initializers that are
    also listed as inputs are left out)."""
    inits = {i.name for i in model.graph.initializer}

    def f(v):
        dims = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
                for d in v.type.tensor_type.shape.dim]
        return v.name, v.type.tensor_type.elem_type, dims
    return [f(v) for v in model.graph.input if v.name not in inits], [f(v) for v in model.graph.output]


def tensor_io(name: str, elem: int, dims: Sequence, batched: bool) -> TensorIO:
    """Config entry of one graph tensor; the first dim is the batch dim when `batched`."""
    if elem not in ONNX_TO_TRITON:
        raise TritonError(f"tensor {name} has ONNX type {elem}, which Triton configs here do not map")
    rest = list(dims[1:] if batched else dims)
    if batched and (not dims or not isinstance(dims[0], str)):
        raise TritonError(f"tensor {name} has no symbolic batch dimension (dims {list(dims)})")
    d = tuple(-1 if isinstance(x, str) else int(x) for x in rest)
    if batched and not d:  # (batch,) tensors: Triton needs at least one dim; reshape to a scalar per item
        return TensorIO(name, ONNX_TO_TRITON[elem], (1,), ())
    return TensorIO(name, ONNX_TO_TRITON[elem], d)


def bake_inputs(model, constants: Mapping[str, np.ndarray], fix_dims: Mapping[str, int] | None = None):
    """The graph with the named inputs replaced by constant initializers, and (optionally) symbolic dims fixed
    to sizes (e.g. {"height": 128, "width": 128}); checked with onnx.checker."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    names = {i.name for i in m.graph.input}
    for name, value in constants.items():
        if name not in names:
            raise TritonError(f"graph {m.graph.name} has no input {name!r} to bake")
        keep = [i for i in m.graph.input if i.name != name]
        del m.graph.input[:]
        m.graph.input.extend(keep)
        m.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    if fix_dims:
        for v in list(m.graph.input) + list(m.graph.output):
            for d in v.type.tensor_type.shape.dim:
                if d.dim_param in fix_dims:
                    d.dim_value = int(fix_dims[d.dim_param])  # clears dim_param (oneof)
    onnx.checker.check_model(m, full_check=True)
    return m


# ------------------------------------------------------------------------------------------------ config text
def _q(s: str) -> str:
    return json.dumps(s)


def _tensor_text(t: TensorIO, indent: str) -> str:
    lines = [f"{indent}{{", f"{indent}  name: {_q(t.name)}", f"{indent}  data_type: {t.data_type}",
             f"{indent}  dims: [ {', '.join(str(d) for d in t.dims)} ]"]
    if t.reshape is not None:
        lines.append(f"{indent}  reshape: {{ shape: [{', '.join(str(d) for d in t.reshape)}] }}")
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def config_text(spec: ModelSpec, opts: TritonOptions) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig)."""
    out = [f"name: {_q(spec.name)}"]
    if spec.platform == "onnxruntime":
        out += ['backend: "onnxruntime"', 'default_model_filename: "model.onnx"']
    elif spec.platform == "tensorrt_plan":
        out += ['platform: "tensorrt_plan"', 'default_model_filename: "model.plan"']
    else:
        out.append('platform: "ensemble"')
    out.append(f"max_batch_size: {spec.max_batch_size}")
    out.append("input [\n" + ",\n".join(_tensor_text(t, "  ") for t in spec.inputs) + "\n]")
    out.append("output [\n" + ",\n".join(_tensor_text(t, "  ") for t in spec.outputs) + "\n]")
    if spec.platform == "ensemble":
        steps = []
        for st in spec.steps:
            lines = ["    {", f"      model_name: {_q(st['model'])}", "      model_version: -1"]
            lines += [f"      input_map {{ key: {_q(k)} value: {_q(v)} }}" for k, v in st["inputs"].items()]
            lines += [f"      output_map {{ key: {_q(k)} value: {_q(v)} }}" for k, v in st["outputs"].items()]
            lines.append("    }")
            steps.append("\n".join(lines))
        out.append("ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}")
    else:
        if spec.max_batch_size > 0:
            out.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {opts.max_queue_delay_us}\n}}")
        out.append(f"instance_group [\n  {{\n    count: {opts.instances}\n    kind: {spec.kind}\n  }}\n]")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------ the repository
def find_engine_dir(export_dir: Path, explicit: str | os.PathLike | None) -> Path | None:
    """The TensorRT engine folder to add (explicit, else the export's tensorrt-fp16/-fp32/-int8 with an index)."""
    from ssae.export.trt_build import INDEX
    if explicit is not None:
        d = Path(explicit)
        if not (d / INDEX).exists():
            raise TritonError(f"{d} is not a TensorRT engine folder (no {INDEX}; build one with `ssae build`)")
        return d
    for p in ("fp16", "fp32", "int8"):
        d = export_dir / f"tensorrt-{p}"
        if (d / INDEX).exists():
            return d
    return None


def _onnx_model_spec(name: str, model, opts: TritonOptions) -> ModelSpec:
    ins, outs = onnx_io(model)
    return ModelSpec(name, "onnxruntime", [tensor_io(n, e, d, True) for n, e, d in ins],
                     [tensor_io(n, e, d, True) for n, e, d in outs], opts.max_batch_size, opts.kind)


def _write_model(repo: Path, spec: ModelSpec, opts: TritonOptions, model=None, plan: Path | None = None) -> None:
    import onnx

    from ssae.fileio import atomic_write
    d = repo / spec.name
    (d / "1").mkdir(parents=True, exist_ok=True)
    if model is not None:
        atomic_write(d / "1" / "model.onnx", lambda tmp: onnx.save(model, tmp))
    if plan is not None:
        atomic_write(d / "1" / "model.plan", lambda tmp: shutil.copyfile(plan, tmp))
    text = config_text(spec, opts)
    atomic_write(d / "config.pbtxt", lambda tmp: Path(tmp).write_text(text))


def _ensemble(name: str, roi: str, models: Mapping[str, ModelSpec], use: Mapping[str, str], max_batch: int,
              ) -> ModelSpec:
    """The edit ensemble of one ROI: the pipeline's full chain (`ssae.pipeline.chain_stages`), `use` mapping each of
    its stages to the model that runs it."""
    def io(model: str, tensor: str, out: bool = False) -> TensorIO:
        for t in (models[model].outputs if out else models[model].inputs):
            if t.name == tensor:
                return t
        raise TritonError(f"model {model} has no {'output' if out else 'input'} {tensor!r}")

    refine = refine_for(roi)
    steps = []
    for stage in chain_stages(roi, SMPN, FULL):   # the pipeline's wiring: each tensor in its slot
        model = models[use[stage]]
        outputs = {t.name: slot(stage, t.name) for t in model.outputs}
        if stage == refine:
            outputs = {t.name: "edited" for t in model.outputs}   # the ensemble's output
        steps.append({"model": model.name, "inputs": {t.name: slot(stage, t.name) for t in model.inputs},
                      "outputs": outputs})
    inputs = [TensorIO("image", io(use[ENCODER], "image").data_type, io(use[ENCODER], "image").dims),
              io(use[EDIT], "noise"), io(use[EDIT], "strength")]
    outputs = [TensorIO("edited", io(use[refine], "refined", True).data_type, io(use[EDIT], "image", True).dims),
               TensorIO("mask", io(use[ROI_MASK], "mask", True).data_type, io(use[ROI_MASK], "mask", True).dims)]
    return ModelSpec(name, "ensemble", inputs, outputs, max_batch, steps=steps)


def write_repository(export_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     opts: TritonOptions | None = None) -> dict:
    """Write the model repository; returns a summary {"models": [...], "ensembles": [...], "skipped": {...}}."""
    from ssae.export import trt_build
    from ssae.export.manifest import ExportError, read_manifest
    from ssae.export.weights import load_self_contained
    from ssae import philox

    opts = (opts or TritonOptions()).validate()
    src = Path(export_dir)
    try:
        man = read_manifest(src)
    except ExportError as e:
        raise TritonError(str(e)) from None
    repo = Path(out_dir)
    if repo.resolve() == src.resolve():
        raise TritonError("the repository must be a new folder, not the export folder")
    repo.mkdir(parents=True, exist_ok=True)
    size = int(man["model_config"]["image_size"])
    rois = list(man["rois"])
    stages = man["stages"]
    models: dict[str, ModelSpec] = {}
    skipped: dict[str, str] = {}
    xi = philox.tail_noise_map(man) if man.get("local_tail") else None

    for stage, entry in stages.items():
        if stage in SKIP_STAGES or entry.get("plugin"):
            skipped[stage] = "TensorRT plugin graph (ONNX Runtime cannot run it; see the TensorRT models)"
            continue
        if entry.get("cpu_only"):
            skipped[stage] = "in-process CPU re-edit graph (one edit, integer tile plans, no batch dimension)"
            continue
        m = load_self_contained(src / entry["file"])  # each model folder holds its graph with its weights
        if stage in EDIT_STAGES and xi is not None:
            m = bake_inputs(m, {"xi": xi}, {"height": size, "width": size})
        spec = _onnx_model_spec(stage, m, opts)
        _write_model(repo, spec, opts, model=m)
        models[stage] = spec

    single = all(smpn_for(r) in models for r in rois)
    if not single and SMPN not in models:
        raise TritonError(f"{src} has no SMPN graph")
    for k, roi in enumerate(rois):
        g = trt_build.roi_mask_graph(1 if single else len(rois), size)
        g = bake_inputs(g, {"roi": np.array([0 if single else k], np.int32)},
                        {"rois": 1 if single else len(rois)})
        spec = _onnx_model_spec(GLUE_PREFIX + roi, g, opts)
        _write_model(repo, spec, opts, model=g)
        models[spec.name] = spec

    ensembles = []
    need = (ENCODER, PREFIX, EDIT)
    if all(n in models for n in need):
        for roi in rois:
            if refine_for(roi) not in models:
                continue
            use = {SMPN: smpn_for(roi) if single else SMPN, ROI_MASK: GLUE_PREFIX + roi, ENCODER: ENCODER,
                   PREFIX: PREFIX, EDIT: EDIT, refine_for(roi): refine_for(roi)}
            ens = _ensemble(ENSEMBLE_PREFIX + roi, roi, models, use, opts.max_batch_size)
            _write_model(repo, ens, opts)
            models[ens.name] = ens
            ensembles.append(ens.name)

    engine_dir = find_engine_dir(src, opts.engines)
    trt_models = []
    if engine_dir is not None:
        trt_models = _add_engines(repo, engine_dir, src, man, models, opts, skipped)
        trt_max = min([models[n].max_batch_size for n in trt_models] or [opts.max_batch_size])
        for roi in rois:
            base = ENSEMBLE_PREFIX + roi
            if base not in models:
                continue
            pick = lambda s: s + TRT_SUFFIX if s + TRT_SUFFIX in models else s  # noqa: E731
            use = {SMPN: pick(smpn_for(roi) if single else SMPN), ROI_MASK: GLUE_PREFIX + roi,
                   ENCODER: pick(ENCODER), PREFIX: pick(PREFIX), EDIT: EDIT, refine_for(roi): pick(refine_for(roi))}
            if not any(v.endswith(TRT_SUFFIX) for v in use.values()):
                continue
            ens = _ensemble(base + TRT_SUFFIX, roi, models, use, trt_max)
            _write_model(repo, ens, opts)
            models[ens.name] = ens
            ensembles.append(ens.name)

    summary = {"repository": str(repo), "source_export": str(src), "image_size": size, "rois": rois,
               "global_code_ch": int(man["model_config"]["sae"]["global_code_ch"]),
               "models": sorted(n for n, s in models.items() if s.platform != "ensemble"),
               "tensorrt_models": sorted(trt_models), "ensembles": ensembles, "skipped": skipped,
               "engine_dir": str(engine_dir) if engine_dir else None}
    from ssae.fileio import atomic_write
    atomic_write(repo / "ssae_repository.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))
    return summary


def _add_engines(repo: Path, engine_dir: Path, src: Path, man: dict, models: dict, opts: TritonOptions,
                 skipped: dict) -> list[str]:
    """TensorRT plan models for the engines whose every input and output has a batch dimension."""
    import onnx

    from ssae.export import trt_build
    try:
        index = trt_build.read_index(engine_dir)
    except trt_build.EngineMismatch as e:
        raise TritonError(str(e)) from None
    max_batch = min(opts.max_batch_size, int(index.get("max_batch", opts.max_batch_size)))
    added = []
    for stage, e in index["engines"].items():
        plan = engine_dir / e["file"]
        side_path = engine_dir / (e["file"] + ".json")
        if not plan.exists() or not side_path.exists():
            raise TritonError(f"engine {plan.name} or its sidecar is missing in {engine_dir}: rebuild with ssae build")
        side = json.loads(side_path.read_text())
        tensors = list(side.get("inputs", [])) + list(side.get("outputs", []))
        unbatched = [t["name"] for t in tensors if not t["shape"] or t["shape"][0] != "batch"]
        if unbatched:
            skipped[stage + TRT_SUFFIX] = (f"engine input {unbatched[0]!r} has no batch dimension (Triton batches "
                                           f"every tensor); the ONNX Runtime model serves this step")
            continue
        entry = man["stages"].get(stage)
        if entry is None:
            skipped[stage + TRT_SUFFIX] = "no ONNX graph of this stage in the export"
            continue
        ins, outs = onnx_io(onnx.load(str(src / entry["file"]), load_external_data=False))
        dtypes = {t["name"]: NAME_TO_TRITON.get(t.get("dtype", "float32"), "TYPE_FP32") for t in tensors}

        def conv(items):
            res = []
            for n, el, d in items:
                t = tensor_io(n, el, d, True)
                res.append(TensorIO(t.name, dtypes.get(n, t.data_type), t.dims, t.reshape))
            return res
        spec = ModelSpec(stage + TRT_SUFFIX, "tensorrt_plan", conv(ins), conv(outs), max_batch, "KIND_GPU")
        _write_model(repo, spec, opts, plan=plan)
        models[spec.name] = spec
        added.append(spec.name)
    return added


# ------------------------------------------------------------------------------------------------ validation
def _pb2():
    """tritonclient's generated model_config_pb2 module (Triton's ModelConfig protobuf)."""
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError) as e:
        raise TritonError("validating a Triton repository needs tritonclient[grpc] (pip install 'ssae[serve]'): "
                          f"{str(e).splitlines()[0]}") from None
    return model_config_pb2


def parse_config(path: str | os.PathLike):
    """config.pbtxt -> tritonclient's ModelConfig protobuf (google.protobuf.text_format); TritonError if invalid."""
    from google.protobuf import text_format
    pb2 = _pb2()
    try:
        return text_format.Parse(Path(path).read_text(), pb2.ModelConfig())
    except text_format.ParseError as e:
        raise TritonError(f"{path}: {e}") from None


def _dims_compatible(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b))


def _model_shape(t) -> tuple[int, ...]:
    """The per-item shape a model sees for a config tensor (reshape applied)."""
    return tuple(t.reshape.shape) if t.HasField("reshape") else tuple(t.dims)


def validate_repository(repo: str | os.PathLike) -> list[str]:
    """Problems of a repository (empty when valid): every config.pbtxt must parse into Triton's ModelConfig, be
    named after its folder, have its model file, match its ONNX graph's inputs and outputs (names, types, dims),
    and every ensemble's steps must name existing models and existing tensors, each consumed tensor produced
    once, with matching types and dims."""
    import onnx

    root = Path(repo)
    pb2 = _pb2()
    problems: list[str] = []
    configs = {}
    for cfg_path in sorted(root.glob("*/config.pbtxt")):
        try:
            cfg = parse_config(cfg_path)
        except TritonError as e:
            problems.append(str(e))
            continue
        folder = cfg_path.parent.name
        if cfg.name != folder:
            problems.append(f"{folder}: config name {cfg.name!r} differs from its folder")
        configs[folder] = cfg
    if not configs:
        return [f"{root} has no model (no */config.pbtxt)"]
    dtype = pb2.DataType.Name
    for name, cfg in configs.items():
        if cfg.platform == "ensemble":
            continue
        fname = cfg.default_model_filename or ("model.plan" if cfg.platform == "tensorrt_plan" else "model.onnx")
        f = root / name / "1" / fname
        if not f.exists():
            problems.append(f"{name}: missing model file 1/{fname}")
            continue
        if cfg.max_batch_size > 0 and not cfg.HasField("dynamic_batching"):
            problems.append(f"{name}: batching model without dynamic_batching")
        if not cfg.instance_group:
            problems.append(f"{name}: no instance_group")
        if fname.endswith(".onnx"):
            ins, outs = onnx_io(onnx.load(str(f), load_external_data=False))
            for kind, have, graph in (("input", cfg.input, ins), ("output", cfg.output, outs)):
                gmap = {n: (e, d) for n, e, d in graph}
                cmap = {t.name: t for t in have}
                if set(gmap) != set(cmap):
                    problems.append(f"{name}: config {kind}s {sorted(cmap)} != ONNX graph {kind}s {sorted(gmap)}")
                    continue
                for n, t in cmap.items():
                    el, gd = gmap[n]
                    if ONNX_TO_TRITON.get(el) != dtype(t.data_type):
                        problems.append(f"{name}: {kind} {n} is {dtype(t.data_type)} in the config, ONNX type {el}")
                    gdims = [-1 if isinstance(x, str) else int(x) for x in gd]
                    if cfg.max_batch_size > 0:
                        if not gd or not isinstance(gd[0], str):
                            problems.append(f"{name}: {kind} {n} has no dynamic batch dim in the graph")
                            continue
                        gdims = gdims[1:]
                    if not _dims_compatible(_model_shape(t), gdims):
                        problems.append(f"{name}: {kind} {n} dims {list(_model_shape(t))} do not fit the graph's "
                                        f"{gdims}")
    for name, cfg in configs.items():
        if cfg.platform != "ensemble":
            continue
        produced: dict[str, tuple[str, Any]] = {t.name: ("ensemble input", t) for t in cfg.input}
        consumed: list[tuple[str, str, Any]] = []
        for k, step in enumerate(cfg.ensemble_scheduling.step):
            sub = configs.get(step.model_name)
            where = f"{name} step {k} ({step.model_name})"
            if sub is None:
                problems.append(f"{where}: no such model in the repository")
                continue
            if sub.max_batch_size < cfg.max_batch_size:
                problems.append(f"{where}: max_batch_size {sub.max_batch_size} < the ensemble's {cfg.max_batch_size}")
            sin = {t.name: t for t in sub.input}
            sout = {t.name: t for t in sub.output}
            if set(step.input_map) != set(sin):
                problems.append(f"{where}: input_map keys {sorted(step.input_map)} != model inputs {sorted(sin)}")
            for key, tensor in step.input_map.items():
                if key in sin:
                    consumed.append((where, tensor, sin[key]))
            for key, tensor in step.output_map.items():
                if key not in sout:
                    problems.append(f"{where}: output_map key {key!r} is not an output of {step.model_name} "
                                    f"({sorted(sout)})")
                    continue
                if tensor in produced:
                    problems.append(f"{where}: tensor {tensor!r} is produced twice")
                produced[tensor] = (where, sout[key])
        for where, tensor, t in consumed:
            if tensor not in produced:
                problems.append(f"{where}: consumes {tensor!r}, which no step produces")
                continue
            src = produced[tensor][1]
            if src.data_type != t.data_type:
                problems.append(f"{where}: {tensor!r} is {dtype(src.data_type)} but the model takes {dtype(t.data_type)}")
            if not _dims_compatible(_model_shape(src), _model_shape(t)):
                problems.append(f"{where}: {tensor!r} has dims {list(_model_shape(src))}, the model takes "
                                f"{list(_model_shape(t))}")
        for t in cfg.output:
            if t.name not in produced:
                problems.append(f"{name}: output {t.name!r} is produced by no step")
            elif not _dims_compatible(_model_shape(produced[t.name][1]), _model_shape(t)):
                problems.append(f"{name}: output {t.name!r} dims {list(_model_shape(t))} differ from its producer's")
    return problems


# ------------------------------------------------------------------------------------------------ clients
def prepare_inputs(images: Sequence[Any], seeds: Sequence[int], strength: float | Sequence[float],
                   size: int, global_code_ch: int) -> tuple[dict[str, np.ndarray], list]:
    """What a Triton client sends to `ssae_edit_<roi>`: {"image": (B,3,S,S), "noise": (B,D), "strength": (B,1)}
    (float32), cut around each photo's largest face as `Editor.edit` does, and (crop, photo) pairs for `finish`.
    Images: anything `ssae.runtime.load_image` takes; a photo without a face raises ValueError."""
    from ssae import philox
    from ssae.data.transforms import to_model_array
    from ssae.face import frame_faces
    from ssae.runtime.images import load_image

    if len(images) != len(seeds):
        raise ValueError("one seed per image")
    xs, crops = [], []
    for k, im in enumerate(images):
        rgb = load_image(im)
        found = frame_faces(rgb, size)
        if not found:
            raise ValueError(f"no face found in image {k}")
        xs.append(to_model_array(found[0].cut_rgb(rgb))[0])
        crops.append((found[0], rgb))
    st = np.broadcast_to(np.asarray(strength, np.float32), (len(images),)).reshape(-1, 1)
    noise = philox.region_noise(seeds, global_code_ch)
    return {"image": np.ascontiguousarray(np.stack(xs), dtype=np.float32),
            "noise": np.ascontiguousarray(noise, dtype=np.float32), "strength": np.ascontiguousarray(st)}, crops


def finish(edited: np.ndarray, crops: list, masks: np.ndarray | None = None,
           unedited: np.ndarray | None = None) -> list:
    """Ensemble outputs -> PIL images. With `masks` and `unedited` (the same ensemble at strength 0): the edit's
    change pasted onto each photo under its feathered mask, as `Editor.edit` does; without: the raw crops."""
    from PIL import Image

    from ssae.data.transforms import from_model_array
    from ssae.face import feather
    from ssae.runtime.editor import FEATHER
    out = []
    for k, (crop, rgb) in enumerate(crops):
        if masks is None or unedited is None:
            out.append(Image.fromarray(from_model_array(edited[k])))
            continue
        change = (edited[k] - unedited[k]).transpose(1, 2, 0) * np.float32(127.5)
        out.append(Image.fromarray(crop.paste_change(rgb, change, feather(masks[k, 0], FEATHER))))
    return out


def run_ensemble(repo: str | os.PathLike, name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run an ensemble of the repository with ONNX Runtime on this machine, following its config exactly (step
    order resolved from the tensors, input/output maps, reshapes): what Triton computes, for checks and for
    machines without Triton. TensorRT steps are not supported here."""
    import onnxruntime as ort

    root = Path(repo)
    cfg = parse_config(root / name / "config.pbtxt")
    if cfg.platform != "ensemble":
        raise TritonError(f"{name} is not an ensemble")
    tensors: dict[str, np.ndarray] = {}
    for t in cfg.input:
        if t.name not in inputs:
            raise TritonError(f"missing ensemble input {t.name!r}")
        a = np.asarray(inputs[t.name])
        tensors[t.name] = a.reshape((a.shape[0],) + _model_shape(t)) if t.HasField("reshape") else a
    pending = list(cfg.ensemble_scheduling.step)
    while pending:
        ready = [s for s in pending if all(v in tensors for v in s.input_map.values())]
        if not ready:
            raise TritonError(f"{name}: steps {[s.model_name for s in pending]} wait for tensors no step produces")
        for step in ready:
            sub = parse_config(root / step.model_name / "config.pbtxt")
            if sub.platform == "tensorrt_plan":
                raise TritonError(f"{step.model_name} is a TensorRT plan: run it on Triton")
            sess = ort.InferenceSession(str(root / step.model_name / "1" / "model.onnx"),
                                        providers=["CPUExecutionProvider"])
            feed = {}
            for t in sub.input:
                a = tensors[step.input_map[t.name]]
                feed[t.name] = a.reshape((a.shape[0],) + _model_shape(t)) if t.HasField("reshape") else a
            outs = sess.run([t.name for t in sub.output], feed)
            for t, a in zip(sub.output, outs):
                if t.name in step.output_map:
                    tensors[step.output_map[t.name]] = a
            pending.remove(step)
    return {t.name: tensors[t.name] for t in cfg.output}


def model_names(repo: str | os.PathLike) -> list[str]:
    return sorted(p.parent.name for p in Path(repo).glob("*/config.pbtxt"))


def iter_configs(repo: str | os.PathLike) -> Iterable[tuple[str, Any]]:
    for n in model_names(repo):
        yield n, parse_config(Path(repo) / n / "config.pbtxt")
