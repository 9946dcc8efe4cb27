"""The simulated annotator's click rule (SAM-Med3D's evaluation rule), shared by the evaluation
command, the trainer's validation (lib.training.loop), the active-learning simulation and its
prompts (lib.activelearning), and the MedSAM box row (lib.evaluation.medsam).

The first click goes to the centre of the target; each next click to the *centre* of the largest
connected component of the larger error region -- false negatives give an include click, false
positives an exclude click. The centre is the voxel farthest from the component's boundary
(Euclidean distance transform, in millimetres when the voxel spacing is given: on a
0.7 x 0.7 x 5 mm CT a voxel count would make every slice of a structure equally "central"); the
array border counts as boundary, so a click never lands on the edge of the crop when a more
interior voxel exists.

Coordinates are array indices in the axis order of the array passed in (for a model crop that is
tensor-axis order, which is what the SAM-Med3D prompt encoder expects). The training rule (a click
drawn uniformly from the error region) is lib.training.clicks.

Pure numpy/scipy: this module must run on the GPU training box, which has no monai.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

Point = Tuple[int, int, int]
Click = Tuple[Point, bool]

# 26-connectivity: thin oblique structures (vessels, ribs) would otherwise split into many pieces.
_STRUCTURE = np.ones((3, 3, 3), dtype=bool)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest 26-connected component of `mask` (which must be non-empty)."""
    labels, n = ndimage.label(mask, structure=_STRUCTURE)
    if n == 1:
        return labels == 1
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # background
    return labels == int(np.argmax(sizes))


def _centre(component: np.ndarray, rng: Optional[np.random.Generator] = None,
            spacing: Optional[Sequence[float]] = None) -> Point:
    """Voxel of `component` farthest from its boundary (in mm with `spacing`, else in voxels).

    The mask is zero-padded by one voxel first so the array border acts as boundary (as in the
    RITM / SAM-Med3D click code). Ties: first voxel in C order, or a random one when `rng` is given.
    """
    dist = ndimage.distance_transform_edt(np.pad(component, 1), sampling=spacing)
    dist = dist[(slice(1, -1),) * component.ndim]
    if rng is None:
        flat = int(np.argmax(dist))
    else:
        best = np.flatnonzero(dist == dist.max())
        flat = int(best[rng.integers(len(best))])
    return tuple(int(i) for i in np.unravel_index(flat, component.shape))


def next_click_from_error(
    pred: np.ndarray, gt: np.ndarray, rng: Optional[np.random.Generator] = None,
    spacing: Optional[Sequence[float]] = None,
) -> Optional[Click]:
    """Evaluation click: centre of the largest component of the larger error region.

    Args:
        pred, gt: boolean (or 0/1) arrays of the same shape, e.g. (D, H, W).
        rng: optional numpy Generator, only used to break ties between equally central voxels.
        spacing: voxel size per array axis (mm); None = isotropic (model crops are 1.5 mm cubes).

    Returns:
        ((i, j, k), is_include) -- is_include True for a false-negative (include) click, False for
        a false-positive (exclude) click -- or None when pred == gt everywhere.
        Ties in error size favour the false negatives (missing target is the worse error).
    """
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape")
    fn = gt & ~pred
    fp = pred & ~gt
    n_fn, n_fp = int(fn.sum()), int(fp.sum())
    if n_fn == 0 and n_fp == 0:
        return None
    is_include = n_fn >= n_fp
    region = fn if is_include else fp
    return _centre(_largest_component(region), rng, spacing), is_include


def first_click(gt: np.ndarray, rng: Optional[np.random.Generator] = None,
                spacing: Optional[Sequence[float]] = None) -> Optional[Click]:
    """First evaluation click: centre of the largest component of the target.

    Same return form as `next_click_from_error` (the flag is always True) so callers can loop
    `first_click` then `next_click_from_error` uniformly; None when `gt` is empty.
    """
    gt = np.asarray(gt).astype(bool)
    return next_click_from_error(np.zeros_like(gt), gt, rng, spacing)


def next_click(pred: np.ndarray, gt: np.ndarray, spacing: Optional[Sequence[float]] = None) -> Optional[Click]:
    """next_click_from_error (centres in mm with `spacing`) on the bounding box of pred | gt (plus one voxel).

    Same answer as on the whole volume (outside the box nothing is in error, and the one-voxel
    margin gives the distance transform the same boundary), but a 512x512x61 CT costs a box's
    worth of work instead of the volume's.
    """
    any_ = pred.astype(bool) | gt.astype(bool)
    if not any_.any():
        return None
    lo, hi = [], []
    for ax in range(3):
        nz = np.nonzero(any_.any(axis=tuple(a for a in range(3) if a != ax)))[0]
        lo.append(max(0, int(nz[0]) - 1))
        hi.append(min(any_.shape[ax], int(nz[-1]) + 2))
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    res = next_click_from_error(pred[box], gt[box], spacing=spacing)
    if res is None:
        return None
    (i, j, k), include = res
    return (i + lo[0], j + lo[1], k + lo[2]), include


def click_or_repeat(pred: np.ndarray, gt: np.ndarray, last: Optional[Click] = None) -> Click:
    """The annotator's next click on a crop for batched decoders (one click per crop and step).

    next_click_from_error(pred, gt) (with an empty `pred`: first_click(gt)); when there is nothing
    to correct (pred == gt, or an empty target) the `last` click is repeated so the batch keeps its
    shape, or ((0, 0, 0), False) -- an exclude click in the corner -- before any click.
    """
    c = next_click_from_error(pred, gt)
    if c is None:
        return last if last is not None else ((0, 0, 0), False)
    return c
