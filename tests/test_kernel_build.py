"""CPU checks of the fused CUDA kernel (`kernels/masked_modconv.cu`) and its launch ABI (`ssae.kernels.cuda`).

- PTX for every supported architecture, warnings as errors, with the expected entry points;
- the Philox/Box-Muller helpers compiled for the host with nvcc, bit for bit against `ssae/philox.py`;
- the whole kernel (both inner paths, explicit and generated xi) run on the host with g++ through a small
  emulation of the CUDA built-ins it uses (one std::thread per CUDA thread, std::barrier for __syncthreads, WMMA
  as whole-tile matrix ops with CUDA's alignment rules checked) against `ssae/models/injection.py`;
- the ABI helpers (grid/block sizes, parameter packing) in pure Python.
"""
from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from ssae.kernels import cuda as kc
from ssae import philox
from ssae.models import injection as reference

NVCC = kc.find_nvcc()
GXX = shutil.which("g++")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA toolkit not installed)")
needs_gxx = pytest.mark.skipif(GXX is None, reason="g++ not found")

EXPECTED_ENTRIES = sorted(set(kc.ENTRY_POINTS.values()) | {kc.PHILOX_ENTRY})


# ---------------------------------------------------------------------------------------------------- PTX build

@pytest.fixture(scope="module")
def ptx_dir(tmp_path_factory) -> dict[str, Path]:
    """PTX for every supported arch (nvcc calls run two at a time), into a fresh folder via the cache."""
    out = tmp_path_factory.mktemp("ptx")
    with ThreadPoolExecutor(max_workers=2) as pool:
        paths = list(pool.map(lambda a: kc.compile_ptx(a, out, strict=True), kc.SUPPORTED_ARCHS))
    return dict(zip(kc.SUPPORTED_ARCHS, paths))


@needs_nvcc
def test_ptx_builds_for_every_arch_with_entry_points(ptx_dir):
    assert set(ptx_dir) == {"75", "80", "86", "87", "89", "90"}
    for arch, path in ptx_dir.items():
        ptx = path.read_text()
        assert f".target sm_{arch}" in ptx
        assert sorted(kc.ptx_entry_points(ptx)) == EXPECTED_ENTRIES, arch
        # the tensor-core variants use tensor-core MMAs, the others do not
        assert "mma.sync" in _entry_body(ptx, "ssae_masked_modconv_region_f16")
        assert "mma.sync" not in _entry_body(ptx, "ssae_masked_modconv_region_f16_simt")
        assert "mma.sync" not in _entry_body(ptx, "ssae_masked_modconv_region_f32")


@needs_nvcc
def test_entry_point_parameters_match_the_abi(ptx_dir):
    ptx = ptx_dir["80"].read_text()
    for name in kc.ENTRY_POINTS.values():
        kinds = _ptx_param_kinds(ptx, name)
        assert kinds == [{"ptr": "u64", "i32": "u32"}[p.kind] for p in kc.kernel_params()], name
    assert _ptx_param_kinds(ptx, kc.PHILOX_ENTRY) == [{"ptr": "u64", "i32": "u32", "i64": "u64"}[p.kind]
                                                      for p in kc.PHILOX_PARAMS]


@needs_nvcc
def test_warnings_are_errors(tmp_path, monkeypatch):
    """A warning in the source fails the build (so the CI build catches new warnings)."""
    src = tmp_path / "masked_modconv.cu"
    src.write_text(kc.SOURCE.read_text() + "\nstatic __device__ int ssae_unused_for_test() { int unused; return 0; }\n")
    monkeypatch.setattr(kc, "SOURCE", src)
    monkeypatch.setenv("SSAE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(kc.KernelBuildError, match="unused"):
        kc.compile_ptx("sm_80", strict=True)


@needs_nvcc
def test_compile_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SSAE_CACHE", str(tmp_path))
    first = kc.compile_ptx("sm_80", strict=True)
    assert first.is_relative_to(tmp_path / "kernels")
    mtime = first.stat().st_mtime_ns
    assert kc.compile_ptx("80", strict=True) == first and first.stat().st_mtime_ns == mtime
    assert "--use_fast_math" not in kc.nvcc_flags("ptx", "80") and "-Werror" in kc.nvcc_flags("cubin", "80")
    assert "-Werror" not in kc.nvcc_flags("cubin", "90", strict=False)  # run-time builds on GPU machines


def _entry_body(ptx: str, name: str) -> str:
    start = ptx.index(f".entry {name}(")
    nxt = ptx.find(".entry ", start + 1)
    return ptx[start: nxt if nxt > 0 else len(ptx)]


def _ptx_param_kinds(ptx: str, name: str) -> list[str]:
    import re
    body = _entry_body(ptx, name)
    header = body[: body.index(")")]
    return re.findall(r"\.param\s+\.(\w+)\s+\w+", header)


# ---------------------------------------------------------------------------------------------------- Philox on host

RNG_HARNESS = r"""
#define SSAE_RNG_ONLY
#include "masked_modconv.cu"
#include <cstdio>
#include <cstdlib>
#include <cstring>

// usage: rng SEED STREAM NBLOCKS INDEX...
// prints NBLOCKS lines "w0 w1 w2 w3 n0 n1 n2 n3" (words and float32 bit patterns, hex) of blocks 0.., then one
// float32 bit pattern per INDEX from philox_normal_at.
static unsigned int bits(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }

int main(int argc, char** argv) {
    const unsigned long long seed = std::strtoull(argv[1], nullptr, 10);
    const unsigned int stream = static_cast<unsigned int>(std::strtoul(argv[2], nullptr, 10));
    const unsigned int nblocks = static_cast<unsigned int>(std::strtoul(argv[3], nullptr, 10));
    const unsigned int lo = static_cast<unsigned int>(seed), hi = static_cast<unsigned int>(seed >> 32);
    for (unsigned int q = 0; q < nblocks; ++q) {
        const ssae::Words4 w = ssae::philox_block_words(lo, hi, stream, q);
        const ssae::Normal4 n = ssae::philox_normal4(lo, hi, stream, q);
        std::printf("%08x %08x %08x %08x %08x %08x %08x %08x\n", w.w0, w.w1, w.w2, w.w3, bits(n.n0), bits(n.n1),
                    bits(n.n2), bits(n.n3));
    }
    for (int i = 4; i < argc; ++i) {
        std::printf("%08x\n", bits(ssae::philox_normal_at(lo, hi, stream, std::strtoull(argv[i], nullptr, 10))));
    }
    return 0;
}
"""


def _build_host_binary(tmp_path_factory, source_name: str, source: str, compiler: list[str]) -> Path:
    """Compile a host harness that includes the kernel sources (warnings are errors); the executable's path."""
    d = tmp_path_factory.mktemp(Path(source_name).stem)
    (d / source_name).write_text(source)
    exe = d / Path(source_name).stem
    cmd = compiler + [f"-I{kc.SOURCE.parent}", str(d / source_name), "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return exe


@pytest.fixture(scope="module")
def rng_binary(tmp_path_factory) -> Path:
    return _build_host_binary(tmp_path_factory, "rng.cu", RNG_HARNESS,
                              [NVCC, "-O2", "-std=c++17", "-Werror", "all-warnings"])


@needs_nvcc
@pytest.mark.parametrize("seed,stream", [(0, philox.STREAM_REGION), (3, philox.STREAM_PIXEL + 11),
                                         (2 ** 64 - 1, philox.STREAM_INJECTION + 11), (0x1234_5678_9ABC_DEF0, 7)])
def test_host_philox_matches_numpy_bit_for_bit(rng_binary, seed, stream):
    nblocks = 4096
    indices = [0, 1, 2, 3, 5, 4 * 2 ** 32 + 6, 2 ** 40 + 3, 123_456_789]
    r = subprocess.run([str(rng_binary), str(seed), str(stream), str(nblocks), *map(str, indices)],
                       capture_output=True, text=True, timeout=120, check=True)
    rows = np.array([[int(v, 16) for v in line.split()] for line in r.stdout.splitlines()[:nblocks]],
                    dtype=np.uint64).astype(np.uint32)
    ctr = np.zeros((nblocks, 4), dtype=np.uint32)
    ctr[:, 0] = np.arange(nblocks)
    ctr[:, 2] = stream
    np.testing.assert_array_equal(rows[:, :4], philox.philox4x32(ctr, (seed & 0xFFFFFFFF, seed >> 32)))
    normals = philox.gaussian(seed, stream, 4 * nblocks).reshape(nblocks, 4)
    np.testing.assert_array_equal(rows[:, 4:], normals.view(np.uint32))
    at = np.array([int(v, 16) for v in r.stdout.splitlines()[nblocks:]], dtype=np.uint64).astype(np.uint32)
    np.testing.assert_array_equal(at, philox.gaussian_at(seed, stream, np.array(indices)).view(np.uint32))


# ---------------------------------------------------------------------------------------------------- host emulation

EMULATION_SHIM = r"""
// The CUDA built-ins masked_modconv.cu uses, for running it on the host: one std::thread per CUDA thread of a
// block, blocks one after another. WMMA fragments hold whole tiles; the warp's lane 0 does each collective
// operation (the kernel gives every lane the same arguments, as CUDA requires), after checking CUDA's rules
// (256-bit aligned pointers, ldm a multiple of 16 bytes).
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#define SSAE_HOST_EMULATION 1
#define SSAE_HD inline
#define SSAE_DEV inline
#define __global__
#define __shared__ static
#define __launch_bounds__(...)

struct uint3 { unsigned int x, y, z; };
static thread_local uint3 threadIdx;
static uint3 blockIdx, blockDim = {256, 1, 1};
static std::barrier<>* g_barrier = nullptr;
inline void __syncthreads() { g_barrier->arrive_and_wait(); }
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
using std::sqrt; using std::log; using std::sin; using std::cos;

using __half = _Float16;
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half_rn(float f) { return static_cast<__half>(f); }

namespace nvcuda { namespace wmma {
struct row_major {}; struct col_major {}; struct matrix_a {}; struct matrix_b {}; struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment { float v[16][16]; };
inline bool lane0() { return threadIdx.x % 32 == 0; }
template <class T> void check(const T* p, unsigned ldm, const char* what) {
    if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0 || (ldm * sizeof(T)) % 16 != 0) {
        std::fprintf(stderr, "WMMA %s: misaligned pointer %p or ldm %u\n", what, (const void*)p, ldm);
        std::abort();
    }
}
template <class Use, class T, class L>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, const T* p, unsigned ldm) {
    check(p, ldm, "load");
    if (!lane0()) return;
    const bool rm = std::is_same<L, row_major>::value;
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c) f.v[r][c] = static_cast<float>(rm ? p[r * ldm + c] : p[c * ldm + r]);
}
template <class F> void fill_fragment(F& f, float x) {
    for (auto& row : f.v) for (auto& e : row) e = x;
}
template <class A, class B, class C>
void mma_sync(C& d, const A& a, const B& b, const C& c) {
    if (!lane0()) return;
    float out[16][16];
    for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 16; ++n) {
            float s = c.v[m][n];
            for (int k = 0; k < 16; ++k) s += a.v[m][k] * b.v[k][n];
            out[m][n] = s;
        }
    std::memcpy(d.v, out, sizeof out);
}
template <class F> void store_matrix_sync(float* p, const F& f, unsigned ldm, layout_t layout) {
    check(p, ldm, "store");
    if (!lane0()) return;
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c) (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.v[r][c];
}
}}  // namespace nvcuda::wmma

#include "masked_modconv.cu"

static std::vector<char> read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) { std::fprintf(stderr, "cannot read %s\n", path.c_str()); std::exit(2); }
    return std::vector<char>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// Runs the grid block by block, 256 threads each.
static void launch(unsigned gx, unsigned gy, unsigned gz, const std::function<void()>& body) {
    std::barrier<> bar(256);
    g_barrier = &bar;
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                blockIdx = {x, y, z};
                std::vector<std::thread> threads;
                for (unsigned t = 0; t < 256; ++t)
                    threads.emplace_back([t, &body] { threadIdx = {t, 0, 0}; body(); });
                for (auto& th : threads) th.join();
            }
}

// usage: emu KERNEL DIR GX GY GZ S0 .. S14   (DIR holds the inputs as raw files; writes DIR/y.bin)
int main(int argc, char** argv) {
    if (argc != 21) { std::fprintf(stderr, "bad arguments\n"); return 2; }
    const std::string kernel = argv[1], dir = std::string(argv[2]) + "/";
    const unsigned gx = std::atoi(argv[3]), gy = std::atoi(argv[4]), gz = std::atoi(argv[5]);
    int s[15];
    for (int i = 0; i < 15; ++i) s[i] = static_cast<int>(std::strtol(argv[6 + i], nullptr, 10));
    std::vector<char> x = read_file(dir + "x.bin"), w = read_file(dir + "weight.bin"),
        b = read_file(dir + "bias.bin"), st = read_file(dir + "style.bin"), d = read_file(dir + "direction.bin"),
        m = read_file(dir + "mask.bin"), str = read_file(dir + "strength.bin"), nz = read_file(dir + "noise.bin"),
        nw = read_file(dir + "noise_weight.bin");
    const bool f16 = kernel.find("_f16") != std::string::npos;
    const size_t n_out = static_cast<size_t>(s[0]) * s[2] * s[3] * s[4];
    std::vector<char> y(n_out * (f16 ? 2 : 4), 0);
    std::memset(y.data(), 0xFF, y.size());  // poisoned: NaN in both float32 and float16
#define SSAE_ARGS(T) \
    reinterpret_cast<const T*>(x.data()), reinterpret_cast<const T*>(w.data()), reinterpret_cast<const T*>(b.data()), \
    reinterpret_cast<const T*>(st.data()), reinterpret_cast<const T*>(d.data())
#define SSAE_REST(T) \
    reinterpret_cast<const T*>(m.data()), reinterpret_cast<const T*>(str.data()), \
    reinterpret_cast<const T*>(nz.data()), reinterpret_cast<const T*>(nw.data()), \
    s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10], s[11], s[12], s[13], s[14], \
    reinterpret_cast<T*>(y.data())
    std::function<void()> body;
    if (kernel == "ssae_masked_modconv_region_f32") body = [&] { ssae_masked_modconv_region_f32(SSAE_ARGS(float), SSAE_REST(float)); };
    else if (kernel == "ssae_masked_modconv_region_f16") body = [&] { ssae_masked_modconv_region_f16(SSAE_ARGS(__half), SSAE_REST(__half)); };
    else if (kernel == "ssae_masked_modconv_region_f16_simt") body = [&] { ssae_masked_modconv_region_f16_simt(SSAE_ARGS(__half), SSAE_REST(__half)); };
    else { std::fprintf(stderr, "unknown kernel %s\n", kernel.c_str()); return 2; }
    launch(gx, gy, gz, body);
    std::ofstream(dir + "y.bin", std::ios::binary).write(y.data(), static_cast<std::streamsize>(y.size()));
    return 0;
}
"""


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Path:
    """The kernel source compiled for the host with g++ and the emulated CUDA built-ins."""
    return _build_host_binary(tmp_path_factory, "emu.cpp", EMULATION_SHIM,
                              [GXX, "-std=c++20", "-O2", "-pthread", "-Wall", "-Werror", "-Wno-unknown-pragmas"])


def _problem(seed: int, b: int, cin: int, cout: int, h: int, w: int) -> dict:
    """Random inputs with a soft mask that is exactly zero on part of the image (the t = 0 path)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, 1, h, w, generator=g)
    mask[:, :, : h // 3] = 0.0
    p = dict(x=torch.randn(b, cin, h, w, generator=g), weight=torch.randn(cout, cin, 3, 3, generator=g) * 0.2,
             bias=torch.randn(cout, generator=g), style=torch.randn(b, cin, generator=g) + 0.5, mask=mask,
             strength=torch.rand(b, generator=g) * 3 + 0.5, noise_weight=torch.randn(1, generator=g),
             direction=torch.randn(b, cin, generator=g) * 2)
    return p


def _expected(p: dict, *, noise, activate=True) -> torch.Tensor:
    """The reference in float64 (inputs as given, so FP16 runs compare against their own rounded inputs)."""
    d = {k: v.double() for k, v in p.items()}
    return reference.masked_modconv(d["x"], d["weight"], d["bias"], d["style"], d["mask"], d["strength"],
                                    direction=d["direction"], noise=None if noise is None else noise.double(),
                                    noise_weight=d["noise_weight"], activate=activate)


def _emulate(exe: Path, tmp: Path, launch: kc.PreparedLaunch) -> torch.Tensor:
    """Run a prepared launch (what `masked_modconv_cuda` would launch) on the host emulation; y as float32."""
    y = launch.tensors["y"]
    for k, v in launch.tensors.items():
        if k != "y":
            v.numpy().tofile(tmp / f"{k}.bin")
    args = [str(exe), launch.name, str(tmp), *map(str, launch.config.grid),
            *(str(launch.scalars[k]) for k in kc.SCALARS)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    np_dtype = np.float16 if y.dtype == torch.float16 else np.float32
    return torch.from_numpy(np.fromfile(tmp / "y.bin", dtype=np_dtype).reshape(y.shape).astype(np.float32))


def _launch(p: dict, dtype: torch.dtype, variant: str, **kw) -> kc.PreparedLaunch:
    """prepare_launch on the problem's tensors in `dtype`, checking the variant it picks."""
    t = {k: v.to(dtype) for k, v in p.items()}
    launch = kc.prepare_launch(t["x"], t["weight"], t["bias"], t["style"], t["mask"], t["strength"],
                               direction=t["direction"], noise_weight=t["noise_weight"],
                               tensor_cores=variant != "f16_simt", **kw)
    assert launch.name.endswith("_" + variant)
    return launch


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.isfinite(a).all(), "non-finite output (an element was never written?)"
    return ((a.double() - b).abs().max() / b.abs().max()).item()


# (kernel variant, dtype, tolerance): FP32 <= 1e-4 and FP16 <= 1e-2 relative error, as on the GPU
VARIANTS = [("f32", torch.float32, 1e-4), ("f16", torch.float16, 1e-2), ("f16_simt", torch.float16, 1e-2)]


def _rounded(p: dict, dtype) -> dict:
    """The values the kernel sees (inputs rounded to dtype), in float32."""
    return {k: v.to(dtype).float() for k, v in p.items()}


@needs_gxx
@pytest.mark.parametrize("variant,dtype,tol", VARIANTS)
def test_emulated_region_kernel_matches_reference(emulator, tmp_path, variant, dtype, tol):
    # odd sizes: 2 x 2 tiles with partial ones, Cin not a multiple of any chunk, Cout over 1 channel tile
    p = _rounded(_problem(1, b=2, cin=21, cout=70, h=11, w=19), dtype)
    xi = torch.randn(1, 1, 11, 19).to(dtype).float()  # shared by the batch (stride 0), as the runtime feeds it
    launch = _launch(p, dtype, variant, noise=xi.to(dtype))
    assert launch.scalars["xi_mode"] == kc.XI_EXPLICIT and launch.scalars["xi_batch_stride"] == 0
    assert _rel(_emulate(emulator, tmp_path, launch), _expected(p, noise=xi)) <= tol


@needs_gxx
@pytest.mark.parametrize("variant,dtype,tol", VARIANTS)
def test_emulated_region_kernel_vector_weight_loads(emulator, tmp_path, variant, dtype, tol):
    # Cin = 40: whole chunks read the weights as 16-byte vectors, the last (partial) chunk element by element
    p = _rounded(_problem(4, b=1, cin=40, cout=70, h=9, w=18), dtype)
    xi = torch.randn(1, 1, 9, 18).to(dtype).float()
    launch = _launch(p, dtype, variant, noise=xi.to(dtype))
    assert _rel(_emulate(emulator, tmp_path, launch), _expected(p, noise=xi)) <= tol


@needs_gxx
@pytest.mark.parametrize("variant,dtype,tol", VARIANTS)
def test_emulated_region_kernel_generated_xi_in_a_window(emulator, tmp_path, variant, dtype, tol):
    # a window at (5, 7) of a 40-wide image, xi generated in the kernel at the window's full-image positions
    p = _rounded(_problem(2, b=2, cin=19, cout=9, h=10, w=17), dtype)
    window, full_w = (5, 7), 40
    xi_stream, xi_seed = philox.STREAM_INJECTION + 11, 2 ** 33 + 9
    launch = _launch(p, dtype, variant, xi_seed=xi_seed, xi_stream=xi_stream, window=window, full_width=full_w)
    assert launch.scalars["xi_mode"] == kc.XI_GENERATED and launch.scalars["pixel_stream"] == 0
    idx = (np.arange(window[0], window[0] + 10)[:, None] * full_w + np.arange(window[1], window[1] + 17)[None])
    xi = torch.from_numpy(philox.gaussian_at(xi_seed, xi_stream, idx))[None, None]
    assert _rel(_emulate(emulator, tmp_path, launch), _expected(p, noise=xi)) <= tol


@needs_gxx
def test_emulated_kernel_per_sample_xi_no_activation_and_strength_zero(emulator, tmp_path):
    p = _problem(3, b=3, cin=16, cout=64, h=8, w=16)  # exact tiles
    xi = torch.randn(3, 1, 8, 16)
    launch = _launch(p, torch.float32, "f32", noise=xi, activate=False)
    assert launch.scalars["xi_batch_stride"] == 8 * 16 and launch.scalars["activate"] == 0
    assert _rel(_emulate(emulator, tmp_path, launch), _expected(p, noise=xi, activate=False)) <= 1e-4
    # strength 0: the unedited layer, x * rmsnorm(a) (no noise term: xi_mode 0), on both inner paths
    p["strength"] = torch.zeros(3)
    d = {k: v.double() for k, v in p.items()}
    s = d["style"] * torch.rsqrt(d["style"].pow(2).mean(1, keepdim=True) + reference.EPS)
    unedited = reference.lrelu_bias(torch.nn.functional.conv2d(d["x"] * s[:, :, None, None], d["weight"],
                                                               padding=1), d["bias"])
    launch = _launch(p, torch.float32, "f32")
    assert launch.scalars["xi_mode"] == kc.XI_NONE
    assert _rel(_emulate(emulator, tmp_path, launch), unedited) <= 1e-4
    launch = _launch(p, torch.float16, "f16")
    assert _rel(_emulate(emulator, tmp_path, launch), unedited) <= 1e-2


# ---------------------------------------------------------------------------------------------------- ABI (Python)

def test_launch_config_covers_every_output():
    cfg = kc.launch_config(batch=4, cout=128, height=256, width=256)
    assert cfg == kc.LaunchConfig((16 * 32, 2, 4), (256, 1, 1), 0)
    assert kc.launch_config(1, 70, 37, 53).grid == (4 * 5, 2, 1)  # ceil(53/16) * ceil(37/8), ceil(70/64)
    assert kc.launch_config(2, 1, 1, 1).grid == (1, 1, 2)
    for h, w in [(1, 1), (8, 16), (9, 17), (37, 53)]:
        gx, gy, gz = kc.launch_config(1, 64, h, w).grid
        assert gx * kc.TILE_H * kc.TILE_W >= h * w and (gx - 1) < ((h + 7) // 8) * ((w + 15) // 16)
    with pytest.raises(ValueError):
        kc.launch_config(0, 1, 1, 1)
    assert kc.philox_launch_config(257).grid == (2, 1, 1)


def test_kernel_parameter_lists():
    region = kc.kernel_params()
    assert [p.name for p in region] == [*kc.REGION_INPUTS, *kc.SCALARS, "y"]
    assert len(region) == 9 + 15 + 1
    # the region kernels take the ONNX node's inputs in its order (what the TensorRT plugin passes through)
    from ssae.kernels import ops
    assert kc.REGION_INPUTS == ops.ONNX_INPUTS[:3] + ("style",) + ops.ONNX_INPUTS[4:]
    assert {p.kind for p in region[9:24]} == {"i32"}
    assert set(kc.ENTRY_POINTS.values()) == {f"ssae_masked_modconv_region_{v}" for v in ("f32", "f16", "f16_simt")}


def test_seed_and_int32_packing():
    assert kc.seed_words(0) == (0, 0)
    assert kc.seed_words(2 ** 64 - 1) == (-1, -1)
    assert kc.seed_words(0x1_8000_0000) == (-2 ** 31, 1)
    with pytest.raises(ValueError):
        kc.seed_words(-1)
    assert kc.to_int32(philox.STREAM_PIXEL + 11) == 43 and kc.to_int32(0xFFFFFFFF) == -1


def test_pack_params_orders_and_checks_values():
    params = kc.kernel_params()
    values = {p.name: (0x7F00_0000_0000 + 256 * i if p.kind == "ptr" else i) for i, p in enumerate(params)}
    packed = kc.pack_params(params, values)
    assert [v for _, v in packed] == [values[p.name] for p in params]
    bufs = kc.param_buffers(packed)
    assert [b.dtype for b in bufs] == [np.uint64] * 9 + [np.int32] * 15 + [np.uint64]
    assert bufs[9].item() == 9 and bufs[-1].item() == values["y"]
    with pytest.raises(ValueError, match="missing"):
        kc.pack_params(params, {k: v for k, v in values.items() if k != "cin"})
    with pytest.raises(ValueError, match="int32"):
        kc.pack_params(params, values | {"cin": 2 ** 31})
    with pytest.raises(ValueError, match="pointer"):
        kc.pack_params(params, values | {"x": 0})


def test_variant_choice_and_arch_names():
    assert kc.variant_for(torch.float32, 128) == "f32"
    assert kc.variant_for(torch.float16, 128) == "f16"
    assert kc.variant_for(torch.float16, 8) == "f16_simt"
    assert kc.variant_for(torch.float16, 128, tensor_cores=False) == "f16_simt"
    with pytest.raises(TypeError):
        kc.variant_for(torch.bfloat16, 128)
    assert [kc.normalize_arch(a) for a in ("sm_87", "compute_90", "8.9", 75)] == ["87", "90", "89", "75"]


def test_cpu_import_and_unavailable_reason():
    """On a machine without CUDA the loader says what is missing instead of failing at import."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    reason = kc.unavailable_reason()
    assert reason and "CUDA device" in reason
    with pytest.raises(kc.KernelUnavailable, match="CUDA device"):
        kc.load_module()
    with pytest.raises(kc.KernelUnavailable, match="CUDA device"):
        kc.load_module_image(b"\x7fELF")


@needs_nvcc
def test_region_entries_are_built_for_three_blocks_per_sm(ptx_dir):
    """The region entries carry launch bounds for 3 resident blocks (SSAE_REGION_MIN_BLOCKS; fewer registers, so 3
    blocks fit per SM on sm_90); the Philox entry keeps the compiler's choice."""
    ptx = ptx_dir["90"].read_text()
    for name in EXPECTED_ENTRIES:
        body = _entry_body(ptx, name)
        header = body[: body.index("{")]
        if name.startswith("ssae_masked_modconv_region_"):
            assert ".minnctapersm 3" in header, name
        else:
            assert ".minnctapersm" not in header, name
