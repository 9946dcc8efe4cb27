"""Click-simulation evaluation through the interactive session (issue 3, item 8).

For every image/label pair and every target label value, clicks are simulated as in the
SAM-Med3D paper: the first at the centre of the target, each next one at the centre of the
largest error region (include for missed voxels, exclude for false positives; lib.interaction.
clicks). Every click goes through the SAME SegmentationEngine the server uses, on the image's
stored grid, so loading, orientation, resampling, crops and paste-back are all exercised.
Dice after 1, 3, 5 and 10 clicks per target and on average -> CSV (+ PNG when matplotlib is
available). Used to judge every model change and to pick the engine's click mode.

    python -m lib.interaction.evaluate --data DIR [--labels-values 1,2] --checkpoint ckpt.pth \
        --clicks 10 --click-mode all newest --out results/ [--device cuda]

DIR holds images/ and labels/ (or imagesTr/ and labelsTr/) with matching file names (an
nnU-Net `_0000` image suffix is ignored); --images/--labels name the two folders directly.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .clicks import next_click_from_error

_EXTS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
REPORT_AT = (1, 3, 5, 10)


def _stem(name: str) -> Optional[str]:
    for ext in _EXTS:
        if name.lower().endswith(ext):
            stem = name[: -len(ext)]
            return stem[:-5] if stem.endswith("_0000") else stem
    return None


def find_pairs(data: Optional[str] = None, images: Optional[str] = None, labels: Optional[str] = None) -> List[Tuple[str, str, str]]:
    """[(case id, image path, label path)] matched by file name, sorted by case id."""
    if data:
        for im, lb in (("images", "labels"), ("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
            if os.path.isdir(os.path.join(data, im)) and os.path.isdir(os.path.join(data, lb)):
                images, labels = os.path.join(data, im), os.path.join(data, lb)
                break
        else:
            raise SystemExit(f"{data}: expected images/ + labels/ (or imagesTr/ + labelsTr/) folders")
    if not images or not labels:
        raise SystemExit("give --data DIR or both --images DIR and --labels DIR")
    label_files = {_stem(f): os.path.join(labels, f) for f in os.listdir(labels) if _stem(f)}
    pairs = []
    for f in sorted(os.listdir(images)):
        stem = _stem(f)
        if stem and stem in label_files:
            pairs.append((stem, os.path.join(images, f), label_files[stem]))
    if not pairs:
        raise SystemExit(f"no image/label pairs with matching names in {images} and {labels}")
    return pairs


def read_label(path: str) -> np.ndarray:
    """Label volume as stored (i, j, k) -- the same index order the engine returns masks in."""
    img = sitk.ReadImage(path)
    if img.GetDimension() != 3:
        raise ValueError(f"label {path} is {img.GetDimension()}D, expected 3D")
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = pred.astype(bool), gt.astype(bool)
    denom = int(p.sum()) + int(g.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & g).sum()) / denom


def next_click(pred: np.ndarray, gt: np.ndarray, spacing: Optional[Sequence[float]] = None):
    """next_click_from_error (centres in mm with `spacing`) on the bounding box of pred | gt (plus one voxel).

    Same answer as on the whole volume (outside the box nothing is in error, and the one-voxel
    margin gives the distance transform the same boundary), but a 512x512x61 CT costs a box's
    worth of work instead of the volume's.
    """
    any_ = pred.astype(bool) | gt.astype(bool)
    if not any_.any():
        return None
    lo, hi = [], []
    for ax in range(3):
        nz = np.nonzero(any_.any(axis=tuple(a for a in range(3) if a != ax)))[0]
        lo.append(max(0, int(nz[0]) - 1))
        hi.append(min(any_.shape[ax], int(nz[-1]) + 2))
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    res = next_click_from_error(pred[box], gt[box], spacing=spacing)
    if res is None:
        return None
    (i, j, k), include = res
    return (i + lo[0], j + lo[1], k + lo[2]), include


def evaluate_target(engine, case: str, image_path: str, gt: np.ndarray, value: int, num_clicks: int) -> List[float]:
    """Dice after each of `num_clicks` simulated clicks for one target (label value).

    Click centres are measured in mm on the image's stored grid (its spacing, from the engine).
    """
    label = f"eval-{value}"
    spacing = engine.volume(image_path).image.GetSpacing()
    engine.reset(case, label)
    fg: List[List[int]] = []
    bg: List[List[int]] = []
    pred = np.zeros(gt.shape, dtype=np.uint8)
    dices: List[float] = []
    for _ in range(num_clicks):
        click = next_click(pred, gt, spacing)
        if click is None:  # perfect: further clicks change nothing
            dices.append(dices[-1] if dices else 1.0)
            continue
        point, include = click
        (fg if include else bg).append(list(point))
        if not fg:  # cannot happen: the first error is the missed target
            raise RuntimeError("first simulated click is not an include click")
        pred = engine.segment(case, image_path, label, fg, bg).mask
        dices.append(dice(pred, gt))
    engine.reset(case, label)
    return dices


def iter_targets(pairs, values: Optional[Sequence[int]], log=print):
    """Yield (case, image_path, value, binary target) for every requested label present in each pair."""
    for case, image_path, label_path in pairs:
        lab = read_label(label_path)
        for value in values if values else [int(v) for v in np.unique(lab) if v != 0]:
            gt = lab == value
            if not gt.any():
                log(f"  {case}: label {value} absent, skipped")
                continue
            yield case, image_path, int(value), gt


def evaluate(engine, pairs, values: Optional[Sequence[int]], num_clicks: int, modes: Sequence[str], log=print) -> List[Dict]:
    """Rows {mode, case, value, clicks, dice} for every target, mode and click count."""
    rows = []
    for mode in modes:
        engine.click_mode = mode
        for case, image_path, value, gt in iter_targets(pairs, values, log):
            t = time.perf_counter()
            dices = evaluate_target(engine, case, image_path, gt, value, num_clicks)
            log(f"  [{mode}] {case} label {value}: " + " ".join(f"{d:.3f}" for d in dices) + f"  ({time.perf_counter() - t:.1f}s)")
            rows += [dict(mode=mode, case=case, value=value, clicks=n + 1, dice=d) for n, d in enumerate(dices)]
    return rows


def summarise(rows: List[Dict], report_at: Sequence[int]) -> List[Dict]:
    out = []
    for mode in sorted({r["mode"] for r in rows}):
        for n in report_at:
            ds = [r["dice"] for r in rows if r["mode"] == mode and r["clicks"] == n]
            if ds:
                out.append(dict(mode=mode, clicks=n, mean_dice=float(np.mean(ds)), targets=len(ds)))
    return out


def write_outputs(rows: List[Dict], summary: List[Dict], out_dir: str, report_at: Sequence[int]) -> List[str]:
    """per_target.csv (every click), summary.csv (report points), dice_vs_clicks.png if possible."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    path = os.path.join(out_dir, "per_target.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["mode", "case", "value", "clicks", "dice"])
        w.writeheader()
        w.writerows(rows)
    written.append(path)
    path = os.path.join(out_dir, "summary.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["mode", "clicks", "mean_dice", "targets"])
        w.writeheader()
        w.writerows(summary)
    written.append(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the PNG plot (CSV files are written)")
        return written
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in sorted({r["mode"] for r in rows}):
        ns = sorted({r["clicks"] for r in rows if r["mode"] == mode})
        means = [np.mean([r["dice"] for r in rows if r["mode"] == mode and r["clicks"] == n]) for n in ns]
        ax.plot(ns, means, marker="o", label=f"{mode} clicks")
    ax.set_xlabel("number of clicks")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1)
    ax.set_xticks([n for n in report_at if n <= max(r["clicks"] for r in rows)])
    ax.grid(alpha=0.3)
    ax.legend()
    path = os.path.join(out_dir, "dice_vs_clicks.png")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    return written


def markdown(summary: List[Dict]) -> str:
    modes = sorted({s["mode"] for s in summary})
    ns = sorted({s["clicks"] for s in summary})
    lines = ["| mode | " + " | ".join(f"{n} click{'s' if n > 1 else ''}" for n in ns) + " |", "|---" * (len(ns) + 1) + "|"]
    for m in modes:
        vals = {s["clicks"]: s["mean_dice"] for s in summary if s["mode"] == m}
        lines.append(f"| {m} | " + " | ".join(f"{vals[n]:.4f}" if n in vals else "-" for n in ns) + " |")
    return "\n".join(lines)


def build_engine(args):
    """The model (checkpoint, or random weights of a config) wrapped in a SegmentationEngine."""
    import torch

    from lib.model import build_sam_med3d, load_checkpoint
    from lib.session import SegmentationEngine

    if args.checkpoint:
        model, meta = load_checkpoint(args.checkpoint)
        version = args.model_version or str(meta.get("version") or os.path.basename(args.checkpoint))
    elif args.random_weights:
        torch.manual_seed(args.seed)
        config = json.loads(args.model_config) if args.model_config else None
        model = build_sam_med3d(config)
        version = args.model_version or f"random-seed{args.seed}"
    else:
        raise SystemExit("give --checkpoint PATH, or --random-weights (geometry/speed checks only)")
    return SegmentationEngine(
        model, version, device=args.device, cache_bytes=int(args.cache_gb * (1 << 30)), modality=args.modality,
        precision=args.precision, max_crops=args.max_crops,
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m lib.interaction.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="folder with images/ and labels/ (or imagesTr/ and labelsTr/)")
    p.add_argument("--images", help="image folder (with --labels)")
    p.add_argument("--labels", help="label folder (with --images)")
    p.add_argument("--labels-values", default="", help="comma-separated label values (default: every non-zero value)")
    p.add_argument("--clicks", type=int, default=10, help="clicks per target (default 10)")
    p.add_argument("--report-at", default="1,3,5,10", help="click counts to summarise")
    p.add_argument("--click-mode", nargs="+", default=["all"], choices=["all", "newest"], help="one or both click modes")
    p.add_argument("--checkpoint", help="model checkpoint (.pth)")
    p.add_argument("--random-weights", action="store_true", help="random weights (geometry/speed checks only)")
    p.add_argument("--model-config", help="JSON model config for --random-weights (default: released size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-version", default=None)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default=None, choices=[None, "bf16", "fp16"], help="encoder autocast")
    p.add_argument("--modality", default=None, help="CT / MR / auto (default: from DICOM tag or intensities)")
    p.add_argument("--max-crops", type=int, default=8)
    p.add_argument("--cache-gb", type=float, default=2.0)
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N cases")
    p.add_argument("--out", default="eval_results", help="output folder for CSV/PNG")
    p.add_argument("--medsam", action="store_true",
                   help="add a MedSAM (LiteMedSAM) box row on the same cases: a box counts as 2 clicks (lib/medsam/evaluate.py)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    pairs = find_pairs(args.data, args.images, args.labels)
    if args.limit:
        pairs = pairs[: args.limit]
    values = [int(v) for v in args.labels_values.split(",") if v.strip()]
    report_at = [int(v) for v in args.report_at.split(",") if v.strip()]
    num_clicks = max(args.clicks, 1)
    engine = build_engine(args)
    print(f"{len(pairs)} case(s), {num_clicks} clicks, modes {args.click_mode}, device {args.device}, model {engine.model_version}")
    rows = evaluate(engine, pairs, values, num_clicks, args.click_mode)
    if args.medsam:
        from lib.medsam.evaluate import build_medsam_engine, evaluate_medsam

        rows += evaluate_medsam(build_medsam_engine(args.device), pairs, values, num_clicks, modality=args.modality)
    if not rows:
        print("no targets found")
        return 1
    summary = summarise(rows, [n for n in report_at if n <= num_clicks])
    for path in write_outputs(rows, summary, args.out, report_at):
        print("wrote", path)
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
