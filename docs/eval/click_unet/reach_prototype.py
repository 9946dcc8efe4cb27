"""Prototype measured in docs/default_model.md, "Eleventh run" (not adopted): a correction click's change to the
shown mask kept within ALPHA x the click's distance (mm) to the shown mask's other side, at least R0 mm;
SIDE = both | include | exclude. Patches lib.session.local_update.LocalUpdate and runs the evaluation command:

    cd apps/sammed3d && SIDE=include ALPHA=3 R0=6 OMP_NUM_THREADS=1 ../../.venv/bin/python \
        ../../docs/eval/click_unet/reach_prototype.py --data ../../work_data/dev_brain --model sammed3d \
        --checkpoint model/default/model.pt --model-name inc3 --click-mode all --clicks 5 --report-at 1,3,5 \
        --no-nsd --out /tmp/dev_brain_inc3
"""
import os, sys
sys.path.insert(0, os.getcwd())
import numpy as np
import lib.session.local_update as LU
import lib.session.engine as E
ALPHA = float(os.environ.get("ALPHA", "2.0")); R0 = float(os.environ.get("R0", "6.0")); SIDE = os.environ.get("SIDE", "both")
SP = [np.ones(3)]
orig_result = E.SegmentationEngine._result
def _result(self, req, *a, **k):
    SP[0] = np.linalg.norm(req.volume.affine[:3, :3], axis=0)
    return orig_result(self, req, *a, **k)
E.SegmentationEngine._result = _result

def _ball(shape, idx, radius, sp):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum(((g - i) * s) ** 2 for g, i, s in zip(grids, idx, sp))
    return d2 <= radius * radius

def _dist_to(mask, idx, sp):
    pts = np.argwhere(mask)
    if not len(pts): return None
    return float(np.sqrt((((pts - np.array(idx)) * sp) ** 2).sum(1).min()))

def call(self, shown, proposed, clicks):
    out = shown.copy(); sp = SP[0]
    for point, lab in clicks:
        idx = tuple(int(np.floor(float(c) + 0.5)) for c in point)
        want = lab == 1
        if any(not 0 <= i < n for i, n in zip(idx, shown.shape)):
            if want: return proposed.copy()
            continue
        if shown[idx] != want != proposed[idx]:
            return proposed.copy()
        change = (proposed & ~shown) if want else (shown & ~proposed)
        if SIDE in ("both", "include" if want else "exclude"):
            d = _dist_to(shown if want else ~shown, idx, sp)
            if d is not None:
                change &= _ball(shown.shape, idx, max(ALPHA * d, R0), sp)
        out[change] = want
    return out
LU.LocalUpdate.__call__ = call
from lib.evaluation.command import main
sys.exit(main())
