"""Turn a MONAI Label infer request (a dict of JSON values) into checked options.

Only what the infer task itself interprets is checked here: label name, reset, ROI (parsed by
lib.session.roi, which also clamps and applies it), the prior's flood switch and the result file format.
Click lists are passed through to the session, which owns their validation (it knows the volume's shape), so there
is one place that decides what a valid click is.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from lib.model.flood_region import FLOOD_SWITCH
from lib.util import parse_bool
from lib.session import SessionError, parse_roi

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
    prior_flood: Optional[str] = None  # "auto" | "on" | "off" (lib.model.flood_region); None: not given


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
    flood = request.get("prior_flood")
    if flood is not None and (not isinstance(flood, str) or flood.strip().lower() not in ("",) + FLOOD_SWITCH):
        raise SessionError(f"prior_flood must be auto, on or off, got {flood!r:.40}")
    return InferOptions(
        image_path=image_path,
        label=str(label),
        reset=parse_bool(request.get("reset_state"), "reset_state", default=False, error=SessionError),
        roi=parse_roi(request.get("roi")),
        extension=_extension(request, image_path),
        dtype=_dtype(request),
        compress=parse_bool(request.get("result_compress", True), "result_compress", default=False, error=SessionError),
        modality=modality or None,
        prior_flood=flood.strip().lower() if flood else None,
    )
