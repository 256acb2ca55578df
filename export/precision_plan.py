"""The precision plan: which ONNX nodes of each stage graph stay in float32 when a model runs in fp16 or bf16.

The calibration code (`ssae.calibration`) writes it after comparing every graph's layer outputs in reduced
precision with fp32 on real data; the FP16 export (`ssae.export.fp16`) and the TensorRT builder
(`ssae.export.trt_build`) read it. On disk it is one JSON file:

    {"format": "ssae-precision-plan/1", "precision": "fp16",
     "keep_fp32": {"sae_decoder_prefix": ["node_rsqrt", ...], "smpn": []},
     "provenance": {"source_export": "...", "images": 200, "metric": "max rel err", ...}}

`keep_fp32` maps a stage (graph) name as in the export manifest to node names of that graph (`NodeProto.name`).
A stage missing from the map keeps no node in fp32. `provenance` is free-form (who made the plan, from what).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ssae.errors import SSAEError
from ssae.fileio import atomic_write, read_json

FORMAT = "ssae-precision-plan/1"
PRECISIONS = ("fp16", "bf16")


class PrecisionPlanError(SSAEError, ValueError):
    """A precision plan file is missing, unreadable or malformed (one-line reason)."""


@dataclass
class PrecisionPlan:
    precision: str = "fp16"
    keep_fp32: dict[str, list[str]] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    format: str = FORMAT

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.format != FORMAT:
            raise PrecisionPlanError(f"precision plan has format {self.format!r}, expected {FORMAT!r}")
        if self.precision not in PRECISIONS:
            raise PrecisionPlanError(f"precision plan has precision {self.precision!r} (choose from "
                                     f"{', '.join(PRECISIONS)})")
        if not isinstance(self.keep_fp32, dict):
            raise PrecisionPlanError("precision plan keep_fp32 must map stage names to lists of node names")
        for stage, names in self.keep_fp32.items():
            if not isinstance(stage, str) or not isinstance(names, list) or \
                    not all(isinstance(n, str) and n for n in names):
                raise PrecisionPlanError(f"precision plan keep_fp32[{stage!r}] must be a list of node names")
        if not isinstance(self.provenance, dict):
            raise PrecisionPlanError("precision plan provenance must be a JSON object")

    def for_stage(self, stage: str) -> list[str]:
        """Node names of `stage` kept in fp32 (empty when the plan does not list the stage)."""
        return list(self.keep_fp32.get(stage, ()))

    def to_dict(self) -> dict:
        return {"format": self.format, "precision": self.precision,
                "keep_fp32": {k: list(v) for k, v in sorted(self.keep_fp32.items())},
                "provenance": dict(self.provenance)}

    def digest(self) -> str:
        """sha256 of the canonical JSON (what the plan decides, without provenance): part of cache keys."""
        import hashlib
        body = {"precision": self.precision, "keep_fp32": {k: sorted(v) for k, v in sorted(self.keep_fp32.items())}}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON, atomically (readers never see a half-written file)."""
        self.validate()
        text = json.dumps(self.to_dict(), indent=1)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def from_dict(cls, d: dict, where: str = "precision plan") -> "PrecisionPlan":
        if not isinstance(d, dict):
            raise PrecisionPlanError(f"{where} is not a JSON object")
        if d.get("format") != FORMAT:
            raise PrecisionPlanError(f"{where} has format {d.get('format')!r}, expected {FORMAT!r}")
        unknown = set(d) - {"format", "precision", "keep_fp32", "provenance"}
        if unknown:
            raise PrecisionPlanError(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
        try:
            return cls(precision=d.get("precision", "fp16"), keep_fp32=d.get("keep_fp32", {}),
                       provenance=d.get("provenance", {}), format=d["format"])
        except PrecisionPlanError as e:
            raise PrecisionPlanError(f"{where}: {e}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PrecisionPlan":
        d = read_json(path, PrecisionPlanError, "precision plan")
        return cls.from_dict(d, where=f"precision plan {Path(path)}")
