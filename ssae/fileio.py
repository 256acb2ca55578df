"""Atomic file writes: write to a temporary file beside the target, then rename (no half-written outputs)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(tmp_path) then rename tmp over `path`: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def default_cache_dir() -> Path:
    """Where derived data and decoded-array caches go: $SSAE_CACHE, else ~/.cache/ssae (outside the repo)."""
    return Path(os.environ.get("SSAE_CACHE", Path.home() / ".cache" / "ssae"))
