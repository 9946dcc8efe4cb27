#!/usr/bin/env python
"""Where the label-file write of a click goes, in-process (no HTTP): 512x512x61 CT grid, the mask of
a click filling part of one 128^3 model crop (a 256x256x38-voxel box of 0.75x0.75x5 mm voxels).

    .venv/bin/python scripts/bench_label_write.py [--repeats 9] [--mask random|ellipsoid]

Rows, timed in turn (medians of --repeats, so load from other jobs hits every row alike):
* the previous path (SimpleITK writes the whole array: lib.session.write_mask with
  SAMMED3D_LABEL_WRITER=sitk) per format,
  SimpleITK at compression level 1, and its parts: the whole-volume transpose into file order,
  zlib over the whole 16 MB (level 1 and 6), zlib over the box rows only;
* the new path (lib/session/labelfile.py) per format, and its parts: bounding box, box transpose,
  gzip pieces (compression on two threads + CRC).
* the transfer of what a client asked for, outside any writer: MONAI Label's response body
  (requests_toolbelt MultipartEncoder.to_string, what /infer does) and MONAILabelClient's parse of
  it (cgi.FieldStorage), for the new .nii.gz file and the 16 MB raw .nrrd (OHIF's request).
`random`: a random-weights-like mask (half of the box, blobby, ~1.2 M voxels: what bench_http's
released-size random model returns); `ellipsoid`: a smooth liver-sized ellipsoid (~0.5 M voxels).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
import zlib

import numpy as np
import SimpleITK as sitk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "apps", "sammed3d"))

from lib.session import labelfile  # noqa: E402
from lib.session import SegmentationResult, write_mask  # noqa: E402

SHAPE = (512, 512, 61)
FORMATS = [(".nii.gz", True), (".nrrd", False), (".nrrd", True), (".nii", False)]


def make_mask(kind: str) -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    if kind == "random":
        import torch

        g = torch.Generator().manual_seed(0)
        low = torch.randn(1, 1, 32, 32, 32, generator=g)
        up = torch.nn.functional.interpolate(low, size=(256, 256, 38), mode="trilinear", align_corners=False)
        mask[150:406, 120:376, 10:48] = (up[0, 0] > 0).numpy()
    else:
        i, j, k = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij", sparse=True)
        mask[...] = (((i - 300) / 80.0) ** 2 + ((j - 250) / 60.0) ** 2 + ((k - 30) / 18.0) ** 2) <= 1
    return mask


def _sitk_writer(write_mask, res, path, ref, compress):
    """The session's mask writer through SimpleITK (the previous path), whatever the environment says."""
    old = os.environ.get("SAMMED3D_LABEL_WRITER")
    os.environ["SAMMED3D_LABEL_WRITER"] = "sitk"
    try:
        return write_mask(res, path, ref, compress=compress)
    finally:
        if old is None:
            del os.environ["SAMMED3D_LABEL_WRITER"]
        else:
            os.environ["SAMMED3D_LABEL_WRITER"] = old


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--mask", default="random", choices=["random", "ellipsoid"])
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench-write-")
    mask = make_mask(args.mask)
    ref = os.path.join(work, "ref.nii.gz")
    img = sitk.GetImageFromArray(np.zeros(SHAPE[::-1], np.int16))
    img.SetSpacing((0.75, 0.75, 5.0))
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    sitk.WriteImage(img, ref)
    ref_img = sitk.ReadImage(ref)
    geo = (ref_img.GetOrigin(), ref_img.GetSpacing(), ref_img.GetDirection())
    res = SegmentationResult(mask=mask, affine=np.eye(4))
    file_order = np.ascontiguousarray(mask.transpose(2, 1, 0))
    box_rows = np.ascontiguousarray(file_order[10:48, 120:376, :])
    sitk_img = sitk.GetImageFromArray(file_order)
    sitk_img.CopyInformation(ref_img)
    buf, nbytes, flags = labelfile.file_order_data(mask, np.uint8)

    rows = {}
    for ext, comp in FORMATS:
        name = f"{ext}{'' if ext == '.nii.gz' else (' gzip' if comp else ' raw')}"
        rows[f"previous: SimpleITK write, {name}"] = (
            lambda e=ext, c=comp: _sitk_writer(write_mask, res, os.path.join(work, "old" + e), ref, c))
    rows["previous, .nii.gz at SimpleITK compression level 1"] = (
        lambda: sitk.WriteImage(sitk_img, os.path.join(work, "l1.nii.gz"), True, 1))
    rows["part: whole-volume transpose to file order"] = lambda: np.ascontiguousarray(mask.transpose(2, 1, 0))
    rows["part: zlib level 1, whole 16 MB"] = lambda: zlib.compress(file_order, 1)
    rows["part: zlib level 6, whole 16 MB"] = lambda: zlib.compress(file_order, 6)
    rows["part: zlib level 1, box rows only (5 MB)"] = lambda: zlib.compress(box_rows, 1)
    rows["part: zlib run-length (Z_RLE), box rows only"] = lambda: labelfile._deflate_piece(box_rows)
    for ext, comp in FORMATS:
        name = f"{ext}{'' if ext == '.nii.gz' else (' gzip' if comp else ' raw')}"
        rows[f"new: labelfile, {name}"] = (
            lambda e=ext, c=comp: labelfile.write_label_file(mask, os.path.join(work, "new" + e), geo, compress=c))
    rows["new part: bounding box"] = lambda: labelfile.nonzero_box(mask)
    rows["new part: box transpose into a zero buffer"] = lambda: labelfile.file_order_data(mask, np.uint8)
    rows["new part: gzip pieces (2 threads) + CRC"] = lambda: labelfile._gzip_stream(b"\0" * 352, buf, nbytes, flags)

    import email.message
    import io
    import json
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from monailabel.client.client import MONAILabelUtils
    from requests_toolbelt import MultipartEncoder

    def body(path):
        m = MultipartEncoder(fields={"params": (None, json.dumps({"label": "x"}), "application/json"),
                                     "image": (os.path.basename(path), open(path, "rb"), "application/octet-stream")})
        return m.to_string(), m.content_type

    def parse(b_ct):
        msg = email.message.Message()
        msg["content-type"], msg["content-length"] = b_ct[1], str(len(b_ct[0]))
        return MONAILabelUtils.parse_multipart(io.BytesIO(b_ct[0]), msg)

    labelfile.write_label_file(mask, os.path.join(work, "t.nii.gz"), geo)
    labelfile.write_label_file(mask, os.path.join(work, "t.nrrd"), geo, compress=False)
    bodies = {e: body(os.path.join(work, "t" + e)) for e in (".nii.gz", ".nrrd")}
    for e, name in ((".nii.gz", ".nii.gz (new)"), (".nrrd", ".nrrd raw, 16 MB")):
        rows[f"transfer: server response body, {name}"] = lambda e=e: body(os.path.join(work, "t" + e))
        rows[f"transfer: client multipart parse, {name}"] = lambda e=e: parse(bodies[e])

    times = {k: [] for k in rows}
    for fn in rows.values():
        fn()
    for _ in range(args.repeats):
        for k, fn in rows.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    sizes = {k: os.path.getsize(os.path.join(work, f)) for k, f in
             [("old .nii.gz", "old.nii.gz"), ("new .nii.gz", "new.nii.gz")]}
    print(f"mask {args.mask}: {int(mask.sum())} voxels; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| step | median (ms) |")
    print("|---|---|")
    for k, v in times.items():
        print(f"| {k} | {1000 * statistics.median(v):.1f} |")
    print(f"file sizes: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
