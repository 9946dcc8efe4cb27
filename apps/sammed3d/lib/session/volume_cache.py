"""One cache of loaded volumes for every engine of the app (SAM-Med3D clicks and MedSAM boxes).

    volumes = VolumeCache(LRUCache(2 << 30))
    sam = SegmentationEngine(model, "v1", volumes=volumes)
    box = MedSAMEngine(lite, "lite_medsam", volumes=volumes)
    # a file either engine opened is read once: the other gets the same LoadedVolume

The volumes live in a byte-bounded LRU (lib.session.cache), keyed by the file's key (path, mtime,
size: a rewritten file is read again). The SAM-Med3D engine keeps its embeddings in the same LRU, so
one number (--conf cache_mb) bounds both. A volume the LRU dropped while an engine still holds it
(MedSAM keeps its windowed slices per volume) is handed out again instead of being read a second
time: one copy per file in memory.
"""
from __future__ import annotations

import threading
import weakref
from typing import Optional

from .cache import LRUCache
from .volume import LoadedVolume, file_key, load_volume

DEFAULT_BYTES = 2 << 30


class VolumeCache:
    """Loaded volumes by file key; `loads` counts the files actually read."""

    def __init__(self, lru: Optional[LRUCache] = None):
        self.lru = lru if lru is not None else LRUCache(DEFAULT_BYTES)
        self.loads = 0
        self._alive: "weakref.WeakValueDictionary[tuple, LoadedVolume]" = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def get(self, path: str) -> LoadedVolume:
        """The file's LoadedVolume: from the cache, else read once (lib.session.volume.load_volume).

        Raises SessionError for a missing or unreadable file."""
        fkey = file_key(path)
        key = ("vol",) + fkey
        volume = self.lru.get(key)
        if volume is not None:
            return volume
        with self._lock:  # two engines asking for the same new file at once read it once
            volume = self.lru.get(key) or self._alive.get(fkey)
            if volume is None:
                volume = load_volume(path)
                self.loads += 1
                self._alive[fkey] = volume
            self.lru.put(key, volume)
            return volume
