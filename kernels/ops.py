"""The fused masked modulated convolution as a PyTorch custom op (`torch.ops.ssae.masked_modconv`).

One op, several implementations side by side (the layout of NVlabs/stylegan2-ada-pytorch `torch_utils/ops`):
- reference: `ssae.kernels.reference.masked_modconv` (any device; the CPU implementation);
- CUDA: the fused kernel `masked_modconv.cu`, registered for CUDA tensors when it can be loaded (GPU machines);
- ONNX: exported as one custom node `ssae::MaskedModConv` (attributes `plugin_namespace`, `plugin_version`) that
  the TensorRT plugin implements; the standard-op decomposition comes from tracing the reference instead.

`use_fused_op(True)` routes the generator's injection layer through the custom op (region noise mode); by
default the reference decomposition runs, which every backend (ONNX Runtime, OpenVINO) can execute.
"""
from __future__ import annotations

import contextlib
import threading

import torch

from . import reference

PLUGIN_NAMESPACE = "ssae"
PLUGIN_NAME = "MaskedModConv"
PLUGIN_VERSION = "1"

_state = threading.local()


def fused_op_enabled() -> bool:
    return getattr(_state, "enabled", False)


@contextlib.contextmanager
def use_fused_op(enabled: bool = True):
    prev = fused_op_enabled()
    _state.enabled = enabled
    try:
        yield
    finally:
        _state.enabled = prev


@torch.library.custom_op("ssae::masked_modconv", mutates_args=())
def masked_modconv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, a: torch.Tensor,
                   direction: torch.Tensor, mask: torch.Tensor, strength: torch.Tensor, noise: torch.Tensor,
                   noise_weight: torch.Tensor, activate: bool) -> torch.Tensor:
    """y = act(conv(x * s(p), weight) + noise_weight * noise + bias), region noise mode (see kernels.reference)."""
    return reference.masked_modconv(x, weight, bias, a, mask, strength, direction=direction, noise=noise,
                                    noise_weight=noise_weight, activate=activate)


@masked_modconv.register_fake
def _masked_modconv_fake(x, weight, bias, a, direction, mask, strength, noise, noise_weight, activate):
    return x.new_empty(x.shape[0], weight.shape[0], x.shape[2], x.shape[3])


ONNX_INPUTS = ("x", "weight", "bias", "style", "direction", "mask", "strength", "noise", "noise_weight")


def onnx_schema():
    """The ONNX OpSchema of ssae::MaskedModConv (registered once, so exporters and checkers know the node)."""
    import onnx
    from onnx.defs import OpSchema

    try:
        return onnx.defs.get_schema(PLUGIN_NAME, 1, PLUGIN_NAMESPACE)
    except onnx.defs.SchemaError:
        pass
    schema = OpSchema(
        PLUGIN_NAME, PLUGIN_NAMESPACE, 1,
        doc="Fused SSAE masked modulated 3x3 conv (region noise): y = act(conv(x * s(p), weight) + "
            "noise_weight * noise + bias), s(p) = rmsnorm(style + strength * mask(p) * direction). TensorRT plugin.",
        inputs=[OpSchema.FormalParameter(n, "T") for n in ONNX_INPUTS],
        outputs=[OpSchema.FormalParameter("y", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float32 or float16")],
        attributes=[OpSchema.Attribute("activate", OpSchema.AttrType.INT, "fused leaky ReLU (1) or bias only (0)"),
                    OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace"),
                    OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "TensorRT plugin version")],
    )
    onnx.defs.register_schema(schema)
    return schema


def onnx_translation():
    """The dynamo exporter's translation of the op into the single custom node ssae::MaskedModConv."""
    import onnxscript

    node = onnxscript.values.Op(onnxscript.values.Opset(PLUGIN_NAMESPACE, 1), PLUGIN_NAME, onnx_schema())  # no body

    def masked_modconv_onnx(x, weight, bias, a, direction, mask, strength, noise, noise_weight, activate: bool):
        return node(x, weight, bias, a, direction, mask, strength, noise, noise_weight, activate=int(activate),
                    plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION)

    return {torch.ops.ssae.masked_modconv.default: masked_modconv_onnx}
