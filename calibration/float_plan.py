"""FP16 / bf16 precision plans: find the nodes that must stay in float32, from real data.

Reduced precision is simulated exactly on the CPU, in ONNX Runtime: `simulate` rewrites an fp32 graph so that
every tensor a node produces is rounded to fp16 (or bf16) and back (Cast down + Cast up), weights and graph
inputs too. That is what a strongly typed FP16 engine stores between layers (tensor-core convolutions accumulate
in fp32 and round their output), including overflow: an fp16 tensor beyond 65504 becomes inf. (ONNX Runtime's
CPU provider cannot serve as the simulator itself: it has no fp16 kernels for most of these ops and silently
computes them in fp32, see `ssae.export.fp16`.)

`make_plan` then compares every node's output with fp32 on the calibration feeds of each graph (each graph fed
by the real outputs of the stages before it), keeps in fp32 the nodes whose outputs overflow, and adds, round by
round, the nodes that amplify the error most (output error / largest input error), until each graph's outputs
are within `target_snr_db` of fp32. The result is a `PrecisionPlan` (node names per graph) that the FP16 export
and the TensorRT builder consume.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssae.export.precision_plan import PrecisionPlan
from ssae.pipeline import EDIT

FP16_MAX = 65504.0
ROUND_SUFFIX = "__unrounded"


def _low_type(precision: str) -> int:
    from onnx import TensorProto
    try:
        return {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}[precision]
    except KeyError:
        raise ValueError(f"unknown reduced precision {precision!r} (fp16 or bf16)") from None


def round_array(a: np.ndarray, precision: str) -> np.ndarray:
    """float32 values rounded to fp16 (overflow -> inf) or bf16 (round to nearest even), returned as float32."""
    a = np.asarray(a, np.float32)
    if precision == "fp16":
        with np.errstate(over="ignore"):
            return a.astype(np.float16).astype(np.float32)
    if precision == "bf16":
        u = a.view(np.uint32).astype(np.uint64)
        r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
        out = r.astype(np.uint32).view(np.float32)
        return np.where(np.isnan(a), a, out)
    raise ValueError(f"unknown reduced precision {precision!r} (fp16 or bf16)")


def _float_tensors(model) -> set[str]:
    import onnx
    from onnx import TensorProto
    inf = onnx.shape_inference.infer_shapes(model)
    g = inf.graph
    return {v.name for v in list(g.input) + list(g.output) + list(g.value_info)
            if v.type.tensor_type.elem_type == TensorProto.FLOAT}


def simulate(model, precision: str, keep_fp32=()):
    """The fp32 graph with every float tensor rounded to `precision` except the outputs of (and weights used only
    by) the nodes in `keep_fp32`. Tensor names are unchanged, so layer outputs compare one to one with fp32."""
    import copy

    from onnx import TensorProto, helper, numpy_helper

    low = _low_type(precision)
    m = copy.deepcopy(model)
    g = m.graph
    floats = _float_tensors(model)
    keep = set(keep_fp32)
    unknown = keep - {n.name for n in g.node}
    if unknown:
        raise ValueError(f"keep_fp32 names nodes not in the graph: {', '.join(sorted(unknown)[:5])}")
    users: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n.name)
    for init in g.initializer:  # weights are stored in reduced precision unless only kept nodes use them
        if init.data_type == TensorProto.FLOAT and any(u not in keep for u in users.get(init.name, [])):
            init.CopyFrom(numpy_helper.from_array(round_array(numpy_helper.to_array(init), precision), init.name))
    new_nodes = []

    def rounding(src: str, dst: str, tag: str):
        return [helper.make_node("Cast", [src], [dst + "__low"], name=f"{tag}__round_down", to=low),
                helper.make_node("Cast", [dst + "__low"], [dst], name=f"{tag}__round_up", to=TensorProto.FLOAT)]

    renames = {}
    for inp in g.input:  # graph inputs enter the engine in reduced precision (Casts at the edges)
        if inp.name in floats and any(u not in keep for u in users.get(inp.name, [])):
            renames[inp.name] = inp.name + "__rounded"
            new_nodes += rounding(inp.name, renames[inp.name], inp.name)
    for n in g.node:
        for k, i in enumerate(n.input):
            if i in renames:
                n.input[k] = renames[i]
        new_nodes.append(n)
        if n.name in keep:
            continue
        for k, o in enumerate(n.output):
            if o in floats:
                n.output[k] = o + ROUND_SUFFIX
                new_nodes += rounding(o + ROUND_SUFFIX, o, n.name or o)
    del g.node[:]
    g.node.extend(new_nodes)
    return m


@dataclass
class NodeError:
    """Accumulated error of one node's output against fp32."""

    sq_err: float = 0.0
    sq_ref: float = 0.0
    nonfinite: int = 0
    max_ref: float = 0.0

    @property
    def rel(self) -> float:
        return float(np.sqrt(self.sq_err / max(self.sq_ref, 1e-30)))


def _with_all_outputs(model, names: list[str]):
    import copy

    from onnx import TensorProto, helper
    m = copy.deepcopy(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    return m


def _session(model):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every rounding Cast
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def layer_errors(model, sim, feeds: list[dict[str, np.ndarray]]) -> dict[str, NodeError]:
    """Per float node output (by tensor name): error of the simulated graph against fp32 over the feeds."""
    floats = _float_tensors(model)
    names = [o for n in model.graph.node for o in n.output if o in floats]
    ref_s, sim_s = _session(_with_all_outputs(model, names)), _session(_with_all_outputs(sim, names))
    errs = {n: NodeError() for n in names}
    for feed in feeds:
        ref = dict(zip([o.name for o in ref_s.get_outputs()], ref_s.run(None, feed)))
        got = dict(zip([o.name for o in sim_s.get_outputs()], sim_s.run(None, feed)))
        for n in names:
            r, s = ref[n].astype(np.float64), got[n].astype(np.float64)
            e = errs[n]
            fin = np.isfinite(r)
            e.nonfinite += int((~np.isfinite(s) & fin).sum())
            d = np.where(fin & np.isfinite(s), s - r, 0.0)
            e.sq_err += float((d * d).sum())
            e.sq_ref += float((np.where(fin, r, 0.0) ** 2).sum())
            e.max_ref = max(e.max_ref, float(np.abs(np.where(fin, r, 0.0)).max(initial=0.0)))
    return errs


def output_snr_db(model, sim, feeds) -> float:
    """The worst graph-output signal-to-error ratio (dB) of the simulated graph against fp32 (-inf on overflow)."""
    ref_s, sim_s = _session(model), _session(sim)
    sq_err, sq_ref = {}, {}
    for feed in feeds:
        for o, r, s in zip(ref_s.get_outputs(), ref_s.run(None, feed), sim_s.run(None, feed)):
            if not np.isfinite(s).all():
                return float("-inf")
            sq_err[o.name] = sq_err.get(o.name, 0.0) + float(((s.astype(np.float64) - r) ** 2).sum())
            sq_ref[o.name] = sq_ref.get(o.name, 0.0) + float((r.astype(np.float64) ** 2).sum())
    return min(10 * np.log10(max(sq_ref[k], 1e-30) / max(sq_err[k], 1e-30)) for k in sq_err)


@dataclass
class GraphPlan:
    """The search result for one graph."""

    keep_fp32: list[str] = field(default_factory=list)
    snr_db_all_low: float = 0.0      # outputs vs fp32 with nothing kept
    snr_db: float = 0.0              # with the plan
    overflow_nodes: list[str] = field(default_factory=list)
    rounds: int = 0


def plan_graph(model, feeds, precision: str, target_snr_db: float = 45.0, max_rounds: int = 8,
               per_round: int = 2) -> GraphPlan:
    """Nodes of one graph to keep in fp32 (see the module docstring)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    res = GraphPlan()
    keep: list[str] = []
    sim = simulate(model, precision)
    res.snr_db_all_low = res.snr_db = output_snr_db(model, sim, feeds)
    if res.snr_db >= target_snr_db:
        return res
    errs = layer_errors(model, sim, feeds)
    limit = FP16_MAX / 2 if precision == "fp16" else float("inf")
    over = [t for t, e in errs.items() if e.nonfinite or e.max_ref > limit]
    # a node whose output overflows is kept; so are its producers' range-expanding ops upstream (x^2 before a mean)
    res.overflow_nodes = [producer[t].name for t in over]
    keep += [n for n in dict.fromkeys(res.overflow_nodes)]
    added: list[str] = []
    for rnd in range(max_rounds + 1):
        sim = simulate(model, precision, keep)
        snr = output_snr_db(model, sim, feeds)
        if added and snr < res.snr_db + 0.1:  # that round did not help: undo it and stop (error is spread out)
            keep = keep[: len(keep) - len(added)]
            break
        res.snr_db, res.rounds = snr, rnd
        if res.snr_db >= target_snr_db or rnd == max_rounds:
            break
        errs = layer_errors(model, sim, feeds)
        amp = {}
        for n in model.graph.node:
            if n.name in keep:
                continue
            outs = [errs[o].rel for o in n.output if o in errs]
            if not outs:
                continue
            ins = [errs[i].rel for i in n.input if i in errs]
            amp[n.name] = max(outs) / max(max(ins, default=0.0), 1e-4)
        if not amp:
            break
        added = sorted(amp, key=amp.get, reverse=True)[:per_round]
        keep += added
    res.keep_fp32 = keep
    return res


def make_plan(export_dir: str | os.PathLike, feeds: dict[str, list[dict[str, np.ndarray]]], precision: str,
              target_snr_db: float = 45.0, provenance: dict | None = None, progress=None
              ) -> tuple[PrecisionPlan, dict[str, GraphPlan]]:
    """A precision plan for every runnable graph of an fp32 export (`feeds`: calibration feeds per stage)."""
    import onnx

    from ssae.export.onnx_export import read_manifest

    src = Path(export_dir)
    man = read_manifest(src)
    results: dict[str, GraphPlan] = {}
    for stage, e in man["stages"].items():
        if e.get("plugin") or e.get("cpu_only") or stage not in feeds:
            continue
        if progress:
            progress(stage)
        results[stage] = plan_graph(onnx.load(str(src / e["file"])), feeds[stage], precision, target_snr_db)
    keep = {s: r.keep_fp32 for s, r in results.items() if r.keep_fp32}
    for stage, e in man["stages"].items():  # the plugin graph shares node names with the standard edit graph
        if e.get("plugin") and EDIT in keep:
            names = {n.name for n in onnx.load(str(src / e["file"])).graph.node}
            kept = [n for n in keep[EDIT] if n in names]
            if kept:
                keep[stage] = kept
    prov = dict(provenance or {}, source_export=str(src), target_snr_db=target_snr_db,
                method="simulated rounding of every tensor; overflow + error-amplification search",
                graphs={s: {"snr_db_all_low": r.snr_db_all_low, "snr_db": r.snr_db, "kept": len(r.keep_fp32),
                            "overflow_nodes": r.overflow_nodes} for s, r in results.items()})
    return PrecisionPlan(precision=precision, keep_fp32=keep, provenance=prov), results


def write_simulated_export(export_dir: str | os.PathLike, out_dir: str | os.PathLike, plan: PrecisionPlan) -> dict:
    """An export folder of simulated graphs (fp32 I/O, every tensor rounded per the plan) that ONNX Runtime runs:
    the accuracy of the reduced-precision pipeline, measurable on this CPU. The plugin graph and the cpu_only
    graphs (fp32 CPU re-edits, which TensorRT never runs) are left out."""
    import onnx

    from ssae.export.onnx_export import finish_export, read_manifest
    from ssae.fileio import atomic_write

    src, out = Path(export_dir), Path(out_dir)
    man = read_manifest(src)
    out.mkdir(parents=True, exist_ok=True)
    stages = {}
    for stage, e in man["stages"].items():
        if e.get("plugin") or e.get("cpu_only"):
            continue
        sim = simulate(onnx.load(str(src / e["file"])), plan.precision, plan.for_stage(stage))
        path = out / e["file"]
        atomic_write(path, lambda tmp, m=sim: onnx.save(m, tmp))
        stages[stage] = dict(e, precision=f"{plan.precision}-simulated")
    return finish_export(out, dict(man, stages=stages, precision=f"{plan.precision}-simulated"))
