"""The fused masked modulated convolution as a PyTorch custom op (`torch.ops.ssae.masked_modconv`).

One op, several implementations side by side (the layout of NVlabs/stylegan2-ada-pytorch `torch_utils/ops`):
- reference: `ssae.models.injection.masked_modconv` (any device; the CPU implementation);
- CUDA: the fused kernel `masked_modconv.cu`, registered for CUDA tensors when it can be loaded (GPU machines);
- ONNX: exported as one custom node `ssae::MaskedModConv` (attributes `plugin_namespace`, `plugin_version`) that
  the TensorRT plugin implements; the standard-op decomposition comes from tracing the reference instead.

`use_fused_op(True)` routes the generator's injection layer through the custom op (region noise mode); by
default the reference decomposition runs, which every backend (ONNX Runtime, OpenVINO) can execute.

On CUDA tensors the op runs the fused kernel when it can be loaded (`ssae.kernels.cuda`) and otherwise falls back
to the reference with a one-time warning. Pixel noise mode has no custom op: it runs the reference decomposition
(and exports as the ONNX graph `sae_decoder_edit_pixel`).
"""
from __future__ import annotations

import warnings

import torch

from ssae.models import injection as reference

PLUGIN_NAMESPACE = "ssae"
PLUGIN_NAME = "MaskedModConv"
PLUGIN_VERSION = "1"


def fused_op_enabled() -> bool:
    return reference.routed_op() is not None


def use_fused_op(enabled: bool = True):
    """Within the block, the generator's injection layer (region noise mode) runs the custom op
    `torch.ops.ssae.masked_modconv` (the fused kernel on CUDA, one ONNX node when exported) instead of the
    reference decomposition."""
    return reference.route_to(torch.ops.ssae.masked_modconv if enabled else None)


@torch.library.custom_op("ssae::masked_modconv", mutates_args=())
def masked_modconv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, a: torch.Tensor,
                   direction: torch.Tensor, mask: torch.Tensor, strength: torch.Tensor, noise: torch.Tensor,
                   noise_weight: torch.Tensor, activate: bool) -> torch.Tensor:
    """y = act(conv(x * s(p), weight) + noise_weight * noise + bias), region noise mode (see ssae.models.injection)."""
    return reference.masked_modconv(x, weight, bias, a, mask, strength, direction=direction, noise=noise,
                                    noise_weight=noise_weight, activate=activate)


@masked_modconv.register_fake
def _masked_modconv_fake(x, weight, bias, a, direction, mask, strength, noise, noise_weight, activate):
    return x.new_empty(x.shape[0], weight.shape[0], x.shape[2], x.shape[3])


@masked_modconv.register_kernel("cuda")
def _masked_modconv_cuda(x, weight, bias, a, direction, mask, strength, noise, noise_weight, activate):
    def fused():
        from . import cuda
        return cuda.masked_modconv_cuda(x, weight, bias, a, mask, strength, direction=direction, noise=noise,
                                        noise_weight=noise_weight, activate=activate)

    def ref():
        return reference.masked_modconv(x, weight, bias, a, mask, strength, direction=direction, noise=noise,
                                        noise_weight=noise_weight, activate=activate)

    return _fused_or_reference(x, weight, fused, ref)


_warned: set[str] = set()


def _fused_or_reference(x: torch.Tensor, weight: torch.Tensor, fused, ref) -> torch.Tensor:
    """fused() when the kernel supports the inputs and can be loaded, else ref(), warning the reason once."""
    from . import cuda

    if x.dtype not in (torch.float32, torch.float16):
        reason = f"the fused kernel runs float32/float16, not {x.dtype}"
    elif weight.dim() != 4 or tuple(weight.shape[-2:]) != (3, 3):
        reason = f"the fused kernel runs 3x3 convolutions, not {tuple(weight.shape[-2:])}"
    else:
        reason = cuda.unavailable_reason()
        if reason is None:
            try:
                return fused()
            except (cuda.KernelUnavailable, cuda.KernelBuildError) as e:
                reason = str(e).splitlines()[0]
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"ssae fused masked modconv: running the reference on CUDA ({reason})", RuntimeWarning,
                      stacklevel=3)
    return ref()


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
