"""File helpers: atomic writes (write to a temporary file beside the target, then rename: no half-written outputs)
and one reader for the project's JSON descriptors (export manifests, engine indexes, precision plans)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _process_umask()  # read once at import: os.umask can only be read by setting it


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(tmp_path) then rename tmp over `path`: readers never see a half-written file. The file gets the
    mode a plain open() would give it (an existing file's mode, else 0o666 minus the umask), not mkstemp's 0o600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~_UMASK
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def default_cache_dir() -> Path:
    """Where derived data and decoded-array caches go: $SSAE_CACHE, else ~/.cache/ssae (outside the repo)."""
    return Path(os.environ.get("SSAE_CACHE", Path.home() / ".cache" / "ssae"))


def read_json(path: str | os.PathLike, error: type[Exception], what: str, *, missing: str | None = None,
              fmt: str | None = None):
    """A JSON file describing `what`; `error` with one line when it is missing (`missing` overrides the message),
    unreadable, not JSON, or (with `fmt`) not an object whose "format" is `fmt`."""
    p = Path(path)
    if not p.is_file():
        raise error(missing or f"{what} not found: {p}")
    try:
        d = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read {what} {p}: {e}") from None
    except json.JSONDecodeError as e:
        raise error(f"corrupt {what} {p}: {e}") from None
    if fmt is not None:
        got = d.get("format") if isinstance(d, dict) else type(d).__name__
        if got != fmt:
            raise error(f"{p} has format {got!r}, expected {fmt!r}")
    return d
