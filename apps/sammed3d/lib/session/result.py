"""What a click returns: the mask on the stored grid, and that grid (io.write_mask writes it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from .io import StoredGrid


@dataclass
class SegmentationResult:
    """A label's mask on the image's stored grid.

    mask: (ni, nj, nk) uint8 0/1, indexed like the stored array (nibabel order, not sitk's).
    affine: (4, 4) stored index -> RAS mm, as nibabel gives for the file.
    timings: seconds for load, preprocess, encode, decode, paste, total.
    cache_hit: True when no encoder run was needed for this request.
    num_crops: crops the label currently uses (1 unless the structure grew past one crop).
    grid: the volume's StoredGrid, so the mask is written without reading the file again.
    """

    mask: np.ndarray
    affine: np.ndarray
    timings: Dict[str, float] = field(default_factory=dict)
    cache_hit: bool = False
    model_version: str = ""
    num_crops: int = 0
    grid: Optional[StoredGrid] = None  # the stored grid of the volume (what write_mask writes on)
