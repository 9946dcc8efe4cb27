"""File-level LiteMedSAM engine: image path + 3D box -> mask on the stored grid, with caches.

    engine = MedSAMEngine(load_lite_medsam(path), "lite_medsam@79d8c9dc")
    res = engine.segment_box("/data/ct.nii.gz", [i0, i1, j0, j1, k0, k1])
    res.mask  # (ni, nj, nk) uint8, the stored grid of the file

Loading, geometry and the 3D box reuse lib.session (the SAM-Med3D session's reader, CT detection,
RAS affine and stored grid; lib.session.roi for the box), so both models see a file the same way.
Volumes come from a lib.session.volume_cache.VolumeCache: the app passes the one the SAM-Med3D engine
uses, so a file opened by both tasks is read once. Kept per file here (while unchanged on disk, for
the last `max_volumes` files): one VolumePredictor per (window, slice axis) with its per-slice
embedding cache. The result is lib.session's SegmentationResult (roi, window, slice_axis, slices,
encoded filled in); MedSAMResult is the same class.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from lib.model.medsam import LiteMedSAM, load_lite_medsam
from lib.session.result import SegmentationResult
from lib.session.volume import file_key, is_ct
from lib.session.volume_cache import VolumeCache

from .predictor import EMBED_BYTES, VolumePredictor
from .preprocess import CT_WINDOWS, Window
from .propagate import clamp_roi, propagate_box
from .slices import choose_frame
from .weights import locate

AIR_MEDIAN_HU = -300.0  # a box whose centre-slice median is below this is air-filled (lung window)


MedSAMResult = SegmentationResult  # one result type for both engines (lib.session.result)


def choose_window(raw: np.ndarray, roi: Sequence[int], ct: bool, window: Window, slice_axis: int) -> Window:
    """Resolve "auto": for CT the lung window when the box's centre slice is mostly air, else
    MedSAM's soft-tissue window; for other modalities MedSAM's percentile rule."""
    if window not in (None, "auto"):
        if isinstance(window, str) and window not in CT_WINDOWS and window != "percentile":
            raise ValueError(f"window must be auto, percentile, one of {sorted(CT_WINDOWS)} or [level, width], got {window!r}")
        return window
    if not ct:
        return "percentile"
    sl = [slice(roi[2 * a], roi[2 * a + 1] + 1) for a in range(3)]
    centre = (roi[2 * slice_axis] + roi[2 * slice_axis + 1]) // 2
    sl[slice_axis] = slice(centre, centre + 1)
    return "lung" if float(np.median(raw[tuple(sl)])) < AIR_MEDIAN_HU else "soft_tissue"


class MedSAMEngine:
    def __init__(self, model: LiteMedSAM, model_version: str, device: str = "cpu", cache_bytes: int = 1 << 30,
                 modality: Optional[str] = None, max_volumes: int = 2, encode_batch: int = 2,
                 volumes: Optional[VolumeCache] = None, slice_stride: int = 1):
        """volumes: the app's shared VolumeCache (default: one of its own); cache_bytes bounds the
        slice embeddings of the last `max_volumes` files. slice_stride: decode every k-th slice of a
        box and fill the others from their neighbours (lib.medsam.propagate; 1 = every slice)."""
        self.volumes = volumes if volumes is not None else VolumeCache()
        self.model = model.to(device).eval()
        self.model_version = model_version
        self.device = device
        self.cache_bytes = int(cache_bytes)
        self.modality = modality
        self.max_volumes = max(1, int(max_volumes))
        self.encode_batch = max(1, int(encode_batch))  # slices per encoder call (VolumePredictor)
        self.slice_stride = max(1, int(slice_stride))
        self._files: "OrderedDict[tuple, dict]" = OrderedDict()
        self._lock = threading.Lock()

    def _volume(self, path: str) -> dict:
        key = file_key(path)
        entry = self._files.get(key)
        if entry is not None:
            self._files.move_to_end(key)
            return entry
        vol = self.volumes.get(path)
        raw = sitk.GetArrayViewFromImage(vol.image).transpose(2, 1, 0)  # stored (i, j, k)
        entry = {"volume": vol, "raw": raw, "predictors": OrderedDict()}
        self._files[key] = entry
        while len(self._files) > self.max_volumes:
            self._files.popitem(last=False)
        return entry

    def _predictor(self, entry: dict, ct: bool, window: Window, slice_axis: Optional[int]) -> VolumePredictor:
        key = (str(window), slice_axis)
        pred = entry["predictors"].get(key)
        if pred is None:
            vol = entry["volume"]
            per_volume = self.cache_bytes // self.max_volumes
            pred = VolumePredictor(self.model, entry["raw"], vol.image.GetSpacing(), vol.image.GetDirection(), ct,
                                   window=window, slice_axis=slice_axis, cache_bytes=max(per_volume // 2, EMBED_BYTES),
                                   device=self.device, encode_batch=self.encode_batch,
                                   slice_stride=self.slice_stride)
            entry["predictors"][key] = pred
            while len(entry["predictors"]) > 2:  # e.g. lung + soft tissue of one CT
                entry["predictors"].popitem(last=False)
        return pred

    def volume(self, path: str):
        """The file's LoadedVolume (lib.session.volume), from the engine's (shared) cache."""
        with self._lock:
            return self._volume(path)["volume"]

    def _prepare(self, entry: dict, box, modality, window, slice_axis):
        vol = entry["volume"]
        ct = is_ct(vol, modality or self.modality)
        axis = choose_frame(vol.shape, vol.image.GetSpacing(), vol.image.GetDirection(), slice_axis).slice_axis
        win = choose_window(entry["raw"], box, ct, window, axis)
        return self._predictor(entry, ct, win, slice_axis), win

    def predictor_for(self, path: str, roi: Sequence, modality: Optional[str] = None, window: Window = None,
                      slice_axis: Optional[int] = None):
        """(VolumePredictor, window) the engine would use for this file and box (for evaluations
        that drive propagate_box themselves); shares the engine's caches."""
        with self._lock:
            entry = self._volume(path)
            return self._prepare(entry, clamp_roi(roi, entry["volume"].shape), modality, window, slice_axis)

    def segment_box(self, path: str, roi: Sequence, modality: Optional[str] = None, window: Window = None,
                    slice_axis: Optional[int] = None, clip_to_roi: bool = True) -> SegmentationResult:
        """MedSAM's 3D protocol on the file at `path` for the stored ROI (see lib.medsam.propagate).

        Raises lib.session.SessionError (unreadable file) or BoxError (bad box) for user errors.
        """
        with self._lock:
            t0 = time.perf_counter()
            entry = self._volume(path)
            t_load = time.perf_counter()
            vol = entry["volume"]
            box = clamp_roi(roi, vol.shape)
            pred, win = self._prepare(entry, box, modality, window, slice_axis)
            t_prep = time.perf_counter()
            before = dict(pred.stats)
            res = propagate_box(pred, box, clip_to_roi=clip_to_roi)
            encoded = int(pred.stats["encoded"] - before["encoded"])
            t_end = time.perf_counter()
            timings = {
                "load": t_load - t0,
                "preprocess": t_prep - t_load,
                "encode": pred.stats["encode_s"] - before["encode_s"],
                "decode": pred.stats["decode_s"] - before["decode_s"],
                "propagate": t_end - t_prep,
                "total": t_end - t0,
            }
            return SegmentationResult(
                mask=res.mask, affine=vol.affine, timings=timings, cache_hit=encoded == 0,
                model_version=self.model_version, grid=vol.grid, encoded=encoded,
                roi=box, window=str(win), slice_axis=res.slice_axis, slices=res.slices,
            )


def build_medsam_engine(device: str = "cpu", weights: Optional[str] = None, cache_gb: float = 1.0) -> MedSAMEngine:
    """LiteMedSAM engine from the located weights (lib.medsam.weights.locate)."""
    loc = locate(weights)
    model = load_lite_medsam(loc.path, device=device)
    return MedSAMEngine(model, f"lite_medsam@{(loc.sha256 or 'conf')[:12]}", device=device,
                        cache_bytes=int(cache_gb * (1 << 30)))
