"""TensorRT backend: the engines of `ssae build` run with device-resident buffers, one stream and CUDA graphs.

Two ways to use it:

1. The `Backend` interface (`run(stage, inputs)`, what the `Editor` calls): host float32 arrays in, host float32
   arrays out, one stage at a time. Inputs are copied into the stage's device buffers, the engine runs on the
   backend's stream, the outputs are copied back. Any batch and crop size inside the engines' optimization profile.

2. The device chain (`device_chain()`, a `DeviceChain`: the Editor's fast path, and what the GPU benchmark times):

   ```python
   chain = TensorRTBackend(export_dir).device_chain()
   out = chain.full(image, roi="hair", seed=3, strength=1.0)    # image (1, 3, S, S) float32 in [-1, 1]
   out["refined"], out["mask"]                       # (1, 3, S, S) edited image, (1, 1, S, S) quantised ROI mask
   again = chain.reedit(roi="hair", seed=4, strength=0.5)      # new edit of the same image: edit tail + RB only
   ```

   A full chain (`ssae.pipeline.chain_stages`) runs SMPN -> ROI mask (channel select + 8-bit quantisation, as the Editor does on the host) -> encoder
   -> decoder prefix -> edit (the plugin engine when built) -> RB of the ROI with every intermediate tensor left on
   the device: each engine's outputs are bound directly as the next engine's inputs (one buffer per tensor, allocated
   once at load for the largest profile shape). Host copies happen only at the ends (image, noise, strength, ROI index
   in; edited image and mask out), through pinned buffers. With `cuda_graphs=True` (default) the whole chain is
   captured once per (ROI, SMPN graph) into a CUDA graph and replayed with one launch; so is the cached re-edit
   (ROI mask -> edit -> RB from the device-resident codes of the last full chain). Batch 1, full image, region
   noise; noise comes from the seed through `ssae.philox` exactly as in the Editor.

   The device-resident state belongs to the last full chain: any `run()` call reuses the same buffers and
   invalidates it (`reedit` then raises until the next `full`).

Engines come from an engine folder (`ssae.export.trt_build`): given an export folder, the backend uses
`<export>/tensorrt-<precision>/` and builds it on first use (minutes; `ssae build` does it ahead of time); an engine
built for another GPU or TensorRT version is refused with a one-line error saying to rebuild. Device memory comes
from cuda-bindings (`cuda.bindings.runtime`); all contexts share one scratch block (they run one after the other
on one stream).
"""
from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssae.export import trt_build
from ssae.pipeline import EDIT, FULL, REEDIT, ROI_MASK, SMPN, chain_smpn, chain_stages, check_edit, slot as _slot
from .backend import Backend, BackendError, DeviceChain

@dataclass
class _Engine:
    name: str
    engine: object
    context: object                        # eager context (run())
    inputs: list[str]
    outputs: list[str]
    dtypes: dict[str, np.dtype]
    profile: dict[str, tuple]              # input -> (min, opt, max)
    max_shapes: dict[str, tuple]           # every I/O at the profile's max
    plugin: str = "none"


@dataclass
class _Chain:
    kind: str
    roi: str
    smpn: str
    contexts: dict = field(default_factory=dict)   # stage -> dedicated execution context
    graph: object = None
    graph_exec: object = None
    eager_reason: str = ""                          # why no CUDA graph (capture failed), "" when captured


def trt_plugin_errors():
    """The plugin's error type (a build that needs the plugin can raise it)."""
    from ssae.kernels.trt_plugin import PluginUnavailable
    return PluginUnavailable


class TensorRTBackend(Backend):
    """TensorRT engines of an export (see the module docstring)."""

    name = "tensorrt"

    def __init__(self, export_dir: str | os.PathLike, precision: str = "fp16", engine_dir: str | os.PathLike | None = None,
                 plan=None, max_batch: int = trt_build.DEFAULT_MAX_BATCH, build: bool = True, device: int = 0,
                 cuda_graphs: bool = True, quiet: bool = False):
        try:
            self.trt = trt_build.require_tensorrt()
            self.cudart = trt_build.require_cudart()
            self.env = trt_build.current_environment(device)
        except trt_build.TensorRTUnavailable as e:
            raise BackendError(str(e)) from None
        self.device_index = device
        self.cuda_graphs = cuda_graphs
        src = Path(export_dir)
        edir = Path(engine_dir) if engine_dir is not None else (
            src if (src / trt_build.INDEX).exists() else trt_build.default_engine_dir(src, precision))
        stale = False
        if (edir / trt_build.INDEX).exists() and edir != src and (src / "manifest.json").exists():
            from ssae.export.manifest import ExportError, read_manifest
            try:  # engines of an earlier export of this folder (or another plan) are rebuilt, not used
                stale = not trt_build.index_is_current(trt_build.read_index(edir), read_manifest(src, verify=False),
                                                       plan)
            except (ExportError, trt_build.EngineMismatch):
                stale = True
        if stale or not (edir / trt_build.INDEX).exists():
            if not build:
                what = "the TensorRT engines in {} are stale" if stale else "no TensorRT engines in {}"
                raise BackendError(what.format(edir) + f": build them with `ssae build --model {src}`")
            if not quiet:
                print(f"ssae: building TensorRT engines once into {edir} (minutes) ...", file=sys.stderr)
            try:
                trt_build.build_engines(src, edir, plan=plan, opts=trt_build.BuildOptions(
                    precision=precision, max_batch=max_batch), device=device,
                    progress=None if quiet else trt_build.log)
            except (trt_build.TensorRTUnavailable, trt_build.BuildError, trt_plugin_errors(), ValueError) as e:
                raise BackendError(str(e).splitlines()[0]) from None
        try:
            index = trt_build.verify_engines(edir, self.env)
        except trt_build.EngineMismatch as e:
            raise BackendError(str(e)) from None
        self.engine_dir, self.index = edir, index
        self._manifest = index["manifest"]
        self._precision = index.get("precision", precision)
        self.size = int(self.manifest["model_config"]["image_size"])
        self.rois = tuple(self.manifest["rois"])
        self._chain_state: dict | None = None
        self._chains: dict[tuple, _Chain] = {}
        self._buffers: dict[str, tuple[int, int]] = {}   # slot -> (device ptr, bytes)
        self._pinned: dict[str, np.ndarray] = {}
        self._pinned_ptrs: list[int] = []
        self._closed = False
        self._check(self.cudart.cudaSetDevice(device), "cudaSetDevice")
        self.stream = self._check(self.cudart.cudaStreamCreateWithFlags(self.cudart.cudaStreamNonBlocking),
                                  "cudaStreamCreateWithFlags")
        if any(e.get("plugin") == "jit" for e in index["engines"].values()):
            from ssae.kernels import trt_plugin  # JIT plugin engines call back into Python: register before loading
            try:
                trt_plugin.register_plugin()
            except trt_plugin.PluginUnavailable as e:
                raise BackendError(str(e)) from None
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)
        self._engines: dict[str, _Engine] = {}
        scratch = 0
        for stage, e in index["engines"].items():
            blob = (edir / e["file"]).read_bytes()
            engine = self.runtime.deserialize_cuda_engine(blob)
            if engine is None:
                raise BackendError(f"TensorRT cannot load engine {e['file']}: rebuild with `ssae build`")
            self._engines[stage] = self._describe(stage, engine, e.get("plugin", "none"))
            scratch = max(scratch, int(engine.device_memory_size_v2))
        self._scratch = (self._malloc(max(scratch, 256)), max(scratch, 256))
        for eng in self._engines.values():
            eng.context.set_device_memory(*self._scratch)
        self._allocate_slots()
        from ssae import philox
        self._philox = philox
        self._xi = None
        if self.manifest.get("local_tail"):
            self._xi = philox.tail_noise_map(self.manifest)

    # ------------------------------------------------------------------------------------------ CUDA helpers
    def _check(self, result, what: str):
        try:
            return trt_build.cuda_check(result, what)
        except RuntimeError as e:
            raise BackendError(str(e)) from None

    def _malloc(self, nbytes: int) -> int:
        return int(self._check(self.cudart.cudaMalloc(nbytes), "cudaMalloc"))

    def _pinned_array(self, key: str, shape: tuple, dtype) -> np.ndarray:
        """A page-locked host array (graph-captured copies read/write it in place)."""
        a = self._pinned.get(key)
        if a is not None and a.shape == tuple(shape) and a.dtype == np.dtype(dtype):
            return a
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = int(self._check(self.cudart.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost"))
        self._pinned_ptrs.append(ptr)
        buf = (ctypes.c_ubyte * max(nbytes, 1)).from_address(ptr)
        a = np.frombuffer(buf, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)
        self._pinned[key] = a
        return a

    def _h2d(self, dst: int, a: np.ndarray) -> None:
        self._check(self.cudart.cudaMemcpyAsync(dst, a.ctypes.data, a.nbytes,
                                                self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream),
                    "cudaMemcpyAsync H2D")

    def _d2h(self, a: np.ndarray, src: int) -> None:
        self._check(self.cudart.cudaMemcpyAsync(a.ctypes.data, src, a.nbytes,
                                                self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream),
                    "cudaMemcpyAsync D2H")

    # ------------------------------------------------------------------------------------------ engines, buffers
    def _describe(self, stage: str, engine, plugin: str) -> _Engine:
        trt = self.trt
        ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if ctx is None:
            raise BackendError(f"TensorRT cannot create an execution context for {stage}")
        ins, outs, dtypes, prof = [], [], {}, {}
        for i in range(engine.num_io_tensors):
            n = engine.get_tensor_name(i)
            dtypes[n] = np.dtype(trt.nptype(engine.get_tensor_dtype(n)))
            if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT:
                ins.append(n)
                mn, opt, mx = engine.get_tensor_profile_shape(n, 0)
                prof[n] = (tuple(mn), tuple(opt), tuple(mx))
            else:
                outs.append(n)
        max_shapes = {n: prof[n][2] for n in ins}
        for n in ins:
            ctx.set_input_shape(n, max_shapes[n])
        for n in outs:
            max_shapes[n] = tuple(ctx.get_tensor_shape(n))
            if any(d < 0 for d in max_shapes[n]):
                raise BackendError(f"{stage}: output {n} has no static bound at the profile's maximum")
        return _Engine(stage, engine, ctx, ins, outs, dtypes, prof, max_shapes, plugin)

    def _allocate_slots(self) -> None:
        sizes: dict[str, int] = {}
        self._slot_dtype: dict[str, set] = {}
        for stage, eng in self._engines.items():
            for n in eng.inputs + eng.outputs:
                s = _slot(stage, n)
                nbytes = int(np.prod(eng.max_shapes[n])) * eng.dtypes[n].itemsize
                sizes[s] = max(sizes.get(s, 0), nbytes)
                self._slot_dtype.setdefault(s, set()).add(eng.dtypes[n].str)
        sizes["xi_full"] = self.size * self.size * 4
        for s, nbytes in sizes.items():
            self._buffers[s] = (self._malloc(max(nbytes, 256)), nbytes)

    def _ptr(self, slot: str) -> int:
        return self._buffers[slot][0]

    def _bind(self, stage: str, ctx, shapes: dict[str, tuple], overrides: dict[str, str] | None = None) -> None:
        eng = self._engines[stage]
        for n in eng.inputs:
            if not ctx.set_input_shape(n, shapes[n]):
                raise BackendError(f"{stage}: TensorRT refused shape {shapes[n]} for input {n}")
        for n in eng.inputs + eng.outputs:
            slot = (overrides or {}).get(n, _slot(stage, n))
            if not ctx.set_tensor_address(n, self._ptr(slot)):
                raise BackendError(f"{stage}: TensorRT refused the address of {n}")

    # ------------------------------------------------------------------------------------------ Backend API
    @property
    def device(self) -> str:
        return f"cuda:{self.device_index} ({self.env['gpu']})"

    @property
    def precision(self) -> str:
        return self._precision

    def stages(self) -> list[str]:
        return [s for s in self._engines if s != ROI_MASK]

    def describe(self) -> str:
        plug = {e.plugin for e in self._engines.values()} - {"none"}
        extra = f", plugin {'/'.join(sorted(plug))}" if plug else ""
        return f"{self.name} ({self.precision} on {self.device}, TensorRT {self.env['tensorrt']}{extra})"

    def synchronize(self) -> None:
        self._check(self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def run(self, stage: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_stage(stage)
        eng = self._engines[stage]
        self._chain_state = None  # the shared buffers no longer hold the chain's image
        host = {}
        for n in eng.inputs:
            if n not in inputs:
                raise BackendError(f"{stage}: missing input {n}")
            a = np.ascontiguousarray(inputs[n], dtype=eng.dtypes[n])
            if not trt_build.shape_in_profile(a.shape, eng.profile[n]):
                mn, _, mx = eng.profile[n]
                raise BackendError(f"{stage}: input {n} of shape {a.shape} is outside the engine's profile "
                                   f"{mn}..{mx} (rebuild with `ssae build --max-batch N`)")
            host[n] = a
        self._bind(stage, eng.context, {n: a.shape for n, a in host.items()})
        for n, a in host.items():
            self._h2d(self._ptr(_slot(stage, n)), a)
        if not eng.context.execute_async_v3(int(self.stream)):
            raise BackendError(f"{stage}: TensorRT execution failed")
        outs = {}
        for n in eng.outputs:
            outs[n] = np.empty(tuple(eng.context.get_tensor_shape(n)), eng.dtypes[n])
            self._d2h(outs[n], self._ptr(_slot(stage, n)))
        self.synchronize()  # also keeps the pageable host arrays alive until the copies are done
        return {n: a.astype(np.float32, copy=False) for n, a in outs.items()}

    # ------------------------------------------------------------------------------------------ chained API
    def _io_shapes(self, stages: list[str], smpn: str) -> dict[str, dict[str, tuple]]:
        """Batch-1, full-size input shapes of every engine of a chain."""
        g = int(self.manifest["model_config"]["sae"]["global_code_ch"])
        channels = self._engines[smpn].max_shapes["masks"][1] if smpn in self._engines else len(self.rois)
        out = {}
        for st in stages:
            eng = self._engines[st]
            d = {}
            for n in eng.inputs:
                mx = eng.max_shapes[n]
                if n == "noise":
                    d[n] = (1, g)
                elif n in ("strength", "roi"):
                    d[n] = (1,)
                elif st == ROI_MASK and n == "masks":
                    d[n] = (1, channels) + tuple(mx[2:])
                else:
                    d[n] = (1,) + tuple(mx[1:]) if n != "xi" else tuple(mx)
            out[st] = d
        return out

    def _chain(self, kind: str, roi: str, smpn: str) -> _Chain:
        key = (kind, roi, smpn)
        ch = self._chains.get(key)
        if ch is not None:
            return ch
        stages = chain_stages(roi, smpn, kind)
        missing = [s for s in stages if s not in self._engines]
        if missing:
            raise BackendError(f"the engine folder has no {', '.join(missing)} (rebuild with `ssae build`)")
        for a, b in zip(stages, stages[1:]):  # bound buffers must agree on the element type
            shared = {_slot(a, n) for n in self._engines[a].outputs} & {_slot(b, n) for n in self._engines[b].inputs}
            for s in shared:
                if len(self._slot_dtype[s]) > 1:
                    raise BackendError(f"{a} -> {b}: tensor {s} has different types in the two engines")
        ch = _Chain(kind, roi, smpn)
        shapes = self._io_shapes(stages, smpn)
        for st in stages:
            ctx = self._engines[st].engine.create_execution_context(
                self.trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            ctx.set_device_memory(*self._scratch)
            self._bind(st, ctx, shapes[st], {"xi": "xi_full"} if st.startswith(EDIT) else None)
            ch.contexts[st] = ctx
        self._chains[key] = ch
        self._enqueue_chain(ch)  # first run outside a capture: TensorRT finishes its shape-dependent setup
        self.synchronize()
        if self.cuda_graphs:
            self._capture(ch)
        return ch

    def _enqueue_chain(self, ch: _Chain) -> None:
        """Host -> device copies of the chain's inputs, every engine, device -> host copies of its results."""
        ins = [("noise", self._pinned["noise"]), ("strength", self._pinned["strength"]), ("roi", self._pinned["roi"])]
        if ch.kind == FULL:
            ins.insert(0, ("image", self._pinned["image"]))
            if self._xi is not None:
                ins.append(("xi_full", self._pinned["xi"]))
        for slot, a in ins:
            self._h2d(self._ptr(slot), a)
        for st in chain_stages(ch.roi, ch.smpn, ch.kind):
            if not ch.contexts[st].execute_async_v3(int(self.stream)):
                raise BackendError(f"{st}: TensorRT execution failed")
        self._d2h(self._pinned["refined"], self._ptr("refined"))
        self._d2h(self._pinned["mask"], self._ptr("mask"))

    def _capture(self, ch: _Chain) -> None:
        cudart = self.cudart
        err, = cudart.cudaStreamBeginCapture(self.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        if int(err) != 0:
            ch.eager_reason = f"cudaStreamBeginCapture: {getattr(err, 'name', err)}"
            return
        try:
            self._enqueue_chain(ch)
        except BackendError as e:
            ch.eager_reason = str(e)
        err, graph = cudart.cudaStreamEndCapture(self.stream)
        if ch.eager_reason or int(err) != 0:
            ch.eager_reason = ch.eager_reason or f"cudaStreamEndCapture: {getattr(err, 'name', err)}"
            cudart.cudaGetLastError()
            return
        err, gexec = cudart.cudaGraphInstantiate(graph, 0)
        if int(err) != 0:
            ch.eager_reason = f"cudaGraphInstantiate: {getattr(err, 'name', err)}"
            cudart.cudaGraphDestroy(graph)
            return
        ch.graph, ch.graph_exec = graph, gexec

    def _stage_chain_inputs(self, roi: str, seed: int, strength: float, image: np.ndarray | None, smpn: str):
        s = self.size
        g = int(self.manifest["model_config"]["sae"]["global_code_ch"])
        check_edit(roi, self.rois, strength)
        noise = self._philox.region_noise([seed], g)
        self._pinned_array("noise", (1, g), np.float32)[...] = noise
        self._pinned_array("strength", (1,), np.float32)[...] = strength
        self._pinned_array("roi", (1,), np.int32)[...] = 0 if smpn.startswith("smpn_") else self.rois.index(roi)
        self._pinned_array("refined", (1, 3, s, s), np.float32)
        self._pinned_array("mask", (1, 1, s, s), np.float32)
        if image is not None:
            img = np.asarray(image, np.float32)
            if img.shape != (1, 3, s, s):
                raise ValueError(f"image must be (1, 3, {s}, {s}) float32 in [-1, 1], got {img.shape}")
            self._pinned_array("image", (1, 3, s, s), np.float32)[...] = img
            if self._xi is not None:
                self._pinned_array("xi", self._xi.shape, np.float32)[...] = self._xi

    def _launch(self, ch: _Chain) -> dict[str, np.ndarray]:
        if ch.graph_exec is not None:
            self._check(self.cudart.cudaGraphLaunch(ch.graph_exec, self.stream), "cudaGraphLaunch")
        else:
            self._enqueue_chain(ch)
        self.synchronize()
        return {"refined": self._pinned["refined"].copy(), "mask": self._pinned["mask"].copy()}

    @property
    def manifest(self) -> dict:
        return self._manifest

    def device_chain(self) -> DeviceChain:
        return TensorRTChain(self)

    def _run_full(self, image: np.ndarray, roi: str, seed: int, strength: float,
                  single_roi: bool = False) -> dict[str, np.ndarray]:
        """Full edit of one image on the device (see the module docstring): {"refined", "mask"} float32.

        single_roi: use the ROI's own SMPN graph (1/5 of the SMPN; later re-edits then need the same ROI)."""
        smpn = chain_smpn(roi, single_roi, self._engines)
        self._stage_chain_inputs(roi, seed, strength, image, smpn)
        ch = self._chain(FULL, roi, smpn)
        out = self._launch(ch)
        self._chain_state = {"smpn": smpn, "rois": (roi,) if smpn != SMPN else self.rois}
        return out

    def _run_reedit(self, roi: str, seed: int, strength: float) -> dict[str, np.ndarray]:
        """A new edit of the image of the last full chain (its codes and masks are still on the device)."""
        st = self._chain_state
        if st is None:
            raise BackendError("no image on the device: run a full chain first (run() calls reuse its buffers)")
        if roi not in st["rois"]:
            raise BackendError(f"the device holds only the {', '.join(st['rois'])} mask: run a full chain with "
                               f"single_roi=False to re-edit other ROIs")
        self._stage_chain_inputs(roi, seed, strength, None, st["smpn"])
        ch = self._chain(REEDIT, roi, st["smpn"])
        return self._launch(ch)

    def _chain_info(self) -> dict:
        """Which chains are captured as CUDA graphs (and why not, where not)."""
        return {f"{k}/{r}/{s}": ("cuda graph" if c.graph_exec is not None else f"eager: {c.eager_reason or 'off'}")
                for (k, r, s), c in self._chains.items()}

    # ------------------------------------------------------------------------------------------ teardown
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        cudart = self.cudart
        try:
            cudart.cudaStreamSynchronize(self.stream)
            for ch in self._chains.values():
                if ch.graph_exec is not None:
                    cudart.cudaGraphExecDestroy(ch.graph_exec)
                if ch.graph is not None:
                    cudart.cudaGraphDestroy(ch.graph)
            self._chains.clear()
            self._engines.clear()
            for ptr, _ in self._buffers.values():
                cudart.cudaFree(ptr)
            self._buffers.clear()
            cudart.cudaFree(self._scratch[0])
            self._pinned.clear()
            for ptr in self._pinned_ptrs:
                cudart.cudaFreeHost(ptr)
            self._pinned_ptrs.clear()
            cudart.cudaStreamDestroy(self.stream)
        except Exception:  # noqa: BLE001 - best effort at interpreter shutdown
            pass

    def __del__(self):
        if getattr(self, "stream", None) is not None and not getattr(self, "_closed", True):
            self.close()


class TensorRTChain(DeviceChain):
    """The device chain of a TensorRTBackend (its engines bound buffer to buffer along `ssae.pipeline.chain_stages`,
    replayed from CUDA graphs); the state it holds is the backend's."""

    def __init__(self, backend: TensorRTBackend):
        self.backend = backend

    def full(self, image: np.ndarray, roi: str, seed: int, strength: float, single_roi: bool = False) -> dict:
        return self.backend._run_full(image, roi, seed, strength, single_roi)

    def reedit(self, roi: str, seed: int, strength: float) -> dict:
        return self.backend._run_reedit(roi, seed, strength)

    def info(self) -> dict[str, str]:
        return self.backend._chain_info()
