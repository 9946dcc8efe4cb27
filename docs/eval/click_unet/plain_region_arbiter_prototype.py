"""Prototype measured in docs/default_model.md, "Fourteenth run": on every click the label's answer is the most
object-like of several candidates, by contrast (|mean inside - mean of the one-voxel shell outside| / std inside,
on the clamped (CT) and 1 mm-smoothed intensities of the candidate's bounding box plus 2 voxels):
the classical geodesic region of all the label's clicks with box margins MARGINS (mm), and, with ARB_MODEL=1,
the model's own answer (its flood, grown box, fine region, or plain box competition). Development cases only:

    cd apps/sammed3d && ARB_MODEL=1 OMP_NUM_THREADS=1 ../../.venv/bin/python \
        ../../docs/eval/click_unet/plain_region_arbiter_prototype.py --data ../../work_data/dev_brain --model sammed3d \
        --checkpoint model/default/model.pt --model-name arb --click-mode all --clicks 5 --report-at 1,3,5 \
        --no-nsd --out /tmp/dev_brain_arb
"""
import os, sys
from dataclasses import replace
sys.path.insert(0, os.getcwd())
import numpy as np
from scipy import ndimage
import lib.session.classical_region as C
import lib.session.engine as E
import lib.session.plain_region as PR
from lib.session.state import LabelState

MARGINS = [float(m) for m in os.environ.get("MARGINS", "20,30,40,60,80").split(",")]
WITH_MODEL = os.environ.get("ARB_MODEL", "1") == "1"
_last = {}


def contrast(mask, image, ct, spacing, sigma_mm=1.0):
    if not mask.any():
        return -1.0
    idx = np.argwhere(mask)
    lo, hi = np.maximum(idx.min(0) - 2, 0), np.minimum(idx.max(0) + 3, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    x = np.asarray(image[box], dtype=np.float32)
    if ct:
        x = np.clip(x, -1000, 1000)
    x = ndimage.gaussian_filter(x, [sigma_mm / s for s in spacing], mode="nearest")
    r = mask[box].astype(bool)
    shell = ndimage.binary_dilation(r, np.ones((3, 3, 3), bool)) & ~r
    if not shell.any():
        return -1.0
    return float(abs(x[r].mean() - x[shell].mean()) / (x[r].std() + 1e-3 * (abs(x).mean() + 1)))


_show = LabelState.show


def show(self, *a, **k):
    out = _show(self, *a, **k)
    _last["model"] = out
    return out


LabelState.show = show
_orig_plain = E.answered_plainly
E.answered_plainly = lambda *a: True  # every click goes through the arbiter below


def call(self, volume, ct, fg, bg):
    import SimpleITK as sitk
    image = sitk.GetArrayViewFromImage(volume.image).transpose(2, 1, 0)
    spacing = tuple(float(s) for s in volume.image.GetSpacing())
    fgv, bgv = PR._voxels(fg), PR._voxels(bg)
    cands = []
    for m in MARGINS:
        _, faces = C.roi_box(fgv + bgv, image.shape, spacing, m)
        if not bgv and not any(lo or hi for lo, hi in faces):
            continue
        cands.append(C.segment_array("geodesic", image, ct, spacing, fgv, bgv, replace(self.params, margin_mm=m)))
    model = _last.pop("model", None)
    if WITH_MODEL and model is not None:
        cands.append(model.astype(bool))
    if not cands:
        return None
    best = max(cands, key=lambda c: contrast(c, image, ct, spacing))
    return best.view(np.uint8) if best.dtype == bool else best.astype(np.uint8)


PR.PlainRegion.__call__ = call
from lib.evaluation.command import main
sys.exit(main())
