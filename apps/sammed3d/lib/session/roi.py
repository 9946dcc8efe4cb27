"""A region of interest on the stored grid: Slicer's ROI, [i_min, i_max, j_min, j_max, k_min, k_max]
in voxel indices of the volume as stored, both ends inclusive.

The one place that parses, clamps and applies one: the SAM-Med3D click task bounds its mask with it
(lib.session.engine), the MedSAM box task takes it as its 3D box (lib.medsam.propagate and the
teacher). `error` is the exception type raised (SessionError, or lib.medsam's BoxError, a
SessionError); `name` is how a message calls the value ("roi", "3D box").
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple, Type

import numpy as np

from .errors import SessionError

Roi = Tuple[int, int, int, int, int, int]


def parse_roi(value, name: str = "roi", error: Type[Exception] = SessionError) -> Optional[Roi]:
    """Six finite numbers, rounded to voxel indices, min <= max per axis; None for None or []."""
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return None
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != 6:
        raise error(f"{name} must be [i_min, i_max, j_min, j_max, k_min, k_max], got {value!r:.80}")
    for c in value:
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, numbers.Real) or not math.isfinite(float(c)):
            raise error(f"{name} contains a non-numeric or non-finite value {c!r:.20}")
    roi = tuple(int(round(float(c))) for c in value)
    for axis in range(3):
        if roi[2 * axis] > roi[2 * axis + 1]:
            raise error(f"{name} {list(roi)}: min > max on axis {axis}")
    return roi


def clamp_roi(roi: Sequence, shape: Sequence[int], name: str = "roi",
              error: Type[Exception] = SessionError) -> Roi:
    """Parse `roi` and clamp it to a volume of `shape`; `error` when it misses the volume entirely."""
    r = parse_roi(roi, name, error)
    if r is None:
        raise error(f"{name} must be [i_min, i_max, j_min, j_max, k_min, k_max], got {roi!r:.80}")
    out = []
    for a in range(3):
        lo, hi = max(0, r[2 * a]), min(int(shape[a]) - 1, r[2 * a + 1])
        if lo > hi:
            raise error(f"{name} {list(r)} does not overlap the volume of size {list(shape)}")
        out += [lo, hi]
    return tuple(out)


def roi_slices(box: Sequence[int]) -> Tuple[slice, slice, slice]:
    """A clamped ROI as index slices of the stored array."""
    return tuple(slice(int(box[2 * a]), int(box[2 * a + 1]) + 1) for a in range(3))


def apply_roi(mask: np.ndarray, box: Optional[Sequence[int]]) -> np.ndarray:
    """A copy of `mask` that is zero outside the clamped ROI `box` (`mask` itself when None)."""
    if box is None:
        return mask
    sl = roi_slices(box)
    out = np.zeros_like(mask)
    out[sl] = mask[sl]
    return out
