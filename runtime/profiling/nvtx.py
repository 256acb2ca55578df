"""NVTX ranges around pipeline stages, so Nsight Systems timelines show `smpn`, `sae_encoder`, ... by name.
A no-op where torch has no CUDA."""
from __future__ import annotations

import contextlib


def _nvtx():
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.nvtx
    except Exception:  # noqa: BLE001
        pass
    return None


_NVTX = _nvtx()


@contextlib.contextmanager
def nvtx_range(name: str):
    if _NVTX is None:
        yield
        return
    _NVTX.range_push(name)
    try:
        yield
    finally:
        _NVTX.range_pop()
