"""TensorRT engines for an export folder (`ssae build`), the engine cache and its compatibility checks.

For every stage of an export this builds one engine from the FP16 graph (`ssae.export.fp16`, with the precision
plan's keep-fp32 nodes; or the graphs as they are for `precision="fp32"` and for already converted exports), with
a strongly typed network (TensorRT 11 networks always are: precision comes from the ONNX types, there are no
FP16/INT8 builder flags), one optimization profile covering batch 1..N and, for the stages whose manifest shapes
have "height"/"width" (the local edit tail and the RBs, which re-edits run on crops), the crop sizes up to the model
size. The edit stage is built from the plugin graph (`sae_decoder_edit_plugin`, one `ssae::MaskedModConv` node run
by the TensorRT plugin of `ssae.kernels.trt_plugin`, AOT when its PTX compiles, else JIT) when the plugin can be
registered here, else from the standard-op graph. A small glue graph `roi_mask` (select one mask channel and
quantise it to 8-bit levels, as the Editor does on the host) lets the runtime chain SMPN -> edit on the device.

Engine folder (default `<export>/tensorrt-<precision>/`):

    tensorrt.json                      index: format, the model manifest, environment, one entry per stage
    onnx/                              the FP16 export the engines were built from (runs on ONNX Runtime too)
    glue/roi_mask.onnx
    <stage>.<key>.engine               serialized engine; <key> = digest of its cache key
    <stage>.<key>.engine.json          sidecar: the cache key and build facts
    <stage>.<key>.layers.json          engine inspector output (layer types, precisions, tactics)
    timing-<gpu>-sm<cc>-trt<ver>.cache persistent timing cache (per GPU and TensorRT version)

The cache key is (ONNX sha256, TensorRT version, GPU name + compute capability, precision) plus the profile and
the plugin mode: an engine whose sidecar matches is reused, anything else is rebuilt. Loading refuses, with one
line saying what to do, an engine built for another GPU or TensorRT version (`check_sidecar`).

The pure parts (cache keys, sidecar comparison, profile shapes) import and run without TensorRT.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from ssae.errors import SSAEError
from ssae.fileio import atomic_write, read_json
from ssae.pipeline import EDIT, EDIT_PLUGIN, ROI_MASK
from .precision_plan import PrecisionPlan

INDEX = "tensorrt.json"
INDEX_FORMAT = "ssae-tensorrt-1"
SIDECAR_FORMAT = "ssae-tensorrt-engine-1"
DEFAULT_MAX_BATCH = 8
MIN_CROP = 4  # the export's smallest "height"/"width" (export.onnx_export._export_one)
PLUGIN_MODES = ("auto", "aot", "jit", "off")


class TensorRTUnavailable(SSAEError, RuntimeError):
    """TensorRT, cuda-bindings or a CUDA GPU is missing here (one-line reason)."""


class EngineMismatch(SSAEError, RuntimeError):
    """An engine was built for another GPU / TensorRT version, or its files are corrupt (one-line reason)."""


class BuildError(SSAEError, RuntimeError):
    """TensorRT could not parse or build a graph (one-line reason; TensorRT's log has the details)."""


# ------------------------------------------------------------------------------------------------ environment
def require_tensorrt():
    """The tensorrt module, or TensorRTUnavailable with the reason."""
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable("TensorRT is not installed (pip install 'ssae[gpu]' on a CUDA machine)") from None
    except Exception as e:  # noqa: BLE001 - a broken install raises OSError & co. from its native libraries
        raise TensorRTUnavailable(f"TensorRT cannot be imported: {str(e).splitlines()[0]}") from None
    return trt


def require_cudart():
    """cuda.bindings.runtime, or TensorRTUnavailable with the reason."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise TensorRTUnavailable("cuda-bindings is not installed (pip install 'ssae[gpu]')") from None
    return cudart


def cuda_check(result, what: str = "CUDA call"):
    """Unpack a cuda-bindings result tuple (err, *values): raise on error, return the value(s)."""
    err, rest = result[0], result[1:]
    if int(err) != 0:
        name = getattr(err, "name", str(err))
        raise RuntimeError(f"{what} failed: {name}")
    return rest[0] if len(rest) == 1 else (rest or None)


def gpu_info(device: int = 0) -> dict:
    """{"gpu": name, "compute_capability": "9.0"} of a CUDA device (via cuda-bindings)."""
    cudart = require_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        raise TensorRTUnavailable("no CUDA GPU is visible here (TensorRT needs one)")
    if device >= count:
        raise TensorRTUnavailable(f"CUDA device {device} does not exist ({count} visible)")
    prop = cuda_check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name
    name = (name.split(b"\0", 1)[0].decode() if isinstance(name, (bytes, bytearray)) else str(name)).strip()
    return {"gpu": name, "compute_capability": f"{prop.major}.{prop.minor}"}


def environment(tensorrt_version: str, gpu: dict) -> dict:
    """What an engine is only valid for: the TensorRT version and the GPU (name + compute capability)."""
    return {"tensorrt": str(tensorrt_version), "gpu": gpu["gpu"], "compute_capability": gpu["compute_capability"]}


def current_environment(device: int = 0) -> dict:
    trt = require_tensorrt()
    return environment(trt.__version__, gpu_info(device))


def sm(cc: str) -> str:
    return "sm_" + str(cc).replace(".", "")


def describe_environment(env: dict) -> str:
    return f"TensorRT {env.get('tensorrt', '?')} on {env.get('gpu', '?')} ({sm(env.get('compute_capability', '?'))})"


# ------------------------------------------------------------------------------------------------ cache keys
@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. Engines with equal keys are interchangeable."""

    onnx_sha256: str
    tensorrt: str
    gpu: str
    compute_capability: str
    precision: str
    profile: tuple = ()        # ((input, (min...), (opt...), (max...)), ...) sorted by input name
    plugin: str = "none"       # "aot" | "jit" | "none"
    kernel: str = ""           # AOT: sha256 of the baked PTX and the nvcc that made it; "" otherwise

    def to_dict(self) -> dict:
        d = asdict(self)
        d["profile"] = {n: {"min": list(a), "opt": list(b), "max": list(c)} for n, a, b, c in self.profile}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EngineKey":
        prof = tuple(sorted((n, tuple(v["min"]), tuple(v["opt"]), tuple(v["max"])) for n, v in d["profile"].items()))
        return cls(d["onnx_sha256"], d["tensorrt"], d["gpu"], d["compute_capability"], d["precision"], prof,
                   d.get("plugin", "none"), d.get("kernel", ""))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def environment(self) -> dict:
        return {"tensorrt": self.tensorrt, "gpu": self.gpu, "compute_capability": self.compute_capability}


def make_key(onnx_sha256: str, env: dict, precision: str, shapes: dict, plugin: str = "none",
             kernel: str = "") -> EngineKey:
    prof = tuple(sorted((n, tuple(v[0]), tuple(v[1]), tuple(v[2])) for n, v in shapes.items()))
    return EngineKey(onnx_sha256, env["tensorrt"], env["gpu"], env["compute_capability"], precision, prof, plugin,
                     kernel)


def kernel_digest(plugin: str) -> str:
    """What an engine of plugin mode `plugin` bakes in of the fused kernel: for AOT, sha256 of its PTX and of the
    nvcc version that compiled it (so a kernel or compiler change rebuilds the engine); "" otherwise (a JIT plugin
    runs the kernel compiled at run time; the standard graph has none)."""
    if plugin != "aot":
        return ""
    from ssae.kernels import cuda as kcuda
    from ssae.kernels import trt_plugin
    h = hashlib.sha256(trt_plugin.kernel_ptx())
    nvcc = kcuda.find_nvcc()
    h.update((kcuda.nvcc_version(nvcc) if nvcc else "no nvcc").encode())
    return h.hexdigest()


def engine_file_name(stage: str, key: EngineKey) -> str:
    return f"{stage}.{key.digest()[:16]}.engine"


def sidecar_mismatch(sidecar: dict, env: dict) -> str | None:
    """None when an engine's sidecar fits this environment, else "built for X; this is Y"."""
    built = {k: sidecar.get("key", {}).get(k) for k in ("tensorrt", "gpu", "compute_capability")}
    if built == {k: env.get(k) for k in built}:
        return None
    return f"was built for {describe_environment(built)}; this is {describe_environment(env)}"


def check_sidecar(sidecar: dict, env: dict, engine_name: str) -> None:
    """Refuse an engine made for another TensorRT version or GPU, with the one-line way out."""
    if sidecar.get("format") != SIDECAR_FORMAT:
        raise EngineMismatch(f"engine {engine_name} has no valid sidecar ({SIDECAR_FORMAT}): rebuild with `ssae build`")
    why = sidecar_mismatch(sidecar, env)
    if why:
        raise EngineMismatch(f"engine {engine_name} {why}: rebuild with `ssae build`")


# ------------------------------------------------------------------------------------------------ profiles
def profile_shapes(inputs: Iterable[dict], max_batch: int = DEFAULT_MAX_BATCH, opt_batch: int = 1,
                   size: int | None = None, min_hw: int = MIN_CROP, opt_hw: int | None = None,
                   max_channels: int | None = None) -> dict[str, tuple[tuple, tuple, tuple]]:
    """(min, opt, max) shape of every input from its manifest shape: "batch" -> 1 / opt_batch / max_batch,
    "height"/"width" (crops of the model size) -> min_hw / opt_hw (default: the full size) / size, any other
    named dim (the glue graph's mask channels) -> 1 / 1 / max_channels, ints fixed."""
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt_batch ({opt_batch}) <= max_batch ({max_batch})")
    out = {}
    for t in inputs:
        mn, opt, mx = [], [], []
        for d in t["shape"]:
            if d == "batch":
                v = (1, opt_batch, max_batch)
            elif d in ("height", "width"):
                if size is None:
                    raise ValueError(f"input {t['name']} has a {d} dim: give the model size")
                o = opt_hw or size
                if not min_hw <= o <= size:
                    raise ValueError(f"need {min_hw} <= opt_hw ({o}) <= size ({size})")
                v = (min_hw, o, size)
            elif isinstance(d, str):
                if max_channels is None:
                    raise ValueError(f"input {t['name']} has an unknown dynamic dim {d!r}")
                v = (1, 1, max_channels)
            else:
                v = (int(d),) * 3
            mn.append(v[0]), opt.append(v[1]), mx.append(v[2])
        out[t["name"]] = (tuple(mn), tuple(opt), tuple(mx))
    return out


def shape_in_profile(shape: Iterable[int], prof: tuple[tuple, tuple, tuple]) -> bool:
    shape = tuple(shape)
    return len(shape) == len(prof[0]) and all(a <= s <= b for s, a, b in zip(shape, prof[0], prof[2]))


# ------------------------------------------------------------------------------------------------ folders
def default_engine_dir(export_dir: str | os.PathLike, precision: str = "fp16") -> Path:
    return Path(export_dir) / f"tensorrt-{precision}"


def timing_cache_name(env: dict) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["gpu"]).strip("-").lower()
    return f"timing-{slug}-{sm(env['compute_capability'])}-trt{env['tensorrt']}.cache"


def read_index(engine_dir: str | os.PathLike) -> dict:
    """The engine folder's index; EngineMismatch when missing or malformed."""
    return read_json(Path(engine_dir) / INDEX, EngineMismatch, "engine index", fmt=INDEX_FORMAT,
                     missing=f"{engine_dir} has no TensorRT engines ({INDEX}): build them with `ssae build`")


def verify_engines(engine_dir: str | os.PathLike, env: dict, index: dict | None = None,
                   stages: Iterable[str] | None = None, check_hash: bool = True) -> dict:
    """Index of an engine folder after checking every engine against this environment and its sidecar's sha256.
    Raises EngineMismatch (built elsewhere: rebuild) with one line."""
    d = Path(engine_dir)
    idx = index or read_index(d)
    for stage, e in idx["engines"].items():
        if stages is not None and stage not in stages:
            continue
        f, s = d / e["file"], d / (e["file"] + ".json")
        if not f.exists() or not s.exists():
            raise EngineMismatch(f"engine {f.name} or its sidecar is missing: rebuild with `ssae build`")
        side = json.loads(s.read_text())
        check_sidecar(side, env, f.name)
        if check_hash and _sha256(f) != side.get("engine_sha256"):
            raise EngineMismatch(f"corrupt engine file {f.name} (sha256 mismatch): rebuild with `ssae build`")
    return idx


def index_is_current(index: dict, export_manifest: dict, plan: PrecisionPlan | None = None) -> bool:
    """Whether an engine folder was built from these exported graphs (and, when given, this precision plan; without
    one, whatever plan `ssae build` used is accepted)."""
    same = index.get("source_sha256") == {n: e["sha256"] for n, e in export_manifest["stages"].items()}
    return same and (plan is None or index.get("plan_digest") == plan.digest())


def _sha256(path) -> str:
    from .onnx_export import sha256_file
    return sha256_file(path)


# ------------------------------------------------------------------------------------------------ glue graph
def roi_mask_graph(num_rois: int, size: int, dtype: str = "float32"):
    """ONNX graph: masks (B, C, S, S), roi (1,) int32 -> mask (B, 1, S, S) = round(masks[:, roi] * 255) / 255."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    ty = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[dtype]
    np_ty = {"float32": np.float32, "float16": np.float16}[dtype]
    g = helper.make_graph(
        [helper.make_node("Gather", ["masks", "roi"], ["sel"], name="select_roi", axis=1),
         helper.make_node("Mul", ["sel", "levels"], ["scaled"], name="scale"),
         helper.make_node("Round", ["scaled"], ["rounded"], name="round"),
         helper.make_node("Div", ["rounded", "levels"], ["mask"], name="quantise")],
        ROI_MASK,
        [helper.make_tensor_value_info("masks", ty, ["batch", "rois", size, size]),
         helper.make_tensor_value_info("roi", TensorProto.INT32, [1])],
        [helper.make_tensor_value_info("mask", ty, ["batch", 1, size, size])],
        [numpy_helper.from_array(np.array(255.0, np_ty), "levels")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], producer_name="ssae")
    m.ir_version = 9
    onnx.checker.check_model(m, full_check=True)
    return m


def roi_mask_spec(num_rois: int, size: int, dtype: str = "float32") -> dict:
    """Manifest-style entry of the glue graph."""
    return {"inputs": [{"name": "masks", "shape": ["batch", "rois", size, size], "dtype": dtype},
                       {"name": "roi", "shape": [1], "dtype": "int32"}],
            "outputs": [{"name": "mask", "shape": ["batch", 1, size, size], "dtype": dtype}],
            "max_channels": num_rois}


# ------------------------------------------------------------------------------------------------ building
@dataclass
class BuildOptions:
    precision: str = "fp16"
    max_batch: int = DEFAULT_MAX_BATCH
    opt_batch: int = 1
    plugin: str = "auto"        # auto | aot | jit | off
    workspace_mb: int = 0       # 0: TensorRT's default (the device memory)
    opt_level: int = 3          # builder_optimization_level
    rebuild: bool = False
    stages: tuple = ()          # () = every stage (+ the glue)
    verbose: bool = False


def plugin_modes(requested: str, available: dict | None = None) -> list[str]:
    """The plugin modes the edit stage's engine is tried with, in order: "auto" -> AOT, then JIT (those
    available here), then "none" (the standard-op graph), each next one used when the one before cannot be built;
    "aot" / "jit" -> that mode only (TensorRTUnavailable when it is not available); "off" -> "none".
    `available`: {"aot": bool, "jit": bool} (default: `trt_plugin.availability()`)."""
    if requested not in PLUGIN_MODES:
        raise ValueError(f"plugin must be one of {', '.join(PLUGIN_MODES)}")
    if requested == "off":
        return ["none"]
    why = {}
    if available is None:
        from ssae.kernels import trt_plugin
        available, why = trt_plugin.availability()
    if requested == "auto":
        return [m for m in ("aot", "jit") if available.get(m)] + ["none"]
    if not available.get(requested):
        raise TensorRTUnavailable(f"the {requested.upper()} plugin is not available here: "
                                  f"{why.get(requested) or 'not available'}")
    return [requested]


def resolve_plugin_mode(requested: str) -> str:
    """The first mode `plugin_modes` would try."""
    return plugin_modes(requested)[0]


def _model_bytes(path: Path, plugin_mode: str) -> bytes:
    """The ONNX bytes TensorRT parses: for the plugin graph, the custom node gets the `aot` attribute that
    selects the plugin's AOT (1) or JIT (0) implementation in the ONNX parser. The weights stay where the graph
    file keeps them (the export's shared weights file, which the parser reads given the graph's path)."""
    if plugin_mode not in ("aot", "jit"):
        return path.read_bytes()
    import onnx
    from onnx import helper

    from ssae.kernels import ops as fused_ops
    m = onnx.load(str(path), load_external_data=False)
    for n in m.graph.node:
        if n.domain == fused_ops.PLUGIN_NAMESPACE and n.op_type == fused_ops.PLUGIN_NAME:
            for a in list(n.attribute):
                if a.name == "aot":
                    n.attribute.remove(a)
            n.attribute.append(helper.make_attribute("aot", 1 if plugin_mode == "aot" else 0))
    return m.SerializeToString()


def build_engine(model_bytes: bytes, shapes: dict, timing_cache: Path | None, opts: BuildOptions,
                 plugin_mode: str = "none", name: str = "", path: Path | None = None) -> bytes:
    """One serialized engine from ONNX bytes (strongly typed network, one optimization profile). path: the graph
    file the bytes come from; the parser resolves external weights (ONNX external data) relative to it."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.VERBOSE if opts.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    major = int(trt.__version__.split(".")[0])
    if major < 11:  # 10.x: opt in; 11: always strongly typed (the flag is deprecated and ignored)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if plugin_mode == "aot":
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
    elif plugin_mode == "jit":
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_JIT_PYTHON_PLUGINS)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model_bytes, None if path is None else str(path)):
        errs = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            text = (err.desc() if hasattr(err, "desc") else str(err)).strip()
            errs.append(text.splitlines()[0] if text else str(err))
        raise BuildError(f"TensorRT cannot parse {name}: {errs[0] if errs else 'unknown error'}")
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names/types for the inspector
    config.builder_optimization_level = opts.opt_level
    if opts.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
    profile = builder.create_optimization_profile()
    for n, (mn, opt, mx) in shapes.items():
        profile.set_shape(n, mn, opt, mx)
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.exists() else b""
        cache = config.create_timing_cache(data)
        if not config.set_timing_cache(cache, ignore_mismatch=False):  # made on another GPU: start a new one
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"TensorRT could not build {name} (see TensorRT's log above)")
    if timing_cache is not None:
        blob = bytes(memoryview(config.get_timing_cache().serialize()))
        atomic_write(timing_cache, lambda tmp: Path(tmp).write_bytes(blob))
    return bytes(memoryview(serialized))


def inspect_engine(engine_bytes: bytes) -> dict:
    """Engine inspector: the layers of an engine (types, precisions, tactics) as JSON."""
    trt = require_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise EngineMismatch("TensorRT cannot deserialize the engine it just built")
    inspector = engine.create_engine_inspector()
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    try:
        return json.loads(info)
    except json.JSONDecodeError:
        return {"text": info}


def _fp16_export(src: Path, out: Path, plan: PrecisionPlan | None, progress) -> Path:
    """The FP16 conversion of `src` in `out` (reused when made from the same graphs and plan)."""
    from . import fp16 as fp16_mod
    from .onnx_export import ExportError, read_manifest

    srcm = read_manifest(src)
    want = {n: e["sha256"] for n, e in srcm["stages"].items()}
    try:
        have = read_manifest(out)
        ok = ({n: e.get("source_sha256") for n, e in have["stages"].items()} == want and
              have.get("reduced_precision", {}).get("plan_digest") == (plan.digest() if plan else None))
    except ExportError:
        ok = False
    if not ok:
        fp16_mod.write_export(src, out, plan=plan, precision="fp16",
                              progress=(lambda n: progress(f"fp16 {n}")) if progress else None)
    return out


def build_engines(export_dir: str | os.PathLike, engine_dir: str | os.PathLike | None = None,
                  plan: PrecisionPlan | None = None, opts: BuildOptions | None = None,
                  progress: Callable[[str], None] | None = None, device: int = 0) -> dict:
    """Build (or reuse from the cache) an engine for every stage of an export; returns the folder's index."""
    from .onnx_export import read_manifest

    opts = opts or BuildOptions()
    trt = require_tensorrt()
    env = environment(trt.__version__, gpu_info(device))
    src = Path(export_dir)
    srcm = read_manifest(src)
    out = Path(engine_dir) if engine_dir is not None else default_engine_dir(src, opts.precision)
    out.mkdir(parents=True, exist_ok=True)
    src_precision = srcm.get("precision", "fp32")
    if opts.precision == "fp16" and src_precision == "fp32":
        onnx_dir = _fp16_export(src, out / "onnx", plan, progress)
    elif opts.precision in (src_precision, "auto"):
        onnx_dir = src
    else:
        raise ValueError(f"{src} is a {src_precision} export: build it with precision {src_precision} "
                         f"(or convert an fp32 export)")
    man = read_manifest(onnx_dir)
    precision = man.get("precision", "fp32")
    size = int(man["model_config"]["image_size"])
    modes = plugin_modes(opts.plugin) if EDIT_PLUGIN in man["stages"] else ["none"]
    if modes[0] != "none":
        from ssae.kernels import trt_plugin
        try:
            trt_plugin.register_plugin()  # before parsing: the ONNX parser looks the creator up by name/namespace
        except trt_plugin.PluginUnavailable as e:
            if opts.plugin != "auto":
                raise
            log(f"plugin unavailable ({e}); building the standard graph")
            modes = ["none"]
    max_batch = min(opts.max_batch, int(man.get("max_batch", opts.max_batch)))

    jobs = []  # (stage, [(graph name, onnx path, manifest entry, plugin mode), ...] in the order to try)
    for stage, e in man["stages"].items():
        if e.get("plugin") or e.get("cpu_only") or (opts.stages and stage not in opts.stages):
            continue
        standard = (stage, onnx_dir / e["file"], e, "none")
        if stage == EDIT and modes[0] != "none":
            pe = man["stages"][EDIT_PLUGIN]
            jobs.append((stage, [(EDIT_PLUGIN, onnx_dir / pe["file"], pe, m) if m != "none"
                                 else standard for m in modes]))
        else:
            jobs.append((stage, [standard]))
    if not opts.stages or ROI_MASK in opts.stages:
        glue = out / "glue" / f"{ROI_MASK}.onnx"
        import onnx
        gm = roi_mask_graph(len(man["rois"]), size)
        atomic_write(glue, lambda tmp: onnx.save(gm, tmp))
        jobs.append((ROI_MASK, [(ROI_MASK, glue, roi_mask_spec(len(man["rois"]), size), "none")]))

    timing = out / timing_cache_name(env)
    engines, attempts = {}, {}

    def plan_of(graph, path, entry, mode):
        shapes = profile_shapes(entry["inputs"], max_batch, opts.opt_batch, size,
                                max_channels=entry.get("max_channels"))
        key = make_key(_sha256(path), env, precision, shapes, mode, kernel_digest(mode))
        return shapes, key, engine_file_name(stage, key)

    def is_cached(fname, key) -> bool:
        f, side_path = out / fname, out / (fname + ".json")
        if opts.rebuild or not (f.exists() and side_path.exists()):
            return False
        try:
            side = json.loads(side_path.read_text())
            return side.get("digest") == key.digest() and side.get("engine_sha256") == _sha256(f)
        except (OSError, json.JSONDecodeError):
            return False

    for stage, candidates in jobs:
        plans = [(c, *plan_of(*c)) for c in candidates]
        hit = next((p for p in plans if is_cached(p[3], p[2])), None)
        if hit is not None:
            (graph, path, entry, mode), shapes, key, fname = hit
            if progress:
                progress(f"{stage}: cached {fname}")
        else:
            tried = []
            for k, ((graph, path, entry, mode), shapes, key, fname) in enumerate(plans):
                if progress:
                    progress(f"{stage}: building from {path.name} ({mode if mode != 'none' else precision})")
                t0 = time.perf_counter()
                try:
                    blob = build_engine(_model_bytes(path, mode), shapes, timing, opts, mode, name=path.name,
                                        path=path)
                    break
                except Exception as e:  # noqa: BLE001 - TensorRT and the plugin raise many types
                    from ssae.kernels.trt_plugin import PluginUnavailable
                    if k + 1 == len(plans):
                        if isinstance(e, (BuildError, PluginUnavailable)):
                            raise BuildError(f"{stage}: {str(e).splitlines()[0]}") from None
                        raise
                    why = str(e).splitlines()[0] if str(e) else type(e).__name__
                    tried.append({"plugin": mode, "error": why})
                    log(f"{stage}: the {mode} build failed ({why}); trying {plans[k + 1][0][3]}")
            attempts[stage] = tried
            secs = time.perf_counter() - t0
            f, side_path = out / fname, out / (fname + ".json")
            atomic_write(f, lambda tmp: Path(tmp).write_bytes(blob))
            layers = inspect_engine(blob)
            atomic_write(out / (fname[: -len(".engine")] + ".layers.json"),
                         lambda tmp: Path(tmp).write_text(json.dumps(layers, indent=1)))
            side = {"format": SIDECAR_FORMAT, "stage": stage, "graph": graph, "onnx_file": str(path),
                    "key": key.to_dict(), "digest": key.digest(), "engine_sha256": _sha256(f),
                    "engine_bytes": len(blob), "build_seconds": round(secs, 2),
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "plugin": mode, "failed_first": tried,
                    "inputs": entry["inputs"], "outputs": entry["outputs"]}
            atomic_write(side_path, lambda tmp: Path(tmp).write_text(json.dumps(side, indent=1)))
        engines[stage] = {"file": fname, "graph": graph, "plugin": mode, "precision": precision,
                          "profile": {n: [list(a), list(b), list(c)] for n, (a, b, c) in shapes.items()}}
        if attempts.get(stage):
            engines[stage]["failed_first"] = attempts[stage]
    index = {"format": INDEX_FORMAT, "environment": env, "precision": precision, "source_export": str(src),
             "onnx_dir": os.path.relpath(onnx_dir, out) if onnx_dir != src else str(src),
             "source_sha256": {n: e["sha256"] for n, e in srcm["stages"].items()},
             "plan_digest": plan.digest() if plan else None, "max_batch": max_batch, "opt_batch": opts.opt_batch,
             "plugin": engines.get(EDIT, {}).get("plugin", modes[0]), "manifest": man,
             "engines": engines}
    if opts.stages:  # a partial build keeps the other stages' entries
        try:
            prev = read_index(out)
            if prev.get("environment") == env and prev.get("precision") == precision:
                index["engines"] = {**prev["engines"], **engines}
        except EngineMismatch:
            pass
    atomic_write(out / INDEX, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1)))
    return index


def log(msg: str) -> None:
    print(msg, file=sys.stderr)
