#!/usr/bin/env python
"""Check that a DICOM SEG for an image series arrived in Orthanc and covers the expected voxels.

    python tests/e2e/verify_seg.py --orthanc URL --series UID --series-dir DIR [--expect-voxels N --expect-index-sum S]

Finds SEG series in Orthanc (REST /tools/find, Modality SEG) whose ReferencedSeriesSequence names
the image series, reads the newest with pydicom-seg, puts it on the image series' grid (read from
DIR with GDCM, as MONAI Label does) and compares its voxels with the viewer's labelmap: the count
and the sum of flat indices (i + j*X + k*X*Y). Prints a JSON summary; exit 0 only on a match.
"""
import argparse
import io
import json
import sys
import urllib.request

import numpy as np
import pydicom
import pydicom_seg
import SimpleITK as sitk


def get(url: str, data: bytes = None):
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()


def seg_datasets(orthanc: str, series_uid: str):
    """SEG instances in Orthanc that reference `series_uid`, newest last."""
    found = json.loads(get(f"{orthanc}/tools/find", json.dumps(
        {"Level": "Series", "Query": {"Modality": "SEG"}, "Expand": True}).encode()))
    out = []
    for series in found:
        for instance in series.get("Instances", []):
            ds = pydicom.dcmread(io.BytesIO(get(f"{orthanc}/instances/{instance}/file")))
            refs = [str(r.SeriesInstanceUID) for r in getattr(ds, "ReferencedSeriesSequence", [])]
            if series_uid in refs:
                out.append((str(getattr(ds, "ContentDate", "")) + str(getattr(ds, "ContentTime", "")), ds))
    return [ds for _, ds in sorted(out, key=lambda x: x[0])]


def image_grid(series_dir: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(series_dir))
    return reader.Execute()


def seg_on_grid(ds, reference: sitk.Image) -> np.ndarray:
    """The SEG's label map resampled (nearest neighbour) onto the reference grid: (k, j, i) array."""
    result = pydicom_seg.MultiClassReader().read(ds)
    seg = sitk.Cast(result.image, sitk.sitkUInt16)
    on_grid = sitk.Resample(seg, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    return sitk.GetArrayFromImage(on_grid)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orthanc", required=True)
    p.add_argument("--series", required=True, help="SeriesInstanceUID of the image series")
    p.add_argument("--series-dir", required=True, help="folder with the image series' DICOM files")
    p.add_argument("--expect-voxels", type=int)
    p.add_argument("--expect-index-sum", type=float)
    p.add_argument("--target", help="i,j,k that must be inside the segment")
    args = p.parse_args(argv)

    segs = seg_datasets(args.orthanc.rstrip("/"), args.series)
    if not segs:
        print(json.dumps({"ok": False, "why": f"no SEG in Orthanc references series {args.series}"}))
        return 1
    ds = segs[-1]
    reference = image_grid(args.series_dir)
    arr = seg_on_grid(ds, reference)
    flat = np.flatnonzero(arr.ravel())  # C order of (k, j, i) == i + j*X + k*X*Y
    summary = {
        "seg_series": str(ds.SeriesInstanceUID),
        "segs_for_series": len(segs),
        "segments": [str(s.SegmentLabel) for s in ds.SegmentSequence],
        "frames": int(ds.NumberOfFrames),
        "voxels": int(flat.size),
        "index_sum": float(flat.sum()),
        "grid": list(reference.GetSize()),
    }
    ok = flat.size > 0
    if args.expect_voxels is not None:
        ok &= flat.size == args.expect_voxels
        summary["expect_voxels"] = args.expect_voxels
    if args.expect_index_sum is not None:
        ok &= float(flat.sum()) == args.expect_index_sum
        summary["expect_index_sum"] = args.expect_index_sum
    if args.target:
        i, j, k = (int(v) for v in args.target.split(","))
        summary["at_target"] = int(arr[k, j, i])
        ok &= arr[k, j, i] > 0
    summary["ok"] = bool(ok)
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
