"""Prototype measured in docs/default_model.md, "Fifteenth run": the plain region's answer to a later click merged
into the mask the label showed, as the model's own answer is (lib.session.local_update, "monotone": an include click
only adds, an exclude click only removes), instead of replacing it whole. default-v9 merges only the model's mask;
where the plain region answers, a box that moved or shrank can take back what an earlier click showed.
SCALE_RULE (optional): the first click's box margin rule of plain_region_scale_prototype.py ("first", "sticky").
Development cases only:

    cd apps/sammed3d && MERGE=1 SCALE_RULE=first OMP_NUM_THREADS=1 ../../.venv/bin/python \\
        ../../docs/eval/click_unet/plain_region_merge_prototype.py --data ../../work_data/dev_brain --model sammed3d \\
        --checkpoint model/default/model.pt --model-name merge-first --click-mode all --clicks 5 --report-at 1,3,5 \\
        --no-nsd --out /tmp/dev_brain_merge_first
"""
import os
import sys

sys.path.insert(0, os.getcwd())
import numpy as np

if os.environ.get("SCALE_RULE"):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import plain_region_scale_prototype  # noqa: F401  (patches PlainRegion.__call__)
from lib.session.engine import SegmentationEngine
from lib.session.local_update import LocalUpdate

MERGE = os.environ.get("MERGE", "1") == "1"
_orig = SegmentationEngine._result


def _result(self, req, key, state, t0, roi=None, new=None):
    res = _orig(self, req, key, state, t0, roi, new)
    prev = getattr(state, "_final_shown", None)
    if MERGE and new and prev is not None and state.plain and prev.shape == res.mask.shape:
        res.mask = LocalUpdate("monotone")(prev.astype(bool), res.mask.astype(bool), new).astype(np.uint8)
    state._final_shown = res.mask.copy()
    return res


SegmentationEngine._result = _result
from lib.evaluation.command import main  # noqa: E402

sys.exit(main())
