"""The box infer task: MONAI Label request (ROI or clicks) -> LiteMedSAM 3D box protocol -> label file.

Type `deepgrow`, dimension 3, like the SAM-Med3D task, so 3D Slicer and OHIF send it their ROI and
clicks unchanged. The 3D box is, in this order:
  * `roi`: Slicer's ROI, [i_min, i_max, j_min, j_max, k_min, k_max] in voxel indices of the image as
    stored (inclusive; clamped to the volume), or
  * the extent of the `foreground` clicks (two or more, e.g. opposite corners; clicks on one slice
    give a one-slice box).
Options: `window` (auto | soft_tissue | lung | bone | brain | percentile | [level, width]),
`modality`, and the SAM-Med3D task's result options (`result_extension`, `result_dtype`,
`result_compress`, `label`). The mask is zero outside the box and lies on the image's stored grid.
User errors are fastapi HTTPException 400 with a message; the request parsing and the label writer
are the SAM-Med3D task's own (lib.infers.request.parse_request, lib.infers.output.write_label).
lib.configs.medsam builds the engine and this task from --conf.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
import time
from typing import Any, Dict, Tuple

import numpy as np
from fastapi import HTTPException
from lib.infers.engine_task import EngineInferTask, common_result
from lib.infers.output import write_label
from lib.infers.request import parse_request
from lib.medsam import BoxError, MedSAMEngine
from lib.medsam.preprocess import CT_WINDOWS
from lib.session import SessionError
from lib.session.points import parse_points

logger = logging.getLogger(__name__)

WINDOWS = ("auto", "percentile") + tuple(CT_WINDOWS)


def box_from_request(request: dict, roi) -> Tuple[int, ...]:
    """The stored 3D box: the parsed ROI, else the extent of >= 2 foreground clicks."""
    if roi is not None:
        return tuple(roi)
    fg = parse_points(request.get("foreground"), "foreground")
    if len(fg) < 2:
        raise SessionError(
            "the MedSAM box task needs a box: send roi [i_min, i_max, j_min, j_max, k_min, k_max] "
            f"or at least two foreground clicks at opposite corners (got {len(fg)} click(s))")
    pts = np.round(np.array(fg)).astype(int)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return (int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1]), int(lo[2]), int(hi[2]))


def _window(value):
    if value in (None, "", "auto"):
        return None
    if isinstance(value, str) and value.strip().lower() in WINDOWS:
        return value.strip().lower()
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v)) for v in value):
        if float(value[1]) <= 0:
            raise SessionError(f"window width must be positive, got {value!r}")
        return (float(value[0]), float(value[1]))
    raise SessionError(f"window must be one of {list(WINDOWS)} or [level, width], got {value!r:.40}")


class MedSAMBoxInfer(EngineInferTask):
    def __init__(self, engine: MedSAMEngine, weights, description: str):
        super().__init__(engine, weights, description, config={"window": "auto"})

    def info(self) -> Dict[str, Any]:
        info = super().info()
        info["prompt"] = "box: roi [i_min, i_max, j_min, j_max, k_min, k_max] or >= 2 foreground clicks"
        return info

    def __call__(self, request) -> Tuple[str, Dict[str, Any]]:
        t0 = time.perf_counter()
        try:
            opts = parse_request(request)
            roi = box_from_request(request, opts.roi)
            window = _window(request.get("window"))
            res = self.engine.segment_box(os.path.abspath(opts.image_path), roi, modality=opts.modality,
                                          window=window, clip_to_roi=True)
            t_write = time.perf_counter()
            out = write_label(res, opts, opts.image_path)  # one result type for both engines
        except (SessionError, BoxError) as e:
            logger.info(f"medsam infer rejected: {e}")
            raise HTTPException(status_code=400, detail=str(e)) from None
        result = common_result(opts.label, res.timings, t_write, t0, res.mask, res.cache_hit, res.model_version)
        result.update({
            "slices_encoded": int(res.encoded),
            "slices": [int(s) for s in res.slices],
            "slice_axis": int(res.slice_axis),
            "roi": [int(v) for v in res.roi],
            "window": res.window,
        })
        logger.info(f"medsam box {list(res.roi)} on {os.path.basename(opts.image_path)}: {result['voxels']} voxels, "
                    f"{len(res.slices)} slices, {res.encoded} encoded, total {result['latencies']['total']:.3f} s")
        return out, result
