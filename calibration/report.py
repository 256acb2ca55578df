"""Accuracy and speed of a calibrated export against its fp32 source, on real faces."""
from __future__ import annotations

import numpy as np
import torch

from ..metrics import psnr, ssim


def compare_exports(fp32_dir, quant_dir, images: np.ndarray, roi: str = "hair", backends=("onnxruntime", "openvino")) -> dict:
    """Full edits of `images` (uint8, N x S x S x 3) with both exports on each backend: PSNR/SSIM of the quantized
    edit against the fp32 edit, and the median full-edit time ratio."""
    from ..runtime.backend import BackendError
    from ..runtime.editor import Editor
    from ..runtime.onnx_backends import OpenVINOBackend, OrtBackend

    make = {"onnxruntime": OrtBackend, "openvino": lambda p: OpenVINOBackend(p, precision="fp32")}
    out = {}
    for name in backends:
        try:
            ref, q = make[name](fp32_dir), make[name](quant_dir)
        except BackendError as e:
            out[name] = {"skipped": str(e)}
            continue
        e32, e8 = Editor(ref, ref.manifest), Editor(q, q.manifest)
        p, s, t32, t8 = [], [], [], []
        for k, img in enumerate(images):
            for ed in (e32, e8):
                ed._cache.clear()
            a, b = e32.edit(img, roi, seed=k), e8.edit(img, roi, seed=k)
            t32.append(a.timings["total"])
            t8.append(b.timings["total"])
            A = torch.from_numpy(np.asarray(a.image).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
            B = torch.from_numpy(np.asarray(b.image).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
            p.append(psnr(B, A).item())
            s.append(ssim(B, A).item())
        out[name] = {"psnr_db": float(np.mean(p)), "ssim": float(np.mean(s)),
                     "full_edit_ms_fp32": float(np.median(t32)), "full_edit_ms": float(np.median(t8)),
                     "speedup_vs_fp32": float(np.median(t32) / np.median(t8))}
    return out
