#!/usr/bin/env python
"""Benchmark the SAM-Med3D port: encoder (reference vs exact fast path) and one click.

Released vit_b_ori configuration, random weights, a random z-normalised 128^3 crop.
A click = prompt encoder + mask decoder + trilinear upsampling of the logits to 128^3 + threshold.
Reports medians after warm-up, the fast path's error against the reference path in the same run,
reduced-precision error against fp32 (CUDA), and peak memory.

    python scripts/bench_model.py --device cpu
    python scripts/bench_model.py --device cuda --precisions fp32,tf32,bf16,fp16
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "apps", "sammed3d"))
from lib.model import build_sam_med3d  # noqa: E402
from lib.model.cuda_graphs import CudaGraphRunner  # noqa: E402
from lib.model.precision import autocast  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, warmup, repeats):
    """Median and all times in ms."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), times


def click_fn(model, emb, coords, labels, mask_in, precision, device):
    def run():
        with torch.inference_mode(), autocast(precision if precision != "tf32" else "fp32", device):
            logits = model.decode(emb, coords, labels, mask_in)
            return model.upsample_logits(logits) > 0
    return run


def peak_rss_click_only(repeats: int) -> float:
    """Peak RSS (MiB) of a fresh process that builds the model and answers clicks only (weights included)."""
    code = (
        "import sys,os,resource,torch; sys.path.insert(0, os.path.join(%r,'apps','sammed3d'));"
        "from lib.model import build_sam_med3d; m=build_sam_med3d(None).eval();"
        "emb=torch.randn(1,384,8,8,8); c=torch.tensor([[[64.,60.,70.]]]); l=torch.tensor([[1]]); mi=torch.zeros(1,1,32,32,32)\n"
        "with torch.inference_mode():\n"
        " for _ in range(%d): mi=m.decode(emb,c,l,mi); mask=m.upsample_logits(mi)>0\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec from the parent's footprint.
        "print([int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0]/1024)"
    ) % (os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."), repeats)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precisions", default="fp32", help="comma list of fp32,tf32,bf16,fp16 (reduced ones CUDA only)")
    ap.add_argument("--ref-repeats", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    ref_repeats = args.ref_repeats or (20 if cuda else 3)
    repeats = args.repeats or (100 if cuda else 10)
    torch.manual_seed(0)
    model = build_sam_med3d(None).eval().to(device)
    image = torch.randn(1, 1, 128, 128, 128, device=device)
    coords = torch.tensor([[[64.0, 60.0, 70.0], [40.0, 80.0, 50.0]]], device=device)
    labels = torch.tensor([[1, 0]], device=device)
    enc = model.image_encoder
    res = {"device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
           "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "rows": []}

    def encode(fast, precision):
        def run():
            enc.fast = fast
            with torch.inference_mode(), autocast(precision if precision != "tf32" else "fp32", device):
                return model.encode(image)
        return run

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.inference_mode():
        enc.fast = False
        ref_emb = model.encode(image).float()
        enc.fast = True
        fast_emb = model.encode(image).float()
    res["fast_vs_reference_max_abs"] = (fast_emb - ref_emb).abs().max().item()
    with torch.inference_mode():
        ref_mask = model.upsample_logits(model.decode(fast_emb, coords, labels, None)) > 0

    for precision in args.precisions.split(","):
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        row = {"precision": precision}
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        if precision in ("fp32",) or cuda:
            row["encoder_reference_ms"], _ = timed(encode(False, precision), device, 1, ref_repeats)
        if cuda:
            row["encoder_reference_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()
        row["encoder_fast_ms"], _ = timed(encode(True, precision), device, 2, repeats)
        if cuda:
            row["encoder_fast_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        with torch.inference_mode():
            emb = encode(True, precision)()
            row["embedding_max_abs_err_vs_fp32"] = (emb.float() - ref_emb).abs().max().item()
            row["embedding_rel_err_vs_fp32"] = ((emb.float() - ref_emb).norm() / ref_emb.norm()).item()
            low = click_fn(model, emb, coords, labels, None, precision, device)()
            inter = (low & ref_mask).sum().item()
            row["click_mask_dice_vs_fp32"] = 2 * inter / max(1, low.sum().item() + ref_mask.sum().item())
            mask_in = model.decode(emb, coords, labels, None)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        row["click_ms"], _ = timed(click_fn(model, emb, coords, labels, mask_in, precision, device), device, 5, repeats)
        if cuda:
            row["click_peak_mib_above_model"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        if cuda:
            runner = CudaGraphRunner(model, "fp32" if precision == "tf32" else precision)
            enc.fast = True
            row["encoder_fast_graph_ms"], _ = timed(lambda: runner.encode(image), device, 3, repeats)
            g_emb = runner.encode(image)
            row["graph_vs_eager_max_abs"] = (g_emb.float() - emb.float()).abs().max().item()

            def graph_click():
                return runner.upsample_logits(runner.decode(g_emb, coords, labels, mask_in)) > 0
            row["click_graph_ms"], _ = timed(graph_click, device, 5, repeats)
        row["speedup_encoder"] = row.get("encoder_reference_ms", float("nan")) / row["encoder_fast_ms"]
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
    if not cuda:
        res["click_only_process_peak_rss_mib"] = peak_rss_click_only(10)
        res["this_process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}))
    if cuda:
        print("\n| device | precision | encoder fast + CUDA graph (ms) | one click + CUDA graph (ms) | graph vs eager max abs |")
        print("|---|---|---|---|---|")
        for r in res["rows"]:
            print(f"| {res['device']} | {r['precision']} | {r['encoder_fast_graph_ms']:.2f} | {r['click_graph_ms']:.2f} | {r['graph_vs_eager_max_abs']:.1e} |")
    print("\n| device | precision | encoder reference (ms) | encoder fast (ms) | speed-up | one click (ms) | embedding err vs fp32 | click mask Dice vs fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {res['device']} | {r['precision']} | {r.get('encoder_reference_ms', float('nan')):.1f} | {r['encoder_fast_ms']:.2f} | "
              f"{r['speedup_encoder']:.1f}x | {r['click_ms']:.2f} | {r['embedding_max_abs_err_vs_fp32']:.2e} | {r['click_mask_dice_vs_fp32']:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
