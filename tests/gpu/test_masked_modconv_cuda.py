"""The fused CUDA kernel against the reference, on a CUDA device (`benchmarks/gpu_check.sh` runs this).

Fresh random inputs, outputs poisoned with NaN before every launch; FP32 within 1e-4 and FP16 within 1e-2
relative error of the reference (computed in float64 from the same, already rounded, inputs); odd sizes, batch
> 1, explicit and generated xi, window offsets; strength 0 is the unedited layer; the torch custom op uses the
kernel on CUDA tensors; the in-kernel noise equals `ssae/philox.py`.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssae.kernels import cuda as kc
from ssae import philox
from ssae.models import injection as reference

pytestmark = pytest.mark.gpu

TOL = {torch.float32: 1e-4, torch.float16: 1e-2}
STREAM_PIX, STREAM_XI = philox.STREAM_PIXEL + 11, philox.STREAM_INJECTION + 11


@pytest.fixture(scope="module", autouse=True)
def kernel_module():
    """Skips the module, naming what is missing, unless the kernel loads on this machine."""
    reason = kc.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    try:
        return kc.load_module()
    except kc.KernelUnavailable as e:
        pytest.skip(str(e))
    except kc.KernelBuildError as e:  # a machine that should build the kernel and cannot: an error, not a skip
        pytest.fail(f"the fused kernel does not build here:\n{e}")


def make_inputs(seed: int, b: int, cin: int, cout: int, h: int, w: int, dtype: torch.dtype) -> dict:
    """Random inputs in `dtype` on the GPU; the mask is exactly zero on the top third (the unedited path)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    dev = torch.device("cuda")

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, device=dev) * scale + shift).to(dtype)

    mask = torch.rand(b, 1, h, w, generator=g, device=dev)
    mask[:, :, : h // 3] = 0
    p = dict(x=rnd(b, cin, h, w), weight=rnd(cout, cin, 3, 3, scale=(1 / (9 * cin)) ** 0.5 * 3),
             bias=rnd(cout), style=rnd(b, cin, shift=0.5), mask=mask.to(dtype),
             strength=(torch.rand(b, generator=g, device=dev) * 3 + 0.5).to(dtype), noise_weight=rnd(1),
             direction=rnd(b, cin, scale=2.0))
    return p


def expected(p: dict, *, noise=None, activate=True) -> torch.Tensor:
    """The reference in float64 on the GPU."""
    d = {k: v.double() for k, v in p.items()}
    return reference.masked_modconv(d["x"], d["weight"], d["bias"], d["style"], d["mask"], d["strength"],
                                    direction=d["direction"], noise=None if noise is None else noise.double(),
                                    noise_weight=d["noise_weight"], activate=activate)


def run(p: dict, **kw) -> torch.Tensor:
    """The fused kernel with a NaN-poisoned output buffer."""
    b, cin, h, w = p["x"].shape
    out = torch.full((b, p["weight"].shape[0], h, w), float("nan"), dtype=p["x"].dtype, device="cuda")
    y = kc.masked_modconv_cuda(p["x"], p["weight"], p["bias"], p["style"], p["mask"], p["strength"],
                               direction=p["direction"], noise_weight=p["noise_weight"], out=out, **kw)
    torch.cuda.synchronize()
    assert y.data_ptr() == out.data_ptr()
    return y


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(y).all(), "non-finite output: some element was not written"
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


DTYPES = [torch.float32, torch.float16]
SHAPES = [  # (b, cin, cout, h, w)
    (3, 48, 70, 37, 53),     # odd sizes, partial tiles and channel groups, batch > 1
    (2, 128, 128, 64, 64),   # the injection layer's channels (paper256: 128 -> 128)
    (1, 5, 3, 9, 17),        # tiny channel counts
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_region_explicit_xi(dtype, shape):
    b, cin, cout, h, w = shape
    for seed in range(2):
        p = make_inputs(10 + seed, b, cin, cout, h, w, dtype)
        shared = torch.randn(1, 1, h, w, device="cuda").to(dtype)    # one map for the batch (the runtime's xi)
        per_sample = torch.randn(b, 1, h, w, device="cuda").to(dtype)
        for xi in (shared, per_sample):
            assert rel_err(run(p, noise=xi), expected(p, noise=xi)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
def test_region_generated_xi_in_a_window(dtype):
    b, cin, cout, h, w = 2, 64, 96, 29, 45
    p = make_inputs(20, b, cin, cout, h, w, dtype)
    window, full_w, xi_seed = (17, 30), 96, 2 ** 40 + 3
    y = run(p, xi_seed=xi_seed, xi_stream=STREAM_XI, window=window, full_width=full_w)
    idx = np.arange(window[0], window[0] + h)[:, None] * full_w + np.arange(window[1], window[1] + w)[None]
    xi = torch.from_numpy(philox.gaussian_at(xi_seed, STREAM_XI, idx))[None, None].cuda()
    assert rel_err(y, expected(p, noise=xi)) <= TOL[dtype]


def test_fp16_simt_variant():
    p = make_inputs(40, 2, 24, 33, 19, 23, torch.float16)
    y = run(p, tensor_cores=False, noise=None)
    assert rel_err(y, expected(p)) <= TOL[torch.float16]


def test_no_noise_no_activation():
    p = make_inputs(50, 2, 32, 20, 15, 31, torch.float32)
    assert rel_err(run(p, activate=False), expected(p, activate=False)) <= 1e-4


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
def test_strength_zero_is_the_unedited_layer(dtype):
    p = make_inputs(60, 3, 40, 24, 17, 26, dtype)
    p["strength"] = torch.zeros(3, device="cuda", dtype=dtype)
    xi = torch.randn(1, 1, 17, 26, device="cuda").to(dtype)
    d = {k: v.double() for k, v in p.items()}
    s = d["style"] * torch.rsqrt(d["style"].pow(2).mean(1, keepdim=True) + reference.EPS)
    unedited = reference.lrelu_bias(F.conv2d(d["x"] * s[:, :, None, None], d["weight"], padding=1)
                                    + d["noise_weight"] * xi.double(), d["bias"])
    assert rel_err(run(p, noise=xi), unedited) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
def test_window_equals_crop_of_full_image(dtype):
    """Generated noise is indexed in full-image coordinates: a window's interior equals the full result's crop."""
    p = make_inputs(70, 1, 32, 16, 48, 64, dtype)
    full = run(p, xi_seed=1, xi_stream=STREAM_XI)
    y0, y1, x0, x1 = 10, 31, 20, 47
    crop = {k: (v[..., y0:y1, x0:x1].contiguous() if k in ("x", "mask") else v) for k, v in p.items()}
    win = run(crop, xi_seed=1, xi_stream=STREAM_XI, window=(y0, x0), full_width=64)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # the window's border sees zero padding
    tol = 1e-5 if dtype == torch.float32 else 2e-3  # tiles cut differently: at most a rounding apart
    torch.testing.assert_close(win[inner], full[..., y0:y1, x0:x1][inner], rtol=tol, atol=tol)


def test_torch_custom_op_uses_the_kernel():
    p = make_inputs(80, 2, 48, 48, 33, 27, torch.float32)
    xi = torch.randn(1, 1, 33, 27, device="cuda")
    before = kc.LAUNCHES["ssae_masked_modconv_region_f32"]
    y = torch.ops.ssae.masked_modconv(p["x"], p["weight"], p["bias"], p["style"], p["direction"], p["mask"],
                                      p["strength"], xi, p["noise_weight"], True)
    assert kc.LAUNCHES["ssae_masked_modconv_region_f32"] == before + 1
    assert rel_err(y, expected(p, noise=xi)) <= 1e-4


def test_generator_layer_through_the_op_matches_reference():
    """The SAE injection layer routed through the custom op on CUDA (use_fused_op) matches the reference path."""
    from ssae.config import preset
    from ssae.kernels import ops
    from ssae.models.sae import StyleEdit, SwappingAutoencoder

    torch.manual_seed(0)
    sae = SwappingAutoencoder(preset("tiny").sae).eval().cuda()
    x = torch.rand(2, 3, 64, 64, device="cuda") * 2 - 1
    mask = torch.zeros(2, 1, 64, 64, device="cuda")
    mask[..., 10:40, 5:50] = 1
    edit = StyleEdit(mask, seeds=[3, 4], strength=2.0)
    with torch.no_grad():
        structure, texture = sae.encode(x)
        ref = sae.decode(structure, texture, noise=1, edit=edit)
        before = sum(kc.LAUNCHES.values())
        with ops.use_fused_op(True):
            fused = sae.decode(structure, texture, noise=1, edit=edit)
    assert sum(kc.LAUNCHES.values()) > before
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-4)


def test_device_philox_equals_numpy():
    """The kernel's generator, value for value: the uint32 words are exact, so the float32 normals are equal
    except where float64 sin/cos/log differ by an ulp across libraries right at a float32 rounding boundary
    (ssae/philox.py); at most 2 in a million such values are allowed, each off by one float32 ulp."""
    n, start = 1 << 20, 12_345
    for seed, stream in [(0, philox.STREAM_REGION), (2 ** 64 - 1, STREAM_PIX), (123456789, STREAM_XI)]:
        got = kc.philox_normals_cuda(seed, stream, start, n).cpu().numpy()
        want = philox.gaussian_at(seed, stream, np.arange(start, start + n))
        diff = np.nonzero(got.view(np.uint32) != want.view(np.uint32))[0]
        assert len(diff) <= 2, (seed, stream, len(diff))
        ulps = np.abs(got[diff].view(np.int32).astype(np.int64) - want[diff].view(np.int32).astype(np.int64))
        assert (ulps <= 1).all()
