"""A volume (NIfTI, NRRD or DICOM series) loaded for the session (files are read by io.py).

Index conventions used throughout the session:
* "stored index" (i, j, k): the index of the array as stored in the file, i.e. what nibabel's
  `get_fdata()[i, j, k]` and ITK's `image[i, j, k]` address, and what 3D Slicer / OHIF send.
* SimpleITK's `GetArrayFromImage` returns the array as [k, j, i]; we transpose to (i, j, k) only
  where an array leaves the session (masks), never for the image itself (it stays an sitk.Image).
* World coordinates are LPS inside ITK; the affine we hand out is RAS (nibabel's convention):
  affine_ras = diag(-1, -1, 1, 1) @ [direction * spacing | origin].
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import SessionError
from .io import StoredGrid, read_image, sitk_affine_ras
from .points import voxel_indices


@dataclass
class LoadedVolume:
    """A volume on its original grid, kept in its stored pixel type (resampling casts per crop)."""

    image: sitk.Image  # 3D scalar image, original pixel type
    shape: Tuple[int, int, int]  # stored (ni, nj, nk) == image.GetSize()
    affine: np.ndarray  # (4, 4) stored index -> RAS world (mm)
    modality: Optional[str]  # DICOM (0008,0060) when read from a series, else None
    file_key: Tuple  # (path, mtime_ns, size): changes when the file is rewritten
    _intensity_min: Optional[float] = field(default=None, repr=False, compare=False)

    @property
    def intensity_min(self) -> float:
        """The lowest voxel value, computed on first use: only is_ct asks, and only when no modality
        was given (a whole-volume pass a click with a known modality skips)."""
        if self._intensity_min is None:
            stats = sitk.MinimumMaximumImageFilter()
            stats.Execute(self.image)
            self._intensity_min = float(stats.GetMinimum())
        return self._intensity_min

    @property
    def grid(self) -> StoredGrid:
        """The stored grid (size, origin, spacing, direction): what a mask is written on."""
        return StoredGrid.of(self.image)

    def median_around(self, point, radius: int = 2) -> float:
        """Median intensity of the (2 radius + 1)^3 voxels around stored index `point` (clipped to the
        volume): what tissue a click lies in, robust to a vessel or noise at its own voxel."""
        view = sitk.GetArrayViewFromImage(self.image)  # (nk, nj, ni), no copy
        c = voxel_indices([point])[0]
        lo = [max(x - radius, 0) for x in c]
        return float(np.median(view[lo[2]:c[2] + radius + 1, lo[1]:c[1] + radius + 1, lo[0]:c[0] + radius + 1]))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.image.GetSizeOfPixelComponent()


def file_key(path: str) -> Tuple:
    """(absolute path, mtime_ns, size); for a DICOM folder the newest file and the summed size."""
    path = os.path.abspath(path)
    try:
        if os.path.isdir(path):
            stats = [os.stat(e.path) for e in os.scandir(path) if e.is_file()]
            return (path, max((s.st_mtime_ns for s in stats), default=0), sum(s.st_size for s in stats))
        st = os.stat(path)
    except OSError as e:
        raise SessionError(f"image file not accessible: {path} ({e.strerror})") from None
    return (path, st.st_mtime_ns, st.st_size)


def load_volume(path: str) -> LoadedVolume:
    """Load and validate a 3D scalar volume. 2D, 4D and multi-component images are rejected."""
    key = file_key(path)
    image, modality = read_image(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SessionError(
            f"image {path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "a scalar (grey-level) 3D volume is required"
        )
    if image.GetDimension() != 3:
        raise SessionError(
            f"image {path} is {image.GetDimension()}D with size {list(image.GetSize())}; "
            "a 3D volume is required"
        )
    size = tuple(int(s) for s in image.GetSize())
    if min(size) < 2:
        raise SessionError(f"image {path} has size {list(size)}: a single slice is 2D, a 3D volume is required")
    return LoadedVolume(image=image, shape=size, affine=sitk_affine_ras(image), modality=modality, file_key=key)


def is_ct(volume: LoadedVolume, modality: Optional[str]) -> bool:
    """Whether to apply the CT clamp [-1000, 1000].

    Order of evidence: an explicit modality (request, then app config), then the DICOM modality
    tag, then the intensity range -- Hounsfield units reach far below zero (air is -1000, the area
    outside the scan field -1024..-3024), which MR/PET intensities never do.
    """
    for m in (modality, volume.modality):
        if m and m.strip().lower() not in ("", "auto"):
            return m.strip().upper() == "CT"
    return volume.intensity_min <= -500.0
