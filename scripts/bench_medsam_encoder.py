"""Time one LiteMedSAM slice encoding (256x256) three ways on this machine: eager (what the server
runs), channels-last memory format, and torch.compile (inductor). Medians of `--repeats`,
interleaved; also prints the compile time and the largest difference from eager. docs/medsam.md quotes it.

--int8 adds the int8 encoder (--conf medsam_encoder int8: dynamically quantised Linear layers,
per-channel weights) and --batch2 a batch of two slices (time per slice), both channels-last.

    .venv/bin/python scripts/bench_medsam_encoder.py [--threads 2] [--repeats 7] [--no-compile] [--int8] [--batch2]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "apps", "sammed3d"))

from lib.medsam import load_lite_medsam, locate_weights  # noqa: E402


def interleaved_medians(variants, repeats: int):
    """{name: (median seconds, output)}: each variant warmed up twice, then timed in turn, so slow
    phases of a shared machine hit all of them alike."""
    outs = {name: (fn(), fn())[1] for name, fn in variants.items()}
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            t = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t)
    return {name: (statistics.median(times[name]), outs[name]) for name in variants}


def ct_slice_input() -> torch.Tensor:
    """A real input: the middle axial slice of slicerio's CTChest4 (soft-tissue window), as the app prepares it."""
    import numpy as np
    import SimpleITK as sitk

    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from record_medsam_reference import fetch

    from lib.medsam.preprocess import slice_input, window_volume

    site = fetch(os.path.join(REPO, "build", "medsam_ref"))
    ct = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(site, "slicerio", "data", "CTChest4.nrrd")))
    return slice_input(np.ascontiguousarray(window_volume(ct[ct.shape[0] // 2], True, "soft_tissue")))[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--int8", action="store_true", help="also the int8 dynamic-quantised encoder")
    p.add_argument("--batch2", action="store_true", help="also two slices per call (seconds per slice)")
    p.add_argument("--ct-slice", action="store_true", help="a real CT slice as input instead of noise")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    encoder = load_lite_medsam(locate_weights().path).image_encoder
    x = torch.randn(1, 3, 256, 256) if not args.ct_slice else ct_slice_input()
    variants = {"eager": lambda: encoder(x)}
    cl_encoder = copy.deepcopy(encoder).to(memory_format=torch.channels_last)
    cl_x = x.to(memory_format=torch.channels_last)
    variants["channels-last"] = lambda: cl_encoder(cl_x)
    if args.batch2:
        x2 = torch.cat([x, x]).to(memory_format=torch.channels_last)
        variants["channels-last, batch 2 (per slice)"] = lambda: cl_encoder(x2)[:1]
    if args.int8:
        from lib.model.medsam import quantize_encoder

        q = quantize_encoder(load_lite_medsam(locate_weights().path), "int8").image_encoder
        variants["int8 (channels-last)"] = lambda: q(cl_x)
        if args.batch2:
            variants["int8, batch 2 (per slice)"] = lambda: q(x2)[:1]
    with torch.inference_mode():
        if not args.no_compile:
            compiled = torch.compile(encoder)
            t = time.perf_counter()
            compiled(x)
            print(f"torch.compile: first call (compile) {time.perf_counter() - t:.1f} s")
            variants["torch.compile"] = lambda: compiled(x)
        res = interleaved_medians(variants, args.repeats)
    ref = res["eager"][1]
    for name, (sec, out) in res.items():
        if "batch 2" in name:
            sec /= 2
        rel = float((out - ref).norm() / ref.norm())
        print(f"{name}: median {sec:.3f} s over {args.repeats} (max |diff| from eager {float((out - ref).abs().max()):.1e}, "
              f"relative L2 {rel:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
