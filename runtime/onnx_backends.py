"""Backends that run the exported ONNX files: ONNX Runtime (CPU; CUDA/TensorRT providers when present) and
OpenVINO (Intel CPUs, integrated GPUs, NPUs; uses bf16 automatically on AMX CPUs)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ssae.export.manifest import ExportError, read_manifest
from .backend import Backend, BackendError, input_dtype
from .qdq_u8 import u8_activations

class _OnnxFolderBackend(Backend):
    def __init__(self, export_dir: str | os.PathLike):
        self.dir = Path(export_dir)
        try:
            self._manifest = read_manifest(self.dir)
        except ExportError as e:
            raise BackendError(str(e)) from None
        self._names = [n for n, e in self.manifest["stages"].items() if not e.get("plugin")]
        self._compiled = {}

    @property
    def manifest(self) -> dict:
        return self._manifest

    def stages(self) -> list[str]:
        return list(self._names)

    def _outputs(self, stage):
        return [t["name"] for t in self.manifest["stages"][stage]["outputs"]]

    def _inputs(self, stage):
        return [t["name"] for t in self.manifest["stages"][stage]["inputs"]]

    def compiled(self, stage: str):
        self._check_stage(stage)
        if stage not in self._compiled:
            path = self.dir / self.manifest["stages"][stage]["file"]
            try:
                self._compiled[stage] = self._compile(path, self.manifest["stages"][stage])
            except Exception as e:  # noqa: BLE001 - runtimes raise their own error types for bad files
                raise BackendError(f"{self.name} cannot load {path.name}: {str(e).splitlines()[0]}") from None
        return self._compiled[stage]

    def output_shapes(self, stage: str, feed: dict[str, np.ndarray],
                      known: dict[str, list[int | None]] | None = None) -> dict[str, tuple[int, ...]] | None:
        """Output shapes of a stage for these inputs: the manifest's symbolic dims ("batch", "height", "width")
        bound from the input arrays' shapes, else taken from `known` (per output, sizes fixed by the graph);
        None when neither determines them."""
        dims: dict[str, int] = {}
        for t in self.manifest["stages"][stage]["inputs"]:
            for d, v in zip(t["shape"], feed[t["name"]].shape):
                if isinstance(d, str):
                    if dims.setdefault(d, v) != v:
                        raise BackendError(f"{stage}: inputs disagree on {d} ({dims[d]} vs {v})")
        shapes = {}
        for t in self.manifest["stages"][stage]["outputs"]:
            fixed = (known or {}).get(t["name"]) or [None] * len(t["shape"])
            shape = []
            for d, f in zip(t["shape"], fixed):
                if not isinstance(d, str):
                    shape.append(int(d))
                elif d in dims:
                    shape.append(dims[d])
                elif f is not None:
                    shape.append(int(f))
                else:
                    return None  # an output size nothing here determines
            shapes[t["name"]] = tuple(shape)
        return shapes

    def warmup(self) -> None:
        for s in self.stages():
            self.compiled(s)

    def close(self) -> None:
        """Drop the loaded sessions / compiled models and their requests (a later run loads them again)."""
        self._compiled.clear()
        self.__dict__.pop("_requests", None)
        self.__dict__.pop("_static_dims", None)


class OrtBackend(_OnnxFolderBackend):
    """ONNX Runtime. providers: None = the best available (TensorRT > CUDA > CPU)."""

    def __init__(self, export_dir, providers: list[str] | None = None, threads: int = 0,
                 iobinding: bool | None = None, device_id: int = 0):
        """threads: CPU workers of each session's own thread pool (0 = one per core). The workers sleep when idle:
        a full edit runs five graphs back to back, and with ONNX Runtime's spinning default the idle workers of
        each graph keep the cores from the next one (`benchmarks/bench_ort_threads.py` compares).
        iobinding: bind inputs and outputs on the provider's device (`run_with_iobinding`); default: on with the
        CUDA provider, so tensors cross PCIe once each way and ORT allocates nothing per call on the host side.
        On the CPU provider, int8 graphs load with uint8 activation zero points (`qdq_u8`: bit-identical outputs,
        every quantized conv fused)."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("onnxruntime is not installed (pip install onnxruntime)") from None
        super().__init__(export_dir)
        self.ort = ort
        avail = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider",) if p in avail] + ["CPUExecutionProvider"]
        missing = [p for p in providers if p not in avail]
        if missing:
            raise BackendError(f"onnxruntime providers not available here: {', '.join(missing)}")
        self.providers = providers
        self.threads = threads
        cuda = providers[0] == "CUDAExecutionProvider"
        self.iobinding = cuda if iobinding is None else bool(iobinding)
        self.io_device = ("cuda" if cuda else "cpu", device_id if cuda else 0)
        self.name = "onnxruntime" if providers[0] == "CPUExecutionProvider" else \
            "onnxruntime-" + providers[0].replace("ExecutionProvider", "").lower()
        # single region re-edits on the sparse tile graph with the CPU provider: it computes only the tiles the
        # region touches, where the window recomputes every pixel of its box (benchmarks/results/runtime_cpu.json)
        self.sparse_reedit = providers[0] == "CPUExecutionProvider"

    def _compile(self, path, entry: dict):
        return self.open_session(path, entry)

    def session_options(self, profile_prefix: str | None = None):
        """The SessionOptions of this backend's sessions: every graph optimisation, a pool of `threads` workers per
        session that do not spin when idle. profile_prefix: turn on ONNX Runtime's profiler, writing there."""
        so = self.ort.SessionOptions()
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            so.intra_op_num_threads = self.threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        if profile_prefix is not None:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        return so

    def open_session(self, path, entry: dict, profile_prefix: str | None = None):
        """A new InferenceSession of one graph file as this backend runs it (`session_options` and, on the CPU
        provider, s8 graphs with uint8 activation zero points: bit-identical, every quantized conv fused;
        `qdq_u8`). profile_prefix: turn on ONNX Runtime's profiler, writing there."""
        so = self.session_options(profile_prefix)
        if self._as_u8(entry):
            return self.ort.InferenceSession(self.model_as_loaded(path, entry).SerializeToString(), so,
                                             providers=self.providers)
        return self.ort.InferenceSession(str(path), so, providers=self.providers)

    def _as_u8(self, entry: dict) -> bool:
        return entry.get("precision") == "int8" and self.providers[0] == "CPUExecutionProvider"

    def model_as_loaded(self, path, entry: dict):
        """The ONNX ModelProto of one graph file as this backend hands it to ONNX Runtime (int8 graphs on the CPU
        provider with uint8 activation zero points, `qdq_u8`; any other graph as written)."""
        import onnx

        model = onnx.load(str(path))
        if self._as_u8(entry):
            u8_activations(model)
        return model

    @property
    def device(self) -> str:
        return "cuda" if self.providers[0] != "CPUExecutionProvider" else "cpu"

    @property
    def precision(self) -> str:
        return self.manifest.get("precision", "fp32")

    def _dtype(self, stage, name):
        spec = next(t for t in self.manifest["stages"][stage]["inputs"] if t["name"] == name)
        return input_dtype(spec.get("dtype"))

    def run(self, stage, inputs):
        sess = self.compiled(stage)
        feed = {n: np.ascontiguousarray(inputs[n], dtype=self._dtype(stage, n)) for n in self._inputs(stage)}
        if self.iobinding:
            binding = self._bind(stage, {n: self.ort.OrtValue.ortvalue_from_numpy(a, *self.io_device)
                                         for n, a in feed.items()})
            outs = binding.copy_outputs_to_cpu()
        else:
            outs = sess.run(self._outputs(stage), feed)
        return {n: o.astype(np.float32, copy=False) for n, o in zip(self._outputs(stage), outs)}

    def _bind(self, stage, feeds: dict):
        sess = self.compiled(stage)
        binding = sess.io_binding()
        for n in self._inputs(stage):
            binding.bind_ortvalue_input(n, feeds[n])
        for n in self._outputs(stage):
            binding.bind_output(n, *self.io_device)
        sess.run_with_iobinding(binding)
        return binding

    def run_ortvalues(self, stage, feeds: dict) -> dict:
        """One stage on OrtValues bound on the provider's device (IO binding): outputs stay on the device as
        OrtValues, so one stage's outputs can feed the next without host copies."""
        return dict(zip(self._outputs(stage), self._bind(stage, feeds).get_outputs()))


class OpenVINOBackend(_OnnxFolderBackend):
    """OpenVINO on the same ONNX files. precision: "bf16" or "fp32" (the registry's default for the engine: bf16
    on AMX CPUs, else fp32)."""

    def __init__(self, export_dir, device: str = "CPU", precision: str = "fp32"):
        try:
            import openvino as ov
        except ImportError:
            raise BackendError("OpenVINO is not installed (pip install 'ssae[openvino]')") from None
        super().__init__(export_dir)
        self.ov = ov
        self.core = ov.Core()
        if device not in self.core.available_devices:
            raise BackendError(f"OpenVINO device {device} not available (have: {', '.join(self.core.available_devices)})")
        self._dev = device
        if precision not in ("bf16", "fp32"):
            raise BackendError(f"OpenVINO precision must be bf16 or fp32, not {precision!r}")
        self._precision = precision
        self.name = "openvino" if precision == "bf16" else "openvino-fp32"

    #: Single region re-edits run the sparse tile graph (only the tiles the region touches; faster than the window,
    #: benchmarks/results/runtime_cpu.json), always in f32: bf16 would round the Winograd-transformed tiles, and it
    #: was no faster.
    sparse_reedit = True

    def _compile(self, path, entry: dict):
        hint = "f32" if entry.get("cpu_only") else {"bf16": "bf16", "fp32": "f32"}[self._precision]
        return self.core.compile_model(str(path), self._dev, {"INFERENCE_PRECISION_HINT": hint,
                                                              "PERFORMANCE_HINT": "LATENCY"})

    @property
    def device(self) -> str:
        return self._dev.lower()

    @property
    def precision(self) -> str:
        return self._precision

    def run(self, stage, inputs):
        """One inference on a per-stage infer request whose inputs share the callers' arrays and whose outputs are
        written straight into fresh arrays owned by the caller (no output copy: the decoder prefix returns
        2 x 33 MB at 256 px)."""
        feed = {t["name"]: np.ascontiguousarray(inputs[t["name"]], dtype=input_dtype(t.get("dtype")))
                for t in self.manifest["stages"][stage]["inputs"]}
        req = self._request(stage, feed)
        for n, a in feed.items():
            req.set_tensor(n, self.ov.Tensor(a, shared_memory=True))
        shapes = self.output_shapes(stage, feed, self._static_output_dims(stage))
        if shapes is None:  # sizes only known after inference: copy the outputs out
            req.infer()
            return {m: np.array(req.get_tensor(m).data, dtype=np.float32) for m in self._outputs(stage)}
        outs = {n: np.empty(shp, np.float32) for n, shp in shapes.items()}
        for n, a in outs.items():
            req.set_tensor(n, self.ov.Tensor(a, shared_memory=True))
        req.infer()
        return outs

    def _static_output_dims(self, stage: str) -> dict[str, list[int | None]]:
        """Per output, the sizes OpenVINO's shape inference fixed (None where dynamic), e.g. the prefix's 256 x 256
        (read once per stage)."""
        dims = self.__dict__.setdefault("_static_dims", {})
        if stage not in dims:
            cm = self.compiled(stage)
            dims[stage] = {n: [d.get_length() if d.is_static else None for d in cm.output(n).get_partial_shape()]
                           for n in self._outputs(stage)}
        return dims[stage]

    #: Infer requests kept per stage, one per input-shape signature: switching one request between shapes (a hair
    #: window, a lips window, the full image) re-plans its memory on every call, which made alternating hair /
    #: lips re-edits measurably slower than per-shape requests.
    REQUESTS_PER_STAGE = 4

    def _request(self, stage: str, feed: dict[str, np.ndarray]):
        from collections import OrderedDict
        reqs = self.__dict__.setdefault("_requests", {}).setdefault(stage, OrderedDict())
        key = tuple(a.shape for a in feed.values())
        if key not in reqs:
            reqs[key] = self.compiled(stage).create_infer_request()
            while len(reqs) > self.REQUESTS_PER_STAGE:
                reqs.popitem(last=False)
        reqs.move_to_end(key)
        return reqs[key]
