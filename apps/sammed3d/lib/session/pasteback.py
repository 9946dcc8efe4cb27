"""Map a crop's low-resolution logits back onto the original (stored) grid.

The released model's mask is trilinear(logits 32^3 -> 128^3, align_corners=False) > 0 on the
crop. We evaluate that same trilinear function directly at the centres of the original voxels the
crop covers (nothing outside the crop is touched). Because the model grid is the stored grid
permuted/flipped and scaled (geometry.py), trilinear interpolation factorises into one small
(n_out x 32) interpolation matrix per axis, so the whole paste is three matrix products: a few
ms even for a 274 x 274 x 38 box, instead of a grid_sample over millions of points.
At crop voxel centres this gives exactly the upsampled logits; between them it is the same
trilinear field (border cells clamped as F.interpolate does).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from .geometry import ModelGrid
from .preprocess import CROP


def _axis_weights(
    scale: float, offset: float, n_stored: int, crop_lo: int, n_low: int, crop: int
) -> Optional[Tuple[slice, torch.Tensor]]:
    """Stored index range along one axis covered by the crop, and its (n, n_low) weights.

    A stored voxel belongs to the crop when its nearest crop voxel is inside it, i.e. its crop
    coordinate a = scale * idx + offset - crop_lo lies in [-0.5, crop - 0.5).
    """
    # Solve -0.5 <= scale*idx + offset - crop_lo < crop - 0.5 for idx (scale may be negative).
    lo_a, hi_a = -0.5 + crop_lo - offset, crop - 0.5 + crop_lo - offset
    b1, b2 = lo_a / scale, hi_a / scale
    lo_i, hi_i = min(b1, b2), max(b1, b2)
    start = max(0, int(np.ceil(lo_i - 1e-9)))
    stop = min(n_stored, int(np.floor(hi_i + 1e-9)) + 1)
    idx = np.arange(start, stop, dtype=np.float64)
    a = scale * idx + offset - crop_lo
    keep = (a >= -0.5) & (a < crop - 0.5)  # trim the half-open end exactly
    idx, a = idx[keep], a[keep]
    if idx.size == 0:
        return None
    factor = crop / n_low
    p = np.clip((a + 0.5) / factor - 0.5, 0.0, n_low - 1)  # F.interpolate source coordinate
    lo = np.floor(p).astype(np.int64)
    hi = np.minimum(lo + 1, n_low - 1)
    frac = p - lo
    w = np.zeros((idx.size, n_low), dtype=np.float32)
    rows = np.arange(idx.size)
    w[rows, lo] = 1.0 - frac
    w[rows, hi] += frac  # hi == lo at the clamped border: weights still sum to 1
    return slice(int(idx[0]), int(idx[-1]) + 1), torch.from_numpy(w)


def paste_logits(
    logits: torch.Tensor, grid: ModelGrid, crop_origin: Tuple[int, int, int], shape: Tuple[int, int, int], crop: int = CROP
) -> Optional[Tuple[Tuple[slice, slice, slice], torch.Tensor]]:
    """Logits (1, 1, L, L, L) of a crop -> (box slices in stored order, box logits float32 on CPU).

    The box tensor has stored axis order (i, j, k) and the box's shape; threshold it at 0 for the
    mask. None when the crop does not overlap the volume.
    """
    low = logits.detach().reshape(logits.shape[-3:]).float().cpu()
    n_low = low.shape[0]
    per_axis = []
    for r in range(3):
        s = grid.src_axis[r]
        res = _axis_weights(grid.scale[r], grid.offset[r], shape[s], crop_origin[r], n_low, crop)
        if res is None:
            return None
        per_axis.append(res)
    w0, w1, w2 = (w for _, w in per_axis)
    # out[a, b, c] = sum_xyz w0[a, x] w1[b, y] w2[c, z] low[x, y, z], as three contiguous
    # matmuls. Expanding axis 2 (S: the few-slices axis of a thick-slice CT) first keeps the
    # intermediates small; the last product (A*B*C*L) dominates whatever the order.
    t = torch.matmul(low.reshape(-1, n_low), w2.T).reshape(n_low, n_low, -1)  # (Lx, Ly, C)
    t = torch.matmul(w1, t)  # (Lx, B, C), batched over Lx
    t = torch.matmul(w0, t.reshape(n_low, -1)).reshape(w0.shape[0], w1.shape[0], w2.shape[0])  # (A, B, C)
    # Model axes -> stored axes: stored axis s is model axis r with src_axis[r] == s.
    perm = [list(grid.src_axis).index(s) for s in range(3)]
    box = t.permute(*perm)
    slices = [None, None, None]
    for r in range(3):
        slices[grid.src_axis[r]] = per_axis[r][0]
    return tuple(slices), box


def logits_to_crop_mask(logits: torch.Tensor, crop: int = CROP) -> torch.Tensor:
    """The released model's own mask on the crop: (1,1,L,L,L) -> (crop,)*3 bool (for tests)."""
    up = torch.nn.functional.interpolate(logits.float(), size=(crop,) * 3, mode="trilinear", align_corners=False)
    return up[0, 0] > 0
