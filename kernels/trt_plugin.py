"""The TensorRT plugin `ssae::MaskedModConv` (tensorrt.plugin, "quickly deployable plugins"), for the plugin graph.

The ONNX graph `sae_decoder_edit_plugin` holds one node `ssae::MaskedModConv` (attributes `activate`,
`plugin_namespace="ssae"`, `plugin_version="1"`); TensorRT's ONNX parser maps it to the plugin registered here by
op type + namespace + version, and the node's `aot` attribute (added by `ssae.export.trt_build` when it builds)
selects the implementation:

- AOT (`@trtp.aot_impl`): returns the name of the fused kernel of `masked_modconv.cu`, its PTX (compiled by
  `ssae.kernels.cuda` for this GPU), the launch geometry and the kernel's 15 int32 scalar arguments as symbolic
  expressions of the I/O shapes. TensorRT bakes the PTX into the engine: running it needs neither Python nor this
  module. Two tactics for FP16 (tensor-core WMMA path, SIMT path); TensorRT times both and keeps the faster.
- JIT (`@trtp.impl`, the fallback when no PTX can be made here): wraps the plugin's device pointers as torch
  tensors (`__cuda_array_interface__`) and runs `torch.ops.ssae.masked_modconv` on TensorRT's stream, which uses the
  CUDA kernel where `ssae.kernels.cuda` registered it and the reference implementation otherwise.

`register_plugin()` is idempotent and must run before an ONNX graph with the node is parsed (and before an engine
with the JIT plugin is deserialized). Importing this module needs neither TensorRT nor CUDA.

Kernel launch ABI (`ssae.kernels.cuda`, from the header of `masked_modconv.cu`): parameters are the 9 input
pointers in the node's order, then 15 int32 scalars (batch, cin, cout, height, width, activate, xi_mode,
xi_batch_stride, xi_seed_lo, xi_seed_hi, xi_stream, pixel_stream, win_y0, win_x0, full_width), then the output
pointer: exactly the order TensorRT's AOT launcher uses (inputs, extra args, outputs). Block 256 threads, grid
(ceil(W / 16) * ceil(H / 8), ceil(Cout / 64), B), no dynamic shared memory.
"""
# NB: no `from __future__ import annotations` here: tensorrt.plugin reads the decorated functions' annotations
# as classes (inspect.signature), and postponed (string) annotations would fail its validation.
import threading
from typing import List, Tuple, Union

from ssae.errors import SSAEError
from . import cuda as kcuda
from . import ops

PLUGIN_ID = f"{ops.PLUGIN_NAMESPACE}::{ops.PLUGIN_NAME}"
INPUTS = ops.ONNX_INPUTS  # x, weight, bias, style, direction, mask, strength, noise, noise_weight

# ---- launch ABI: ssae.kernels.cuda is the reference (entry points, scalar order, grid/block)
THREADS, TILE_H, TILE_W, TILE_N = kcuda.THREADS, kcuda.TILE_H, kcuda.TILE_W, kcuda.TILE_N
XI_NONE, XI_EXPLICIT = kcuda.XI_NONE, kcuda.XI_EXPLICIT
TACTIC_TENSOR_CORES = 1  # FP16 WMMA path (FP32 I/O: the SIMT kernel in both tactics)
TACTIC_SIMT = 2
assert kcuda.REGION_INPUTS == INPUTS, "the ONNX node and the kernel ABI disagree on the inputs"

_lock = threading.Lock()
_registered = False
_ptx_cache: dict = {}


class PluginUnavailable(SSAEError, RuntimeError):
    """The plugin cannot be registered or implemented here (one-line reason)."""


# ------------------------------------------------------------------------------------------------ pure ABI helpers
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def launch_geometry(batch: int, cout: int, height: int, width: int) -> Tuple[Tuple[int, int, int], Tuple[int, int, int]]:
    """(grid, block) of one launch for an output of (batch, cout, height, width) (kernels.cuda.launch_config)."""
    cfg = kcuda.launch_config(batch, cout, height, width)
    return cfg.grid, cfg.block


def scalar_args(batch: int, cin: int, cout: int, height: int, width: int, activate: int,
                xi_batch: int | None = 1) -> List[int]:
    """The 15 int32 scalars for the plugin graph's region mode with an explicit xi map of batch `xi_batch`
    (1: one map for every sample; B: one per sample; None: no noise term)."""
    if xi_batch is None:
        xi_mode, stride = XI_NONE, 0
    else:
        xi_mode, stride = XI_EXPLICIT, (0 if xi_batch == 1 else height * width)
    return ordered_scalars(batch, cin, cout, height, width, activate, xi_mode, stride)


def ordered_scalars(batch, cin, cout, height, width, activate, xi_mode, xi_batch_stride) -> list:
    """The 15 scalars in kernels.cuda.SCALARS order (ints, or TensorRT shape expressions in the AOT plugin): region
    mode, explicit or no xi, the whole image (no window, so no seeds, streams or offsets)."""
    values = dict(batch=batch, cin=cin, cout=cout, height=height, width=width, activate=int(bool(activate)),
                  xi_mode=xi_mode, xi_batch_stride=xi_batch_stride, xi_seed_lo=0, xi_seed_hi=0, xi_stream=0,
                  pixel_stream=0, win_y0=0, win_x0=0, full_width=width)
    return [values[n] for n in kcuda.SCALARS]


def kernel_name(dtype: str, tactic: int = TACTIC_TENSOR_CORES) -> str:
    """Entry point for I/O type "f32" | "f16" and a tactic."""
    if dtype == "f32":
        return kcuda.ENTRY_POINTS["f32"]
    if dtype == "f16":
        return kcuda.ENTRY_POINTS["f16" if tactic == TACTIC_TENSOR_CORES else "f16_simt"]
    raise ValueError(f"no MaskedModConv kernel for {dtype!r} (f32 or f16)")


def output_shape(x_shape, weight_shape) -> Tuple[int, int, int, int]:
    """(B, Cout, H, W): the output of x (B, Cin, H, W) with weights (Cout, Cin, 3, 3)."""
    return (x_shape[0], weight_shape[0], x_shape[2], x_shape[3])


# ------------------------------------------------------------------------------------------------ availability
def _device_arch() -> int:
    """Compute capability of the current CUDA device as an int (90 for sm_90), via cuda-bindings or torch."""
    try:
        from cuda.bindings import runtime as cudart
        err, dev = cudart.cudaGetDevice()
        if int(err) == 0:
            err, prop = cudart.cudaGetDeviceProperties(dev)
            if int(err) == 0:
                return prop.major * 10 + prop.minor
    except ImportError:
        pass
    import torch
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return major * 10 + minor
    raise PluginUnavailable("no CUDA GPU is visible here")


def kernel_ptx(arch: int | None = None) -> bytes:
    """PTX of masked_modconv.cu for compute capability `arch` (default: this GPU's, at least 75), compiled by
    ssae.kernels.cuda.compile_ptx (nvcc, cached on disk); for a GPU newer than the compiler knows, the newest
    supported PTX (the driver JIT-compiles PTX forward)."""
    arch = max(75, arch if arch is not None else _device_arch())
    if arch not in _ptx_cache:
        tries = [str(arch)] + [a for a in reversed(kcuda.SUPPORTED_ARCHS) if int(a) < arch][:1]
        err = None
        for a in tries:
            try:
                _ptx_cache[arch] = kcuda.compile_ptx(a).read_bytes()
                break
            except (kcuda.KernelBuildError, OSError, ValueError) as e:
                err = e
        else:
            raise PluginUnavailable(f"cannot compile masked_modconv.cu to PTX: {str(err).splitlines()[0]}")
    return _ptx_cache[arch]


def availability() -> Tuple[dict, dict]:
    """({"aot": bool, "jit": bool}, {"aot": reason, "jit": reason}) for this machine."""
    ok, why = {"aot": False, "jit": False}, {"aot": "", "jit": ""}
    try:
        import tensorrt as trt
        import tensorrt.plugin  # noqa: F401
    except ImportError:
        why["aot"] = why["jit"] = "TensorRT (with tensorrt.plugin) is not installed"
        return ok, why
    try:
        import torch
        ok["jit"] = torch.cuda.is_available()
        why["jit"] = "" if ok["jit"] else "the JIT plugin runs through torch on CUDA, and torch sees no GPU"
    except ImportError:
        why["jit"] = "the JIT plugin needs torch"
    if not hasattr(trt, "QuickPluginCreationRequest"):
        why["aot"] = f"TensorRT {trt.__version__} has no AOT Python plugins (needs 10.9+)"
    else:
        try:
            kernel_ptx()
            ok["aot"] = True
        except PluginUnavailable as e:
            why["aot"] = str(e)
    return ok, why


def is_registered() -> bool:
    return _registered


# ------------------------------------------------------------------------------------------------ registration
def register_plugin() -> None:
    """Register ssae::MaskedModConv with TensorRT's plugin registry (idempotent; thread-safe)."""
    global _registered
    with _lock:
        if _registered:
            return
        try:
            import tensorrt as trt
            import tensorrt.plugin as trtp
        except ImportError:
            raise PluginUnavailable("TensorRT is not installed (pip install 'ssae[gpu]' on a CUDA machine)") from None
        try:
            _define(trt, trtp)
        except ValueError as e:
            if "already has a defin" not in str(e):  # a previous import of this module registered it
                raise
        _registered = True


def _define(trt, trtp) -> None:
    aot_supported = hasattr(trt, "QuickPluginCreationRequest")
    Desc = trtp.TensorDesc

    @trtp.register(PLUGIN_ID)
    def masked_modconv_desc(x: Desc, weight: Desc, bias: Desc, style: Desc, direction: Desc, mask: Desc,
                            strength: Desc, noise: Desc, noise_weight: Desc, activate: int) -> Desc:
        # y: (B, Cout, H, W) in x's type
        return trtp.from_shape_expr((x.shape_expr[0], weight.shape_expr[0], x.shape_expr[2], x.shape_expr[3]),
                                    dtype=x.dtype)

    @trtp.autotune(PLUGIN_ID)
    def masked_modconv_autotune(x, weight, bias, style, direction, mask, strength, noise, noise_weight,
                                outputs) -> List[trtp.AutoTuneCombination]:
        # every input and the output share one type (the ONNX schema's T); linear NCHW; two FP16 kernels
        c = trtp.AutoTuneCombination()
        c.pos(list(range(len(INPUTS) + 1)), "FP32|FP16", "LINEAR")
        c.tactics([TACTIC_TENSOR_CORES, TACTIC_SIMT])
        return [c]

    @trtp.impl(PLUGIN_ID)
    def masked_modconv_jit(x, weight, bias, style, direction, mask, strength, noise, noise_weight, activate: int,
                           outputs, stream: int, tactic: int) -> None:
        import torch  # torch.ops.ssae.masked_modconv is registered by ssae.kernels.ops (imported above)

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            t = [torch.as_tensor(a, device="cuda") for a in (x, weight, bias, style, direction, mask, strength,
                                                             noise, noise_weight)]
            y = torch.as_tensor(outputs[0], device="cuda")
            y.copy_(torch.ops.ssae.masked_modconv(*t, bool(activate)))

    if not aot_supported:
        return

    @trtp.aot_impl(PLUGIN_ID)
    def masked_modconv_aot(x: Desc, weight: Desc, bias: Desc, style: Desc, direction: Desc, mask: Desc,
                           strength: Desc, noise: Desc, noise_weight: Desc, activate: int,
                           outputs: Tuple[Desc], tactic: int
                           ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]:
        dtype = "f16" if x.dtype == trt.float16 else "f32"
        b, cin, h, w = (x.shape_expr[i] for i in range(4))
        cout = weight.shape_expr[0]
        xi_b = noise.shape_expr[0]
        if xi_b.is_constant and xi_b.constant_value() == 1:  # is_constant: a property in tensorrt.plugin 11.4
            stride = 0  # one xi map shared by the batch
        else:
            stride = h * w
        args = ordered_scalars(b, cin, cout, h, w, activate, XI_EXPLICIT, stride)
        launch = trtp.KernelLaunchParams()
        launch.grid_x = trtp.cdiv(w, TILE_W) * trtp.cdiv(h, TILE_H)
        launch.grid_y = trtp.cdiv(cout, TILE_N)
        launch.grid_z = b
        launch.block_x = THREADS
        launch.shared_mem = 0
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(a) for a in args])
        return kernel_name(dtype, tactic).encode(), kernel_ptx(), launch, extra
