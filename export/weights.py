"""One shared weights file for the graphs of an export folder (ONNX external data), each tensor's bytes stored once.

Graphs of one export repeat weights: the five-ROI SMPN graph runs the five single-ROI networks as one grouped
network (`SMPN.stack`), so each of its tensors is the concatenation, along the first dim, of the `smpn_<roi>`
graphs' tensors of the same name; the decoder's edit graphs repeat the tail's weights. `share_weights` moves every
initializer of at least `MIN_BYTES` into one file beside the graphs and points the graphs at it with ONNX external
data (`location` / `offset` / `length`):

- tensors with the same bytes share one range;
- a tensor whose bytes are the concatenation of n equal pieces that are themselves tensors of these graphs is
  written whole, and each piece refers to its slice of it (recursively, for pieces made of pieces). A piece of two
  such tensors is read from the larger one, and the other holds a second copy of its bytes (no export has such
  pieces);
- ranges written whole start on a page boundary (4 KiB, so that a runtime can map them) from `PAGE_FROM` bytes up,
  on `ALIGN` bytes below.

ONNX Runtime, OpenVINO, `onnx.load` and TensorRT's ONNX parser (given the graph file's path) resolve the location
relative to the graph file, and the values are the same bytes as before: every runtime computes bit-identical
outputs. Each graph that reads the file records the file's name and sha256 in its metadata (`META_KEY`), so a
graph file's sha256 (the manifest's, and every cache key made from it: TensorRT engines, calibration ranges, fp16
conversions) changes whenever the weights it reads change.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from ssae.fileio import atomic_write

WEIGHTS_FILE = "weights.onnx_data"
META_KEY = "ssae.weights"
#: Smaller tensors (scalars, shapes, per-channel constants) stay in their graph: ONNX's own default threshold, and
#: parsers read shape inputs from the graph itself.
MIN_BYTES = 1024
ALIGN = 64
PAGE = 4096
PAGE_FROM = 1 << 20
#: At most this many pieces are looked for in one tensor (the five-ROI SMPN has five).
MAX_PIECES = 64


def _digest(data) -> bytes:
    return hashlib.sha256(data).digest()


def _pieces(data: bytes, sizes: set[int], known: dict, max_pieces: int) -> tuple[int, list[bytes]] | None:
    """(piece length, piece digests) when `data` is the concatenation of n >= 2 equal-length known tensors."""
    view = memoryview(data)
    n_bytes = len(data)
    for n in range(2, max_pieces + 1):
        if n_bytes % n or n_bytes // n not in sizes:
            continue
        p = n_bytes // n
        keys = [_digest(view[i * p:(i + 1) * p]) for i in range(n)]
        if all(k in known for k in keys):
            return p, keys
    return None


def layout(blobs: dict[bytes, bytes], max_pieces: int = MAX_PIECES) -> tuple[dict[bytes, tuple[int, int]],
                                                                               list[tuple[int, bytes]]]:
    """Where each distinct tensor goes in the shared file: ({digest: (offset, length)}, [(offset, bytes) written]).

    blobs: the distinct tensors' bytes by digest. Tensors made of other tensors (see the module docstring) are
    placed first, largest first, then the rest in the given order."""
    sizes = {len(b) for b in blobs.values()}
    composite = {}
    for key, data in blobs.items():
        found = _pieces(data, sizes, blobs, max_pieces)
        if found is not None:
            composite[key] = found
    where: dict[bytes, tuple[int, int]] = {}
    written: list[tuple[int, bytes]] = []

    def assign(key: bytes, off: int) -> None:
        where[key] = (off, len(blobs[key]))
        p, parts = composite.get(key, (0, ()))
        for i, part in enumerate(parts):
            if part not in where:
                assign(part, off + i * p)

    end = 0
    for key in sorted(composite, key=lambda k: -len(blobs[k])) + list(blobs):
        if key in where:
            continue
        data = blobs[key]
        align = PAGE if len(data) >= PAGE_FROM else ALIGN
        off = -(-end // align) * align
        written.append((off, data))
        end = off + len(data)
        assign(key, off)
    return where, written


def load_self_contained(path: str | os.PathLike):
    """The ONNX ModelProto of a graph file with its weights inline (external data read from beside the file) and
    without the shared file's record: a graph to save anywhere else."""
    import onnx

    model = onnx.load(str(path))
    for p in list(model.metadata_props):
        if p.key == META_KEY:
            model.metadata_props.remove(p)
    return model


def share_weights(folder: str | os.PathLike, files: Iterable[str], name: str = WEIGHTS_FILE,
                  min_bytes: int = MIN_BYTES) -> dict | None:
    """Rewrite the graph files `files` of `folder` so that their initializers of `min_bytes` or more are read from
    one shared file `name` in the folder, each tensor's bytes stored once (module docstring). Graphs may hold their
    tensors inline or already in that file (every graph is read whole first). Returns {"file", "sha256", "bytes"}
    of the weights file, or None when no tensor qualifies (a stale weights file of that name is then removed)."""
    import onnx
    from onnx.external_data_helper import set_external_data

    d = Path(folder)
    files = list(dict.fromkeys(files))
    models = {f: load_self_contained(d / f) for f in files}  # nothing depends on an old weights file now
    refs, blobs = [], {}
    for m in models.values():
        for t in m.graph.initializer:
            if t.data_location == onnx.TensorProto.DEFAULT and t.HasField("raw_data") and len(t.raw_data) >= min_bytes:
                data = t.raw_data
                key = _digest(data)
                blobs.setdefault(key, data)
                refs.append((t, key))
    path = d / name
    if not refs:
        path.unlink(missing_ok=True)
        info = None
    else:
        where, written = layout(blobs)
        h = hashlib.sha256()

        def write(tmp):
            pos = 0
            with open(tmp, "wb") as fh:
                for off, data in written:
                    pad = b"\0" * (off - pos)
                    for chunk in (pad, data):
                        fh.write(chunk)
                        h.update(chunk)
                    pos = off + len(data)

        atomic_write(path, write)
        info = {"file": name, "sha256": h.hexdigest(), "bytes": path.stat().st_size}
        for t, key in refs:
            off, length = where[key]
            set_external_data(t, name, off, length)
            t.ClearField("raw_data")
        for f, m in models.items():
            if any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer):
                m.metadata_props.add(key=META_KEY, value=json.dumps({"file": name, "sha256": info["sha256"]}))
    for f, m in models.items():  # serialized as is: onnx.save would try to write external data itself
        blob = m.SerializeToString()
        atomic_write(d / f, lambda tmp, b=blob: Path(tmp).write_bytes(b))
    return info
