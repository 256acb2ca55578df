"""The encode cache of a serving replica: content hash of the decoded image -> the Editor's per-image state
(SMPN masks, structure/texture codes, decoder-prefix activations, the unedited result), LRU, bounded by bytes.

The Editor keeps that state in an `OrderedDict` bounded by an entry count. `attach(editor, cache)` swaps in an
`EncodeCache` (`Editor.use_cache`), which the Editor uses through exactly this contract:

- `cache.get(key)` -> the entry or None (the only lookup; counted here as a hit or a miss),
- `cache[key] = entry` (a new entry, before the Editor fills in its codes),
- `cache.move_to_end(key)` (on a hit), `len(cache)` and `cache.popitem(last=False)` (its count bound, which
  `Editor.use_cache` disables: this cache bounds bytes instead), `keys()` and `clear()`.

Entries grow after they are stored (the Editor adds codes, activations and the unedited result while editing), so
sizes are measured again at every `trim()`: on every insertion, every hit and after every request
(`ssae.runtime.serve.engine.Engine` calls it). `trim()` evicts least recently used entries until the total is within
`max_bytes`, but never the most recent one (the image being edited). Thread-safe (one lock).
"""
from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator

import numpy as np

_MISSING = object()


def nbytes_of(obj: Any, _depth: int = 0) -> int:
    """Bytes held by the numpy arrays in `obj` (arrays, dataclasses, dicts, lists and tuples of them)."""
    if _depth > 6:
        return 0
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(nbytes_of(getattr(obj, f.name), _depth + 1) for f in dataclasses.fields(obj))
    if isinstance(obj, dict):
        return sum(nbytes_of(v, _depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes_of(v, _depth + 1) for v in obj)
    return 0


@dataclass(frozen=True)
class CacheStats:
    """Counters of an EncodeCache (reported by `/healthz`)."""

    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    max_bytes: int

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hit_rate"] = round(self.hits / (self.hits + self.misses), 4) if self.hits + self.misses else None
        return d


class EncodeCache:
    """LRU mapping bounded by the bytes of its values (see the module docstring for the Editor contract)."""

    def __init__(self, max_bytes: int, sizeof: Callable[[Any], int] = nbytes_of):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._sizeof = sizeof
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        self._lock = threading.RLock()
        self.hits = self.misses = self.evictions = 0

    # ------------------------------------------------------------------------------------------ the contract
    def get(self, key: Hashable, default: Any = None) -> Any:
        """The entry (counted as a hit; the entry becomes the most recent) or `default` (a miss)."""
        with self._lock:
            value = self._data.get(key, _MISSING)
            if value is _MISSING:
                self.misses += 1
                return default
            self.hits += 1
            self._data.move_to_end(key)
            self.trim()
            return value

    def __setitem__(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            self.trim()

    def move_to_end(self, key: Hashable, last: bool = True) -> None:
        with self._lock:
            self._data.move_to_end(key, last=last)

    def popitem(self, last: bool = True) -> tuple[Hashable, Any]:
        with self._lock:
            key, value = self._data.popitem(last=last)
            self._sizes.pop(key, None)
            return key, value

    def __len__(self) -> int:
        return len(self._data)

    # ------------------------------------------------------------------------------------------ the rest of a mapping
    def __getitem__(self, key: Hashable) -> Any:
        with self._lock:
            return self._data[key]

    def __delitem__(self, key: Hashable) -> None:
        with self._lock:
            del self._data[key]
            self._sizes.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._data))

    def keys(self) -> list[Hashable]:
        return list(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._sizes.clear()

    # ------------------------------------------------------------------------------------------ bounds, counters
    def trim(self) -> int:
        """Measure every entry again and evict LRU entries (never the most recent) while the total exceeds
        `max_bytes`. Returns the bytes held afterwards."""
        with self._lock:
            self._sizes = {k: self._sizeof(v) for k, v in self._data.items()}
            total = sum(self._sizes.values())
            while total > self.max_bytes and len(self._data) > 1:
                key, _ = self._data.popitem(last=False)
                total -= self._sizes.pop(key)
                self.evictions += 1
            return total

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(self._sizeof(v) for v in self._data.values())

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.hits, self.misses, self.evictions, len(self._data), self.nbytes, self.max_bytes)


def attach(editor, cache: EncodeCache) -> EncodeCache:
    """Make `cache` the Editor's per-image cache (bounded by bytes instead of the Editor's entry count).
    Entries already in the Editor's cache are carried over."""
    editor.use_cache(cache)
    return cache
