#!/usr/bin/env python
"""Upload DICOM files to Orthanc through its REST API (POST /instances) and check they arrived.

    python scripts/orthanc/load_series.py [--url http://127.0.0.1:8042] DIR [DIR ...]

Uploads every *.dcm under each DIR. Re-uploading is harmless (Orthanc answers AlreadyStored).
When DIR has a manifest.json (scripts/make_dicom_series.py), every series listed there must then
be in Orthanc with all its instances, or this exits 1. Standard library only.
"""
import argparse
import glob
import json
import os
import sys
import urllib.error
import urllib.request


def request(url: str, data: bytes = None, content_type: str = "application/dicom", timeout: float = 60):
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def series_instances(url: str, series_uid: str) -> int:
    """Number of instances Orthanc holds for a SeriesInstanceUID (0 if none)."""
    found = request(f"{url}/tools/find", json.dumps(
        {"Level": "Series", "Query": {"SeriesInstanceUID": series_uid}, "Expand": True}).encode(),
        content_type="application/json")
    return sum(len(s.get("Instances", [])) for s in found)


def upload(url: str, folder: str) -> dict:
    files = sorted(glob.glob(os.path.join(folder, "**", "*.dcm"), recursive=True))
    if not files:
        raise SystemExit(f"no .dcm files under {folder}")
    counts = {"Success": 0, "AlreadyStored": 0}
    for path in files:
        with open(path, "rb") as f:
            try:
                status = request(f"{url}/instances", f.read()).get("Status", "?")
            except urllib.error.HTTPError as e:
                raise SystemExit(f"Orthanc refused {path}: HTTP {e.code} {e.read()[:300]!r}")
        counts[status] = counts.get(status, 0) + 1
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8042", help="Orthanc REST root")
    parser.add_argument("dirs", nargs="+")
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")
    try:
        request(f"{url}/system")
    except OSError as e:
        raise SystemExit(f"Orthanc does not answer at {url}: {e} (start it: bash scripts/orthanc/orthanc.sh start)")

    ok = True
    for folder in args.dirs:
        counts = upload(url, folder)
        print(f"{folder}: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
        manifest_path = os.path.join(folder, "manifest.json")
        if not os.path.exists(manifest_path):
            continue
        with open(manifest_path) as f:
            manifest = json.load(f)
        for s in manifest["series"]:
            expected = len(glob.glob(os.path.join(folder, s["folder"], "*.dcm")))
            have = series_instances(url, s["SeriesInstanceUID"])
            state = "ok" if have == expected else "MISSING INSTANCES"
            ok &= have == expected
            print(f"  {s['name']:22s} {s['modality']}  {have}/{expected} instances  {s['SeriesInstanceUID']}  {state}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
