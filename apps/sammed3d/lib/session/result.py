"""What a click returns, and writing that mask with the reference image's exact geometry."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict

import numpy as np
import SimpleITK as sitk

from .errors import SessionError
from .volume import read_image


@dataclass
class SegmentationResult:
    """A label's mask on the image's stored grid.

    mask: (ni, nj, nk) uint8 0/1, indexed like the stored array (nibabel order, not sitk's).
    affine: (4, 4) stored index -> RAS mm, as nibabel gives for the file.
    timings: seconds for load, preprocess, encode, decode, paste, total.
    cache_hit: True when no encoder run was needed for this request.
    num_crops: crops the label currently uses (1 unless the structure grew past one crop).
    """

    mask: np.ndarray
    affine: np.ndarray
    timings: Dict[str, float] = field(default_factory=dict)
    cache_hit: bool = False
    model_version: str = ""
    num_crops: int = 0


_EXTS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd")


def write_mask(result: SegmentationResult, path: str, reference_image_path: str, compress: bool = True) -> str:
    """Write `result.mask` to NIfTI (.nii, .nii.gz) or NRRD (.nrrd) with the reference geometry.

    Origin, spacing and direction are copied from the reference image (a file or a DICOM series
    folder), so the mask overlays it voxel for voxel in any viewer. `compress=False` writes a raw
    NRRD (what OHIF asks for); .nii.gz is always compressed, .nii never. Returns `path`.
    """
    lower = path.lower()
    if not lower.endswith(_EXTS):
        raise SessionError(f"mask path must end with one of {list(_EXTS)}, got {os.path.basename(path)}")
    size, origin, spacing, direction = _reference_geometry(reference_image_path)
    if tuple(result.mask.shape) != size:
        raise SessionError(f"mask shape {list(result.mask.shape)} does not match the reference image size {list(size)}")
    # Stored (i, j, k) -> sitk array order [k, j, i].
    img = sitk.GetImageFromArray(np.ascontiguousarray(result.mask.astype(np.uint8, copy=False).transpose(2, 1, 0)))
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    use_compression = compress and not lower.endswith(".nii")
    sitk.WriteImage(img, path, use_compression)
    return path


def _reference_geometry(path: str):
    """(size, origin, spacing, direction) of the reference; reads only the header of a file."""
    if os.path.isfile(path):
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            raise SessionError(f"cannot read reference image {path}: {str(e).strip().splitlines()[-1]}") from None
        if reader.GetDimension() != 3:
            raise SessionError(f"reference image {path} is {reader.GetDimension()}D; a 3D volume is required")
        return tuple(int(s) for s in reader.GetSize()), reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection()
    image, _ = read_image(path)  # DICOM series folder
    return tuple(int(s) for s in image.GetSize()), image.GetOrigin(), image.GetSpacing(), image.GetDirection()
