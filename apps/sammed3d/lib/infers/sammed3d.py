"""The interactive infer task: MONAI Label request <-> SegmentationEngine call <-> label file.

Type `deepgrow`, dimension 3, so the 3D Slicer plugin and the OHIF v3 plugin bundled with
MONAI Label send point prompts to it unchanged (foreground/background voxel indices of the image
as stored, `label` = segment name). Every click request carries all clicks so far; the engine
works out which are new, so one session exists per (image, label). `prior_flood` auto|on|off (the task's
config, so Slicer offers it) lets one click fill a large walled tissue (lib.model.flood_region); segments
named in --conf prior_flood_labels get "on" unless the request says otherwise (OHIF sends no options).

User errors come back as fastapi HTTPException 4xx with the session's message; MONAI Label passes
an HTTPException raised inside a task through to the client as is.
"""
import logging
import os
import time
from typing import Any, Dict, Sequence, Tuple

from fastapi import HTTPException
from lib.infers.engine_task import EngineInferTask, common_result
from lib.infers.output import write_label
from lib.infers.request import parse_request
from lib.model.flood_region import flood_mode_for_label
from lib.session import SegmentationEngine, SessionError

logger = logging.getLogger(__name__)


class SAMMed3DInfer(EngineInferTask):
    def __init__(self, engine: SegmentationEngine, weights, description: str, flood_labels: Sequence[str] = ()):
        # prior_flood: Slicer lists the task's config as options and sends them with each click
        super().__init__(engine, weights, description, config={"reset_state": False, "prior_flood": "auto"})
        self.flood_labels = tuple(flood_labels)  # --conf prior_flood_labels: segment names that flood by default

    def info(self) -> Dict[str, Any]:
        info = super().info()
        # the segments a fine-tuned version answers with what it learnt (others as the model it came from); None: all
        names = (getattr(self.engine.runner.model, "config", None) or {}).get("learned_segments")
        info["learned_segments"] = list(names) if names else None
        return info

    def __call__(self, request) -> Tuple[str, Dict[str, Any]]:
        t0 = time.perf_counter()
        try:
            opts = parse_request(request)
            image_path = opts.image_path
            res = self.engine.segment(
                os.path.abspath(image_path),
                image_path,
                opts.label,
                request.get("foreground"),
                request.get("background"),
                reset=opts.reset,
                modality=opts.modality,
                roi=opts.roi,  # checked before the label's state changes; the mask is zero outside it
                prior_flood=flood_mode_for_label(opts.label, opts.prior_flood, self.flood_labels),
            )
            t_write = time.perf_counter()
            out = write_label(res, opts, image_path)
        except SessionError as e:
            logger.info(f"infer rejected: {e}")
            raise HTTPException(status_code=400, detail=str(e)) from None
        result = common_result(opts.label, res.timings, t_write, t0, res.mask, res.cache_hit, res.model_version)
        result["num_crops"] = int(res.num_crops)
        result["random_weights"] = bool(self.weights.get("source") == "random")
        logger.info(
            f"infer {opts.label!r} on {os.path.basename(image_path)}: {result['voxels']} voxels, "
            f"cache_hit={result['cache_hit']}, total {result['latencies']['total']:.3f} s"
        )
        return out, result
