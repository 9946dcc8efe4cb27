"""Per-click metrics of the evaluation: Dice (`dice`) and the normalised surface Dice (NSD) at a
tolerance in mm (`surface_dice`, from monai.metrics.compute_surface_dice).

NSD is computed on the bounding box of pred | gt padded with one empty voxel on every side: the
surfaces and the distances between them are the same as on the whole volume (outside the box there
is no surface; the padding makes a structure cut by the array border have its surface there, as
scipy's erosion with border_value=0 does on the whole array), at a box's cost.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two masks (both empty: 1.0)."""
    p, g = pred.astype(bool), gt.astype(bool)
    denom = int(p.sum()) + int(g.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & g).sum()) / denom


def surface_dice(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0) -> float:
    """NSD of two boolean (i, j, k) masks at `tolerance_mm`, with the voxel spacing per axis.

    Both empty: 1.0; exactly one empty: 0.0.
    """
    import torch
    from monai.metrics import compute_surface_dice

    p, g = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ in shape")
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 1.0
    if has_p != has_g:
        return 0.0
    any_ = p | g
    box = []
    for ax in range(3):
        nz = np.nonzero(any_.any(axis=tuple(a for a in range(3) if a != ax)))[0]
        box.append(slice(int(nz[0]), int(nz[-1]) + 1))
    box = tuple(box)
    p, g = np.pad(p[box], 1), np.pad(g[box], 1)
    one_hot = lambda m: torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))  # noqa: E731
    with warnings.catch_warnings():  # monai 1.6 warns about its own deprecated always_return_as_numpy
        warnings.simplefilter("ignore")
        val = compute_surface_dice(one_hot(p), one_hot(g), class_thresholds=[float(tolerance_mm)],
                                   spacing=[float(s) for s in spacing])
    return float(val.reshape(-1)[0])
