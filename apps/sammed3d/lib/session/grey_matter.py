"""The whole cortex reading's answer on a brain MR (lib.session.atlas_prior `whole_cortex_mm`): the volume's own grey
matter near the warped cortex of the hemispheres clicked.

Why: the cortex is a ribbon 2-3 mm thick and an affine fit misses it by about that much, so the warped atlas parcels
alone cover the volume's cortex only in part (the development brains' whole cortex: Dice 0.70 / 0.73 with the parcels;
docs/default_model.md, "Twenty-fourth run"). The volume's own intensities say where its grey matter is; the atlas says
which tissue near there is cortex and of which hemisphere.

What: `cortex_region`: voxels between the fit's CSF/grey and grey/white boundaries (AtlasFit.gm_threshold,
.wm_threshold: the template's, as quantiles of the warped brain) within `reach_mm` of the warped parcels, on no
warped deep nucleus or brainstem, and not in another hemisphere's warped cortex that is not the clicked one's.

    cortex_region(atlas, fit, image, ids, others, reach_mm) -> (uint8 piece, box on the stored grid) or None
    CortexPieces().get(atlas, fit, image, ids, others, reach_mm, background) -> Future of cortex_region's answer,
        computed once per fit and parcels (the newest four kept), here or on a background thread
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..util import process_threads
from .atlas_fit import footprint


def cortex_region(atlas, fit, image, ids: Sequence[int], others: Sequence[int],
                  reach_mm: float) -> Optional[Tuple[np.ndarray, Tuple[slice, ...]]]:
    """The volume's grey matter near the warped parcels `ids` (see the module doc), not in the warped parcels
    `others` (the other hemisphere's) unless in `ids`'s: (uint8 piece, box on the stored grid (i, j, k)), or None."""
    import SimpleITK as sitk

    crop = atlas.crop(ids)
    lo, hi = footprint(fit.transform, image, crop)
    pad = np.ceil(reach_mm / np.array(image.GetSpacing())).astype(int) + 1
    lo, hi = np.maximum(lo - pad, 0), np.minimum(hi + pad, image.GetSize())
    if (hi <= lo).any():
        return None
    ref = sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])
    crop_ids = sitk.GetArrayViewFromImage(crop)

    def warp(select) -> np.ndarray:
        indicator = sitk.GetImageFromArray(np.isin(crop_ids, list(select)).astype(np.float32))
        indicator.CopyInformation(crop)
        return sitk.GetArrayFromImage(sitk.Resample(indicator, ref, fit.transform, sitk.sitkLinear,
                                                    0.0)).transpose(2, 1, 0) >= 0.5

    cortex = warp(ids)
    if not cortex.any():
        return None
    data = sitk.GetArrayViewFromImage(ref).transpose(2, 1, 0)
    near = ndimage.distance_transform_edt(~cortex, sampling=image.GetSpacing()) <= reach_mm if reach_mm > 0 else cortex
    stop = warp(list(atlas.deep) + list(atlas.brainstem) + list(others)) & ~cortex
    grey = near & ~stop & (data > fit.gm_threshold) & (data <= fit.wm_threshold)
    return grey.astype(np.uint8), tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


class CortexPieces:
    """cortex_region's answers for the last volumes' fits, each computed once: here, or (`background`) on the atlas
    band's thread while the annotator looks at a first answer (AtlasPrior.prefetch_cortex), so that the click asking
    for the cortex finds it made."""

    def __init__(self, keep: int = 4):
        self.keep, self._jobs, self._lock = keep, OrderedDict(), threading.Lock()

    def get(self, atlas, fit, image, ids: Sequence[int], others: Sequence[int], reach_mm: float,
            background: bool = False) -> Future:
        key = (id(fit), tuple(ids), reach_mm)
        with self._lock:
            hit = self._jobs.get(key)
            mine = hit is None or hit[0] is not fit  # a refit of the volume is a new fit
            if mine:
                hit = self._jobs[key] = (fit, Future())
                while len(self._jobs) > self.keep:
                    self._jobs.popitem(last=False)
        job = hit[1]

        def run():
            try:
                job.set_result(cortex_region(atlas, fit, image, ids, others, reach_mm))
            except BaseException as e:  # the caller's .result() raises it
                job.set_exception(e)

        if mine and background:
            process_threads("atlas-band", 1).submit(run)
        elif mine:
            run()
        return job
