"""The TensorRT plugin `ssae::MaskedModConv` (ssae.kernels.trt_plugin) through TensorRT's REAL `tensorrt.plugin`
11.4 source (the `tensorrt_bindings/plugin` folder of the tensorrt-cu13-bindings wheel), run over a stand-in of the
native core `tensorrt` (tests/trt_standin.py), with no GPU, nvcc or libnvinfer.

Covered, the way TensorRT's builder drives a quickly deployable plugin: registration (`register_plugin()`, the
JIT `impl` next to the AOT `aot_impl`, idempotence), the creator in the plugin registry, creation of the AOT / JIT
plugin object from plugin fields and a creation request, output data types, symbolic output shapes (static and
dynamic B/H/W), the autotune type/format combinations and tactics, and `get_launch_params` + `get_kernel` for every
(type, tactic): kernel name, PTX, grid/block/shared memory and the 15 int32 scalar arguments, all checked against
the module's own ABI helpers (`kernel_name`, `launch_geometry`, `scalar_args`, `output_shape`, `kernel_ptx`).

NOT checked here (the stand-in does not model it; tests/gpu covers what needs the real thing): building an engine
(ONNX parsing and how the parser maps the node's attributes and `aot` to plugin fields / creation request, format
negotiation and type propagation by the builder, tactic timing and selection, serialization), TensorRT's own
simplification of shape expressions beyond constant folding, that the PTX (here fixed bytes: `kcuda.compile_ptx`
and `_device_arch` are monkeypatched) is valid or contains the kernel, that the kernel's parameters match
inputs + extra args + outputs, and any kernel execution or result (the JIT `enqueue` is not run).
"""
import sys
from dataclasses import dataclass

import numpy as np
import pytest

import trt_standin as standin
from ssae.kernels import cuda as kcuda
from ssae.kernels import ops
from ssae.kernels import trt_plugin as tp

pytestmark = pytest.mark.skipif(
    standin.plugin_source_dir() is None,
    reason="TensorRT's pure-Python plugin package (tensorrt_bindings/plugin, wheel tensorrt-cu13-bindings) "
           "is not installed")

NAME, NS = ops.PLUGIN_NAME, ops.PLUGIN_NAMESPACE
FAKE_PTX = b"//\n// stand-in PTX: no nvcc here\n//\n.version 8.0\n.target sm_90\n.address_size 64\n"
N_IN = len(tp.INPUTS)
TACTICS = [tp.TACTIC_TENSOR_CORES, tp.TACTIC_SIMT]


def _is_trt_module(name: str) -> bool:
    return name == "tensorrt" or name.startswith("tensorrt.")


@pytest.fixture
def install(monkeypatch, tmp_path):
    """install(aot=True) -> (trt, trtp): a fresh stand-in `tensorrt` + the real `tensorrt.plugin` in sys.modules,
    ssae.kernels.trt_plugin unregistered, and PTX from fixed bytes (no GPU, no nvcc). All undone afterwards."""
    saved = {k: v for k, v in sys.modules.items() if _is_trt_module(k)}
    monkeypatch.setattr(tp, "_registered", False)
    monkeypatch.setattr(tp, "_ptx_cache", {})
    monkeypatch.setattr(tp, "_device_arch", lambda: 90)
    ptx_file = tmp_path / "masked_modconv.sm_90.ptx"
    ptx_file.write_bytes(FAKE_PTX)
    compiled = []

    def compile_ptx(arch, *args, **kwargs):
        compiled.append(str(arch))
        return ptx_file

    monkeypatch.setattr(kcuda, "compile_ptx", compile_ptx)

    def _install(aot: bool = True):
        for k in [k for k in sys.modules if _is_trt_module(k)]:
            del sys.modules[k]
        trt = standin.make_module(aot=aot)
        sys.modules["tensorrt"] = trt
        return trt, standin.load_plugin_package(trt)

    _install.compiled = compiled
    yield _install
    for k in [k for k in sys.modules if _is_trt_module(k)]:
        del sys.modules[k]
    sys.modules.update(saved)


@pytest.fixture
def registered(install):
    trt, trtp = install()
    tp.register_plugin()
    return trt, trtp


# ------------------------------------------------------------------------------------------------ builder driver
@dataclass(frozen=True)
class Case:
    """Input shapes: ints are static dimensions, strings dynamic ones (values in `env`)."""
    b: object
    cin: int
    cout: int
    h: object
    w: object
    xi_b: object  # batch of the noise input: 1 (one xi map for the batch), or the batch
    env: tuple = ()

    def shapes(self):
        b, cin, cout, h, w = self.b, self.cin, self.cout, self.h, self.w
        return {"x": (b, cin, h, w), "weight": (cout, cin, 3, 3), "bias": (cout,), "style": (b, cin),
                "direction": (b, cin), "mask": (b, 1, h, w), "strength": (b,), "noise": (self.xi_b, 1, h, w),
                "noise_weight": (1,)}

    def value(self, d) -> int:
        return dict(self.env)[d] if isinstance(d, str) else d


@dataclass
class Launch:
    kernel: bytes
    ptx: bytes
    grid: tuple
    block: tuple
    shared_mem: int
    scalars: list
    symbolic: bool  # grid_z (the batch) is not a build-time constant


def _dim_expr(builder, d):
    return standin.dynamic_dim(d) if isinstance(d, str) else builder.constant(d)


def _desc(trt, dims, dtype, fmt, concrete):
    d = trt.PluginTensorDesc()
    d.dims, d.type, d.format, d.scale = trt.Dims([-1 if isinstance(v, str) else v for v in dims]), dtype, fmt, 1.0
    c = trt.Dims(concrete)
    return trt.DynamicPluginTensorDesc(d, min=c, opt=c, max=c)


def create(trt, request, activate=1, phase=None):
    """The plugin object as TensorRT makes it from the ONNX node's plugin fields and the network's preference."""
    creator = trt.get_plugin_registry().get_creator(NAME, "1", NS)
    fc = trt.PluginFieldCollection([trt.PluginField("activate", np.array([activate], dtype=np.int32),
                                                    trt.PluginFieldType.INT32)])
    phase = trt.TensorRTPhase.BUILD if phase is None else phase
    if request is None:
        return creator.create_plugin(NAME, NS, fc, phase)
    plg = creator.create_plugin(NAME, NS, fc, phase, request)
    return plg.get_capability_interface(trt.PluginCapabilityType.BUILD)


def build(trt, plg, case: Case, dtype):
    """Drive `plg` through the builder's calls: output types and shapes, format combinations, then per combination
    configure + every valid tactic's launch parameters and kernel. Returns (types, shape, combos, launches)."""
    builder = trt.IExprBuilder()
    shapes = case.shapes()
    exprs = [trt.DimsExprs([_dim_expr(builder, d) for d in shapes[n]]) for n in tp.INPUTS]
    out_types = plg.get_output_data_types([dtype] * N_IN, [len(e) for e in exprs])
    out_exprs = plg.get_output_shapes(exprs, [], builder)
    assert len(out_exprs) == 1
    out_dims = tuple(e for e in out_exprs[0])
    env = dict(case.env)
    out_shape = tuple(e.evaluate(env) for e in out_dims)
    io_dims = [shapes[n] for n in tp.INPUTS] + [(case.b, case.cout, case.h, case.w)]  # y, as the builder knows it
    linear = trt.TensorFormat.LINEAR

    def io(types, formats):
        return [_desc(trt, d, t, f, tuple(case.value(v) for v in d)) for d, t, f in zip(io_dims, types, formats)]

    flat = plg.get_supported_format_combinations(io([dtype] * (N_IN + 1), [linear] * (N_IN + 1)), N_IN)
    assert len(flat) % (N_IN + 1) == 0
    combos, launches = [], {}
    for k in range(0, len(flat), N_IN + 1):
        types = tuple(d.type for d in flat[k:k + N_IN + 1])
        formats = tuple(d.format for d in flat[k:k + N_IN + 1])
        descs = io(types, formats)
        plg.configure_plugin(descs[:N_IN], descs[N_IN:])
        tactics = sorted(plg.get_valid_tactics())
        combos.append((types, formats, tuple(tactics)))
        for tactic in tactics:
            p = plg.clone()
            p.set_tactic(tactic)
            params, extra = trt.KernelLaunchParams(), trt.ISymExprs()
            p.get_launch_params(exprs, descs, N_IN, params, extra, trt.IExprBuilder())
            kernel, ptx = p.get_kernel([d.desc for d in descs[:N_IN]], [d.desc for d in descs[N_IN:]])
            for s in [getattr(params, f) for f in ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z",
                                                   "shared_mem")] + [extra[i] for i in range(len(extra))]:
                assert isinstance(s, trt.ISymExpr) and s.type == trt.PluginArgType.INT
                assert s.dtype == trt.PluginArgDataType.INT32
            launches[(types[0], tactic)] = Launch(
                kernel, ptx,
                tuple(getattr(params, f).expr.evaluate(env) for f in ("grid_x", "grid_y", "grid_z")),
                tuple(getattr(params, f).expr.evaluate(env) for f in ("block_x", "block_y", "block_z")),
                params.shared_mem.expr.evaluate(env),
                [extra[i].expr.evaluate(env) for i in range(len(extra))],
                not params.grid_z.expr.is_constant())
    return out_types, out_shape, combos, launches


CASES = {
    # static shapes: TensorRT passes constant dimension expressions
    "static-2x64x64x32x32-xi1": Case(2, 64, 64, 32, 32, xi_b=1),
    "static-2x64x64x32x32-xiB": Case(2, 64, 64, 32, 32, xi_b=2),
    "static-3x8x70x33x17-xi1": Case(3, 8, 70, 33, 17, xi_b=1),  # H, W, Cout not multiples of the tile
    "static-3x8x70x33x17-xiB": Case(3, 8, 70, 33, 17, xi_b=3),
    # dynamic batch / crop size (the engines' optimization profiles): symbolic expressions, evaluated afterwards
    "dynamic-B2-32x32-xi1": Case("B", 64, 64, "H", "W", xi_b=1, env=(("B", 2), ("H", 32), ("W", 32))),
    "dynamic-B3-33x17-xiB": Case("B", 8, 70, "H", "W", xi_b="B", env=(("B", 3), ("H", 33), ("W", 17))),
    "dynamic-B5-7x40-xiB": Case("B", 16, 128, "H", "W", xi_b="B", env=(("B", 5), ("H", 7), ("W", 40))),
}


def _expected(case: Case, activate: int):
    b, h, w = (case.value(v) for v in (case.b, case.h, case.w))
    xi_batch = 1 if case.xi_b == 1 else b
    grid, block = tp.launch_geometry(b, case.cout, h, w)
    return (b, h, w), grid, block, tp.scalar_args(b, case.cin, case.cout, h, w, activate, xi_batch=xi_batch)


# ------------------------------------------------------------------------------------------------ the AOT plugin
@pytest.mark.parametrize("activate", [1, 0])
@pytest.mark.parametrize("case_id", list(CASES))
def test_aot_plugin_launch_params_for_every_tactic(install, registered, case_id, activate):
    trt, trtp = registered
    case = CASES[case_id]
    (b, h, w), grid, block, scalars = _expected(case, activate)
    f32, f16, linear = trt.float32, trt.float16, trt.TensorFormat.LINEAR
    for dtype in (f32, f16):
        plg = create(trt, trt.QuickPluginCreationRequest.PREFER_AOT, activate)
        assert isinstance(plg, trt.IPluginV3QuickAOTBuild) and not isinstance(plg, trt.IPluginV3QuickRuntime)
        assert plg.get_num_outputs() == 1
        out_types, out_shape, combos, launches = build(trt, plg, case, dtype)

        assert out_types == [dtype]
        assert out_shape == tp.output_shape((b, case.cin, h, w), (case.cout, case.cin, 3, 3))
        # FP32 and FP16, every I/O of one type, LINEAR, both tactics for each
        assert sorted(combos, key=lambda c: c[0][0].value) == [
            ((f32,) * (N_IN + 1), (linear,) * (N_IN + 1), tuple(TACTICS)),
            ((f16,) * (N_IN + 1), (linear,) * (N_IN + 1), tuple(TACTICS))]
        assert set(launches) == {(t, k) for t in (f32, f16) for k in TACTICS}
        for (t, tactic), got in launches.items():
            where = f"{case_id} {t.name} tactic {tactic}"
            assert got.kernel == tp.kernel_name("f16" if t == f16 else "f32", tactic).encode(), where
            assert got.ptx == tp.kernel_ptx() == FAKE_PTX, where
            assert (got.grid, got.block, got.shared_mem) == (tuple(grid), tuple(block), 0), where
            assert len(got.scalars) == len(kcuda.SCALARS) == 15, where
            assert got.scalars == scalars, (where, dict(zip(kcuda.SCALARS, got.scalars)))
            assert got.symbolic == isinstance(case.b, str), where
    assert install.compiled == ["90"]  # PTX for this (monkeypatched) GPU, compiled once and cached


def test_kernel_names_per_dtype_and_tactic(registered):
    """The tactic -> entry point mapping the launches above are compared with (f32 ignores the tactic)."""
    trt, _ = registered
    case = CASES["static-3x8x70x33x17-xiB"]
    _, _, _, launches = build(trt, create(trt, trt.QuickPluginCreationRequest.STRICT_AOT), case, trt.float16)
    names = {(t.name, k): v.kernel.decode() for (t, k), v in launches.items()}
    assert names == {("FLOAT", tp.TACTIC_TENSOR_CORES): "ssae_masked_modconv_region_f32",
                     ("FLOAT", tp.TACTIC_SIMT): "ssae_masked_modconv_region_f32",
                     ("HALF", tp.TACTIC_TENSOR_CORES): "ssae_masked_modconv_region_f16",
                     ("HALF", tp.TACTIC_SIMT): "ssae_masked_modconv_region_f16_simt"}


def test_xi_batch_stride(registered):
    """Scalar `xi_batch_stride`: 0 when the noise input's batch is the constant 1, H*W otherwise."""
    trt, _ = registered
    stride = kcuda.SCALARS.index("xi_batch_stride")
    for case_id, want in (("static-2x64x64x32x32-xi1", 0), ("static-2x64x64x32x32-xiB", 32 * 32),
                          ("static-3x8x70x33x17-xiB", 33 * 17), ("dynamic-B2-32x32-xi1", 0),
                          ("dynamic-B3-33x17-xiB", 33 * 17), ("dynamic-B5-7x40-xiB", 7 * 40)):
        plg = create(trt, trt.QuickPluginCreationRequest.PREFER_AOT)
        _, _, _, launches = build(trt, plg, CASES[case_id], trt.float32)
        assert {v.scalars[stride] for v in launches.values()} == {want}, case_id
        assert {v.scalars[kcuda.SCALARS.index("xi_mode")] for v in launches.values()} == {tp.XI_EXPLICIT}


# ------------------------------------------------------------------------------------------------ registration
def test_registration_defines_aot_jit_and_autotune(registered):
    trt, trtp = registered
    assert tp.is_registered()
    pdef = trtp.op.ssae.MaskedModConv
    assert pdef.plugin_id == tp.PLUGIN_ID == f"{NS}::{NAME}"
    assert pdef.input_tensor_names == list(tp.INPUTS)
    assert pdef.input_attrs == {"activate": int} and pdef.num_outputs == 1
    assert pdef.aot_impl_func.__name__ == "masked_modconv_aot" and pdef.aot_impl_attr_names == ["activate"]
    assert pdef.impl_func.__name__ == "masked_modconv_jit" and pdef.impl_attr_names == ["activate"]
    assert pdef.expects_tactic is True
    assert pdef.autotune_func.__name__ == "masked_modconv_autotune" and pdef.autotune_attr_names == []
    creators = trt.get_plugin_registry().all_creators
    assert len(creators) == 1
    creator = trt.get_plugin_registry().get_creator(NAME, ops.PLUGIN_VERSION, NS)
    assert creator is creators[0] and (creator.name, creator.plugin_namespace) == (NAME, NS)
    assert [(f.name, f.type) for f in creator.field_names] == [("activate", trt.PluginFieldType.INT64)]


def test_register_plugin_is_idempotent(registered, monkeypatch):
    trt, _ = registered
    tp.register_plugin()
    # the module state lost (e.g. a reload) while tensorrt.plugin still holds the definition: not an error
    monkeypatch.setattr(tp, "_registered", False)
    tp.register_plugin()
    assert tp.is_registered()
    assert len(trt.get_plugin_registry().all_creators) == 1


def test_jit_plugin_next_to_aot(registered):
    """The JIT implementation stays usable: chosen by the JIT preference, and (as at engine deserialization, no
    creation request) by default; it serializes `activate`, which its enqueue needs."""
    trt, _ = registered
    Q = trt.QuickPluginCreationRequest
    for request in (Q.PREFER_JIT, Q.STRICT_JIT, None):
        plg = create(trt, request, activate=1, phase=trt.TensorRTPhase.RUNTIME if request is None else None)
        assert isinstance(plg, trt.IPluginV3QuickRuntime) and not isinstance(plg, trt.IPluginV3QuickAOTBuild)
        fields = plg.get_fields_to_serialize()
        assert [(f.name, f.type, f.data.tolist()) for f in fields] == [("activate", trt.PluginFieldType.INT64, [1])]
    plg = create(trt, Q.PREFER_JIT)
    out_types, out_shape, combos, _ = _build_jit(trt, plg, CASES["static-3x8x70x33x17-xi1"])
    assert out_types == [trt.float16] and out_shape == (3, 70, 33, 17) and len(combos) == 2
    assert all(c[2] == tuple(TACTICS) for c in combos)
    assert isinstance(create(trt, Q.STRICT_AOT), trt.IPluginV3QuickAOTBuild)
    with pytest.raises(ValueError, match="both AOT and JIT"):
        create(trt, Q.UNKNOWN)


def _build_jit(trt, plg, case):
    builder = trt.IExprBuilder()
    shapes = case.shapes()
    exprs = [trt.DimsExprs([_dim_expr(builder, d) for d in shapes[n]]) for n in tp.INPUTS]
    out_types = plg.get_output_data_types([trt.float16] * N_IN, [len(e) for e in exprs])
    out_shape = tuple(e.evaluate() for e in plg.get_output_shapes(exprs, [], builder)[0])
    io_dims = [shapes[n] for n in tp.INPUTS] + [out_shape]
    io = [_desc(trt, d, trt.float16, trt.TensorFormat.LINEAR, d) for d in io_dims]
    flat = plg.get_supported_format_combinations(io, N_IN)
    combos = []
    for k in range(0, len(flat), N_IN + 1):
        types = tuple(d.type for d in flat[k:k + N_IN + 1])
        descs = [_desc(trt, d, t, trt.TensorFormat.LINEAR, d) for d, t in zip(io_dims, types)]
        plg.configure_plugin(descs[:N_IN], descs[N_IN:])
        combos.append((types, None, tuple(sorted(plg.get_valid_tactics()))))
    return out_types, out_shape, combos, None


def test_registration_without_aot_support(install):
    """A TensorRT without AOT Python plugins (no QuickPluginCreationRequest): JIT only, registration still works."""
    trt, trtp = install(aot=False)
    tp.register_plugin()
    pdef = trtp.op.ssae.MaskedModConv
    assert pdef.aot_impl_func is None and pdef.impl_func is not None
    assert trt.get_plugin_registry().get_creator(NAME, "1", NS) is not None
    assert isinstance(create(trt, None), trt.IPluginV3QuickRuntime)


def test_standin_expressions_evaluate():
    """The stand-in's expression builder: constants fold, unknowns stay symbolic and evaluate."""
    trt = standin.make_module()
    eb, op = trt.IExprBuilder(), trt.DimensionOperation
    c = eb.operation(op.CEIL_DIV, eb.constant(33), eb.constant(8))
    assert c.is_constant() and c.get_constant_value() == 5
    h = standin.dynamic_dim("H")
    e = eb.operation(op.PROD, eb.operation(op.CEIL_DIV, h, eb.constant(8)), eb.operation(op.SUM, h, eb.constant(1)))
    assert not e.is_constant() and e.evaluate({"H": 33}) == 5 * 34
    assert eb.operation(op.EQUAL, eb.constant(1), eb.constant(1)).get_constant_value() == 1
    assert eb.operation(op.FLOOR_DIV, h, eb.constant(2)).evaluate({"H": 7}) == 3
    with pytest.raises(RuntimeError):
        h.get_constant_value()
