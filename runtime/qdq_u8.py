"""ONNX Runtime's CPU view of symmetric INT8 (s8) QDQ graphs: the same quantized values as uint8 activations.

`ssae calibrate` writes symmetric int8 activations (zero point 0) by default, the form TensorRT consumes. ONNX
Runtime's x86 CPU kernels multiply uint8 activations by int8 weights (U8S8). Its own s8 -> u8 graph rewrite leaves
some activation Q/DQ pairs in int8, and a conv whose input and output pairs end up with different types is not fused
into QLinearConv: it runs as a float conv between dequantize nodes, slower than the fp32 graph (in the bundled
model's s8 export, about half the SMPN's convs and a few of every other graph's).

`u8_activations` shifts every activation zero point by +128 (int8 -> uint8, same scale) before the session is built.
A uint8 value q + 128 with zero point 128 dequantizes to exactly what int8 q with zero point 0 does, and the
saturation bounds map onto each other, so outputs are bit-identical; ONNX Runtime then fuses every quantized conv.
Weights (and int32 biases) are untouched. The files on disk stay s8 for TensorRT and OpenVINO.
"""
from __future__ import annotations

import numpy as np


def u8_activations(model) -> int:
    """Rewrite an ONNX ModelProto in place: every int8 activation zero point of its QuantizeLinear and
    DequantizeLinear nodes becomes uint8 + 128. Returns how many zero-point tensors were converted (0: nothing to
    do, e.g. a fp32 graph or one quantized with u8 activations)."""
    from onnx import TensorProto, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    # zero points of weight dequantizers (their data is an initializer) stay int8: ORT's kernels take s8 weights
    weight_zps = {n.input[2] for n in g.node
                  if n.op_type == "DequantizeLinear" and len(n.input) > 2 and n.input[0] in inits}
    act_zps = {n.input[2] for n in g.node
               if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2
               and n.input[2] in inits and inits[n.input[2]].data_type == TensorProto.INT8} - weight_zps
    for name in act_zps:
        zp = numpy_helper.to_array(inits[name]).astype(np.int16) + 128
        inits[name].CopyFrom(numpy_helper.from_array(zp.astype(np.uint8), name))
    return len(act_zps)


def float_convs(model) -> int:
    """How many convs ONNX Runtime's CPU provider leaves in float in this ModelProto after its QDQ fusions (graph
    optimisation level "extended": the fusions, no layout changes). 0 = every quantized conv runs as QLinearConv."""
    import tempfile
    from pathlib import Path

    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as d:
        so.optimized_model_filepath = str(Path(d) / "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(so.optimized_model_filepath, load_external_data=False)  # nodes only
        return sum(n.op_type == "Conv" for n in opt.graph.node)
