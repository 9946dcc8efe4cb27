"""Multi-crop growth for structures larger than one crop (lung, liver, brain).

Crops live on a lattice: origin = anchor + n * step with step = crop / 2 (50 % overlap, the
SAM-Med3D paper's sliding window). When a crop's mask reaches one of its faces and the volume
continues beyond that face, the neighbour crop on that side is added: its decoder starts from
the source crop's logits shifted by step (an exact cell shift: step / 4 low-res cells), and it
gets one include seed on the structure inside the shared half, so the prompt encoder has a point.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

Origin = Tuple[int, int, int]


def lattice_origin_for(point: np.ndarray, anchor: Origin, crop: int) -> Origin:
    """Origin of the lattice crop whose centre is nearest to `point` (grid index); contains it."""
    step = crop // 2
    centre_off = (crop - 1) / 2.0
    n = np.floor((np.asarray(point, float) - np.asarray(anchor, float) - centre_off) / step + 0.5)
    return tuple(int(a + k * step) for a, k in zip(anchor, n))


def inside_crop(point_crop: np.ndarray, crop: int) -> bool:
    """Whether crop coordinates (3,) fall on a voxel of the crop."""
    return bool(np.all(point_crop >= -0.5) and np.all(point_crop < crop - 0.5))


def touching_faces(logits: torch.Tensor, origin: Origin, grid_size: Sequence[int], crop: int) -> List[Tuple[int, int]]:
    """Faces (axis, +1/-1) where the mask reaches the crop border and the volume goes on.

    logits: (1, 1, L, L, L). A face touches when any border cell's logit is > 0 (each border
    cell covers the outer crop/L voxels of the mask).
    """
    low = logits[0, 0]
    faces = []
    for r in range(3):
        lo_face = low.select(r, 0)
        hi_face = low.select(r, low.shape[r] - 1)
        if origin[r] > 0 and bool((lo_face > 0).any()):
            faces.append((r, -1))
        if origin[r] + crop < grid_size[r] and bool((hi_face > 0).any()):
            faces.append((r, 1))
    return faces


def neighbour(origin: Origin, axis: int, direction: int, crop: int) -> Origin:
    o = list(origin)
    o[axis] += direction * (crop // 2)
    return tuple(o)


def shift_logits(logits: torch.Tensor, axis: int, direction: int) -> torch.Tensor:
    """Logits of a crop seen from its neighbour at `direction` along `axis` (half a crop away).

    (1, 1, L, L, L) -> same shape; new[x] = old[x + direction * L/2] along the axis, 0 (no
    information, as the first click's mask input) where the source crop does not reach.
    """
    n = logits.shape[2 + axis]
    half = n // 2
    out = torch.zeros_like(logits)
    src = logits.narrow(2 + axis, half if direction > 0 else 0, n - half)
    out.narrow(2 + axis, 0 if direction > 0 else half, n - half).copy_(src)
    return out


def seed_point(shifted: torch.Tensor, crop: int) -> Optional[Tuple[float, float, float]]:
    """Include seed in the new crop's coordinates: the positive low-res cell nearest the centroid
    of the positive cells (stays on the structure even when it is curved). None if none positive."""
    pos = torch.nonzero(shifted[0, 0] > 0).double()
    if pos.shape[0] == 0:
        return None
    centroid = pos.mean(dim=0)
    best = pos[torch.argmin(((pos - centroid) ** 2).sum(dim=1))]
    factor = crop / shifted.shape[-1]
    # Low-res cell p covers crop voxels [factor*p, factor*(p+1)); its centre:
    return tuple(float(factor * c + (factor - 1) / 2.0) for c in best)
