#!/usr/bin/env python
"""HTTP round-trip benchmark, as the client sees it: MONAILabelClient -> real server -> label file.

    .venv/bin/python scripts/bench_http.py [--reps 5] [--device cpu] [--write-docs]

A synthetic 512x512x61 CT (0.75 x 0.75 x 5 mm, int16 .nii.gz) is copied --reps times so that every
"first click" lands on an image the server has not seen (volume load + preprocess + encode +
decode + write + transfer). A "repeat click" adds one more include click inside the same crop
(decode only), once per requested format (--formats: the default .nii.gz, OHIF's raw .nrrd, ...).
Medians are reported, with the server's own per-stage latencies beside them. Unless --no-compare,
a second server writes label files the previous way (SimpleITK, SAMMED3D_LABEL_WRITER=sitk); the
two take turns click by click, and every pair of label files is compared voxel for voxel.

The model is the released size (vit_b_ori, 100.5 M parameters) with random weights (fixed seed),
saved to a temp checkpoint and passed with --conf checkpoint. Random weights make the mask shape
arbitrary, so the server runs with --conf max_crops 1: the numbers are the one-crop path.
--write-docs replaces the "## HTTP" section of docs/benchmarks.md (other sections stay).

--base-app DIR runs the second server ("base") from another app folder instead, e.g. a git worktree of the
previous commit, to measure a change of the click path against it in the same run (labels compared, first
clicks included; which server gets an image first alternates). --app DIR does the same for "new".
"""
import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import nibabel as nib
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "apps", "sammed3d"))

from local_server import APP_DIR, LocalServer  # noqa: E402

SHAPE = (512, 512, 61)
SPACING = (0.75, 0.75, 5.0)


def synthetic_ct(path: str, seed: int = 0) -> None:
    """A body-shaped CT in HU: air, soft tissue, a liver-like blob, a spine-like column, noise."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in SHAPE], indexing="ij", sparse=True)
    x, y, z = (i - 256) * SPACING[0], (j - 256) * SPACING[1], (k - 30) * SPACING[2]
    ct = np.full(SHAPE, -1000, np.float32)
    body = (x / 170) ** 2 + (y / 120) ** 2 <= 1
    ct[np.broadcast_to(body, SHAPE)] = 40
    liver = ((x + 60) / 80) ** 2 + ((y + 10) / 60) ** 2 + (z / 90) ** 2 <= 1
    ct[liver] = 70
    spine = ((x / 18) ** 2 + ((y - 80) / 18) ** 2 <= 1) & np.ones_like(z, bool)
    ct[np.broadcast_to(spine, SHAPE)] = 600
    ct += rng.normal(0, 15, SHAPE).astype(np.float32)
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])  # LPS-stored, as DICOM converts
    nib.save(nib.Nifti1Image(ct.astype(np.int16), affine), path)


def released_random_checkpoint(path: str) -> str:
    from lib.model import build_sam_med3d, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(build_sam_med3d(None), path, version="random-released-size")


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, torch {torch.__version__}, "
            f"load average {load} at the end (other jobs on the machine inflate the numbers)")


FORMATS = {  # name -> request options (what the client asks for)
    "nii.gz": {},  # default: the image's own format (.nii.gz here)
    "nrrd": {"result_extension": ".nrrd", "result_compress": False},  # OHIF's request
    "nrrd.gz": {"result_extension": ".nrrd", "result_compress": True},
    "seg.nrrd": {"result_extension": ".seg.nrrd"},
    "nii": {"result_extension": ".nii"},
}
WRITERS = {"new": {}, "sitk": {"SAMMED3D_LABEL_WRITER": "sitk"}}  # today's path: SimpleITK writes the file


def read_label(path: str) -> tuple:
    import SimpleITK as sitk

    img = sitk.ReadImage(path)
    return sitk.GetArrayFromImage(img), img.GetOrigin(), img.GetSpacing(), img.GetDirection()


def run(args) -> dict:
    from monailabel.client import MONAILabelClient

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    writers = ["new", "sitk"] if args.compare else ["new"]
    apps = {"new": args.app}
    if args.base_app:  # first-click levers (issue 17): today's app against a checkout of the previous one
        writers = ["new", "base"]
        apps["base"] = args.base_app
    work = tempfile.mkdtemp(prefix="bench-http-")
    try:
        studies = os.path.join(work, "studies")
        os.makedirs(studies)
        ext = ".nrrd" if args.image and args.image.lower().endswith(".nrrd") else ".nii.gz"
        if args.image:  # a real volume instead (e.g. the README's sample chest CT), clicked at --click
            shutil.copyfile(args.image, os.path.join(studies, "ct_0" + ext))
        else:
            synthetic_ct(os.path.join(studies, "ct_0.nii.gz"))
        for r in range(1, args.reps):
            shutil.copyfile(os.path.join(studies, "ct_0" + ext), os.path.join(studies, f"ct_{r}{ext}"))
        ckpt = os.path.abspath(args.checkpoint) if args.checkpoint else released_random_checkpoint(os.path.join(work, "random_released.pt"))
        conf = {"checkpoint": ckpt, "device": args.device, "max_crops": str(args.max_crops), "modality": args.modality}
        extra = {"prior_flood": args.prior_flood} if args.prior_flood else {}  # the per-click request option
        out = {w: {"first": [], "server_first": [], "repeat": {f: [] for f in formats},
                   "server_repeat": {f: [] for f in formats}, "bytes": {f: [] for f in formats}} for w in writers}
        voxels, mismatches, compared = [], [], 0
        servers = {w: LocalServer(studies, conf, app_dir=apps.get(w) or APP_DIR, env=WRITERS.get(w, {}))
                   for w in writers}
        try:
            for server in servers.values():  # both up before any timing: they take turns, so load hits both alike
                server.start()
            clients = {w: MONAILabelClient(servers[w].url, tmpdir=os.path.join(work, "client", w)) for w in writers}
            centre = [int(v) for v in args.click.split(",")] if args.click else [300, 250, 30]  # the liver-like blob
            for r in range(args.reps):
                image = f"ct_{r}"
                # the first click of this image on each server in turn, which goes first alternating
                first = {}
                for w in (writers if r % 2 == 0 else writers[::-1]):
                    t = time.perf_counter()
                    path, res = clients[w].infer("sammed3d", image, {"label": "liver", "foreground": [centre], "background": [],
                                                                      **extra})
                    out[w]["first"].append(time.perf_counter() - t)
                    out[w]["server_first"].append(res["latencies"])
                    assert not res["cache_hit"], "first click must run the encoder"
                    first[w] = read_label(path)
                if len(first) == 2:  # the first clicks' labels are compared too
                    compared += 1
                    a, b = first[writers[0]], first[writers[1]]
                    if not (np.array_equal(a[0], b[0]) and a[0].dtype == b[0].dtype and a[1:] == b[1:]):
                        mismatches.append((image, "first", 0))
                fg = [centre]
                for n in range(args.repeats):
                    for f in formats:
                        fg = fg + [[centre[0] + 3 * (len(fg)), centre[1] - 2 * (len(fg) % 7), centre[2]]]
                        got = {}
                        for w in writers:  # the same click on each server in turn: same mask, two writers
                            params = {"label": "liver", "foreground": fg, "background": [], **extra}
                            params.update(FORMATS[f])
                            t = time.perf_counter()
                            path, res = clients[w].infer("sammed3d", image, params)
                            out[w]["repeat"][f].append(time.perf_counter() - t)
                            out[w]["server_repeat"][f].append(res["latencies"])
                            out[w]["bytes"][f].append(os.path.getsize(path))
                            assert res["cache_hit"], "repeat click inside the crop must not re-encode"
                            got[w] = read_label(path)
                            if w == "new":
                                voxels.append(res["voxels"])
                        if len(got) == 2:
                            compared += 1
                            a, b = got["new"], got[writers[1]]
                            if not (np.array_equal(a[0], b[0]) and a[0].dtype == b[0].dtype and a[1:] == b[1:]):
                                mismatches.append((image, f, n))
        finally:
            for server in servers.values():
                server.stop()
        return {"writers": out, "formats": formats, "voxels": voxels, "compared": compared, "mismatches": mismatches,
                "command": " ".join([os.path.relpath(sys.executable, REPO)] + sys.argv), "machine": machine(),
                "device": args.device, "reps": args.reps, "repeats": args.repeats}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def stage_medians(latencies) -> str:
    keys = ["load", "preprocess", "encode", "decode", "paste", "write", "total"]
    return ", ".join(f"{k} {statistics.median(d[k] for d in latencies):.3f}" for k in keys if k in latencies[0])


def report(r: dict) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    target_f, target_r = (1.2, 0.1) if r["device"] == "cpu" else (0.4, 0.1)
    w = r["writers"]
    names = list(w)
    med = statistics.median
    second = ("\"base\" is a second server running another app folder (`--base-app`), in the same run, the two "
              "taking turns click by click." if "base" in names else
              "\"new\" writes the label file with `lib/session/labelfile.py`; \"sitk\" is the previous path (SimpleITK "
              "writes the whole volume; `SAMMED3D_LABEL_WRITER=sitk`), run in a second server in the same run, the two "
              "taking turns click by click.")
    lines = [
        "## HTTP",
        "",
        "Round trip through `MONAILabelClient.infer` (request, inference, label file written, sent and saved",
        "by the client) against a real `monailabel start_server`; synthetic 512x512x61 CT, released-size",
        "model with random weights, `--conf max_crops 1`.",
        second,
        "",
        f"- Command: `{r['command']}`",
        f"- Machine: {r['machine']}; device {r['device']}; commit {commit}; {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        "| click | format | " + " | ".join(f"{n}: median (s)" for n in names) + " | "
        + " | ".join(f"{n}: min / max (s)" for n in names) + " | n | file bytes, median (" + " / ".join(names) + ") | target (s) |",
        "|---|---|" + "---|" * (2 * len(names)) + "---|---|---|",
        "| first (new image: load, preprocess, encode, decode, write) | nii.gz | "
        + " | ".join(f"{med(w[n]['first']):.3f}" for n in names) + " | "
        + " | ".join(f"{min(w[n]['first']):.3f} / {max(w[n]['first']):.3f}" for n in names)
        + f" | {len(w[names[0]]['first'])} | - | {target_f} |",
    ]
    for f in r["formats"]:
        lines.append(
            f"| repeat (same crop: decode, paste, write) | {f} | "
            + " | ".join(f"{med(w[n]['repeat'][f]):.3f}" for n in names) + " | "
            + " | ".join(f"{min(w[n]['repeat'][f]):.3f} / {max(w[n]['repeat'][f]):.3f}" for n in names)
            + f" | {len(w[names[0]]['repeat'][f])} | " + " / ".join(f"{med(w[n]['bytes'][f]):.0f}" for n in names)
            + f" | {target_r} |")
    lines += ["", "Server-side medians (s):", ""]
    for n in names:
        lines.append(f"- {n}, first click: {stage_medians(w[n]['server_first'])}.")
        for f in r["formats"]:
            lines.append(f"- {n}, repeat click, {f}: {stage_medians(w[n]['server_repeat'][f])}.")
    lines += [
        "",
        f"Mask size, median: {statistics.median(r['voxels']):.0f} voxels (random weights fill much of the crop).",
    ]
    if r["compared"]:
        lines.append(f"Labels compared {names[0]} vs {names[1]} (SimpleITK read: voxels, dtype, origin, spacing, direction): "
                     f"{r['compared']} clicks, {len(r['mismatches'])} different.")
    lines.append("")
    return "\n".join(lines)


def write_section(path: str, section: str) -> None:
    """Replace (or append) the '## HTTP' section, leaving every other section untouched."""
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
    lines = text.splitlines(keepends=True)
    start = next((n for n, line in enumerate(lines) if line.strip() == "## HTTP"), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((n for n in range(start + 1, len(lines)) if lines[n].startswith("## ")), len(lines))
        new = "".join(lines[:start]) + section + ("\n" if end < len(lines) else "") + "".join(lines[end:])
    with open(path, "w") as f:
        f.write(new)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5, help="first clicks (one per image copy)")
    p.add_argument("--repeats", type=int, default=3, help="repeat clicks after each first click")
    p.add_argument("--device", default="cpu")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"repeat-click formats, from {list(FORMATS)}")
    p.add_argument("--no-compare", dest="compare", action="store_false",
                   help="skip the second server with today's SimpleITK writer")
    p.add_argument("--app", default=None, help="app folder of the \"new\" server (default: this checkout's)")
    p.add_argument("--base-app", default=None,
                   help="compare with a second server running this app folder (e.g. a git worktree of the "
                        "previous commit) instead of the SimpleITK label writer; labels are compared the same way")
    p.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md, section HTTP")
    p.add_argument("--checkpoint", default=None,
                   help="serve this checkpoint (e.g. apps/sammed3d/model/default/model.pt) instead of the "
                        "released-size model at random weights")
    p.add_argument("--max-crops", type=int, default=1, help="--conf max_crops of the servers (default 1: one crop)")
    p.add_argument("--image", default=None, help="a real volume to click instead of the synthetic CT (with --click)")
    p.add_argument("--click", default=None, help="i,j,k stored voxel index of the first click (with --image)")
    p.add_argument("--modality", default="CT", choices=("CT", "MR"),
                   help="--conf modality of the servers (MR for an MR --image: as CT it is clamped as HU)")
    p.add_argument("--prior-flood", choices=("auto", "on", "off"), default=None,
                   help="send the infer request option prior_flood with every click (the embedded default's flood "
                        "for large organs; the clicks land in the synthetic CT's liver-like blob)")
    args = p.parse_args(argv)
    result = run(args)
    section = report(result)
    print(section)
    if result["mismatches"]:
        print(f"LABELS DIFFER between the writers: {result['mismatches']}", file=sys.stderr)
        return 1
    if args.write_docs:
        write_section(os.path.join(REPO, "docs", "benchmarks.md"), section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
