"""The Backend contract and the registry: a new backend is one class plus one `register` entry, and the Editor,
`create_backend` and the CLI's --backend / --precision flags take it from there."""
from __future__ import annotations

import numpy as np
import pytest

from ssae.runtime import Editor
from ssae.runtime.backend import Backend, BackendError
from ssae.runtime.onnx_backends import OrtBackend
from ssae.runtime.registry import ENGINES, backend_label, backend_name, create_backend, parse_backend, register


class _Delegating(Backend):
    """A minimal third-party backend: the abstract methods only, running another backend's stages."""

    name = "delegate"

    def __init__(self, inner: Backend):
        self.inner, self.runs = inner, []

    @property
    def manifest(self) -> dict:
        return self.inner.manifest

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def precision(self) -> str:
        return "fp32"

    def stages(self) -> list[str]:
        return self.inner.stages()

    def run(self, stage, inputs):
        self.runs.append(stage)
        return self.inner.run(stage, inputs)


@pytest.fixture
def delegate_engine():
    @register("delegate", ("fp32",), "a test engine running ONNX Runtime underneath")
    def _factory(src, precision, device):
        return _Delegating(OrtBackend(src.path))

    yield "delegate"
    del ENGINES["delegate"]


def test_a_registered_backend_runs_everywhere(delegate_engine, tiny_export, face_path):
    be = create_backend("delegate", tiny_export)
    assert isinstance(be, _Delegating) and be.device_chain() is None
    got = Editor(be).edit(face_path, roi="hair", seed=2)
    want = Editor(OrtBackend(tiny_export)).edit(face_path, roi="hair", seed=2)
    assert np.array_equal(np.asarray(got.image), np.asarray(want.image))
    assert {"sae_encoder", "sae_decoder_prefix", "refine_hair"} <= set(be.runs)
    be.warmup(), be.close()  # the base class's defaults
    with be:
        pass
    from ssae.cli import build_parser
    args = build_parser().parse_args(["edit", str(face_path), "-o", "x.png", "--backend", "delegate"])
    assert args.backend == "delegate"
    with pytest.raises(SystemExit):  # --precision choices come from the registry too
        build_parser().parse_args(["edit", str(face_path), "-o", "x.png", "--precision", "fp8"])


def test_backend_names_and_precisions():
    assert parse_backend("torch") == ("torch", "fp32")
    assert parse_backend("torch", "bf16") == parse_backend("torch-bf16") == ("torch", "bf16")
    from ssae.info import cpu_flags   # openvino's default: bf16 where the CPU has AMX, else fp32
    assert parse_backend("openvino") == ("openvino", "bf16" if "amx_bf16" in cpu_flags() else "fp32")
    assert parse_backend("openvino", "bf16") == ("openvino", "bf16") and parse_backend("openvino-fp32")[1] == "fp32"
    assert parse_backend("onnxruntime") == ("onnxruntime", "auto")   # the export's own precision
    assert parse_backend("tensorrt") == ("tensorrt", "fp16")
    assert backend_label("torch", "bf16") == "torch-bf16" and backend_label("openvino", "bf16") == "openvino"
    assert backend_name("auto", "auto") == "auto" and backend_name("torch", "bf16") == "torch-bf16"
    with pytest.raises(BackendError, match="unknown backend 'cudnn'"):
        parse_backend("cudnn")
    with pytest.raises(BackendError, match="openvino runs bf16, fp32, not 'int8'"):
        parse_backend("openvino", "int8")
    with pytest.raises(BackendError, match="it cannot also be fp16"):
        parse_backend("torch-bf16", "fp16")
    engine, precision = parse_backend("auto", "fp32")
    assert engine in ENGINES and precision == "fp32"


def test_onnxruntime_precision_is_the_exports(tiny_export):
    assert create_backend("onnxruntime", tiny_export, precision="fp32").precision == "fp32"
    with pytest.raises(BackendError, match="this export holds fp32 graphs, not int8"):
        create_backend("onnxruntime", tiny_export, precision="int8")


def test_onnx_backend_warmup_and_close(tiny_export, face_path):
    be = OrtBackend(tiny_export)
    be.warmup()
    assert set(be._compiled) == set(be.stages())
    be.close()
    assert not be._compiled
    Editor(be).edit(face_path, roi="lips", seed=1)   # loads again on use
    assert be._compiled


def test_model_rois_without_loading_the_model(tiny_model, tiny_ckpt, tiny_export, tmp_path):
    """The ROIs the CLI checks against come from the model's own files: the export manifest, the checkpoint's
    header (`read_config`: no tensor read), or the preset; an unreadable checkpoint is a one-line ModelError."""
    from ssae.checkpoint import read_checkpoint, read_config
    from ssae.runtime.registry import ModelError, model_rois, resolve_model

    want = tuple(tiny_model.rois)
    assert model_rois(resolve_model(tiny_export)) == want
    assert model_rois(resolve_model(tiny_ckpt)) == want
    assert model_rois(resolve_model("tiny")) == want
    assert read_config(tiny_ckpt) == read_checkpoint(tiny_ckpt)[0]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(ModelError, match="corrupt checkpoint"):
        model_rois(resolve_model(bad))


@pytest.mark.parametrize("cuda,trt,amx,openvino,want", [
    (True, True, False, False, ("tensorrt", "fp16")),
    (True, False, True, True, ("torch", "fp16")),       # a GPU without TensorRT: the fp16 chain
    (False, False, True, True, ("openvino", "bf16")),
    (False, False, True, False, ("torch", "bf16")),
    (False, False, False, True, ("onnxruntime", "auto")),
])
def test_auto_picks_the_fastest_engine_here(monkeypatch, cuda, trt, amx, openvino, want):
    from ssae.runtime import registry
    monkeypatch.setattr(registry, "_cuda_available", lambda: cuda)
    monkeypatch.setattr(registry, "_amx", lambda: amx)
    monkeypatch.setattr(registry, "_has", lambda m: {"tensorrt": trt, "openvino": openvino, "torch": True}[m])
    assert registry.auto_backend() == want
