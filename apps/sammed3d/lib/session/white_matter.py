"""A click in cerebral white matter on a brain MR is read as its hemisphere's cerebral white matter (the atlas prior's
`white_matter` option; lib.session.atlas_prior).

Why: the white matter is one tissue class a hemisphere wide (about 250 ml), so a click there names its scale no image
rule finds from one point: the plain region answers a piece of a few ml and each later click adds another (test
table default-v12: 0.11 / 0.41 / 0.59 after 1 / 3 / 5 clicks; the development MNI152's white matter 0.09 / 0.26 /
0.50). The atlas says which tissue and hemisphere a click is in; the volume's own intensities say where its white
matter is (an affine fit misses a gyrus's white matter by more than the gyrus is wide).

What:
- The template side (lib.session.atlas_fit: `template_white`, BrainAtlas.white and .white_depth): each hemisphere's
  cerebral white matter on the template grid: template voxels over the atlas's grey/white boundary
  (BrainAtlas.wm_threshold) on no atlas structure, the brainstem's surroundings (BRAINSTEM_CUT_MM) cut away (the
  cerebellum's white matter joins the cerebrum's only through it), the largest connected piece per side of the
  midline; and its depth under the cortex. Only a click `wm_depth_mm` deep is read as the white matter: atlases such
  as Harvard-Oxford label a gyrus's white matter with the gyrus (the centres of its gyri that lie in white matter are
  1-3.5 mm under the Desikan-Killiany cortex, the development white matter targets' 9-10 mm: twenty-third run).
- `white_region`: on a volume, the connected pieces holding the seed clicks of: voxels over the fit's grey/white
  boundary (AtlasFit.wm_threshold), within `reach_mm` of the warped template white matter of the clicked sides, on
  no warped deep nucleus, brainstem or other side's white matter. A click whose voxel is not in it, or brighter than
  the white matter (its 3^3 median over TOP_PERCENTILE of the warped white matter farther than AWAY_MM from the
  clicks: a bright nodule or an enhancing rim), gets nothing (None: the served answer). Not robust spreads over the
  median: a real head's deep white matter is its brightest (the pydeface T1's deepest clicks 12-14 % over the
  median, over 2 spreads; its 99.9th percentile 22 % over; the test lesion model's nodule 35 %).

    white_side(atlas, fit, image, voxel (i, j, k), depth_mm) -> the side code a click reads as (0: none)
    white_region(atlas, fit, image, seeds [(voxel (i, j, k), side, 3^3 median)], reach_mm)
        -> (uint8 piece, box on the stored grid) or None
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .atlas_fit import footprint, mask_box, warped_mask
from .points import ball_mask

TOP_PERCENTILE = 99.9  # a click brighter than this percentile of the white matter is not white matter
AWAY_MM = 10.0  # ... of the white matter farther than this from the clicks (a lesion under a click is not counted)
WM_IDS = {1: 101, 2: 102}  # the ids of a white matter answer (lib.session.atlas_prior.Nucleus), past the atlas's 1-83


def white_side(atlas, fit, image, voxel: Sequence[int], depth_mm: float) -> int:
    """The hemisphere (atlas_fit.SIDES' code) whose cerebral white matter a click (its voxel index) maps into at
    least `depth_mm` under the template's cortex, else 0."""
    at = atlas.index_of(fit.transform.TransformPoint(image.TransformIndexToPhysicalPoint([int(v) for v in voxel])))
    deep = at is not None and atlas.white_depth[at[::-1]] >= depth_mm
    return int(atlas.white[at[::-1]]) if deep else 0


class WhitePieces(NamedTuple):
    """The click-independent part of a white matter answer on a volume (`white_pieces`)."""
    lo: np.ndarray  # the box's first voxel (i, j, k) on the stored grid
    hi: np.ndarray  # ... and one past its last
    white: np.ndarray  # (bool) the warped template white matter of the sides, on the box
    data: np.ndarray  # the box's intensities
    labels: np.ndarray  # the connected pieces of the volume's white matter there (ndimage.label)


def white_pieces(atlas, fit, image, sides: Sequence[int], reach_mm: float) -> Optional[WhitePieces]:
    """The connected pieces of the volume's voxels over the fit's grey/white boundary within `reach_mm` of the warped
    template white matter of `sides`, on no warped deep nucleus, brainstem or other side's white matter (0.5 s of a
    hemisphere's answer on a 1 mm brain: made ahead, AtlasPrior.prefetch_white); None where it misses the volume."""
    import SimpleITK as sitk

    sides = sorted(sides)
    spacing = np.array(atlas.ids.GetSpacing())[::-1]
    box = mask_box(np.isin(atlas.white, sides), np.ceil(reach_mm / spacing).astype(int) + 1)  # template (z, y, x)
    start = [int(b.start) for b in box][::-1]
    size = [int(b.stop - b.start) for b in box][::-1]
    crop = sitk.RegionOfInterest(atlas.ids, size, start)
    lo, hi = footprint(fit.transform, image, crop)
    if (hi <= lo).any():
        return None
    ref = sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])
    warp = lambda a: warped_mask(a, crop, ref, fit.transform)  # noqa: E731
    data = sitk.GetArrayFromImage(ref).transpose(2, 1, 0)
    white = warp(np.isin(atlas.white[box], sides))
    near = ndimage.distance_transform_edt(~white, sampling=np.array(image.GetSpacing())) <= reach_mm
    stop = warp(np.isin(atlas.id_array[box], list(atlas.deep) + list(atlas.brainstem))  # and the other side's
                | ((atlas.white[box] > 0) & ~np.isin(atlas.white[box], sides)))  # (the reach crosses the midline)
    labels, _ = ndimage.label((data > fit.wm_threshold) & near & ~stop)
    return WhitePieces(lo, hi, white, data, labels)


def white_region(atlas, fit, image, seeds: Sequence[Tuple[Sequence[int], int, float]], reach_mm: float,
                 pieces: Optional[WhitePieces] = None) -> Optional[Tuple[np.ndarray, Tuple[slice, ...]]]:
    """The volume's white matter connected to the seed clicks (see the module doc): (uint8 piece, box on the stored
    grid (i, j, k)), or None where no seed lies in it. `seeds`: (voxel index, side code, the click's 3^3 median) of
    each include click; one brighter than the warped white matter's TOP_PERCENTILE is no white matter click.
    `pieces`: white_pieces of the seeds' sides, made before (else made here)."""
    found = pieces if pieces is not None else \
        white_pieces(atlas, fit, image, {side for _, side, _ in seeds}, reach_mm)
    if found is None:
        return None
    lo, hi, white, data, labels = found
    vox = np.array(image.GetSpacing())
    inside = [tuple(int(v) for v in np.asarray(p) - lo) for p, *_ in seeds]
    elsewhere = np.ones(data.shape, dtype=bool)  # the white matter away from the clicks: a lesion there is not in it
    for p in inside:
        elsewhere &= ~ball_mask(data.shape, p, AWAY_MM, vox)
    values = data[white & elsewhere & (data > fit.wm_threshold)].astype(np.float64)
    if not values.size:
        return None
    top = np.percentile(values, TOP_PERCENTILE)
    inside = [p for p, seed in zip(inside, seeds) if seed[2] <= top]
    keep = {int(labels[p]) for p in inside if all(0 <= v < n for v, n in zip(p, labels.shape))} - {0}
    if not keep:
        return None
    return np.isin(labels, list(keep)).astype(np.uint8), tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
