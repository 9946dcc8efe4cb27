"""Write a mask as the label file a client asked for (format, dtype, compression).

Shared by every infer task of the app, so all of them honour result_extension / result_dtype /
result_compress the same way. The geometry is the reference image's (lib.session.result); the
bytes are written by lib.infers.labelfile, which gives the file SimpleITK would write (same
header, same decompressed voxel bytes) without compressing the zeros around the mask. What it
does not handle goes through the session's write_mask (SimpleITK), as does everything when the
environment sets SAMMED3D_LABEL_WRITER=sitk (benchmarks compare the two paths with it).
"""
import logging
import os
import tempfile

import SimpleITK as sitk

from lib.infers.labelfile import UnsupportedLabelFile, write_label_file
from lib.infers.request import DTYPES, InferOptions
from lib.session import SegmentationResult, SessionError, write_mask
from lib.session.result import _reference_geometry

logger = logging.getLogger(__name__)

_RESULTS_DIR = None


def results_dir() -> str:
    """A folder of this server process for result files, not the system temp folder itself.

    MONAI Label deletes a result file after sending it, and MONAILabelClient saves what it receives
    under the same base name in *its* temp folder (default: the system one). A client on the same
    machine would then get its copy deleted by the server's clean-up; a private folder avoids that."""
    global _RESULTS_DIR
    if _RESULTS_DIR is None or not os.path.isdir(_RESULTS_DIR):
        _RESULTS_DIR = tempfile.mkdtemp(prefix="sammed3d-results-")
    return _RESULTS_DIR


def _write_sitk(res: SegmentationResult, out: str, opts: InferOptions, image_path: str) -> None:
    write_mask(res, out, image_path, compress=opts.compress)
    if opts.dtype != "uint8":  # rare: write_mask writes uint8; cast keeping the geometry
        img = sitk.ReadImage(out)
        arr = sitk.GetArrayFromImage(img).astype(DTYPES[opts.dtype])
        cast = sitk.GetImageFromArray(arr)
        cast.CopyInformation(img)
        sitk.WriteImage(cast, out, opts.compress and not out.endswith(".nii"))


def _write_fast(res: SegmentationResult, out: str, opts: InferOptions, image_path: str) -> None:
    size, origin, spacing, direction = _reference_geometry(image_path)
    if tuple(res.mask.shape) != size:
        raise SessionError(f"mask shape {list(res.mask.shape)} does not match the reference image size {list(size)}")
    write_label_file(res.mask, out, (origin, spacing, direction), dtype=DTYPES[opts.dtype], compress=opts.compress)


def write_label(res: SegmentationResult, opts: InferOptions, image_path: str) -> str:
    """-> path of a temp label file (MONAI Label's endpoint deletes it after sending)."""
    fd, out = tempfile.mkstemp(suffix=opts.extension, prefix="sammed3d-", dir=results_dir())
    os.close(fd)
    try:
        if os.environ.get("SAMMED3D_LABEL_WRITER", "").strip().lower() == "sitk":
            _write_sitk(res, out, opts, image_path)
        else:
            try:
                _write_fast(res, out, opts, image_path)
            except UnsupportedLabelFile as e:
                logger.info(f"label file through SimpleITK: {e}")
                _write_sitk(res, out, opts, image_path)
    except BaseException:
        os.remove(out)
        raise
    return out
