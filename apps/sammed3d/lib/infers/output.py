"""Write a mask as the label file a client asked for (format, dtype, compression).

Shared by every infer task of the app, so all of them honour result_extension / result_dtype /
result_compress the same way. The file is written by the session's one mask writer
(lib.session.io.write_mask) on the grid the result carries (no file is read), or, for a result
without one, on the image's grid read from its header.
"""
import os
import tempfile

from lib.infers.request import DTYPES, InferOptions
from lib.session import SegmentationResult, write_mask

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


def write_label(res: SegmentationResult, opts: InferOptions, image_path: str) -> str:
    """-> path of a temp label file (MONAI Label's endpoint deletes it after sending)."""
    fd, out = tempfile.mkstemp(suffix=opts.extension, prefix="sammed3d-", dir=results_dir())
    os.close(fd)
    try:
        write_mask(res, out, res.grid if res.grid is not None else image_path, compress=opts.compress,
                   dtype=DTYPES[opts.dtype])
    except BaseException:
        os.remove(out)
        raise
    return out
