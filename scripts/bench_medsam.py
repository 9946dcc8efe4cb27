"""Time LiteMedSAM's 3D box protocol on CPU: one 3D box through 30 slices (issue 8 target:
<= 5 s through HTTP on the 2-core CPU machine; this measures the engine without HTTP).

Volume: slicerio 1.4.0's CTChest4.nrrd (128x128x34, 10 mm slices; fetched with pip download
--no-deps into build/medsam_ref). Box: the body ("tissue", label 7) extent on slices 2..31, i.e.
30 slices, soft-tissue window; MedSAM segments the body on every slice, so all 30 are propagated.
Each cold run uses an empty embedding cache (30 encodings); the warm run repeats the same box with
the cache full (decoder only). Prints a markdown row for docs/medsam.md.

With --bound it also prints the lower bound that arithmetic alone sets: the encoder's FLOPs for one
slice (torch's FlopCounterMode) times the number of encoded slices, divided by the best matrix-multiply
rate this machine reaches (a large fp32 GEMM, the most efficient operation the encoder is made of).

    .venv/bin/python scripts/bench_medsam.py [--repeats 3] [--threads 2] [--bound] [--device cuda]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "apps", "sammed3d"))
sys.path.insert(0, os.path.join(REPO, "scripts"))

from lib.medsam import MedSAMEngine, load_lite_medsam, locate_weights  # noqa: E402


def encoder_gflop(model) -> float:
    """FLOPs of one 256x256 slice encoding, counted by torch (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.image_encoder(torch.zeros(1, 3, 256, 256))
    return counter.get_total_flops() / 1e9


def gemm_gflops(n: int = 2048, reps: int = 5) -> float:
    """Best fp32 GEMM rate (GFLOP/s) over `reps` runs with the current torch threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slices", type=int, default=30)
    p.add_argument("--cache", default=os.path.join(REPO, "build", "medsam_ref"))
    p.add_argument("--device", default="cpu", help="cpu or cuda (the total is exact: every slice mask comes back to the host; per-stage splits are not synchronised)")
    p.add_argument("--bound", action="store_true", help="also print the FLOP lower bound (see above)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from record_medsam_reference import fetch  # same pinned wheels, same cache

    import SimpleITK as sitk

    site = fetch(args.cache)
    ct_path = os.path.join(site, "slicerio", "data", "CTChest4.nrrd")
    lab = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(site, "slicerio", "data", "Segmentation.seg.nrrd"))).transpose(2, 1, 0)
    body = lab == 7
    ii = np.nonzero(body.any(axis=(1, 2)))[0]
    jj = np.nonzero(body.any(axis=(0, 2)))[0]
    k0 = 2
    roi = [int(ii.min()), int(ii.max()), int(jj.min()), int(jj.max()), k0, k0 + args.slices - 1]
    model = load_lite_medsam(locate_weights().path, device=args.device)
    cold, res = [], None
    for _ in range(args.repeats):
        engine = MedSAMEngine(model, "bench", device=args.device, cache_bytes=1 << 30)
        engine.volume(ct_path)  # file read outside the timing: the server keeps volumes cached too
        t = time.perf_counter()
        res = engine.segment_box(ct_path, roi, window="soft_tissue")
        cold.append(time.perf_counter() - t)
        print(f"cold: {cold[-1]:.2f} s, {len(res.slices)} slices, encoded {res.encoded}, "
              f"encode {res.timings['encode']:.2f} s, decode {res.timings['decode']:.2f} s", flush=True)
    t = time.perf_counter()
    warm = engine.segment_box(ct_path, roi, window="soft_tissue")
    warm_s = time.perf_counter() - t
    cpu = subprocess.run("lscpu | grep 'Model name' | cut -d: -f2", shell=True, capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()[0]
    n = len(res.slices)
    med = statistics.median(cold)
    print(f"warm (cached encodings): {warm_s:.2f} s, encoded {warm.encoded}")
    if args.device != "cpu":
        cpu = f"{torch.cuda.get_device_name(0)} (host {cpu})"
    print(f"| {cpu or platform.processor()}, {args.threads} threads, torch {torch.__version__}, load avg {load:.1f} "
          f"| {n} slices | cold median {med:.1f} s ({med / max(n, 1):.2f} s/slice, n={len(cold)}) | warm {warm_s:.2f} s |")
    if args.bound and args.device == "cpu":
        flop, rate = encoder_gflop(model), gemm_gflops()
        print(f"bound: one encoding {flop:.1f} GFLOP x {res.encoded} encodings = {flop * res.encoded / 1e3:.2f} TFLOP; "
              f"best fp32 GEMM here {rate:.0f} GFLOP/s -> encodings alone need >= {flop * res.encoded / rate:.1f} s "
              f"(measured encode {res.timings['encode']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
