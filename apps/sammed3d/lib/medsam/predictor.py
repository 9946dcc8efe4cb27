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

from lib.model.medsam import LiteMedSAM

from .preprocess import Window, box_to_256, logits_to_slice, slice_input, window_volume
from .slices import SliceFrame, choose_frame

EMBED_BYTES = 256 * 64 * 64 * 4


class VolumePredictor:
    def __init__(self, model: LiteMedSAM, vol: np.ndarray, spacing: Sequence[float], direction: Sequence[float],
                 is_ct: bool, window: Window = None, slice_axis: Optional[int] = None,
                 cache_bytes: int = 512 << 20, device: Optional[str] = None, encode_batch: int = 2,
                 slice_stride: int = 1):
        """vol: (ni, nj, nk) in stored index order, raw intensities (HU for CT).

        encode_batch: slices encoded per model call when the caller names the next slice it will
        need (predict_256's `ahead`). Two slices per call keep both CPU cores busier than one
        (scripts/bench_medsam_encoder.py --batch2); each slice's embedding is the same as alone.
        slice_stride: propagate_box's default stride (decode every k-th slice, fill the rest from
        their neighbours; 1 = every slice).
        """
        if vol.ndim != 3:
            raise ValueError(f"volume must be 3D (ni, nj, nk), got shape {vol.shape}")
        self.model = model
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.frame: SliceFrame = choose_frame(vol.shape, spacing, direction, slice_axis)
        self.volume_u8 = window_volume(vol, is_ct, window)
        self.max_cached = max(2, int(cache_bytes // EMBED_BYTES))
        self.encode_batch = max(1, int(encode_batch))
        self.slice_stride = max(1, int(slice_stride))
        self._cache: "OrderedDict[int, Tuple[torch.Tensor, Tuple[int, int]]]" = OrderedDict()
        self.stats: Dict[str, float] = {"encoded": 0, "cache_hits": 0, "encode_s": 0.0, "decode_s": 0.0}

    @property
    def shape(self) -> Tuple[int, int, int]:
        return self.frame.shape

    def embedding(self, s: int, ahead: Sequence[int] = ()) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """(1, 256, 64, 64) embedding of display slice s and its resized (new_h, new_w).

        ahead: slices the caller will ask for next; when s must be encoded, up to encode_batch - 1
        of them that are not cached yet are encoded in the same call."""
        hit = self._cache.get(s)
        if hit is not None:
            self._cache.move_to_end(s)
            self.stats["cache_hits"] += 1
            return hit
        t = time.perf_counter()
        n = self.frame.shape[self.frame.slice_axis]
        batch = [s] + [a for a in ahead if a not in self._cache and a != s and 0 <= a < n][: self.encode_batch - 1]
        inputs = [slice_input(np.ascontiguousarray(self.frame.slice_of(self.volume_u8, b))) for b in batch]
        with torch.inference_mode():
            emb = self.model.encode(torch.cat([x for x, _ in inputs]).to(self.device))
        for b, (_, new_hw), e in zip(batch, inputs, emb.split(1)):
            self._cache[b] = (e, new_hw)
            self._cache.move_to_end(b)
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        self.stats["encoded"] += len(batch)
        self.stats["encode_s"] += time.perf_counter() - t
        return self._cache[s]

    def predict_256(self, s: int, box256: np.ndarray, ahead: Sequence[int] = ()) -> Tuple[torch.Tensor, float]:
        """Logits (H, W) on display slice s for a box already in 256 space, and the IoU estimate.
        ahead: the slices the caller will need next (see embedding)."""
        emb, new_hw = self.embedding(s, ahead)
        t = time.perf_counter()
        with torch.inference_mode():
            low, iou = self.model.decode(emb, torch.as_tensor(box256, dtype=torch.float32)[None])
            logits = logits_to_slice(low, new_hw, self.frame.slice_shape).float().cpu()
        self.stats["decode_s"] += time.perf_counter() - t
        return logits, float(iou.reshape(-1)[0])

    def predict(self, s: int, box: Sequence[float]) -> torch.Tensor:
        """Logits (H, W) on display slice s for box (x0, y0, x1, y1) in that slice's pixels."""
        return self.predict_256(s, box_to_256(box, self.frame.slice_shape))[0]
