"""Prototype measured in docs/default_model.md, "Twentieth run": where the model's first click is answered by its
prior's grown box (lib.model.geodesic_maps.PriorGrowth: the box grew to a plateau; no flood, no fine region), serve the
plain region (the learned margin choice, lib.session.plain_region) instead when the grown answer leaked: a share of at
least LEAK (default 0.21) of its one-voxel outer shell lies within one standard deviation of the answer's own mean
intensity, i.e. its boundary looks like its inside (the threshold from grown_leak_fit_prototype.py, on the fitting
side). STICKY=1 (default): a label whose first answer leaked has its later grown answers replaced too; FIRST_ONLY=0
(with STICKY=0): every click whose decodes were the grown box alone is checked. The engine is patched in this process
only; the rest is `python -m lib.evaluation` with its own arguments (from apps/sammed3d):

    LEAK=0.21 OMP_NUM_THREADS=1 ../../.venv/bin/python ../../docs/eval/click_unet/grown_leak_prototype.py \
        --data ../../work_data/dev_ct --model sammed3d --checkpoint model/default/model.pt --model-name leak \
        --click-mode all --clicks 5 --report-at 1,3,5 --no-nsd --out /tmp/dev_ct_leak
"""
import os, runpy, sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "apps", "sammed3d"))
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from scipy import ndimage  # noqa: E402

import lib.session.engine as engine  # noqa: E402

LEAK = float(os.environ.get("LEAK", "0.21"))
FIRST_ONLY = os.environ.get("FIRST_ONLY", "1") == "1"  # 0: every click whose decodes were the grown box alone
STICKY = os.environ.get("STICKY", "1") == "1"  # a label whose first answer leaked: its later grown answers give way
_flags = []
_answered = engine.answered_plainly


def answered_plainly(prior_only, flooded, grown, fine):
    _flags.append((prior_only, flooded, grown, fine))
    return _answered(prior_only, flooded, grown, fine)


def leak_share(mask: np.ndarray, image: np.ndarray) -> float:
    """Share of the mask's outer shell (26-neighbourhood) within one standard deviation of the mask's mean."""
    idx = np.nonzero(mask)
    box = tuple(slice(max(0, i.min() - 2), i.max() + 3) for i in idx)
    region, data = mask[box], image[box].astype(np.float32)
    shell = ndimage.binary_dilation(region, np.ones((3, 3, 3), bool)) & ~region
    inside = data[region]
    return float((np.abs(data[shell] - inside.mean()) < inside.std() + 1e-3).mean()) if shell.any() else 0.0


_apply, _result = engine.SegmentationEngine._apply_click, engine.SegmentationEngine._result


def apply_click(self, req, state, click):
    del _flags[:]
    return _apply(self, req, state, click)


def result(self, req, key, state, t0, roi=None, new=None):
    flags = np.array(_flags, dtype=bool).any(0) if _flags else None
    first = len(state.fg) == 1 and not state.bg
    grown_only = (req.plain is False and flags is not None and flags[0] and flags[2] and not flags[1] and not flags[3])
    if self.region is not None and grown_only and not first and STICKY and getattr(state, "leaked_first", False):
        req.plain = True  # the label's first answer leaked: its later grown answers give way too
    elif self.region is not None and grown_only and (first or not FIRST_ONLY):
        mask = np.zeros(req.volume.shape, dtype=np.uint8)
        for cs in state.crops.values():
            piece = self._crop_mask(req, key, state, cs) if cs.decoded else None
            if piece is not None:
                np.maximum(mask[piece[0]], piece[1], out=mask[piece[0]])
        image = sitk.GetArrayViewFromImage(req.volume.image).transpose(2, 1, 0)
        if mask.any() and leak_share(mask.astype(bool), image) >= LEAK:
            req.plain = True
            if first:
                state.leaked_first = True
    return _result(self, req, key, state, t0, roi, new)


if __name__ == "__main__":
    engine.answered_plainly = answered_plainly
    engine.SegmentationEngine._apply_click = apply_click
    engine.SegmentationEngine._result = result
    sys.argv = ["lib.evaluation"] + sys.argv[1:]
    runpy.run_module("lib.evaluation", run_name="__main__")
