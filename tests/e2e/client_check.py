#!/usr/bin/env python
"""The DICOMweb server path without a browser, through MONAILabelClient (what 3D Slicer uses).

    python tests/e2e/client_check.py --server URL --orthanc URL --dicom-dir sample-data/dicom --series-name NAME

Checks, against a running `monailabel start_server --studies <orthanc>/dicom-web`:
  1. /datastore lists the manifest's series (image ids are SeriesInstanceUIDs), and
     next_sample returns one of them;
  2. infer with one include click on series NAME returns a mask on exactly that series' grid
     (size, spacing, origin, direction of the series as GDCM reads it) and non-empty;
  3. save_label(tag=final) makes a DICOM SEG that references the series appear in Orthanc, with
     the same voxels as the mask.
Prints one line per check; exit 0 only if all pass. Also importable (run_checks) for pytest.
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from verify_seg import get, image_grid, seg_datasets, seg_on_grid  # noqa: E402


class CheckFailed(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise CheckFailed(msg)
    print("  ok:", msg, flush=True)


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-3) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def run_checks(server: str, orthanc: str, dicom_dir: str, series_name: str, segment: str = None,
               model: str = "sammed3d", save: bool = True) -> dict:
    from monailabel.client import MONAILabelClient

    with open(os.path.join(dicom_dir, "manifest.json")) as f:
        manifest = json.load(f)
    by_name = {s["name"]: s for s in manifest["series"]}
    if series_name not in by_name:
        raise CheckFailed(f"series {series_name!r} not in the manifest ({sorted(by_name)})")
    target = by_name[series_name]
    uid = target["SeriesInstanceUID"]
    segment = segment or next(iter(target["segments"]))
    click = target["segments"][segment]["click"]

    tmp = tempfile.mkdtemp(prefix="sammed3d-client-")
    client = MONAILabelClient(server, tmpdir=tmp)
    wanted = {s["SeriesInstanceUID"] for s in manifest["series"]}
    in_pacs = json.loads(get(f"{orthanc}/tools/find", json.dumps(
        {"Level": "Series", "Query": {"Modality": "CT\\MR"}}).encode()))
    stats = json.loads(get(f"{server}/datastore/?output=stats"))
    check(stats.get("total") == len(in_pacs) >= len(wanted),
          f"the datastore counts every CT and MR series of the PACS ({stats.get('total')}; needs "
          f"MONAI_LABEL_DICOMWEB_SEARCH_FILTER={{\"Modality\": \"CT,MR\"}} for MR)")
    sample = client.next_sample("random", {})
    check(sample.get("id") in wanted, f"next_sample gives a SeriesInstanceUID: {sample.get('id')}")

    out, res = client.infer(model, uid, {"label": segment, "foreground": [click], "background": []})
    mask = sitk.ReadImage(out)
    grid = image_grid(os.path.join(dicom_dir, target["folder"]))
    check(same_grid(mask, grid), f"infer on {series_name} returns a mask on the series' grid {list(grid.GetSize())}")
    arr = sitk.GetArrayFromImage(mask)
    check(int(arr.sum()) > 0 and int(res.get("voxels", -1)) == int(np.count_nonzero(arr)),
          f"mask is non-empty ({int(np.count_nonzero(arr))} voxels) and matches the result's voxel count")
    summary = {"series": uid, "segment": segment, "click": click, "voxels": int(np.count_nonzero(arr)),
               "at_click": int(arr[click[2], click[1], click[0]])}
    if save:
        before = len(seg_datasets(orthanc, uid))
        client.save_label(uid, out, tag="final", params={"label_info": [{"name": segment, "idx": 1}]})
        segs = seg_datasets(orthanc, uid)
        check(len(segs) == before + 1, f"save_label(final) stored a DICOM SEG referencing the series in Orthanc "
                                      f"({len(segs)} now)")
        on_grid = seg_on_grid(segs[-1], grid)
        check(np.array_equal(on_grid > 0, arr > 0), "the SEG covers exactly the mask's voxels on the series grid")
        check([str(s.SegmentLabel) for s in segs[-1].SegmentSequence] == [segment],
              f"the SEG's segment is named {segment!r}")
        summary["seg_series"] = str(segs[-1].SeriesInstanceUID)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True)
    p.add_argument("--orthanc", required=True)
    p.add_argument("--dicom-dir", required=True)
    p.add_argument("--series-name", default="synth_ras_ct")
    p.add_argument("--segment")
    args = p.parse_args(argv)
    try:
        summary = run_checks(args.server.rstrip("/"), args.orthanc.rstrip("/"), args.dicom_dir, args.series_name,
                             args.segment)
    except CheckFailed as e:
        print(f"  FAILED: {e}", flush=True)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
