#!/usr/bin/env python
"""Development cases with large CT structures (issue 14): a real head CT and synthetic chests.

    .venv/bin/python scripts/prepare_dev_ct.py [--out work_data/dev_ct] [--cache work_data/cache] [--chests 3]

Why: the development table (scripts/prepare_test_table.py --dev) has phantoms and an MNI brain but no
CT organ, so it cannot tell how the first click behaves on a large structure walled by an edge in CT
(a lung, the liver: docs/default_model.md, "Fourth run"). These cases can; they are used for tuning
only, never for training weights, and never counted in the test table.

1. `dev_invesalius_head_ct`, real. Source: Debian's invesalius-examples
(`apt-get download invesalius-examples`, GPL-2): `Cranium.inv3`, a
gzipped tar holding an int16 head CT (108 x 256 x 256, 0.957 x 0.957 x 1.5 mm, raw `matrix.dat` +
`main.plist`). Its labels are made here from the HU values (weak ground truth, said so in the manifest):

- intracranial contents (brain + CSF, about 1.4 l): soft tissue (-20..100 HU) eroded 3 voxels apart
  from the scalp and the skull base's soft tissue, the component at the volume's centre, dilated back
  inside soft tissue: the structure is walled by the skull;
- skull (bone above 300 HU, the largest component: not the head rest);
- the head's soft tissue outside the skull (scalp, face muscles: -200..200 HU, outside the skull's
  filled hull): thin, large and irregular, like the chest CT's body tissue.

2. `dev_chest_phantom_<seed>`, synthetic (`lib.synthetic.chest.chest_case`): two lungs crossed by
   vessel trees, heart, ribs and spine, acquired at 10 x 3 x 3 mm; labels right lung, left lung, heart.

3. `dev_head_ct_lesions` (with --lesions): small synthetic lesions
   (`lib.dataengine.lesions.insert_lesion`, the data engine's own generator) inside a large homogeneous
   tissue - two hypodense, one hyperdense lesion and a rim tumour in the head CT's intracranial
   contents, as tumours in a liver. Why: a click on a small lesion in such a tissue must not flood the
   tissue around it (lib.model.flood_region); the other cases have no such target. Labels: each lesion
   its own value.
"""
import argparse
import glob
import json
import os
import plistlib
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
from scipy import ndimage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "invesalius-examples"
# (the air spaces were tried as a lung-like target: the sinuses open into the nasal cavity and the pharynx,
# which leave the volume, so no walled air space is left to label)
NAMES = {"intracranial contents": 1, "skull": 2, "scalp and face soft tissue": 3}


def fetch_deb(cache: str) -> str:
    """The package's .deb in `cache` (apt-get download, the registry: no other network)."""
    os.makedirs(cache, exist_ok=True)
    found = glob.glob(os.path.join(cache, f"{PACKAGE}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", PACKAGE], cwd=cache, check=True)
        found = glob.glob(os.path.join(cache, f"{PACKAGE}_*.deb"))
    return sorted(found)[-1]


def read_inv3(deb: str, tmp: str):
    """The CT (z, y, x) int16 array and its (x, y, z) spacing from the .deb's Cranium.inv3."""
    subprocess.run(["dpkg-deb", "-x", deb, tmp], check=True)
    inv3 = glob.glob(os.path.join(tmp, "usr", "share", "doc", PACKAGE, "examples", "Cranium.inv3"))[0]
    with tarfile.open(inv3) as t:
        t.extractall(tmp, filter="data")
    main = glob.glob(os.path.join(tmp, "*", "main.plist"))[0]
    with open(main, "rb") as f:
        meta = plistlib.load(f)
    matrix = meta["matrix"]
    ct = np.fromfile(os.path.join(os.path.dirname(main), matrix["filename"]), dtype=np.dtype(matrix["dtype"]))
    return ct.reshape(matrix["shape"]), [float(s) for s in meta["spacing"]]


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum_labels(mask, lab, range(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def head_labels(ct: np.ndarray) -> np.ndarray:
    ball = ndimage.generate_binary_structure(3, 1)
    bone = _largest(ct > 300)
    head = ndimage.binary_fill_holes(_largest(ct > -300))
    soft = (ct > -20) & (ct < 100) & ~bone
    core = ndimage.binary_erosion(soft, ball, iterations=3)
    lab, _ = ndimage.label(core)
    centre = tuple(s // 2 for s in ct.shape)
    brain = lab == lab[centre] if lab[centre] else _largest(core)
    brain = ndimage.binary_dilation(brain, ball, iterations=3) & soft
    brain = ndimage.binary_fill_holes(brain)
    hull = ndimage.binary_fill_holes(ndimage.binary_closing(bone | brain, ball, iterations=4))
    tissue = _largest((ct > -200) & (ct < 200) & head & ~hull)
    out = np.zeros(ct.shape, np.uint8)
    for value, mask in ((NAMES["scalp and face soft tissue"], tissue), (NAMES["skull"], bone),
                        (NAMES["intracranial contents"], brain)):
        out[mask] = value
    return out


def add_lesions(image: np.ndarray, tissue: np.ndarray, kinds, seed: int):
    """(image with one synthetic lesion per kind inside `tissue`, labels 1..len(kinds)): each lesion's
    centre at least 6 voxels inside the tissue and outside the earlier lesions' 15-voxel neighbourhood."""
    from lib.dataengine.lesions import insert_lesion

    rs = np.random.default_rng(seed)
    out, labels = image.astype(np.float32), np.zeros(image.shape, np.uint8)
    room = ndimage.binary_erosion(tissue, iterations=6)
    for value, kind in enumerate(kinds, start=1):
        for _ in range(20):  # a draw can come out empty (fewer than 8 voxels): draw again
            new, mask = insert_lesion(out, room, rs, is_ct=True, kind=kind)
            if mask.sum() >= 8:
                break
        out, labels[mask] = new, value
        room &= ~ndimage.binary_dilation(mask, iterations=15)
    return np.round(out).astype(image.dtype), labels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "work_data", "dev_ct"))
    ap.add_argument("--cache", default=os.path.join(ROOT, "work_data", "cache"))
    ap.add_argument("--chests", type=int, default=3, help="synthetic chest phantoms (seeds 0..N-1)")
    ap.add_argument("--lesions", action="store_true",
                    help="also write dev_head_ct_lesions (kept apart from the 12 targets measured so far: "
                         "scripts/prepare_dev_ct.py --lesions --chests 0 --no-head --out work_data/dev_lesions)")
    ap.add_argument("--no-head", action="store_true",
                    help="leave out dev_invesalius_head_ct itself (the lesion set holds only the lesion case: the head "
                         "case is in dev_ct already)")
    args = ap.parse_args(argv)
    import SimpleITK as sitk

    sys.path.insert(0, os.path.join(ROOT, "apps", "sammed3d"))
    from lib.synthetic.chest import CHEST_LABELS, chest_case

    def save(case, arr, labels, spacing_xyz, names, **about):
        for sub, a in (("images", arr), ("labels", labels)):
            img = sitk.GetImageFromArray(a)
            img.SetSpacing(spacing_xyz)
            os.makedirs(os.path.join(args.out, sub), exist_ok=True)
            sitk.WriteImage(img, os.path.join(args.out, sub, f"{case}.nii.gz"), useCompression=True)
        ml = float(np.prod(spacing_xyz)) / 1000.0
        names_json[case] = names
        manifest.append(dict(case=case, modality="CT", spacing=list(spacing_xyz), targets=len(names), **about,
                             structures={n: round(float((labels == v).sum()) * ml, 1) for n, v in names.items()}))

    names_json, manifest = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        ct, spacing = read_inv3(fetch_deb(args.cache), tmp)
    head = head_labels(ct)
    if not args.no_head:
        save("dev_invesalius_head_ct", ct, head, spacing, NAMES,
             source=f"Debian {PACKAGE} (Cranium.inv3), GPL-2: development only, never trained on",
             ground_truth="HU thresholds + morphology (weak), scripts/prepare_dev_ct.py")
    for seed in range(args.chests):
        image, labels, spacing_zyx = chest_case(seed)
        save(f"dev_chest_phantom_{seed}", image, labels, spacing_zyx[::-1], CHEST_LABELS,
             source="synthetic, lib.synthetic.chest.chest_case", ground_truth="exact (the phantom's own)")
    if args.lesions:
        kinds = ("hypo", "hypo", "hyper", "rim_tumour")
        image, labels = add_lesions(ct, head == NAMES["intracranial contents"], kinds, seed=14)
        save("dev_head_ct_lesions", image, labels, spacing, {f"SYNTHETIC {k} lesion {i}": i for i, k in enumerate(kinds, 1)},
             source=f"Debian {PACKAGE} head CT + lesions of lib.dataengine.lesions (seed 14)",
             ground_truth="exact (the painted lesions)")
    write_index(args.out, names_json, manifest)
    return 0


def write_index(out: str, names: dict, manifest: list) -> None:
    """A development set's labels/labels.json ({case: {name: value}}, what lib.evaluation reads) and manifest.json."""
    with open(os.path.join(out, "labels", "labels.json"), "w") as f:
        json.dump(names, f, indent=1)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(json.dumps(manifest, indent=1))


def write_case(out: str, case: str, image, labels: np.ndarray, names: dict, **about) -> None:
    """A one-case development set: images/<case>.nii.gz (the SimpleITK `image`), labels/<case>.nii.gz (`labels`,
    uint8 (z, y, x) on the image's grid) and its index (write_index), the structures' volumes in ml; `about`: the
    manifest entry's other fields (source, licence, ...)."""
    import SimpleITK as sitk

    for sub in ("images", "labels"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    sitk.WriteImage(image, os.path.join(out, "images", f"{case}.nii.gz"), useCompression=True)
    lab = sitk.GetImageFromArray(labels)
    lab.CopyInformation(image)
    sitk.WriteImage(lab, os.path.join(out, "labels", f"{case}.nii.gz"), useCompression=True)
    ml = float(np.prod(image.GetSpacing())) / 1000.0
    write_index(out, {case: names}, [dict(
        case=case, modality="MR", spacing=list(image.GetSpacing()), targets=len(names),
        structures={n: round(float((labels == v).sum()) * ml, 1) for n, v in names.items()}, **about)])


if __name__ == "__main__":
    sys.exit(main())
