"""Click simulation shared by the trainer, the evaluation command and active-learning scoring.

Two rules, both from SAM-Med3D:

* Evaluation rule (deterministic, numpy): the next click goes to the *centre* of the largest
  connected component of the larger error region -- false negatives give an include click,
  false positives an exclude click. The centre is the voxel farthest from the component's
  boundary (Euclidean distance transform, in millimetres when the voxel spacing is given: on a
  0.7 x 0.7 x 5 mm CT a voxel count would make every slice of a structure equally "central");
  the array border counts as boundary, so a click never lands on the edge of the crop when a more
  interior voxel exists.
* Training rule (random, batched torch): one click drawn uniformly from the whole error region,
  labelled 1 for a false negative and 0 for a false positive.

Coordinates are array indices in the axis order of the array passed in (for a model crop that is
tensor-axis order, which is what the SAM-Med3D prompt encoder expects).

Pure numpy/scipy/torch: this module must run on the GPU training box, which has no monai.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage

Point = Tuple[int, int, int]

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
) -> Optional[Tuple[Point, bool]]:
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
                spacing: Optional[Sequence[float]] = None) -> Optional[Tuple[Point, bool]]:
    """First evaluation click: centre of the largest component of the target.

    Same return form as `next_click_from_error` (the flag is always True) so callers can loop
    `first_click` then `next_click_from_error` uniformly; None when `gt` is empty.
    """
    gt = np.asarray(gt).astype(bool)
    return next_click_from_error(np.zeros_like(gt), gt, rng, spacing)


def sample_click_uniform(
    pred: torch.Tensor, gt: torch.Tensor, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Training click: per batch item one voxel drawn uniformly from the error region.

    Args:
        pred: (B, 1, D, H, W) or (B, D, H, W) bool -- current binary prediction.
        gt:   same shape, bool -- target.
        generator: torch.Generator on pred's device (None: global RNG).

    Returns:
        coords: (B, 1, 3) float32 voxel indices (axis order D, H, W) on pred's device.
        labels: (B, 1) int64: 1 where the click is a false negative (or a fallback inside gt),
                0 for a false positive (or a fallback outside gt).

    When an item has no error, the click is a random voxel inside gt labelled 1, or, with an empty
    gt, a random voxel anywhere labelled 0. Vectorised (random scores + argmax) so it runs on the
    GPU without a host sync per item; boolean ops and one shifted add instead of nested where()s,
    since the trainer calls this up to 11 times per step.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape")
    if pred.dim() == 5:
        if pred.shape[1] != 1:
            raise ValueError("expected a single channel")
        pred, gt = pred[:, 0], gt[:, 0]
    if pred.dim() != 4:
        raise ValueError(f"expected (B,[1,]D,H,W), got {tuple(pred.shape)}")
    b, spatial = pred.shape[0], pred.shape[1:]
    pred = pred.reshape(b, -1).bool()
    gt = gt.reshape(b, -1).bool()
    err = pred ^ gt
    has_err = err.any(dim=1, keepdim=True)
    has_gt = gt.any(dim=1, keepdim=True)
    # candidates: the error region; without error, gt; with an empty gt too, everywhere
    others = ~err & (has_err | ~(gt | ~has_gt))
    scores = torch.rand(pred.shape, generator=generator, device=pred.device)
    # Non-candidates move to [-2, -1), so argmax only picks candidates; rand is in [0, 1), so each
    # candidate is equally likely to be the maximum (adding to the candidates instead would round
    # ties into them).
    flat = torch.add(scores, others, alpha=-2.0).argmax(dim=1)  # (B,)
    labels = gt.gather(1, flat[:, None]).long()  # (B, 1): FN -> 1, FP -> 0, fallbacks likewise
    _, h, w = spatial
    coords = torch.stack([flat // (h * w), (flat // w) % h, flat % w], dim=1).float()[:, None, :]  # (B, 1, 3)
    return coords, labels
