"""Stored-grid file I/O: the one place of the app that opens image and label files.

* `read_image`: a whole volume (NIfTI, NRRD, ... file, or a DICOM series folder); a large .nii.gz
  through niftigz.py (same image, faster inflate).
* `read_header`: the stored grid (`StoredGrid`: size, origin, spacing, direction) from a file's
  header only (a DICOM folder is read whole); `file_header` is its raw header read.
* `read_label`: a label file as a stored-order (i, j, k) array and its grid.
* `write_label`: a multi-valued label volume (the MedSAM teacher's pseudo-labels), SimpleITK.
* `write_mask`: the one mask writer. It takes the grid the caller already holds (a click's result
  carries its volume's `StoredGrid`), so writing reads no file; a reference path is read (header
  only) only when no grid is given. The bytes are written by `labelfile.write_label_file` (the
  file SimpleITK writes, without compressing the zeros around the mask); what it does not handle,
  and everything when the environment sets SAMMED3D_LABEL_WRITER=sitk (benchmarks), goes through
  SimpleITK's writer.

Index order: SimpleITK's `GetArrayFromImage` returns [k, j, i]; arrays leave here as stored
(i, j, k). World coordinates are LPS inside ITK; `StoredGrid.affine` is RAS (nibabel's convention).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import SessionError
from .labelfile import UnsupportedLabelFile, write_label_file
from .niftigz import read_nifti_gz

logger = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MASK_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd")


@dataclass(frozen=True)
class StoredGrid:
    """A volume's grid as stored in its file, with SimpleITK's values (LPS, row-major direction)."""

    size: Tuple[int, int, int]  # stored (ni, nj, nk)
    origin: Tuple[float, ...]
    spacing: Tuple[float, ...]
    direction: Tuple[float, ...]  # 9 values, row-major 3x3, columns are the stored axes (LPS)

    @classmethod
    def of(cls, image) -> "StoredGrid":
        """The grid of a sitk.Image or of an ImageFileReader after ReadImageInformation."""
        return cls(tuple(int(s) for s in image.GetSize()), image.GetOrigin(), image.GetSpacing(), image.GetDirection())

    @property
    def geometry(self) -> Tuple[tuple, tuple, tuple]:
        """(origin, spacing, direction), what the label-file writer takes."""
        return self.origin, self.spacing, self.direction

    @property
    def affine(self) -> np.ndarray:
        """(4, 4) RAS affine: stored index (i, j, k, 1) -> RAS mm."""
        direction = np.array(self.direction, dtype=np.float64).reshape(3, 3)
        lps = np.eye(4)
        lps[:3, :3] = direction * np.array(self.spacing, dtype=np.float64)[None, :]
        lps[:3, 3] = self.origin
        return LPS_TO_RAS @ lps


def sitk_affine_ras(image: sitk.Image) -> np.ndarray:
    """(4, 4) RAS affine of a 3D sitk image: stored index (i, j, k, 1) -> RAS mm."""
    return StoredGrid.of(image).affine


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"


def _read_dicom_series(path: str) -> Tuple[sitk.Image, Optional[str]]:
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(path)
    if not series_ids:
        raise SessionError(f"no DICOM series found in folder {path}")
    # Several series in one folder: take the one with most slices (the volume, not a scout).
    files = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(path, s) for s in series_ids), key=len)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    modality = reader.GetMetaData(0, "0008|0060").strip() if reader.HasMetaDataKey(0, "0008|0060") else None
    return image, (modality or None)


def read_image(path: str) -> Tuple[sitk.Image, Optional[str]]:
    """Read a NIfTI/NRRD/... file or a DICOM series folder; SessionError when unreadable."""
    if not os.path.exists(path):
        raise SessionError(f"image not found: {path}")
    try:
        if os.path.isdir(path):
            return _read_dicom_series(path)
        # a large .nii.gz: the same image with its voxels inflated by libdeflate (niftigz.py)
        image = read_nifti_gz(path)
        return (sitk.ReadImage(path) if image is None else image), None
    except SessionError:
        raise
    except RuntimeError as e:  # SimpleITK reports every read failure as RuntimeError
        raise SessionError(f"cannot read image {path}: {_first_line(e)}") from None


def file_header(path: str) -> StoredGrid:
    """The grid in an image file's header, any dimension; SimpleITK's RuntimeError when unreadable.

    The one header read of the app (read_header, the upload guards and scoring go through it)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()  # header only: cheap even for a large volume
    return StoredGrid.of(reader)


def read_header(path: str) -> StoredGrid:
    """The stored grid of a 3D image: a file's header only, a DICOM series folder read whole.

    SessionError when the file is unreadable or not 3D."""
    if os.path.isfile(path):
        try:
            grid = file_header(path)
        except RuntimeError as e:
            raise SessionError(f"cannot read reference image {path}: {_first_line(e)}") from None
        if len(grid.size) != 3:
            raise SessionError(f"reference image {path} is {len(grid.size)}D; a 3D volume is required")
        return grid
    image, _ = read_image(path)  # DICOM series folder
    return StoredGrid.of(image)


def read_label(path: str) -> Tuple[np.ndarray, StoredGrid]:
    """(label as stored (ni, nj, nk), in the file's pixel type; its grid). SessionError when the
    file is unreadable or not a 3D scalar image."""
    image, _ = read_image(path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise SessionError(f"label {path} is {image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} "
                           "component(s) per voxel; a 3D scalar image is required")
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), StoredGrid.of(image)


def _write_sitk(mask: np.ndarray, path: str, grid: StoredGrid, dtype, compress: bool) -> None:
    """SimpleITK's writer: the mask as uint8 (0/1), cast to `dtype`, on `grid`."""
    arr = np.ascontiguousarray(mask.astype(np.uint8, copy=False).transpose(2, 1, 0))
    if np.dtype(dtype) != np.uint8:
        arr = arr.astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin(grid.origin)
    img.SetSpacing(grid.spacing)
    img.SetDirection(grid.direction)
    sitk.WriteImage(img, path, compress and not path.lower().endswith(".nii"))


def write_mask(result, path: str, reference=None, compress: bool = True, dtype=np.uint8) -> str:
    """Write `result.mask` ((ni, nj, nk), stored order) to NIfTI (.nii, .nii.gz) or NRRD (.nrrd,
    .seg.nrrd) on a volume's grid, voxel for voxel. Returns `path`.

    reference: the grid to write on -- a StoredGrid (nothing is read), a reference image path (its
    header is read), or None for `result.grid` (what a click's result carries). `compress=False`
    writes a raw NRRD (what OHIF asks for); .nii.gz is always compressed, .nii never. `dtype`: the
    voxel type of the file (masks are 0/1, so every integer or float type holds them exactly).
    """
    if not path.lower().endswith(MASK_EXTENSIONS):
        raise SessionError(f"mask path must end with one of {list(MASK_EXTENSIONS)}, got {os.path.basename(path)}")
    if reference is None:
        grid = getattr(result, "grid", None)
        if grid is None:
            raise SessionError("no grid to write the mask on: pass a reference image or a StoredGrid")
    else:
        grid = reference if isinstance(reference, StoredGrid) else read_header(reference)
    mask = result.mask
    if tuple(mask.shape) != tuple(grid.size):
        raise SessionError(f"mask shape {list(mask.shape)} does not match the reference image size {list(grid.size)}")
    if os.environ.get("SAMMED3D_LABEL_WRITER", "").strip().lower() == "sitk":
        _write_sitk(mask, path, grid, dtype, compress)
        return path
    try:
        write_label_file(mask, path, grid.geometry, dtype=dtype, compress=compress)
    except UnsupportedLabelFile as e:
        logger.info(f"label file through SimpleITK: {e}")
        _write_sitk(mask, path, grid, dtype, compress)
    return path


def write_label(label: np.ndarray, path: str, grid: StoredGrid) -> str:
    """Write a multi-valued label volume ((ni, nj, nk), stored order; values < 65536) on `grid`
    with SimpleITK, compressed: uint8 when every value fits, else uint16 (pseudo-labels of several
    structures; a click's 0/1 mask goes through write_mask). Creates the folder. Returns `path`."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(label.transpose(2, 1, 0)))
    img = sitk.Cast(img, sitk.sitkUInt8 if (int(label.max()) if label.size else 0) < 256 else sitk.sitkUInt16)
    img.SetOrigin(grid.origin)
    img.SetSpacing(grid.spacing)
    img.SetDirection(grid.direction)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sitk.WriteImage(img, path, True)
    return path
