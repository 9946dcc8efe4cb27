#!/usr/bin/env python
"""Turn the sample volumes into DICOM CT/MR series with exact geometry, for Orthanc / DICOMweb.

    python scripts/make_dicom_series.py [--out sample-data/dicom] [--force]
    python scripts/make_dicom_series.py --volume my.nii.gz:MR [--volume ct.nrrd:CT ...] --out DIR

Default set: the real chest CT (CTChest4.nrrd from the slicerio 1.4.0 wheel) and the synthetic
CT/MR phantoms of scripts/prepare_sample_data.py (RAS, LPS anisotropic, oblique MR, small), each as
its own patient/study with one series. Every slice is one file, named <series>/<NNNN>.dcm.

Geometry (what a DICOM reader needs to rebuild the same voxel -> patient mapping):
  ImageOrientationPatient  row cosine = direction of the column index (i), column cosine = j
  PixelSpacing             [row spacing (along j), column spacing (along i)]
  ImagePositionPatient     origin + k * spacing_k * direction_k, for every slice k
  SliceThickness / SpacingBetweenSlices = spacing_k
Volumes whose k axis points against row x column (a left-handed grid) are written with the slice
order reversed, so the series' k index (as readers sort it, along row x column) stays ascending.
Voxel positions in patient space are preserved either way. Oblique orientations are kept as is.

Pixel values: 16-bit unsigned stored values with RescaleSlope/RescaleIntercept. CT uses intercept
-1024 (or lower, e.g. -3024, when the data go below -1024), slope 1, RescaleType HU; MR uses slope 1,
intercept 0 for integer data in range, otherwise a linear scale that covers the data.

UIDs are derived from the volume's name (pydicom generate_uid with fixed entropy), so re-running
gives the same UIDs and re-uploading to Orthanc is idempotent.

Writes <out>/manifest.json: per series its study/series UIDs, modality, grid, and for each ground
truth segment one `click`: a voxel (column, row, slice) deep inside the segment, in the index
order MONAI Label's DICOMweb datastore (and OHIF) use for that series.
"""
import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1  # bump when the written files change, so an old output folder is rebuilt


@dataclass
class Series:
    name: str                      # used for patient id/name and as the UID seed
    image: sitk.Image              # the volume (SimpleITK: LPS patient space)
    modality: str                  # "CT" or "MR"
    description: str = ""
    segments: Dict[str, np.ndarray] = field(default_factory=dict)  # name -> bool mask on image's grid


def uid(*parts: str) -> str:
    """A UID that depends only on `parts` (deterministic re-runs)."""
    return generate_uid(entropy_srcs=["sammed3d-sample", *parts])


def _direction(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.GetDirection(), float).reshape(3, 3)


def right_handed(image: sitk.Image, *masks: np.ndarray):
    """Flip the k axis of a left-handed grid (direction_k opposite to row x column).

    Returns (image, masks) describing the same voxels at the same patient positions; masks are
    numpy arrays in SimpleITK order (k, j, i) and are flipped along with the image."""
    d = _direction(image)
    if np.dot(np.cross(d[:, 0], d[:, 1]), d[:, 2]) > 0:
        return image, list(masks)
    arr = sitk.GetArrayFromImage(image)[::-1]
    flipped = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    size_k = image.GetSize()[2]
    flipped.SetSpacing(image.GetSpacing())
    flipped.SetOrigin(image.TransformIndexToPhysicalPoint((0, 0, size_k - 1)))
    d2 = d.copy()
    d2[:, 2] = -d[:, 2]
    flipped.SetDirection(tuple(d2.ravel()))
    return flipped, [np.ascontiguousarray(m[::-1]) for m in masks]


def rescale_for(values: np.ndarray, modality: str):
    """(slope, intercept, stored uint16 array) such that stored * slope + intercept == values
    (exactly for integer data in range; to within slope/2 otherwise)."""
    vmin, vmax = float(values.min()), float(values.max())
    integer = np.all(np.mod(values, 1) == 0)
    if modality == "CT":
        intercept = -1024.0 if vmin >= -1024 else float(np.floor(vmin))
    else:
        intercept = 0.0 if vmin >= 0 else float(np.floor(vmin))
    slope = 1.0
    if not integer or vmax - intercept > 65535:
        intercept = vmin
        slope = (vmax - vmin) / 65535.0 if vmax > vmin else 1.0
    stored = np.rint((values.astype(np.float64) - intercept) / slope)
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError(f"values [{vmin}, {vmax}] do not fit 16 bits with slope {slope}, intercept {intercept}")
    return slope, intercept, stored.astype(np.uint16)


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) for a float."""
    for digits in range(12, 2, -1):
        s = f"{value:.{digits}g}"
        if len(s) <= 16:
            return s
    raise ValueError(f"cannot format {value} as a DICOM DS")


def write_series(series: Series, out_dir: str, study_date: str = "20240101") -> dict:
    """Write one series, one file per slice, into out_dir/<series folder>. Returns manifest info."""
    image, masks = right_handed(series.image, *series.segments.values())
    segments = dict(zip(series.segments.keys(), masks))
    modality = series.modality.upper()
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be CT or MR, got {series.modality!r}")
    values = sitk.GetArrayFromImage(image)  # (k, j, i)
    if values.ndim != 3:
        raise ValueError(f"{series.name}: need a 3D scalar volume, got array shape {values.shape}")
    slope, intercept, stored = rescale_for(values, modality)
    d = _direction(image)
    spacing = np.asarray(image.GetSpacing(), float)
    origin = np.asarray(image.GetOrigin(), float)
    n_k, rows, cols = stored.shape

    study_uid, series_uid, frame_uid = uid(series.name, "study"), uid(series.name, "series"), uid(series.name, "for")
    series_dir = os.path.join(out_dir, series.name)
    if os.path.isdir(series_dir):
        shutil.rmtree(series_dir)
    os.makedirs(series_dir)
    window = (-400.0, 1500.0) if modality == "CT" else (float(np.percentile(values, 50)), float(np.ptp(values)) or 1.0)
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    now = "120000"

    for k in range(n_k):
        sop_uid = uid(series.name, "instance", str(k))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now
        ds.AccessionNumber = ""
        ds.Modality = modality
        ds.Manufacturer = "SAM-Med3D sample data"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = f"SAM-Med3D sample {series.name}"
        ds.SeriesDescription = series.description or series.name
        ds.PatientName = f"SAMMED3D^{series.name}"
        ds.PatientID = series.name
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [_ds(v) for v in origin + k * spacing[2] * d[:, 2]]
        ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([d[:, 0], d[:, 1]])]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
        ds.SliceThickness = _ds(spacing[2])
        ds.SpacingBetweenSlices = _ds(spacing[2])
        ds.SliceLocation = _ds(float(np.dot(origin + k * spacing[2] * d[:, 2], np.cross(d[:, 0], d[:, 1]))))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = _ds(intercept), _ds(slope)
        ds.WindowCenter, ds.WindowWidth = _ds(window[0]), _ds(window[1])
        if modality == "CT":
            ds.RescaleType = "HU"
            ds.KVP = "120"
        else:
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "GR", "NONE", ""
            ds.MRAcquisitionType = "3D"
            ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "8", "3", 1
            ds.MagneticFieldStrength = "3"
        ds.PixelData = stored[k].tobytes()
        ds.save_as(os.path.join(series_dir, f"{k:04d}.dcm"), write_like_original=False)

    info = {
        "name": series.name,
        "modality": modality,
        "folder": os.path.relpath(series_dir, out_dir),
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series_uid,
        "PatientID": series.name,
        "size": [cols, rows, n_k],
        "spacing": spacing.tolist(),
        "rescale": {"slope": slope, "intercept": intercept},
        "segments": {},
    }
    for name, mask in segments.items():
        click = deepest_voxel(mask)
        if click is not None:
            info["segments"][name] = {"click": click, "voxels": int(mask.sum())}
    return info


def deepest_voxel(mask: np.ndarray) -> Optional[List[int]]:
    """(i, j, k) = (column, row, slice) of the voxel farthest from the mask's border (k, j, i array)."""
    from scipy import ndimage

    mask = mask.astype(bool)
    if not mask.any():
        return None
    dist = ndimage.distance_transform_edt(mask)
    k, j, i = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return [int(i), int(j), int(k)]


# ----------------------------------------------------------------------------------------------
# The default sample set


def sample_series(cache_dir: str) -> List[Series]:
    """The chest CT and the synthetic phantoms, with their ground-truth segments."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from prepare_sample_data import SYNTHETIC, prepare_chest_ct, prepare_synthetic

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        studies, truth = os.path.join(tmp, "studies"), os.path.join(tmp, "truth")
        os.makedirs(studies)
        os.makedirs(truth)
        names = {"CTChest4": prepare_chest_ct(studies, truth, cache_dir)}
        names.update(prepare_synthetic(studies, truth))
        exts = {"CTChest4": ".nrrd", **{s[0]: s[1] for s in SYNTHETIC}}
        for name, ext in exts.items():
            image = sitk.ReadImage(os.path.join(studies, name + ext))
            label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(truth, name + ext)))
            segments = {seg: label == value for seg, value in names[name].items()}
            modality = "MR" if name.endswith("_mr") else "CT"
            out.append(Series(name, image, modality, description=f"{name} ({modality})", segments=segments))
    return out


def parse_volume_arg(text: str) -> Series:
    path, _, modality = text.rpartition(":")
    if not path or modality.upper() not in ("CT", "MR"):
        raise SystemExit(f"--volume takes PATH:CT or PATH:MR, got {text!r}")
    if not os.path.exists(path):
        raise SystemExit(f"--volume {path}: no such file")
    name = os.path.basename(path).split(".")[0]
    return Series(name, sitk.ReadImage(path), modality.upper(), description=f"{name} ({modality.upper()})")


def write_all(series: List[Series], out: str) -> dict:
    os.makedirs(out, exist_ok=True)
    manifest_path = os.path.join(out, MANIFEST)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # written last: its presence means the folder is complete
    manifest = {"format": FORMAT_VERSION, "series": [write_series(s, out) for s in series]}
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def load_manifest(out: str) -> Optional[dict]:
    try:
        with open(os.path.join(out, MANIFEST)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("format") == FORMAT_VERSION else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(REPO, "sample-data", "dicom"))
    parser.add_argument("--cache", default=os.path.join(REPO, "build", "downloads"),
                        help="where the slicerio wheel is kept")
    parser.add_argument("--volume", action="append", default=[], metavar="PATH:CT|MR",
                        help="convert this volume instead of the default sample set (repeatable)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the output is complete")
    args = parser.parse_args(argv)

    if not args.volume and not args.force and load_manifest(args.out):
        print(f"DICOM sample series already in {args.out} (use --force to rebuild)")
        return 0
    series = [parse_volume_arg(v) for v in args.volume] if args.volume else sample_series(args.cache)
    manifest = write_all(series, args.out)
    for s in manifest["series"]:
        n = len(glob.glob(os.path.join(args.out, s["folder"], "*.dcm")))
        print(f"{s['name']:22s} {s['modality']}  {n:3d} slices  {s['size']}  series {s['SeriesInstanceUID']}")
    print(f"manifest: {os.path.join(args.out, MANIFEST)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
