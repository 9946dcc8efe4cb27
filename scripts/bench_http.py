#!/usr/bin/env python
"""HTTP round-trip benchmark, as the client sees it: MONAILabelClient -> real server -> label file.

    .venv/bin/python scripts/bench_http.py [--reps 5] [--device cpu] [--write-docs]

A synthetic 512x512x61 CT (0.75 x 0.75 x 5 mm, int16 .nii.gz) is copied --reps times so that every
"first click" lands on an image the server has not seen (volume load + preprocess + encode +
decode + write + transfer). A "repeat click" adds one more include click inside the same crop
(decode only). Medians are reported, with the server's own per-stage latencies beside them.

The model is the released size (vit_b_ori, 100.5 M parameters) with random weights (fixed seed),
saved to a temp checkpoint and passed with --conf checkpoint. Random weights make the mask shape
arbitrary, so the server runs with --conf max_crops 1: the numbers are the one-crop path.
--write-docs replaces the "## HTTP" section of docs/benchmarks.md (other sections stay).
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

from local_server import LocalServer  # noqa: E402

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


def run(args) -> dict:
    from monailabel.client import MONAILabelClient

    work = tempfile.mkdtemp(prefix="bench-http-")
    try:
        studies = os.path.join(work, "studies")
        os.makedirs(studies)
        synthetic_ct(os.path.join(studies, "ct_0.nii.gz"))
        for r in range(1, args.reps):
            shutil.copyfile(os.path.join(studies, "ct_0.nii.gz"), os.path.join(studies, f"ct_{r}.nii.gz"))
        ckpt = released_random_checkpoint(os.path.join(work, "random_released.pt"))
        conf = {"checkpoint": ckpt, "device": args.device, "max_crops": "1", "modality": "CT"}
        first, repeat, server_first, server_repeat, voxels = [], [], [], [], []
        with LocalServer(studies, conf) as server:
            client = MONAILabelClient(server.url, tmpdir=os.path.join(work, "client"))
            centre = [300, 250, 30]  # inside the liver-like blob
            for r in range(args.reps):
                image = f"ct_{r}"
                fg = [centre]
                t = time.perf_counter()
                _, res = client.infer("sammed3d", image, {"label": "liver", "foreground": fg, "background": []})
                first.append(time.perf_counter() - t)
                server_first.append(res["latencies"])
                assert not res["cache_hit"], "first click must run the encoder"
                for n in range(args.repeats):
                    fg = fg + [[centre[0] + 3 * (n + 1), centre[1] - 2 * (n + 1), centre[2]]]
                    t = time.perf_counter()
                    _, res = client.infer("sammed3d", image, {"label": "liver", "foreground": fg, "background": []})
                    repeat.append(time.perf_counter() - t)
                    server_repeat.append(res["latencies"])
                    voxels.append(res["voxels"])
                    assert res["cache_hit"], "repeat click inside the crop must not re-encode"
        return {"first": first, "repeat": repeat, "server_first": server_first, "server_repeat": server_repeat,
                "voxels": voxels,
                "command": " ".join([os.path.relpath(sys.executable, REPO)] + sys.argv), "machine": machine(),
                "device": args.device, "reps": args.reps, "repeats": args.repeats}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def stage_medians(latencies) -> str:
    keys = ["load", "preprocess", "encode", "decode", "paste", "write", "total"]
    return ", ".join(f"{k} {statistics.median(d[k] for d in latencies):.3f}" for k in keys if k in latencies[0])


def report(r: dict) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    med_f, med_r = statistics.median(r["first"]), statistics.median(r["repeat"])
    target_f, target_r = (5.0, 0.5) if r["device"] == "cpu" else (0.4, 0.1)
    return "\n".join([
        "## HTTP",
        "",
        "Round trip through `MONAILabelClient.infer` (request, inference, label file written, sent and saved",
        "by the client) against a real `monailabel start_server`; synthetic 512x512x61 CT, released-size",
        "model with random weights, `--conf max_crops 1`.",
        "",
        f"- Command: `{r['command']}`",
        f"- Machine: {r['machine']}; device {r['device']}; commit {commit}; {time.strftime('%Y-%m-%d')}",
        "",
        "| click | median round trip (s) | min / max (s) | n | target (s) |",
        "|---|---|---|---|---|",
        f"| first (new image: load, preprocess, encode, decode, write) | {med_f:.3f} | "
        f"{min(r['first']):.3f} / {max(r['first']):.3f} | {len(r['first'])} | {target_f} |",
        f"| repeat (same crop: decode, paste, write) | {med_r:.3f} | "
        f"{min(r['repeat']):.3f} / {max(r['repeat']):.3f} | {len(r['repeat'])} | {target_r} |",
        "",
        f"Server-side medians (s), first click: {stage_medians(r['server_first'])}.",
        f"Repeat click: {stage_medians(r['server_repeat'])}.",
        f"Mask size, median: {statistics.median(r['voxels']):.0f} voxels (random weights fill much of the crop);",
        "`write` is mostly the gzip of the .nii.gz label, which grows with how irregular the mask is.",
        "",
    ])


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
    p.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md, section HTTP")
    args = p.parse_args(argv)
    section = report(run(args))
    print(section)
    if args.write_docs:
        write_section(os.path.join(REPO, "docs", "benchmarks.md"), section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
