"""One volume prepared for LiteMedSAM: windowed once, slices encoded lazily and cached.

    pred = VolumePredictor(model, vol_ijk, spacing, direction, is_ct=True)
    logits = pred.predict(s, box)   # display-slice s, box (x0, y0, x1, y1) in slice pixels

The image embedding of a slice (1, 256, 64, 64) float32, 4 MiB) is computed at most once while it
stays in the LRU cache (bounded in bytes), so re-running a 3D box, a corrected box or another
structure on the same slices costs only the decoder.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .model import LiteMedSAM
from .preprocess import Window, box_to_256, logits_to_slice, slice_input, window_volume
from .slices import SliceFrame, choose_frame

EMBED_BYTES = 256 * 64 * 64 * 4


class VolumePredictor:
    def __init__(self, model: LiteMedSAM, vol: np.ndarray, spacing: Sequence[float], direction: Sequence[float],
                 is_ct: bool, window: Window = None, slice_axis: Optional[int] = None,
                 cache_bytes: int = 512 << 20, device: Optional[str] = None):
        """vol: (ni, nj, nk) in stored index order, raw intensities (HU for CT)."""
        if vol.ndim != 3:
            raise ValueError(f"volume must be 3D (ni, nj, nk), got shape {vol.shape}")
        self.model = model
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.frame: SliceFrame = choose_frame(vol.shape, spacing, direction, slice_axis)
        self.volume_u8 = window_volume(vol, is_ct, window)
        self.max_cached = max(1, int(cache_bytes // EMBED_BYTES))
        self._cache: "OrderedDict[int, Tuple[torch.Tensor, Tuple[int, int]]]" = OrderedDict()
        self.stats: Dict[str, float] = {"encoded": 0, "cache_hits": 0, "encode_s": 0.0, "decode_s": 0.0}

    @property
    def shape(self) -> Tuple[int, int, int]:
        return self.frame.shape

    def embedding(self, s: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """(1, 256, 64, 64) embedding of display slice s and its resized (new_h, new_w)."""
        hit = self._cache.get(s)
        if hit is not None:
            self._cache.move_to_end(s)
            self.stats["cache_hits"] += 1
            return hit
        t = time.perf_counter()
        x, new_hw = slice_input(np.ascontiguousarray(self.frame.slice_of(self.volume_u8, s)))
        with torch.inference_mode():
            emb = self.model.encode(x.to(self.device))
        self._cache[s] = (emb, new_hw)
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        self.stats["encoded"] += 1
        self.stats["encode_s"] += time.perf_counter() - t
        return emb, new_hw

    def predict_256(self, s: int, box256: np.ndarray) -> Tuple[torch.Tensor, float]:
        """Logits (H, W) on display slice s for a box already in 256 space, and the IoU estimate."""
        emb, new_hw = self.embedding(s)
        t = time.perf_counter()
        with torch.inference_mode():
            low, iou = self.model.decode(emb, torch.as_tensor(box256, dtype=torch.float32)[None])
            logits = logits_to_slice(low, new_hw, self.frame.slice_shape).float().cpu()
        self.stats["decode_s"] += time.perf_counter() - t
        return logits, float(iou.reshape(-1)[0])

    def predict(self, s: int, box: Sequence[float]) -> torch.Tensor:
        """Logits (H, W) on display slice s for box (x0, y0, x1, y1) in that slice's pixels."""
        return self.predict_256(s, box_to_256(box, self.frame.slice_shape))[0]
