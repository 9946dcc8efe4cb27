"""A byte-bounded LRU cache for loaded volumes and crop embeddings.

One LRU holds both kinds of entry so the bound is a single number the app configures: a loaded
512x512x61 int16 CT is ~32 MB, a released-model embedding (1, 384, 8, 8, 8) float32 is 0.75 MB.
Entries are evicted least-recently-used first until the total fits; an entry larger than the
whole bound is not stored at all (the caller still uses it for the current request).
MONAI Label's own SAM2 task keeps only the last image; this keeps as many as fit.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional, Tuple

import torch


def nbytes_of(value: Any) -> int:
    """Best-effort size in bytes of a cached value (tensor, an object with `.nbytes`, or a dict of them)."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.numel()
    if isinstance(value, dict):
        return sum(nbytes_of(v) for v in value.values())
    n = getattr(value, "nbytes", None)
    if n is None:
        raise TypeError(f"cannot size cache value of type {type(value).__name__}")
    return int(n)


class LRUCache:
    """Thread-safe LRU with a byte bound. Keys are tuples; values report their size."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._data: "OrderedDict[Hashable, Tuple[Any, int]]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def get(self, key: Hashable) -> Optional[Any]:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: Any) -> bool:
        """Store `value`; returns False when it is larger than the whole bound (not stored)."""
        size = nbytes_of(value)
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return False
            self._data[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, s) = self._data.popitem(last=False)
                self._bytes -= s
            return True

    def get_or_put(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The cached value, else `make()` stored (and returned even when too large to store)."""
        value = self.get(key)
        if value is None:
            value = make()
            self.put(key, value)
        return value

    def discard(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop every entry whose key matches; returns how many were dropped."""
        with self._lock:
            keys = [k for k in self._data if predicate(k)]
            for k in keys:
                self._bytes -= self._data.pop(k)[1]
            return len(keys)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


class Sized:
    """Wraps a small value (a model grid) so the byte-bounded cache can hold it."""

    nbytes = 1024

    def __init__(self, value):
        self.value = value
