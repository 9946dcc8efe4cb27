"""File-level LiteMedSAM engine: image path + 3D box -> mask on the stored grid, with caches.

    engine = MedSAMEngine(load_lite_medsam(path), "lite_medsam@79d8c9dc")
    res = engine.segment_box("/data/ct.nii.gz", [i0, i1, j0, j1, k0, k1])
    res.mask  # (ni, nj, nk) uint8, the stored grid of the file

Loading, geometry and the 3D box reuse lib.session (the SAM-Med3D session's reader, CT detection,
RAS affine and stored grid; lib.session.roi for the box), so both models see a file the same way. Kept per file (while unchanged on disk): the
raw volume and one VolumePredictor per (window, slice axis) with its per-slice embedding cache.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from lib.model.medsam import LiteMedSAM, load_lite_medsam
from lib.session.io import StoredGrid
from lib.session.volume import file_key, is_ct, load_volume

from .predictor import EMBED_BYTES, VolumePredictor
from .preprocess import CT_WINDOWS, Window
from .propagate import clamp_roi, propagate_box
from .slices import choose_frame
from .weights import locate

AIR_MEDIAN_HU = -300.0  # a box whose centre-slice median is below this is air-filled (lung window)


@dataclass
class MedSAMResult:
    mask: np.ndarray  # (ni, nj, nk) uint8 0/1
    affine: np.ndarray  # (4, 4) stored index -> RAS mm
    roi: tuple  # clamped stored ROI
    window: str
    slice_axis: int
    slices: List[int] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)
    encoded: int = 0  # slices encoded for this request (the rest came from the cache)
    cache_hit: bool = False  # True when no slice had to be encoded
    model_version: str = ""
    grid: Optional[StoredGrid] = None  # the file's stored grid (lib.session.io): what the mask is written on


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
                 modality: Optional[str] = None, max_volumes: int = 2, encode_batch: int = 2):
        self.model = model.to(device).eval()
        self.model_version = model_version
        self.device = device
        self.cache_bytes = int(cache_bytes)
        self.modality = modality
        self.max_volumes = max(1, int(max_volumes))
        self.encode_batch = max(1, int(encode_batch))  # slices per encoder call (VolumePredictor)
        self._volumes: "OrderedDict[tuple, dict]" = OrderedDict()
        self._lock = threading.Lock()

    def _volume(self, path: str) -> dict:
        key = file_key(path)
        entry = self._volumes.get(key)
        if entry is not None:
            self._volumes.move_to_end(key)
            return entry
        vol = load_volume(path)
        raw = sitk.GetArrayViewFromImage(vol.image).transpose(2, 1, 0)  # stored (i, j, k)
        entry = {"volume": vol, "raw": raw, "predictors": OrderedDict()}
        self._volumes[key] = entry
        while len(self._volumes) > self.max_volumes:
            self._volumes.popitem(last=False)
        return entry

    def _predictor(self, entry: dict, ct: bool, window: Window, slice_axis: Optional[int]) -> VolumePredictor:
        key = (str(window), slice_axis)
        pred = entry["predictors"].get(key)
        if pred is None:
            vol = entry["volume"]
            per_volume = self.cache_bytes // self.max_volumes
            pred = VolumePredictor(self.model, entry["raw"], vol.image.GetSpacing(), vol.image.GetDirection(), ct,
                                   window=window, slice_axis=slice_axis, cache_bytes=max(per_volume // 2, EMBED_BYTES),
                                   device=self.device, encode_batch=self.encode_batch)
            entry["predictors"][key] = pred
            while len(entry["predictors"]) > 2:  # e.g. lung + soft tissue of one CT
                entry["predictors"].popitem(last=False)
        return pred

    def volume(self, path: str):
        """The file's LoadedVolume (lib.session.volume), from the engine's cache."""
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
                    slice_axis: Optional[int] = None, clip_to_roi: bool = True) -> MedSAMResult:
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
            return MedSAMResult(
                mask=res.mask, affine=vol.affine, roi=box, window=str(win), slice_axis=res.slice_axis,
                slices=res.slices, timings=timings, encoded=encoded, cache_hit=encoded == 0,
                model_version=self.model_version, grid=vol.grid,
            )


def build_medsam_engine(device: str = "cpu", weights: Optional[str] = None, cache_gb: float = 1.0) -> MedSAMEngine:
    """LiteMedSAM engine from the located weights (lib.medsam.weights.locate)."""
    loc = locate(weights)
    model = load_lite_medsam(loc.path, device=device)
    return MedSAMEngine(model, f"lite_medsam@{(loc.sha256 or 'conf')[:12]}", device=device,
                        cache_bytes=int(cache_gb * (1 << 30)))
