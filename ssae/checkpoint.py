"""Checkpoints: config + weights in safetensors (no pickle), written atomically.

A checkpoint is one `.safetensors` file, or a folder of them (one per component: `sae`, `smpn`, `rb`). Each file
carries the full `SSAEConfig` as JSON in its metadata and parameter names prefixed by component (`sae.`, `smpn.`,
`refiners.`), so a folder loads by merging its files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


from .errors import SSAEError
from .config import SSAEConfig
from .fileio import atomic_write  # noqa: F401  (re-exported)

FORMAT = "ssae-checkpoint-1"
COMPONENT_PREFIX = {"sae": "sae.", "smpn": "smpn.", "rb": "refiners."}


class CheckpointError(SSAEError, ValueError):
    """A checkpoint is missing, corrupt or not an SSAE checkpoint."""


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, cfg: SSAEConfig, component: str = "all",
                    extra: dict | None = None) -> None:
    """Save an SSAE model (or one component of it: sae, smpn, rb) with its config."""
    sd = model.state_dict()
    if component != "all":
        prefix = COMPONENT_PREFIX[component]
        sd = {k: v for k, v in sd.items() if k.startswith(prefix)}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    meta = {"format": FORMAT, "component": component, "config": cfg.to_json()}
    if extra:
        meta["extra"] = json.dumps(extra, sort_keys=True)
    from safetensors.torch import save_file
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"no .safetensors files in {path}")
        return files
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    return [path]


def _metadata(f: Path) -> dict:
    """A checkpoint file's safetensors metadata (its header only: no tensor is read, no PyTorch needed)."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(f), framework="numpy") as fh:
            return fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt checkpoint {f}: {e}") from None


def _config(f: Path, meta: dict) -> SSAEConfig:
    """The model config in a checkpoint file's metadata (CheckpointError when it is no SSAE checkpoint)."""
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{f} is not an SSAE checkpoint (format {meta.get('format')!r})")
    if "config" not in meta:
        raise CheckpointError(f"{f} has no model config in its metadata")
    try:
        return SSAEConfig.from_json(meta["config"])
    except ValueError as e:
        raise CheckpointError(f"{f}: {e}") from None


def _same_config(cfg: SSAEConfig | None, c: SSAEConfig, f: Path, path) -> SSAEConfig:
    if cfg is not None and c != cfg:
        raise CheckpointError(f"{f} has a different model config than the other files in {path}")
    return c


def read_config(path: str | os.PathLike) -> SSAEConfig:
    """The model config of a checkpoint file or folder, from the files' headers alone (no PyTorch)."""
    cfg = None
    for f in _files(Path(path)):
        cfg = _same_config(cfg, _config(f, _metadata(f)), f, path)
    return cfg


def read_checkpoint(path: str | os.PathLike) -> tuple[SSAEConfig, dict[str, torch.Tensor], dict]:
    """Return (config, merged state dict, metadata of the first file)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    cfg, state, meta0 = None, {}, None
    for f in _files(Path(path)):
        meta = _metadata(f)
        try:
            tensors = load_file(str(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"corrupt checkpoint {f}: {e}") from None
        cfg = _same_config(cfg, _config(f, meta), f, path)
        meta0 = meta0 or meta
        state.update(tensors)
    return cfg, state, meta0


def load_model(path: str | os.PathLike, partial: bool = False):
    """Load an `SSAE` model from a checkpoint file or folder. A checkpoint must hold every component (SAE, SMPN,
    refinement blocks): a missing one raises CheckpointError, unless `partial` (research: missing components keep
    their random initialisation)."""
    from .models.ssae_model import SSAE

    cfg, state, _ = read_checkpoint(path)
    model = SSAE(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise CheckpointError(f"unexpected tensors in {path}: {unexpected[:5]}")
    if missing and not partial:
        comps = sorted({c for c, pre in COMPONENT_PREFIX.items() for k in missing if k.startswith(pre)})
        what = f"the {', '.join(comps)} component(s)" if comps else f"tensors {missing[:3]}"
        raise CheckpointError(f"{path} lacks {what}: a model needs sae, smpn and rb weights "
                              f"(a folder with all three files, or one combined file)")
    return model.eval().freeze()
