"""Turn a MONAI Label infer request (a dict of JSON values) into checked options.

Only what the infer task itself interprets is checked here: label name, reset, ROI and the result
file format. Click lists are passed through to the session, which owns their validation (it knows
the volume's shape), so there is one place that decides what a valid click is.
"""
import math
import numbers
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

from lib.util import parse_bool
from lib.session import SessionError

DEFAULT_LABEL = "default"
EXTENSIONS = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd")
# dtypes a label file can take; masks are 0/1 so every one of these holds them exactly
DTYPES = {
    "uint8": np.uint8, "int8": np.int8, "uint16": np.uint16, "int16": np.int16,
    "uint32": np.uint32, "int32": np.int32, "float32": np.float32, "float64": np.float64,
}


@dataclass
class InferOptions:
    image_path: str
    label: str
    reset: bool
    roi: Optional[Tuple[int, int, int, int, int, int]]  # inclusive (i0, i1, j0, j1, k0, k1); not yet clamped
    extension: str
    dtype: str
    compress: bool
    modality: Optional[str]


def _extension(request: dict, image_path: str) -> str:
    ext = request.get("result_extension")
    if ext in (None, ""):  # default: the image's own format, as MONAI Label's writer does
        lower = image_path.lower()
        ext = next((e for e in EXTENSIONS if lower.endswith(e)), ".nii.gz")
    if not isinstance(ext, str):
        raise SessionError(f"result_extension must be a string such as '.nrrd', got {ext!r:.40}")
    ext = ext.strip().lower()
    ext = ext if ext.startswith(".") else "." + ext
    if ext not in EXTENSIONS:
        raise SessionError(f"result_extension {ext!r} is not supported; use one of {list(EXTENSIONS)}")
    return ext


def _dtype(request: dict) -> str:
    dtype = request.get("result_dtype") or "uint8"
    if not isinstance(dtype, str) or dtype.strip().lower() not in DTYPES:
        raise SessionError(f"result_dtype {dtype!r:.40} is not supported; use one of {list(DTYPES)}")
    return dtype.strip().lower()


def _roi(value) -> Optional[Tuple[int, ...]]:
    """Slicer's ROI: [i_min, i_max, j_min, j_max, k_min, k_max] in stored voxel indices."""
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 6:
        raise SessionError(f"roi must be [i_min, i_max, j_min, j_max, k_min, k_max], got {value!r:.80}")
    for c in value:
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or not math.isfinite(float(c)):
            raise SessionError(f"roi contains a non-numeric or non-finite value {c!r:.20}")
    roi = tuple(int(round(float(c))) for c in value)
    for axis in range(3):
        if roi[2 * axis] > roi[2 * axis + 1]:
            raise SessionError(f"roi {list(roi)}: min > max on axis {axis}")
    return roi


def parse_request(request: dict) -> InferOptions:
    image_path = request.get("image")
    if not isinstance(image_path, str) or not image_path:
        raise SessionError("no image given: pass ?image=<image id> of the datastore")
    label = request.get("label", DEFAULT_LABEL)
    if label is None or label == "":
        label = DEFAULT_LABEL
    if not isinstance(label, (str, int)) or isinstance(label, bool):
        raise SessionError(f"label must be a segment name (string), got {label!r:.40}")
    modality = request.get("modality")
    if modality is not None and not isinstance(modality, str):
        raise SessionError(f"modality must be a string such as 'CT' or 'MR', got {modality!r:.40}")
    return InferOptions(
        image_path=image_path,
        label=str(label),
        reset=parse_bool(request.get("reset_state"), "reset_state", default=False, error=SessionError),
        roi=_roi(request.get("roi")),
        extension=_extension(request, image_path),
        dtype=_dtype(request),
        compress=parse_bool(request.get("result_compress", True), "result_compress", default=False, error=SessionError),
        modality=modality or None,
    )


def roi_box(roi, shape) -> Tuple[slice, slice, slice]:
    """The ROI clamped to the volume as slices; SessionError when it misses the volume entirely."""
    box = tuple(slice(max(0, roi[2 * a]), min(shape[a], roi[2 * a + 1] + 1)) for a in range(3))
    if any(s.start >= s.stop for s in box):
        raise SessionError(f"roi {list(roi)} does not overlap the volume of size {list(shape)}")
    return box


def stored_shape(path: str) -> Optional[Tuple[int, int, int]]:
    """Size of a 3D image file from its header only (None for a DICOM folder or unreadable file:
    the session then reports the problem with its own message)."""
    if not os.path.isfile(path):
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    size = tuple(int(s) for s in reader.GetSize())
    return size if len(size) == 3 else None


def apply_roi(mask: np.ndarray, roi) -> np.ndarray:
    """Zero the mask outside the ROI (the user's region hint bounds what is returned)."""
    if roi is None:
        return mask
    box = roi_box(roi, mask.shape)
    out = np.zeros_like(mask)
    out[box] = mask[box]
    return out
