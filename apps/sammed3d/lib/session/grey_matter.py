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
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .atlas_fit import footprint, warped_mask


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
    warp = lambda select: warped_mask(np.isin(crop_ids, list(select)), crop, ref, fit.transform)  # noqa: E731

    cortex = warp(ids)
    if not cortex.any():
        return None
    data = sitk.GetArrayViewFromImage(ref).transpose(2, 1, 0)
    near = ndimage.distance_transform_edt(~cortex, sampling=image.GetSpacing()) <= reach_mm if reach_mm > 0 else cortex
    stop = warp(list(atlas.deep) + list(atlas.brainstem) + list(others)) & ~cortex
    grey = near & ~stop & (data > fit.gm_threshold) & (data <= fit.wm_threshold)
    return grey.astype(np.uint8), tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))

