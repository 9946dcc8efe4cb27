#!/usr/bin/env python
"""Benchmark the interactive session end to end: click in -> mask on the original grid out.

A synthetic 512 x 512 x 61 CT (0.7 x 0.7 x 5 mm, LPS-stored like a DICOM-derived NIfTI) and the
released-size SAM-Med3D built with random weights (--models also takes click_unet, the convolutional
default's architecture, or checkpoint paths; several run one after the other). Measures, through SegmentationEngine.segment:
  * first click, cold: nothing cached (file load + crop resample + encoder + decoder + paste);
  * first click, volume cached: a new crop of an image already loaded;
  * repeat click: a new click inside the cached crop (decoder + paste only).
Medians after warm-up; prints a markdown table with the per-stage breakdown.

    python scripts/bench_session.py                  # CPU
    python scripts/bench_session.py --device cuda --precision bf16
    python scripts/bench_session.py --models released,click_unet --threads 2
"""
import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "apps", "sammed3d"))
from lib.model import CLICK_UNET_CONFIG, build_model, load_checkpoint  # noqa: E402
from lib.session import SegmentationEngine  # noqa: E402

STAGES = ("load", "preprocess", "encode", "decode", "paste", "total")


def synthetic_ct(path: str, shape=(512, 512, 61), spacing=(0.7, 0.7, 5.0), seed=0) -> str:
    """Body-like HU volume: air outside an elliptic body of soft tissue with a brighter organ."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    body = ((i - 256) / 220.0) ** 2 + ((j - 256) / 170.0) ** 2 < 1
    organ = ((i - 300) / 60.0) ** 2 + ((j - 230) / 45.0) ** 2 < 1
    sl = np.where(body, 40, -1000).astype(np.int16)
    sl[organ] = 120
    vol = np.repeat(sl[:, :, None], shape[2], axis=2)
    vol = (vol + rng.normal(0, 15, shape)).astype(np.int16)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    nib.save(nib.Nifti1Image(vol, affine), path)
    return path


def make_model(name: str):
    """'released': vit_b_ori at random weights; 'click_unet': ClickUNet3D at random weights; else a checkpoint path."""
    torch.manual_seed(0)
    if name == "released":
        return build_model(None)
    if name == "click_unet":
        return build_model(dict(CLICK_UNET_CONFIG))
    return load_checkpoint(name)[0]


def run(args, model_name: str):
    device = torch.device(args.device)
    model = make_model(model_name)
    engine = SegmentationEngine(model, "random", device=device, precision=args.precision, max_crops=1, click_mode=args.click_mode)
    tmp = tempfile.mkdtemp(prefix="bench_session_")
    path = synthetic_ct(os.path.join(tmp, "ct.nii.gz"))
    rng = np.random.default_rng(1)
    first = [300, 230, 30]
    cold, warm_vol, repeat = [], [], []
    for n in range(args.first_warmup + args.first_repeats):
        engine.clear_cache()
        engine.reset("ct")
        r = engine.segment("ct", path, "organ", [first], [])
        assert not r.cache_hit
        if n >= args.first_warmup:
            cold.append(r.timings)
    for n in range(args.first_repeats):
        # Same image (volume cached), a crop not yet encoded: shift the first click.
        engine.reset("ct")
        r = engine.segment("ct", path, f"other{n}", [[200 + 20 * n, 280, 20 + n]], [])
        assert not r.cache_hit
        warm_vol.append(r.timings)
    fg = [first]
    engine.reset("ct")
    engine.segment("ct", path, "organ", fg, [])
    for n in range(args.repeat_warmup + args.repeats):
        if len(fg) >= args.max_clicks:  # keep the prompt at a realistic length
            fg = [first]
            engine.reset("ct", "organ")
            engine.segment("ct", path, "organ", fg, [])
        fg = fg + [[int(c + d) for c, d in zip(first, rng.integers(-25, 26, 3) * np.array([1, 1, 0]))]]
        r = engine.segment("ct", path, "organ", fg, [])
        assert r.cache_hit and r.mask.shape == (512, 512, 61)
        if n >= args.repeat_warmup:
            repeat.append(r.timings)
    return cold, warm_vol, repeat, engine


def med(rows, key):
    return statistics.median(r.get(key, 0.0) for r in rows) * 1000.0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default=None, choices=[None, "bf16", "fp16"])
    p.add_argument("--click-mode", default="all", choices=["all", "newest"])
    p.add_argument("--first-warmup", type=int, default=1)
    p.add_argument("--first-repeats", type=int, default=3)
    p.add_argument("--repeat-warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--max-clicks", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--models", default="released",
                   help="comma list, run one after the other: released (vit_b_ori), click_unet (the convolutional "
                        "default's architecture), or checkpoint paths")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        report(args, name)


def report(args, model_name: str):
    t = time.time()
    cold, warm_vol, repeat, engine = run(args, model_name)
    dev = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"\nSession benchmark: 512x512x61 CT (0.7x0.7x5 mm), model {model_name} (random weights unless a path), {dev}, "
          f"torch {torch.__version__}, precision {args.precision or 'fp32'}, click mode {args.click_mode}")
    print(f"medians in ms; first clicks n={len(cold)} after {args.first_warmup} warm-up, repeat clicks n={len(repeat)} after {args.repeat_warmup} warm-up\n")
    print("| case | " + " | ".join(STAGES) + " |")
    print("|---" * (len(STAGES) + 1) + "|")
    for name, rows in (("first click (cold: load+encode)", cold), ("first click (volume cached)", warm_vol), ("repeat click (cached crop)", repeat)):
        print(f"| {name} | " + " | ".join(f"{med(rows, k):.1f}" for k in STAGES) + " |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\ncache: {engine.cache.bytes_used / 2**20:.1f} MiB in {len(engine.cache)} entries (bound {engine.cache.max_bytes / 2**30:.1f} GiB); "
          f"wall {time.time() - t:.0f}s; {os.cpu_count()} CPUs, 1-min load average at the end {load:.2f}")


if __name__ == "__main__":
    main()
