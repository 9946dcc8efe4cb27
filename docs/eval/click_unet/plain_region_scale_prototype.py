"""Prototype measured in docs/default_model.md, "Fourteenth run": default-v9's plain region with its box margin chosen
per label among MARGINS by the region's contrast (|mean inside - mean of the one-voxel shell outside| / std inside,
on the box's normalised intensities), instead of the fixed 40 mm. SCALE_RULE: "first" (chosen on a label's first
click, 40 mm after), "sticky" (the first click's choice kept for the label's later clicks), "every" (chosen anew
on every click). Development cases only:

    cd apps/sammed3d && SCALE_RULE=sticky OMP_NUM_THREADS=1 ../../.venv/bin/python \
        ../../docs/eval/click_unet/plain_region_scale_prototype.py --data ../../work_data/dev_brain --model sammed3d \
        --checkpoint model/default/model.pt --model-name scale-sticky --click-mode all --clicks 5 --report-at 1,3,5 \
        --no-nsd --out /tmp/dev_brain_scale_sticky
"""
import os, sys
from dataclasses import replace
sys.path.insert(0, os.getcwd())
import numpy as np
from scipy import ndimage
import lib.session.classical_region as C
import lib.session.plain_region as PR

MARGINS = [float(m) for m in os.environ.get("MARGINS", "20,30,40,60,80").split(",")]
RULE = os.environ.get("SCALE_RULE", "sticky")
_chosen = {}


def contrast(image, ct, spacing, fg, bg, params):
    mask = C.segment_array("geodesic", image, ct, spacing, fg, bg, params)
    box, _ = C.roi_box(list(fg) + list(bg), image.shape, spacing, params.margin_mm)
    data = C.normalise_roi(image[box], ct, spacing, params.sigma_mm)
    r = mask[box]
    shell = ndimage.binary_dilation(r, np.ones((3, 3, 3), bool)) & ~r
    if not r.any() or not shell.any():
        return 0.0, mask
    return float(abs(data[r].mean() - data[shell].mean()) / (data[r].std() + 1e-3)), mask


_orig = PR.PlainRegion.__call__


def call(self, volume, ct, fg, bg):
    import SimpleITK as sitk
    image = sitk.GetArrayViewFromImage(volume.image).transpose(2, 1, 0)
    spacing = tuple(float(s) for s in volume.image.GetSpacing())
    fgv, bgv = PR._voxels(fg), PR._voxels(bg)
    key = (volume.file_key, tuple(fgv[0]))
    if RULE == "every" or (len(fgv) == 1 and not bgv):
        best = max(((contrast(image, ct, spacing, fgv, bgv, replace(self.params, margin_mm=m)), m) for m in MARGINS),
                   key=lambda t: t[0][0])
        _chosen[key] = best[1]
        (_, mask), m = best
        _, faces = C.roi_box(fgv + bgv, image.shape, spacing, m)
        if not bgv and not any(lo or hi for lo, hi in faces):
            return None
        return mask.view(np.uint8)
    m = _chosen.get(key, self.params.margin_mm) if RULE == "sticky" else self.params.margin_mm
    saved = self.params
    self.params = replace(saved, margin_mm=m)
    try:
        return _orig(self, volume, ct, fg, bg)
    finally:
        self.params = saved


PR.PlainRegion.__call__ = call
if __name__ == "__main__":  # plain_region_merge_prototype.py imports the rule
    from lib.evaluation.command import main
    sys.exit(main())
