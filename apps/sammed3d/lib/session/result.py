"""What a segment call of either engine returns: the mask on the stored grid, and that grid
(io.write_mask writes it). SegmentationEngine (clicks) and lib.medsam's MedSAMEngine (boxes) both
return a SegmentationResult; each fills the fields of its own prompt kind and leaves the rest empty."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from .io import StoredGrid


@dataclass
class SegmentationResult:
    """A mask on the image's stored grid.

    mask: (ni, nj, nk) uint8 0/1, indexed like the stored array (nibabel order, not sitk's).
    affine: (4, 4) stored index -> RAS mm, as nibabel gives for the file.
    timings: seconds per stage (load, preprocess, encode, decode, ... and total).
    cache_hit: True when no encoder run was needed for this request (encoded == 0).
    model_version: the weights that answered.
    grid: the volume's StoredGrid, so the mask is written without reading the file again.
    encoded: encoder runs of this request (SAM-Med3D: 128^3 crops; MedSAM: slices).
    num_crops: SAM-Med3D: crops the label currently uses (1 unless the structure grew past one crop).
    roi, window, slice_axis, slices: MedSAM: the clamped stored box, the intensity window used, the
    stored axis it went slice by slice along, and the slices it segmented.
    """

    mask: np.ndarray
    affine: np.ndarray
    timings: Dict[str, float] = field(default_factory=dict)
    cache_hit: bool = False
    model_version: str = ""
    grid: Optional[StoredGrid] = None  # the stored grid of the volume (what write_mask writes on)
    encoded: int = 0
    num_crops: int = 0
    roi: Optional[Tuple[int, ...]] = None
    window: Optional[str] = None
    slice_axis: Optional[int] = None
    slices: List[int] = field(default_factory=list)
