"""Build, load and launch the fused CUDA kernel `masked_modconv.cu` (the injection layer's masked modulated conv).

Three parts, in this order:

1. The launch ABI (stable: the TensorRT plugin `kernels/trt_plugin.py` launches the same PTX with it): entry-point
   names, the exact parameter list, grid/block sizes and parameter packing, as pure Python.
2. Build: `compile_ptx` / `compile_cubin` call nvcc (warnings are errors in the CPU tests' strict builds only; no
   --use_fast_math: the in-kernel noise needs IEEE float64 math) and cache the result under
   `ssae.fileio.default_cache_dir()/kernels/<sha>/`.
3. Load and launch on a GPU machine: the module is loaded through cuda-bindings (`cuda.bindings.driver`), and the
   kernel runs on torch's current CUDA stream with torch tensors' pointers (`masked_modconv_cuda`,
   `philox_normals_cuda`).

Nothing here needs a GPU to import; the GPU-only packages are imported on first use.
"""
from __future__ import annotations

import collections
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ssae.errors import SSAEError

# ==================================================================================================== 1. launch ABI

SOURCE = Path(__file__).with_name("masked_modconv.cu")

#: Threads per block and the output tile of one block (rows x columns x output channels).
THREADS = 256
TILE_H, TILE_W, TILE_N = 8, 16, 64

#: Modes of the noise-injection term xi (scalar `xi_mode`): none, an explicit map, generated in the kernel.
XI_NONE, XI_EXPLICIT, XI_GENERATED = 0, 1, 2

#: Entry points (region noise mode), by variant: "f32", "f16" (tensor cores) or "f16_simt" (FP16 I/O, fp32 FMAs).
VARIANTS = ("f32", "f16", "f16_simt")
ENTRY_POINTS: dict[str, str] = {variant: f"ssae_masked_modconv_region_{variant}" for variant in VARIANTS}
#: The on-device Philox generator: ssae_philox_normals(seed_lo, seed_hi, stream, start, count, out).
PHILOX_ENTRY = "ssae_philox_normals"

#: Pointer inputs of the fused kernels, in parameter order (the ONNX node ssae::MaskedModConv's inputs).
REGION_INPUTS = ("x", "weight", "bias", "style", "direction", "mask", "strength", "noise", "noise_weight")
#: The int32 scalars that follow the inputs (TensorRT AOT plugins pass them as extra int32 arguments).
#: pixel_stream is reserved (always 0, ignored by the kernel): the parameter list stays the one the TensorRT
#: plugin launches.
SCALARS = ("batch", "cin", "cout", "height", "width", "activate", "xi_mode", "xi_batch_stride", "xi_seed_lo",
           "xi_seed_hi", "xi_stream", "pixel_stream", "win_y0", "win_x0", "full_width")
#: The output pointer, last.
OUTPUTS = ("y",)


@dataclass(frozen=True)
class Param:
    """One kernel parameter: its name and kind ("ptr": 64-bit device pointer, "i32", "i64")."""

    name: str
    kind: str


def kernel_params() -> tuple[Param, ...]:
    """The exact parameter list of the fused kernels: input pointers, int32 scalars, output pointer.

    Tensors (T = float32 or float16 by entry point, all contiguous):
        x (B, Cin, H, W); weight (Cout, Cin, 3, 3) W_hat; bias (Cout,); style (B, Cin) a;
        direction (B, Cin) d = A_W n; mask (B, 1, H, W); strength (B,); noise (B or 1, 1, H, W) xi (read only
        when xi_mode = 1); noise_weight (1,) w_n; y (B, Cout, H, W).
    Scalars: batch, cin, cout, height, width; activate (0/1); xi_mode (0 none, 1 explicit, 2 generated);
        xi_batch_stride (0 when noise is shared by the batch, else H * W); xi_seed_lo, xi_seed_hi (the uint64 seed
        of the generated xi as two int32 bit patterns); xi_stream (philox.STREAM_INJECTION + layer index);
        pixel_stream (reserved: 0); win_y0, win_x0 (the window's offset in the full image); full_width (the full
        image's width; generated noise is indexed in full-image coordinates).
    """
    return (tuple(Param(n, "ptr") for n in REGION_INPUTS) + tuple(Param(n, "i32") for n in SCALARS)
            + tuple(Param(n, "ptr") for n in OUTPUTS))


PHILOX_PARAMS = (Param("seed_lo", "i32"), Param("seed_hi", "i32"), Param("stream", "i32"), Param("start", "i64"),
                 Param("count", "i32"), Param("out", "ptr"))


@dataclass(frozen=True)
class LaunchConfig:
    """Grid and block dimensions and dynamic shared memory (bytes) of one launch."""

    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int = 0


def launch_config(batch: int, cout: int, height: int, width: int) -> LaunchConfig:
    """Grid of the fused kernels: (ceil(W / 16) * ceil(H / 8), ceil(Cout / 64), B) blocks of 256 threads.

    Only integer +, * and floor division, so a TensorRT plugin can express it with symbolic shapes; every entry
    point (every variant) uses static shared memory only (<= 48 KiB)."""
    for name, v in (("batch", batch), ("cout", cout), ("height", height), ("width", width)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    tiles = ((width + TILE_W - 1) // TILE_W) * ((height + TILE_H - 1) // TILE_H)
    grid = (tiles, (cout + TILE_N - 1) // TILE_N, batch)
    if grid[1] > 65535 or grid[2] > 65535 or grid[0] > 2 ** 31 - 1:
        raise ValueError(f"problem too large for one launch (grid {grid})")
    return LaunchConfig(grid, (THREADS, 1, 1), 0)


def philox_launch_config(count: int) -> LaunchConfig:
    """Grid of ssae_philox_normals: one thread per value."""
    return LaunchConfig((max(1, (count + THREADS - 1) // THREADS), 1, 1), (THREADS, 1, 1), 0)


def to_int32(v: int) -> int:
    """The int32 whose bit pattern is the low 32 bits of v (how uint32 words travel in int32 parameters)."""
    v = int(v) & 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def seed_words(seed: int) -> tuple[int, int]:
    """A seed in [0, 2**64) as (lo, hi) int32 bit patterns: the Philox key (ssae/philox.py)."""
    seed = int(seed)
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
    return to_int32(seed), to_int32(seed >> 32)


def pack_params(params: Sequence[Param], values: Mapping[str, int]) -> list[tuple[str, int]]:
    """(kind, value) per parameter in ABI order, checked: pointers non-null 64-bit, int32 in range.

    `values` maps every parameter name to an int (pointers: device addresses)."""
    missing = [p.name for p in params if p.name not in values]
    extra = sorted(set(values) - {p.name for p in params})
    if missing or extra:
        raise ValueError(f"kernel parameters: missing {missing}, unknown {extra}")
    out = []
    for p in params:
        v = int(values[p.name])
        if p.kind == "ptr" and not 0 < v < 2 ** 64:
            raise ValueError(f"parameter {p.name}: invalid device pointer {v:#x}")
        if p.kind == "i32" and not -2 ** 31 <= v < 2 ** 31:
            raise ValueError(f"parameter {p.name}: {v} does not fit int32")
        if p.kind == "i64" and not -2 ** 63 <= v < 2 ** 63:
            raise ValueError(f"parameter {p.name}: {v} does not fit int64")
        out.append((p.kind, v))
    return out


def param_buffers(packed: Sequence[tuple[str, int]]) -> list[np.ndarray]:
    """One host buffer per parameter holding its value as the kernel reads it (uint64 / int32 / int64)."""
    dtypes = {"ptr": np.uint64, "i32": np.int32, "i64": np.int64}
    return [np.array([v], dtype=dtypes[k]) for k, v in packed]


def variant_for(dtype: torch.dtype, cin: int, tensor_cores: bool | None = None) -> str:
    """Entry-point variant for a dtype: f32; f16 on tensor cores unless Cin < 16 (a 16-channel MMA step would be
    mostly zeros) or tensor_cores=False, then f16_simt."""
    if dtype == torch.float32:
        return "f32"
    if dtype == torch.float16:
        use_tc = cin >= 16 if tensor_cores is None else tensor_cores
        return "f16" if use_tc else "f16_simt"
    raise TypeError(f"the fused kernel runs float32 or float16, not {dtype}")


# ==================================================================================================== 2. build

SUPPORTED_ARCHS = ("75", "80", "86", "87", "89", "90")


class KernelBuildError(RuntimeError):
    """nvcc is missing or failed (the message holds its output)."""


def normalize_arch(arch: str | int) -> str:
    """"sm_80", "compute_80", "80", 80 or "8.0" -> "80"."""
    a = str(arch).strip().lower()
    for prefix in ("sm_", "compute_"):
        if a.startswith(prefix):
            a = a[len(prefix):]
    if "." in a:
        major, minor = a.split(".", 1)
        a = major + minor
    if not a.isdigit():
        raise ValueError(f"not a CUDA architecture: {arch!r}")
    return a


def find_nvcc() -> str | None:
    """nvcc on PATH, else under $CUDA_HOME / $CUDA_PATH / /usr/local/cuda."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


_nvcc_versions: dict[str, str] = {}


def nvcc_version(nvcc: str) -> str:
    """`nvcc --version` output (part of the cache key: another compiler makes other PTX)."""
    if nvcc not in _nvcc_versions:
        r = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60)
        _nvcc_versions[nvcc] = r.stdout.strip()
    return _nvcc_versions[nvcc]


def nvcc_flags(kind: str, arch: str | int, strict: bool = True) -> list[str]:
    """nvcc flags for `kind` "ptx" (virtual compute_XX) or "cubin" (real sm_XX). strict: warnings are errors
    (CI); never --use_fast_math (the noise generator needs IEEE float64 log/sqrt/sin/cos)."""
    a = normalize_arch(arch)
    if kind == "ptx":
        target = ["-ptx", f"-arch=compute_{a}"]
    elif kind == "cubin":
        target = ["-cubin", f"-arch=sm_{a}"]
    else:
        raise ValueError(f"unknown output kind {kind!r} (ptx or cubin)")
    return target + ["-O3", "-std=c++17"] + (["-Werror", "all-warnings"] if strict else [])


def cache_key(flags: Sequence[str], nvcc: str) -> str:
    """sha256 of the source, the flags and the compiler version."""
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update("\0".join(flags).encode())
    h.update(nvcc_version(nvcc).encode())
    return h.hexdigest()


def _kernel_cache_dir() -> Path:
    from ssae.fileio import default_cache_dir
    return default_cache_dir() / "kernels"


def compile_kernel(kind: str, arch: str | int, out_dir: str | os.PathLike | None = None, strict: bool = False,
                   timeout: float = 600.0) -> Path:
    """Compile masked_modconv.cu to PTX or a cubin for `arch` (cached); with out_dir, also copied there.

    strict: warnings are errors (the CPU test suite asks for it; every shipped build, the run-time loader and
    the TensorRT plugin's PTX, uses strict=False so that a newer nvcc's new warnings do not stop the kernel).
    Returns the path of the result. Raises KernelBuildError when nvcc is missing or fails."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise KernelBuildError("nvcc not found (install the CUDA toolkit or set CUDA_HOME)")
    a = normalize_arch(arch)
    name = f"masked_modconv.sm_{a}.{kind}"
    flags = nvcc_flags(kind, a, strict)
    cached = _kernel_cache_dir() / cache_key(flags, nvcc)[:24] / name
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
            out = Path(tmp) / name
            cmd = [nvcc, *flags, str(SOURCE), "-o", str(out)]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            if r.returncode != 0 or not out.is_file():
                raise KernelBuildError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
            os.replace(out, cached)
    if out_dir is None:
        return cached
    dest = Path(out_dir) / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, dest)
    return dest


def compile_ptx(arch: str | int, out_dir: str | os.PathLike | None = None, strict: bool = False) -> Path:
    """PTX of masked_modconv.cu for compute capability `arch` (e.g. "sm_80"); see compile_kernel."""
    return compile_kernel("ptx", arch, out_dir, strict)


def compile_cubin(arch: str | int, out_dir: str | os.PathLike | None = None, strict: bool = False) -> Path:
    """A cubin of masked_modconv.cu for `arch`; see compile_kernel."""
    return compile_kernel("cubin", arch, out_dir, strict)


def compile_all_ptx(out_dir: str | os.PathLike | None = None,
                    archs: Sequence[str] = SUPPORTED_ARCHS) -> dict[str, Path]:
    """PTX for every supported architecture: {"80": path, ...}."""
    return {normalize_arch(a): compile_ptx(a, out_dir) for a in archs}


def ptx_entry_points(ptx: str) -> list[str]:
    """Names of the kernels (.entry) a PTX module defines."""
    import re
    return re.findall(r"\.entry\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(", ptx)


# ==================================================================================================== 3. load + launch


class KernelUnavailable(SSAEError, RuntimeError):
    """The fused kernel cannot run here (no CUDA device, no loader package, no compiler): the message says what."""


class KernelLaunchError(RuntimeError):
    """A CUDA driver call failed while loading or launching the kernel."""


#: Launches per entry point in this process (lets tests see that the fused kernel ran).
LAUNCHES: collections.Counter = collections.Counter()


def unavailable_reason() -> str | None:
    """None when the fused kernel can be loaded on this machine, else one line naming what is missing."""
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if not _importable("cuda.bindings.driver"):
        return "cuda-bindings is not importable (pip install cuda-bindings)"
    if find_nvcc() is None:
        return "nvcc not found (install the CUDA toolkit or set CUDA_HOME)"
    return None


def _importable(module: str) -> bool:
    import importlib
    try:
        importlib.import_module(module)
        return True
    except Exception:  # noqa: BLE001 - a broken install counts as missing
        return False


class _DriverModule:
    """The kernel module loaded with cuda-bindings into the device's primary context (the one torch uses)."""

    def __init__(self, image: bytes, device_index: int):
        from cuda.bindings import driver as cu

        self._cu = cu
        self._check(cu.cuInit(0))
        dev = self._check(cu.cuDeviceGet(device_index))
        self._ctx = self._check(cu.cuDevicePrimaryCtxRetain(dev))
        self._image = np.frombuffer(image + b"\0", dtype=np.uint8).copy()  # PTX must be NUL-terminated
        self._functions: dict[str, object] = {}
        with self._current():
            self._module = self._check(self._cu.cuModuleLoadData(self._image.ctypes.data))

    def _check(self, result):
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self._cu.CUresult.CUDA_SUCCESS:
            _, name = self._cu.cuGetErrorName(err)
            raise KernelLaunchError(f"CUDA driver error {name.decode() if isinstance(name, bytes) else name}")
        return values[0] if len(values) == 1 else (values or None)

    class _Current:
        def __init__(self, outer: "_DriverModule"):
            self.outer = outer

        def __enter__(self):
            self.outer._check(self.outer._cu.cuCtxPushCurrent(self.outer._ctx))

        def __exit__(self, *exc):
            self.outer._check(self.outer._cu.cuCtxPopCurrent())

    def _current(self) -> "_DriverModule._Current":
        return _DriverModule._Current(self)

    def launch(self, name: str, config: LaunchConfig, packed: Sequence[tuple[str, int]], stream: int) -> None:
        with self._current():
            if name not in self._functions:
                self._functions[name] = self._check(self._cu.cuModuleGetFunction(self._module, name.encode()))
            buffers = param_buffers(packed)
            argv = np.array([b.ctypes.data for b in buffers], dtype=np.uint64)
            self._check(self._cu.cuLaunchKernel(self._functions[name], *config.grid, *config.block,
                                                config.shared_mem, self._cu.CUstream(stream), argv.ctypes.data, 0))


_modules: dict[int, _DriverModule] = {}
_modules_lock = threading.Lock()


def _module_image(arch: str) -> Path:
    """A cubin for the device's architecture, else PTX for it."""
    try:
        return compile_cubin(arch, strict=False)
    except KernelBuildError:  # e.g. an nvcc that cannot target this GPU's sm: let the driver JIT the PTX
        return compile_ptx(arch, strict=False)


def load_module(device_index: int | None = None) -> _DriverModule:
    """The loaded kernel module for a CUDA device (cached), through cuda-bindings.

    Raises KernelUnavailable naming what is missing."""
    reason = unavailable_reason()
    if reason is not None:
        raise KernelUnavailable(reason)
    idx = torch.cuda.current_device() if device_index is None else int(device_index)
    with _modules_lock:
        if idx in _modules:
            return _modules[idx]
        major, minor = torch.cuda.get_device_capability(idx)
        module = _DriverModule(_module_image(f"{major}{minor}").read_bytes(), idx)
        _modules[idx] = module
        return module


def load_module_image(image: bytes, device_index: int | None = None) -> _DriverModule:
    """A kernel module from a cubin or PTX image built elsewhere (e.g. with other -D flags, for A/B timings), loaded
    with cuda-bindings into the device's primary context; `.launch(name, config, packed, stream)` runs an entry.
    Not cached. Raises KernelUnavailable when the module cannot be loaded here."""
    reason = unavailable_reason()
    if reason is not None:
        raise KernelUnavailable(reason)
    return _DriverModule(image, torch.cuda.current_device() if device_index is None else int(device_index))


def _launch(name: str, config: LaunchConfig, packed: Sequence[tuple[str, int]], device: torch.device) -> None:
    module = load_module(device.index)
    stream = torch.cuda.current_stream(device).cuda_stream
    module.launch(name, config, packed, stream)
    LAUNCHES[name] += 1


def _as(t: torch.Tensor | float, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """`t` as a contiguous tensor of like's dtype and device, broadcast to `shape`."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.expand(shape).contiguous() if tuple(t.shape) != shape else t.contiguous()


@dataclass
class PreparedLaunch:
    """One fused-kernel launch before it happens: entry point, grid, the tensors behind every pointer parameter
    (contiguous, in the kernel's dtype) and the int32 scalars. Device-agnostic (the CPU tests feed the host
    emulation of the kernel with it)."""

    name: str
    config: LaunchConfig
    tensors: dict[str, torch.Tensor]
    scalars: dict[str, int]

    def packed(self) -> list[tuple[str, int]]:
        """The parameters in ABI order with the tensors' data pointers."""
        values = {k: t.data_ptr() for k, t in self.tensors.items()} | self.scalars
        return pack_params(kernel_params(), values)


def prepare_launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, style: torch.Tensor,
                   mask: torch.Tensor, strength: torch.Tensor | float, *, direction: torch.Tensor,
                   noise: torch.Tensor | None = None, noise_weight: torch.Tensor | float = 0.0,
                   xi_seed: int | None = None, xi_stream: int = 0, window: tuple[int, int] = (0, 0),
                   full_width: int | None = None, activate: bool = True, tensor_cores: bool | None = None,
                   out: torch.Tensor | None = None) -> PreparedLaunch:
    """Check and convert the inputs of `masked_modconv_cuda` into one launch (see there for the arguments)."""
    if x.dim() != 4:
        raise ValueError(f"x must be (B, Cin, H, W), got {tuple(x.shape)}")
    b, cin, h, w = x.shape
    cout = weight.shape[0]
    if tuple(weight.shape) != (cout, cin, 3, 3):
        raise ValueError(f"weight must be (Cout, {cin}, 3, 3), got {tuple(weight.shape)}")
    name = ENTRY_POINTS[variant_for(x.dtype, cin, tensor_cores)]
    if out is None:
        out = torch.empty(b, cout, h, w, dtype=x.dtype, device=x.device)
    elif tuple(out.shape) != (b, cout, h, w) or out.dtype != x.dtype or out.device != x.device \
            or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} tensor of shape {(b, cout, h, w)} on {x.device}")
    x = x.contiguous()
    tensors = {
        "x": x, "weight": _as(weight, x, (cout, cin, 3, 3)), "bias": _as(bias, x, (cout,)),
        "style": _as(style, x, (b, cin)), "direction": _as(direction, x, (b, cin)), "mask": _as(mask, x, (b, 1, h, w)),
        "strength": _as(torch.as_tensor(strength).reshape(-1), x, (b,)),
        "noise_weight": _as(torch.as_tensor(noise_weight).reshape(-1), x, (1,)), "y": out,
    }
    xi_lo = xi_hi = 0
    if noise is not None:
        if noise.dim() != 4 or noise.shape[1] != 1 or tuple(noise.shape[2:]) != (h, w) or noise.shape[0] not in (1, b):
            raise ValueError(f"noise must be (1 or {b}, 1, {h}, {w}), got {tuple(noise.shape)}")
        xi_mode, xi_stride = XI_EXPLICIT, (0 if noise.shape[0] == 1 else h * w)
        tensors["noise"] = _as(noise, x, tuple(noise.shape))
    else:
        xi_mode, xi_stride = (XI_NONE, 0) if xi_seed is None else (XI_GENERATED, 0)
        if xi_seed is not None:
            xi_lo, xi_hi = seed_words(xi_seed)
        tensors["noise"] = out  # never read; any valid pointer
    y0, x0 = (int(v) for v in window)
    fw = int(full_width if full_width is not None else x0 + w)
    if min(y0, x0) < 0 or fw < x0 + w:
        raise ValueError(f"window offset {(y0, x0)} with width {w} does not fit full_width {fw}")
    scalars = dict(batch=b, cin=cin, cout=cout, height=h, width=w, activate=int(bool(activate)), xi_mode=xi_mode,
                   xi_batch_stride=xi_stride, xi_seed_lo=xi_lo, xi_seed_hi=xi_hi, xi_stream=to_int32(xi_stream),
                   pixel_stream=0, win_y0=y0, win_x0=x0, full_width=fw)
    return PreparedLaunch(name, launch_config(max(b, 1), max(cout, 1), max(h, 1), max(w, 1)), tensors,
                          scalars)


def masked_modconv_cuda(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, style: torch.Tensor,
                        mask: torch.Tensor, strength: torch.Tensor | float, *, direction: torch.Tensor,
                        noise: torch.Tensor | None = None, noise_weight: torch.Tensor | float = 0.0,
                        xi_seed: int | None = None, xi_stream: int = 0, window: tuple[int, int] = (0, 0),
                        full_width: int | None = None, activate: bool = True, tensor_cores: bool | None = None,
                        out: torch.Tensor | None = None) -> torch.Tensor:
    """Run the fused kernel on CUDA tensors: `reference.masked_modconv` (region noise mode) computed in one pass.

    `direction` (B, Cin): the style direction d. xi: `noise` ((1 or B), 1, H, W) explicit, or `xi_seed`
    (+ xi_stream) generated in the kernel at full-image positions (window offset + pixel, rows of full_width), or
    neither (no noise term). dtype float32 or float16 (x's; other inputs are cast to it). tensor_cores: FP16
    variant choice (default: `variant_for`). out: a contiguous (B, Cout, H, W) tensor of x's dtype to write into
    (else a new one). Returns y.
    """
    if x.device.type != "cuda":
        raise ValueError(f"masked_modconv_cuda needs CUDA tensors, got {x.device}")
    launch = prepare_launch(x, weight, bias, style, mask, strength, direction=direction, noise=noise,
                            noise_weight=noise_weight, xi_seed=xi_seed, xi_stream=xi_stream, window=window,
                            full_width=full_width, activate=activate, tensor_cores=tensor_cores, out=out)
    y = launch.tensors["y"]
    if y.numel() == 0:
        return y
    with torch.cuda.device(x.device):
        _launch(launch.name, launch.config, launch.packed(), x.device)
    return y


def philox_normals_cuda(seed: int, stream: int, start: int, count: int,
                        device: torch.device | str = "cuda") -> torch.Tensor:
    """Values start .. start + count - 1 of (seed, stream), generated on the GPU (== philox.gaussian_at)."""
    device = torch.device(device)
    out = torch.empty(count, dtype=torch.float32, device=device)
    if count == 0:
        return out
    lo, hi = seed_words(seed)
    values = dict(seed_lo=lo, seed_hi=hi, stream=to_int32(stream), start=int(start), count=int(count),
                  out=out.data_ptr())
    with torch.cuda.device(device):
        _launch(PHILOX_ENTRY, philox_launch_config(count), pack_params(PHILOX_PARAMS, values), device)
    return out
