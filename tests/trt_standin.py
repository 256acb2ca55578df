"""A minimal stand-in for TensorRT's native core module `tensorrt`, to run TensorRT's REAL pure-Python plugin
package `tensorrt.plugin` (from the installed `tensorrt_bindings/plugin` folder) on a machine without libnvinfer.

`make_module()` returns a fresh module object (fresh plugin registry) meant for `sys.modules["tensorrt"]`;
`load_plugin_package(trt)` then executes the real files of `tensorrt_bindings/plugin/` as `tensorrt.plugin` (their
relative imports resolve to the same folder) without executing `tensorrt_bindings/__init__.py`, which loads the
native `tensorrt.so`. The caller isolates `sys.modules` (the test's fixture snapshots and restores it).

What it implements (only what the real `tensorrt.plugin` 11.4 source touches on the paths the tests run):
- `DataType` (+ the `float32`/`float16`/... aliases, `nptype`), `TensorFormat`, `Dims` (MAX_DIMS 8), `DimsExprs`,
  `PluginTensorDesc`, `DynamicPluginTensorDesc` as plain records;
- `IDimensionExpr`: a real symbolic integer expression (a constant, a named unknown made by `dynamic_dim()`, or
  `operation(a, b)`), with TensorRT's methods `is_constant()` / `get_constant_value()` / `is_size_tensor()` and, for
  the tests only (not TensorRT API), `evaluate(env)` that computes it for given values of the unknowns;
- `IExprBuilder`: `constant()` and `operation()` for every `DimensionOperation` (SUM, PROD, MAX, MIN, SUB, EQUAL,
  LESS, FLOOR_DIV, CEIL_DIV), folding constant operands to a constant as TensorRT does;
- the plugin interfaces (`IPluginV3`, `IPluginV3QuickCore`/`QuickBuild`/`QuickAOTBuild`/`QuickRuntime`,
  `IPluginCreatorV3Quick`) as empty base classes, `ITensor` (annotation only), `ISymExpr`, `ISymExprs` (the
  `nbSymExprs`-sized setter of the AOT extra arguments; index-checked), `KernelLaunchParams` (plain fields);
- `PluginField` (data held as a numpy array of the field type, as the real binding exposes it),
  `PluginFieldCollection`, `PluginFieldType`, `IPluginRegistry` / `get_plugin_registry()` that records creators by
  (name, version, namespace) and refuses a duplicate, `QuickPluginCreationRequest`, `TensorRTPhase`,
  `PluginCapabilityType`, `PluginArgType`, `PluginArgDataType`, `Logger` (records its messages).
`make_module(aot=False)` leaves out `QuickPluginCreationRequest` and `IPluginV3QuickAOTBuild`, as in TensorRT
releases without AOT Python plugins (the real package then disables its AOT path).

What it does NOT check (a pass here says nothing about these):
- no engine is built: no network, ONNX parser (how it maps the node's attributes to plugin fields and its `aot`
  attribute to a creation request), builder, optimization profiles, format negotiation or type propagation by the
  builder, tactic timing or selection, timing cache, serialization or deserialization of the plugin;
- that the PTX is valid, that it contains the kernel named, that the kernel's parameter list matches the
  inputs + extra int32 arguments + outputs, any kernel launch or execution, the results, CUDA streams, memory;
- TensorRT's own simplification of expressions beyond folding constant operands (the real builder may fold more,
  e.g. x - x, or keep a build-time constant symbolic), int32 overflow of expressions, size tensors
  (`declare_size_tensor` is not implemented), and that expressions of one `IExprBuilder` stay valid in another
  (here expressions do not belong to a builder);
- the C++ checks of the bindings (argument types of pybind setters, lifetimes), the JIT plugin's `enqueue`.
"""
import enum
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np

TENSORRT_VERSION = "11.4.0.106"  # the tensorrt-cu13-bindings wheel whose plugin package this stands in under


# ------------------------------------------------------------------------------------------------ enums and records
class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9
    FP4 = 10


class TensorFormat(enum.Enum):
    LINEAR = 0
    CHW2 = 1
    HWC8 = 2
    CHW4 = 3
    CHW16 = 4
    CHW32 = 5
    DHWC8 = 6
    CDHW32 = 7
    HWC = 8
    DLA_LINEAR = 9
    DLA_HWC4 = 10
    HWC16 = 11
    DHWC = 12


class DimensionOperation(enum.Enum):
    SUM = 0
    PROD = 1
    MAX = 2
    MIN = 3
    SUB = 4
    EQUAL = 5
    LESS = 6
    FLOOR_DIV = 7
    CEIL_DIV = 8


class PluginFieldType(enum.Enum):
    FLOAT16 = 0
    FLOAT32 = 1
    FLOAT64 = 2
    INT8 = 3
    INT16 = 4
    INT32 = 5
    CHAR = 6
    DIMS = 7
    UNKNOWN = 8
    BF16 = 9
    INT64 = 10
    FP8 = 11
    INT4 = 12
    FP4 = 13


QuickPluginCreationRequest = enum.Enum(
    "QuickPluginCreationRequest", [("UNKNOWN", 0), ("PREFER_JIT", 1), ("PREFER_AOT", 2), ("STRICT_JIT", 3),
                                   ("STRICT_AOT", 4)])
TensorRTPhase = enum.Enum("TensorRTPhase", [("BUILD", 0), ("RUNTIME", 1)])
PluginCapabilityType = enum.Enum("PluginCapabilityType", [("CORE", 0), ("BUILD", 1), ("RUNTIME", 2)])
PluginArgType = enum.Enum("PluginArgType", [("INT", 0)])
PluginArgDataType = enum.Enum("PluginArgDataType", [("INT8", 0), ("INT16", 1), ("INT32", 2)])

_NP_OF_TRT = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
              DataType.INT32: np.int32, DataType.INT64: np.int64, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8}
_NP_OF_FIELD = {PluginFieldType.FLOAT16: np.float16, PluginFieldType.FLOAT32: np.float32,
                PluginFieldType.FLOAT64: np.float64, PluginFieldType.INT8: np.int8, PluginFieldType.INT16: np.int16,
                PluginFieldType.INT32: np.int32, PluginFieldType.INT64: np.int64}


def nptype(trt_type):
    if trt_type in _NP_OF_TRT:
        return _NP_OF_TRT[trt_type]
    raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")


class Dims(list):
    MAX_DIMS = 8

    def __init__(self, shape=()):
        super().__init__(int(d) for d in shape)
        if len(self) > Dims.MAX_DIMS:
            raise ValueError(f"at most {Dims.MAX_DIMS} dimensions")


class DimsExprs(list):
    def __init__(self, n_or_exprs=0):
        super().__init__([None] * n_or_exprs if isinstance(n_or_exprs, int) else n_or_exprs)


class PluginTensorDesc:
    def __init__(self):
        self.dims, self.type, self.format, self.scale = Dims(), None, None, None


class DynamicPluginTensorDesc:
    def __init__(self, desc=None, min=None, opt=None, max=None):  # noqa: A002 (TensorRT's names)
        self.desc = desc if desc is not None else PluginTensorDesc()
        self.min, self.opt, self.max = (Dims(d if d is not None else self.desc.dims) for d in (min, opt, max))


class ITensor:
    """Only used in annotations of `tensorrt.plugin` (the network API is not stood in for)."""


# ------------------------------------------------------------------------------------------------ shape expressions
_FOLD = {
    DimensionOperation.SUM: lambda a, b: a + b,
    DimensionOperation.PROD: lambda a, b: a * b,
    DimensionOperation.MAX: max,
    DimensionOperation.MIN: min,
    DimensionOperation.SUB: lambda a, b: a - b,
    DimensionOperation.EQUAL: lambda a, b: int(a == b),
    DimensionOperation.LESS: lambda a, b: int(a < b),
    DimensionOperation.FLOOR_DIV: lambda a, b: a // b,
    DimensionOperation.CEIL_DIV: lambda a, b: -(-a // b),
}


class IDimensionExpr:
    """A constant, a named unknown (a dynamic dimension) or `op(first, second)`."""

    def __init__(self, value=None, name=None, op=None, args=()):
        self._value, self._name, self._op, self._args = value, name, op, tuple(args)

    def is_constant(self) -> bool:
        return self._value is not None

    def get_constant_value(self) -> int:
        if self._value is None:
            raise RuntimeError("not a build-time constant")
        return self._value

    def is_size_tensor(self) -> bool:
        return False

    def evaluate(self, env=None) -> int:
        """Value for `env` {unknown name: int} (test helper, not TensorRT API)."""
        if self._value is not None:
            return self._value
        if self._name is not None:
            if env is None or self._name not in env:
                raise KeyError(f"no value for the dynamic dimension {self._name!r}")
            return int(env[self._name])
        a, b = (e.evaluate(env) for e in self._args)
        return _FOLD[self._op](a, b)

    def __repr__(self):
        if self._value is not None:
            return str(self._value)
        if self._name is not None:
            return self._name
        return f"{self._op.name}({self._args[0]!r}, {self._args[1]!r})"


def dynamic_dim(name: str) -> IDimensionExpr:
    """An unknown dimension, as TensorRT passes for a dynamic input dimension (test helper)."""
    return IDimensionExpr(name=name)


class IExprBuilder:
    def constant(self, value: int) -> IDimensionExpr:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"IExprBuilder.constant takes an int, got {type(value).__name__}")
        return IDimensionExpr(value=int(value))

    def operation(self, op, first, second) -> IDimensionExpr:
        if not isinstance(op, DimensionOperation):
            raise TypeError(f"not a DimensionOperation: {op!r}")
        for e in (first, second):
            if not isinstance(e, IDimensionExpr):
                raise TypeError(f"IExprBuilder.operation takes IDimensionExprs, got {type(e).__name__}")
        if first.is_constant() and second.is_constant():
            a, b = first.get_constant_value(), second.get_constant_value()
            if op in (DimensionOperation.FLOOR_DIV, DimensionOperation.CEIL_DIV) and b == 0:
                raise ZeroDivisionError("division by a constant 0 in a shape expression")
            return IDimensionExpr(value=_FOLD[op](a, b))
        return IDimensionExpr(op=op, args=(first, second))

    def declare_size_tensor(self, *args):
        raise NotImplementedError("size tensors are not stood in for")


# ------------------------------------------------------------------------------------------------ AOT records
class ISymExpr:
    """Base of tensorrt.plugin's SymExprImpl (which sets `type`, `dtype`, `expr`)."""


class ISymExprs:
    """The setter of an AOT plugin's extra kernel arguments: set `nbSymExprs`, then each index."""

    def __init__(self):
        self._items = []

    @property
    def nbSymExprs(self):
        return len(self._items)

    @nbSymExprs.setter
    def nbSymExprs(self, n):
        self._items = [None] * int(n)

    def __setitem__(self, i, value):
        if not 0 <= i < len(self._items):
            raise IndexError(f"index {i} out of range (nbSymExprs = {len(self._items)})")
        if not isinstance(value, ISymExpr):
            raise TypeError(f"expected an ISymExpr, got {type(value).__name__}")
        self._items[i] = value

    def __getitem__(self, i):
        return self._items[i]

    def __len__(self):
        return len(self._items)


class KernelLaunchParams:
    """The launch parameters TensorRT reads after `get_launch_params` (each an ISymExpr once set)."""

    def __init__(self):
        self.grid_x = self.grid_y = self.grid_z = None
        self.block_x = self.block_y = self.block_z = None
        self.shared_mem = None


# ------------------------------------------------------------------------------------------------ plugin interfaces
class IPluginV3:
    pass


class IPluginV3QuickCore:
    pass


class IPluginV3QuickBuild:
    pass


class IPluginV3QuickAOTBuild(IPluginV3QuickBuild):
    pass


class IPluginV3QuickRuntime:
    pass


class IPluginCreatorV3Quick:
    pass


class PluginField:
    def __init__(self, name="", data=None, type=PluginFieldType.FLOAT32):  # noqa: A002 (TensorRT's names)
        self.name, self.type = name, type
        if isinstance(data, (bytes, bytearray)):
            self.data = np.frombuffer(bytes(data), dtype=np.uint8)
        elif data is None:
            self.data = np.array([])
        else:
            self.data = np.asarray(data, dtype=_NP_OF_FIELD.get(type))
        self.size = len(self.data)


class PluginFieldCollection(list):
    pass


class IPluginRegistry:
    def __init__(self):
        self._creators = {}

    def register_creator(self, creator, plugin_namespace: str = "") -> bool:
        key = (creator.name, creator.plugin_version, plugin_namespace)
        if key in self._creators:
            return False  # TensorRT logs an error and refuses the duplicate
        self._creators[key] = creator
        return True

    def deregister_creator(self, creator) -> bool:
        for k, c in list(self._creators.items()):
            if c is creator:
                del self._creators[k]
                return True
        return False

    def get_creator(self, name: str, version: str, plugin_namespace: str = ""):
        return self._creators.get((name, version, plugin_namespace))

    @property
    def all_creators(self):
        return list(self._creators.values())


class Logger:
    Severity = enum.Enum("Severity", [("INTERNAL_ERROR", 0), ("ERROR", 1), ("WARNING", 2), ("INFO", 3),
                                      ("VERBOSE", 4)])
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = Severity

    def __init__(self, min_severity=None):
        self.min_severity = min_severity if min_severity is not None else Logger.WARNING
        self.messages = []

    def log(self, severity, msg):
        self.messages.append((severity, msg))


# ------------------------------------------------------------------------------------------------ the module
_EXPORTED = ("DataType", "TensorFormat", "DimensionOperation", "PluginFieldType", "TensorRTPhase",
             "PluginCapabilityType", "PluginArgType", "PluginArgDataType", "nptype", "Dims", "DimsExprs",
             "PluginTensorDesc", "DynamicPluginTensorDesc", "ITensor", "IDimensionExpr", "IExprBuilder", "ISymExpr",
             "ISymExprs", "KernelLaunchParams", "IPluginV3", "IPluginV3QuickCore", "IPluginV3QuickBuild",
             "IPluginV3QuickRuntime", "IPluginCreatorV3Quick", "PluginField", "PluginFieldCollection",
             "IPluginRegistry", "Logger")
_AOT_ONLY = ("QuickPluginCreationRequest", "IPluginV3QuickAOTBuild")


def make_module(aot: bool = True) -> types.ModuleType:
    """A fresh stand-in `tensorrt` module (its own, empty plugin registry)."""
    trt = types.ModuleType("tensorrt", "Stand-in for TensorRT's native core (tests/trt_standin.py)")
    g = globals()
    for name in _EXPORTED + (_AOT_ONLY if aot else ()):
        setattr(trt, name, g[name])
    registry = IPluginRegistry()
    trt.get_plugin_registry = lambda: registry
    trt.float32, trt.float16, trt.bfloat16 = DataType.FLOAT, DataType.HALF, DataType.BF16
    trt.int8, trt.int32, trt.int64, trt.bool, trt.uint8 = (DataType.INT8, DataType.INT32, DataType.INT64,
                                                           DataType.BOOL, DataType.UINT8)
    trt.fp8, trt.int4 = DataType.FP8, DataType.INT4
    trt.__version__ = TENSORRT_VERSION
    trt.__standin__ = True
    return trt


def plugin_source_dir():
    """The installed `tensorrt_bindings/plugin` folder (TensorRT's real tensorrt.plugin), or None."""
    try:
        spec = importlib.util.find_spec("tensorrt_bindings")  # finds the package without executing it
    except (ImportError, ValueError):
        spec = None
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        d = Path(loc) / "plugin"
        if (d / "__init__.py").is_file() and (d / "_lib.py").is_file():
            return d
    return None


def load_plugin_package(trt: types.ModuleType) -> types.ModuleType:
    """Execute the real plugin package as `tensorrt.plugin` over the stand-in `trt`, which must already be
    `sys.modules["tensorrt"]`. Adds `tensorrt.plugin` and its submodules to sys.modules (the caller restores it)."""
    if sys.modules.get("tensorrt") is not trt:
        raise RuntimeError("install the stand-in as sys.modules['tensorrt'] first")
    src = plugin_source_dir()
    if src is None:
        raise ImportError("tensorrt_bindings/plugin is not installed")
    spec = importlib.util.spec_from_file_location("tensorrt.plugin", src / "__init__.py",
                                                  submodule_search_locations=[str(src)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["tensorrt.plugin"] = pkg
    trt.plugin = pkg
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # leave the installed package's __pycache__ alone
    try:
        spec.loader.exec_module(pkg)
    except BaseException:
        sys.modules.pop("tensorrt.plugin", None)
        raise
    finally:
        sys.dont_write_bytecode = dont_write
    return pkg
