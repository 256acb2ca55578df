"""Strongly typed FP16 variants of the exported fp32 stage graphs.

TensorRT 10+ builds strongly typed networks (TensorRT 11: always): the precision of every layer is the type its
ONNX graph gives it, so reduced precision is decided here, in the graph, not by builder flags. `convert_model`
rewrites an fp32 graph so that

- float initializers and activations are float16 (values beyond the fp16 range are clamped, and reported);
- nodes on the precision plan's keep-fp32 list (`ssae.export.precision_plan`) compute in float32: explicit Cast
  nodes convert their float inputs up and their float outputs back down (consecutive kept nodes exchange float32
  tensors directly, without a round trip); inputs that ONNX only defines for float32 (Resize scales) stay float32;
- the graph's float inputs and outputs stay float32 with Casts at the edges (`io="fp32"`, the default, so the
  runtime API does not change), or become float16 (`io="fp16"`, for engines chained on the device);
- the custom node `ssae::MaskedModConv` of the plugin graph gets float16 inputs and output (its schema allows
  tensor(float16)), so TensorRT picks the plugin's FP16 kernel.

Every result passes `onnx.checker` (full check) and strict shape inference with type checking.
`write_export` turns a whole fp32 export folder into an fp16 one (same manifest format, `"precision": "fp16"`,
its own shared weights file, sha256 recomputed), which ONNX Runtime runs as is. Its CPU provider has no float16 kernel for most of these ops
(Conv, ConvTranspose, Gemm, Resize, ReduceMean/Sum, Sqrt, Reciprocal, Pow, Einsum, Sigmoid, MaxPool, Pad and the
elementwise arithmetic, ONNX Runtime 1.32): it inserts float32 Casts around them itself and moves their neighbours
along, so on the CPU the fp16 export runs mostly in float32 with fp16-rounded weights (`ort_fp16_fallback_ops`
lists the ops it moved; only Relu/LeakyRelu/Reshape stayed fp16 in the bundled graphs). It runs and agrees with
fp32, but is no faster there; the fp16 arithmetic itself is checked against fp32 on the GPU (tests/gpu).
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ssae.fileio import atomic_write
from .precision_plan import PrecisionPlan

FP32_ONLY_INPUTS = {("Resize", 2), ("Upsample", 1)}  # (op type, input index): ONNX defines only tensor(float)
FP32_ONLY_OPS = {"Range"}  # no float16 in the type constraints: the whole node stays float32
# ops whose float output type comes from an attribute we do not rewrite: kept in float32 as a whole
ATTR_TYPED_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike",
                  "Multinomial", "Bernoulli"}
FP16_MAX = 65504.0
CONVERTER = "ssae.export.fp16/1"


@dataclass
class ConversionReport:
    """What `convert_model` did to one graph."""

    precision: str
    io: str
    kept_fp32: list[str] = field(default_factory=list)     # node names computing in float32 (plan + forced)
    forced_fp32: list[str] = field(default_factory=list)   # of those, kept because ONNX/ops demand it
    casts: int = 0                                         # Cast nodes inserted
    clamped: list[str] = field(default_factory=list)       # initializers with values beyond the target range

    def to_dict(self) -> dict:
        return {"precision": self.precision, "io": self.io, "kept_fp32": list(self.kept_fp32),
                "forced_fp32": list(self.forced_fp32), "casts": self.casts, "clamped": list(self.clamped)}


def _low_type(precision: str) -> int:
    from onnx import TensorProto
    if precision == "fp16":
        return TensorProto.FLOAT16
    if precision == "bf16":  # Conv, ConvTranspose, Gemm, Resize... gain bfloat16 only in opset 22
        raise ValueError("bf16 graphs are not made by conversion (the opset-18 Conv has no bfloat16): a bf16 plan "
                         "is for the runtimes' bf16 modes (OpenVINO, torch-bf16)")
    raise ValueError(f"unknown precision {precision!r} (fp16)")


def _to_low_tensor(arr: np.ndarray, name: str, precision: str = "fp16"):
    """float32 array -> float16 TensorProto (round to nearest even), and whether values had to be clamped."""
    from onnx import numpy_helper

    a = np.asarray(arr, dtype=np.float32)
    finite = np.isfinite(a)
    clamped = bool(np.any(np.abs(a[finite]) > FP16_MAX))
    a = np.where(finite, np.clip(a, -FP16_MAX, FP16_MAX), a).astype(np.float32)
    return numpy_helper.from_array(a.astype(np.float16), name), clamped


def _elem_types(model) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {}
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.HasField("tensor_type"):
            types[v.name] = v.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    return types


def _check_no_subgraphs(graph) -> None:
    from onnx import AttributeProto
    for n in graph.node:
        for a in n.attribute:
            if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
                raise ValueError(f"node {n.name or n.op_type} has a subgraph: control flow is not supported")


def convert_model(model, keep_fp32: Iterable[str] = (), precision: str = "fp16", io: str = "fp32",
                  check: bool = True):
    """An fp32 ONNX model -> (strongly typed `precision` model, ConversionReport). See the module docstring.

    keep_fp32: node names (`NodeProto.name`) that compute in float32; an unknown name is an error (the plan was
    made for another graph). io: "fp32" keeps float graph inputs/outputs float32, "fp16" makes them `precision`.
    """
    from onnx import TensorProto, helper, numpy_helper

    if io not in ("fp32", "fp16"):
        raise ValueError(f"io must be 'fp32' or 'fp16', got {io!r}")
    LOW, FLOAT = _low_type(precision), TensorProto.FLOAT
    tag = precision
    m = copy.deepcopy(model)
    g = m.graph
    _check_no_subgraphs(g)
    types = _elem_types(m)
    is_float = lambda t: bool(t) and types.get(t) == FLOAT  # noqa: E731
    io_type = FLOAT if io == "fp32" else LOW

    node_names = {n.name for n in g.node if n.name}
    keep = list(dict.fromkeys(keep_fp32))
    unknown = [k for k in keep if k not in node_names]
    if unknown:
        more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise ValueError(f"keep_fp32 names nodes not in graph {g.name or '?'}: {', '.join(unknown[:5])}{more}")
    kept_ids = set()
    forced = []
    for i, n in enumerate(g.node):
        if n.name in keep:
            kept_ids.add(i)
        elif n.op_type in FP32_ONLY_OPS or n.op_type in ATTR_TYPED_OPS:
            kept_ids.add(i)
            forced.append(n.name or f"#{i}:{n.op_type}")
    report = ConversionReport(precision, io, kept_fp32=[g.node[i].name or f"#{i}" for i in sorted(kept_ids)],
                              forced_fp32=forced)

    # ---- what every consumer wants, and the native type of every float tensor in the new graph
    def want(i: int, n, k: int) -> int:
        if i in kept_ids or (n.op_type, k) in FP32_ONLY_INPUTS:
            return FLOAT
        return LOW

    wants: dict[str, set[int]] = {}
    for i, n in enumerate(g.node):
        for k, t in enumerate(n.input):
            if is_float(t):
                wants.setdefault(t, set()).add(want(i, n, k))
    graph_outputs = [o.name for o in g.output]
    for t in graph_outputs:
        if is_float(t):
            wants.setdefault(t, set()).add(io_type)

    native: dict[str, int] = {}
    for v in g.input:
        if is_float(v.name):
            native[v.name] = io_type
    inits = {init.name: init for init in g.initializer}
    for name in inits:
        if is_float(name) and name not in native:
            native[name] = LOW if LOW in wants.get(name, {LOW}) else FLOAT
    for i, n in enumerate(g.node):
        for t in n.output:
            if is_float(t):
                native[t] = FLOAT if i in kept_ids else LOW

    # graph outputs keep their names: when the producer's native type differs, the producer writes a renamed
    # tensor and a Cast writes the output name
    out_set = set(graph_outputs)
    native_name = {t: t for t in native}
    for t in graph_outputs:
        if t in native and native[t] != io_type and t not in inits and t not in {v.name for v in g.input}:
            native_name[t] = f"{t}__{'fp32' if native[t] == FLOAT else tag}"
    conv_name: dict[tuple[str, int], str] = {}

    def version(t: str, ty: int) -> str:
        if native.get(t) == ty or t not in native:
            return native_name.get(t, t)
        if (t, ty) not in conv_name:
            if t in out_set and ty == io_type and native_name[t] != t:
                conv_name[(t, ty)] = t
            else:
                conv_name[(t, ty)] = f"{t}__to_{'fp32' if ty == FLOAT else tag}"
        return conv_name[(t, ty)]

    # consumers in graph order decide which converted versions exist
    for i, n in enumerate(g.node):
        for k, t in enumerate(n.input):
            if is_float(t):
                version(t, want(i, n, k))
    for t in graph_outputs:
        if is_float(t):
            version(t, io_type)

    def cast_node(src: str, dst: str, ty: int):
        report.casts += 1
        return helper.make_node("Cast", [src], [dst], name=f"{dst}__cast", to=ty)

    # ---- initializers
    new_inits = []
    for init in g.initializer:
        name = init.name
        if not is_float(name):
            new_inits.append(init)
            continue
        arr = numpy_helper.to_array(init)
        if native[name] == LOW:
            t, clamped = _to_low_tensor(arr, name, precision)
            if clamped:
                report.clamped.append(name)
            new_inits.append(t)
        else:
            new_inits.append(init)
        for ty in (LOW, FLOAT):
            c = conv_name.get((name, ty))
            if c is not None:
                if ty == FLOAT:
                    new_inits.append(numpy_helper.from_array(arr.astype(np.float32), c))
                else:
                    t, _ = _to_low_tensor(arr, c, precision)
                    new_inits.append(t)

    # ---- nodes (Casts of graph inputs first, Casts of a node's outputs right after it)
    new_nodes = []
    for v in g.input:
        for ty in (LOW, FLOAT):
            c = conv_name.get((v.name, ty))
            if c is not None:
                new_nodes.append(cast_node(v.name, c, ty))
    for i, n in enumerate(g.node):
        nn = copy.deepcopy(n)
        kept = i in kept_ids
        for k, t in enumerate(n.input):
            if is_float(t):
                nn.input[k] = version(t, want(i, n, k))
        for k, t in enumerate(n.output):
            if t in native:
                nn.output[k] = native_name[t]
        if not kept:
            _lower_attributes(nn, LOW, precision, report)
        new_nodes.append(nn)
        for t in n.output:
            for ty in (LOW, FLOAT):
                c = conv_name.get((t, ty))
                if c is not None:
                    new_nodes.append(cast_node(native_name[t], c, ty))
    del g.node[:]
    g.node.extend(new_nodes)
    del g.initializer[:]
    g.initializer.extend(new_inits)

    # ---- declared types
    for v in g.input:
        if is_float(v.name):
            v.type.tensor_type.elem_type = io_type
    for v in g.output:
        if is_float(v.name):
            v.type.tensor_type.elem_type = io_type
    shapes = {v.name: v for v in g.value_info}
    new_vi = []
    for v in g.value_info:
        if v.name in native:
            v2 = copy.deepcopy(v)
            v2.name = native_name[v.name]
            v2.type.tensor_type.elem_type = native[v.name]
            if v2.name not in out_set:
                new_vi.append(v2)
        else:
            new_vi.append(v)
    for (t, ty), c in conv_name.items():
        if c in out_set or t not in shapes:
            continue
        v2 = copy.deepcopy(shapes[t])
        v2.name, v2.type.tensor_type.elem_type = c, ty
        new_vi.append(v2)
    for t in graph_outputs:  # the renamed producer output of a graph output
        if native_name.get(t, t) != t:
            src = next(o for o in g.output if o.name == t)
            v2 = copy.deepcopy(src)
            v2.name, v2.type.tensor_type.elem_type = native_name[t], native[t]
            new_vi.append(v2)
    del g.value_info[:]
    g.value_info.extend(new_vi)

    meta = {p.key: p for p in m.metadata_props}
    for key, value in (("ssae.precision", precision), ("ssae.io", io),
                       ("ssae.keep_fp32", json.dumps(report.kept_fp32))):
        if key in meta:
            meta[key].value = value
        else:
            m.metadata_props.add(key=key, value=value)
    if check:
        check_model(m)
    return m, report


def _lower_attributes(node, low: int, precision: str, report: ConversionReport) -> None:
    """Rewrite the float32 type/value attributes of a node that now computes in the low type."""
    from onnx import TensorProto, helper, numpy_helper

    if node.op_type == "Cast":
        for a in node.attribute:
            if a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = low
    elif node.op_type in ("Constant", "ConstantOfShape"):
        has_value = False
        for a in list(node.attribute):
            if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                t, clamped = _to_low_tensor(numpy_helper.to_array(a.t), a.t.name, precision)
                if clamped:
                    report.clamped.append(node.name or node.output[0])
                a.t.CopyFrom(t)
            if a.name == "value":
                has_value = True
            if a.name in ("value_float", "value_floats"):
                vals = np.asarray(helper.get_attribute_value(a), dtype=np.float32)
                node.attribute.remove(a)
                t, _ = _to_low_tensor(vals, "", precision)
                node.attribute.append(helper.make_attribute("value", t))
                has_value = True
        if node.op_type == "ConstantOfShape" and not has_value:  # default: float32 zero
            t, _ = _to_low_tensor(np.zeros(1, np.float32), "", precision)
            node.attribute.append(helper.make_attribute("value", t))


def check_model(model) -> None:
    """onnx.checker full check + strict shape inference with type checking (raises on failure)."""
    import onnx

    from ssae.kernels import ops as fused_ops
    if any(n.domain == fused_ops.PLUGIN_NAMESPACE for n in model.graph.node):
        fused_ops.onnx_schema()  # the custom node's schema (float or float16)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def node_dtypes(model) -> dict[str, tuple[list[int], list[int]]]:
    """node name -> (input elem types, output elem types) after inference; 0 where unknown (for inspection)."""
    import onnx

    inf = onnx.shape_inference.infer_shapes(model)
    g = inf.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.output) + list(g.value_info)}
    types.update({i.name: i.data_type for i in g.initializer})
    return {n.name: ([types.get(t, 0) for t in n.input], [types.get(t, 0) for t in n.output]) for n in g.node}


def ort_fp16_fallback_ops(path: str | os.PathLike) -> list[str]:
    """Op types of a float16 graph that ONNX Runtime's CPU provider computes in float32 (nodes without a float16
    kernel, and neighbours it moved along to save Casts): read from the graph ORT writes after its Cast pass."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.optimized_model_filepath = str(Path(d) / "opt.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(so.optimized_model_filepath, load_external_data=False)  # nodes only (weights stay behind)
    # ORT's InsertCastTransformer renames the outputs of the nodes it moved to float32
    return sorted({n.op_type for n in opt.graph.node
                   if n.op_type != "Cast" and any(o.startswith("InsertedPrecisionFreeCast_") for o in n.output)})


# ------------------------------------------------------------------------------------------------- export folders
def write_export(src_dir: str | os.PathLike, out_dir: str | os.PathLike, plan: PrecisionPlan | None = None,
                 precision: str | None = None, io: str = "fp32", stages: Iterable[str] | None = None,
                 progress: Callable[[str], None] | None = None, source_label: str | None = None) -> dict:
    """Convert every graph of an fp32 export folder into `out_dir` (same manifest format, `"precision"` set,
    sha256 recomputed, the plan and per-graph conversion reports recorded); returns the new manifest.

    precision: "fp16" (default; a plan's precision must agree). The plugin graph is converted too.
    source_label: recorded as the source instead of `src_dir` (e.g. when the fp32 export was temporary).
    """
    from .onnx_export import ExportError, finish_export, read_manifest
    import onnx

    if plan is not None and precision is not None and plan.precision != precision:
        raise ValueError(f"the precision plan is for {plan.precision}, not {precision}")
    precision = precision or (plan.precision if plan is not None else "fp16")
    _low_type(precision)  # fp16 only (a bf16 plan is refused with the reason)
    src, out = Path(src_dir), Path(out_dir)
    manifest = read_manifest(src)
    if manifest.get("precision", "fp32") != "fp32":
        raise ExportError(f"{src} is a {manifest['precision']} export; convert an fp32 export")
    if src.resolve() == out.resolve():
        raise ValueError("write the reduced-precision export into another folder than its source")
    out.mkdir(parents=True, exist_ok=True)
    # default: every graph but the cpu_only ones (fp32 CPU re-edits that TensorRT never builds)
    names = list(stages) if stages is not None else [n for n, e in manifest["stages"].items() if not e.get("cpu_only")]
    unknown = [s for s in names if s not in manifest["stages"]]
    if unknown:
        raise ExportError(f"{src} has no stage(s) {', '.join(unknown)}")
    low_name = "float16"
    entries = {}
    for name in names:
        e = dict(manifest["stages"][name])
        if progress:
            progress(name)
        model = onnx.load(str(src / e["file"]))  # with its weights (the source's shared weights file)
        keep = plan.for_stage(name) if plan is not None else []
        try:
            low, rep = convert_model(model, keep, precision, io)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
        path = out / e["file"]
        atomic_write(path, lambda tmp, m=low: onnx.save(m, tmp))  # self-contained until finish_export
        e.update({"source_sha256": e["sha256"], "precision": precision, "conversion": rep.to_dict()})
        if io == "fp16":
            e["inputs"] = [dict(t, dtype=low_name) if t.get("dtype", "float32") == "float32" else t
                           for t in e["inputs"]]
            e["outputs"] = [dict(t, dtype=low_name) if t.get("dtype", "float32") == "float32" else t
                            for t in e["outputs"]]
        entries[name] = e
    new = dict(manifest)
    new["stages"] = entries
    new["precision"] = precision
    new["reduced_precision"] = {
        "converter": CONVERTER, "source_export": source_label or str(src), "io": io,
        "plan": plan.to_dict() if plan is not None else None, "plan_digest": plan.digest() if plan else None,
        "plan_stages_not_exported": sorted(set(plan.keep_fp32) - set(entries)) if plan else [],
    }
    return finish_export(out, new)
