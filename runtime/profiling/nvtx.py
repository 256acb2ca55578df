"""NVTX ranges around pipeline stages, so Nsight Systems timelines show `smpn`, `sae_encoder`, ... by name.
A no-op where PyTorch is not loaded (the runtime never imports it for this) or has no CUDA."""
from __future__ import annotations

import contextlib
import sys

_NVTX: list = []   # [torch.cuda.nvtx or None], decided on the first range after PyTorch is loaded


def _nvtx():
    if not _NVTX:
        torch = sys.modules.get("torch")
        if torch is None:  # not loaded (yet): no ranges, and decide again once it is
            return None
        try:
            _NVTX.append(torch.cuda.nvtx if torch.cuda.is_available() else None)
        except Exception:  # noqa: BLE001 - a broken CUDA setup only loses the ranges
            _NVTX.append(None)
    return _NVTX[0]


@contextlib.contextmanager
def nvtx_range(name: str):
    nvtx = _nvtx()
    if nvtx is None:
        yield
        return
    nvtx.range_push(name)
    try:
        yield
    finally:
        nvtx.range_pop()
