"""Click-simulation evaluation through the interactive session (issue 3, item 8).

For every image/label pair and every target label value, clicks are simulated as in the
SAM-Med3D paper: the first at the centre of the target, each next one at the centre of the
largest error region (include for missed voxels, exclude for false positives; lib.interaction.
clicks). Every click goes through the SAME SegmentationEngine the server uses, on the image's
stored grid, so loading, orientation, resampling, crops and paste-back are all exercised.
Dice after 1, 3, 5 and 10 clicks per target and on average -> CSV (+ PNG when matplotlib is
available). Used to judge every model change and to pick the engine's click mode.

Comparison rows (issue 14): `--method model random_walker geodesic` segments the same targets with
the same simulated annotator by the model and by the classical methods of lib.interaction.classical
(random walker, geodesic-distance region; parameters tuned once on development cases). Per click:
Dice, NSD at 2 mm at the report points (lib.interaction.metrics, monai's compute_surface_dice),
process CPU seconds and wall seconds of the segmentation call. `--reuse-rows` adds the rows of an
earlier run for modes not run now (re-run the model rows only, keep stored classical rows).

    python -m lib.interaction.evaluate --data DIR [--labels-values 1,2] --checkpoint ckpt.pth \
        --clicks 10 --click-mode all newest --out results/ [--device cuda] [--method model random_walker geodesic]

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
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .clicks import next_click_from_error

CLASSICAL_METHODS = ("random_walker", "geodesic")  # lib.interaction.classical.METHODS (imported lazily)

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


def simulate_clicks(segment, gt: np.ndarray, spacing: Sequence[float], num_clicks: int,
                    nsd_at: Sequence[int] = (), nsd_tolerance_mm: float = 2.0) -> List[Dict]:
    """Run the simulated annotator against `segment(fg, bg) -> mask` for one target.

    One record per click: {clicks, dice, nsd (None unless the click count is in nsd_at), cpu_s, wall_s}.
    cpu_s / wall_s time the `segment` call only (process CPU time: all threads of this process), not
    the click simulation or the metrics. Clicks: the first at the centre of the target, then the
    centre of the largest error region, in mm on the stored grid (next_click).
    """
    from .metrics import surface_dice

    fg: List[List[int]] = []
    bg: List[List[int]] = []
    pred = np.zeros(gt.shape, dtype=bool)
    out: List[Dict] = []
    nsd_cache = None  # NSD of the current pred (pred only changes when a click is placed)
    for n in range(1, num_clicks + 1):
        click = next_click(pred, gt, spacing)
        if click is None:  # perfect: further clicks change nothing (and cost nothing)
            rec = dict(clicks=n, dice=out[-1]["dice"] if out else 1.0, cpu_s=0.0, wall_s=0.0)
        else:
            point, include = click
            (fg if include else bg).append(list(point))
            if not fg:  # cannot happen: the first error is the missed target
                raise RuntimeError("first simulated click is not an include click")
            c0, w0 = time.process_time(), time.perf_counter()
            pred = np.asarray(segment(fg, bg)).astype(bool)
            rec = dict(clicks=n, dice=dice(pred, gt), cpu_s=time.process_time() - c0, wall_s=time.perf_counter() - w0)
            nsd_cache = None
        rec["nsd"] = None
        if n in nsd_at:
            if nsd_cache is None:
                nsd_cache = surface_dice(pred, gt, spacing, nsd_tolerance_mm)
            rec["nsd"] = nsd_cache
        out.append(rec)
    return out


def _model_segment(engine, case: str, image_path: str, label: str):
    return lambda fg, bg: engine.segment(case, image_path, label, fg, bg).mask


def evaluate_target(engine, case: str, image_path: str, gt: np.ndarray, value: int, num_clicks: int) -> List[float]:
    """Dice after each of `num_clicks` simulated clicks for one target (label value).

    Click centres are measured in mm on the image's stored grid (its spacing, from the engine).
    """
    label = f"eval-{value}"
    spacing = engine.volume(image_path).image.GetSpacing()
    engine.reset(case, label)
    recs = simulate_clicks(_model_segment(engine, case, image_path, label), gt, spacing, num_clicks)
    engine.reset(case, label)
    return [r["dice"] for r in recs]


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


def load_names(pairs) -> Dict[Tuple[str, int], str]:
    """{(case, value): structure name} from a labels.json ({case: {name: value}}) beside the label files."""
    names: Dict[Tuple[str, int], str] = {}
    for folder in sorted({os.path.dirname(p[2]) for p in pairs}):
        path = os.path.join(folder, "labels.json")
        if os.path.isfile(path):
            with open(path) as f:
                for case, table in json.load(f).items():
                    for name, value in table.items():
                        names[(case, int(value))] = name
    return names


def _rows(mode: str, method: str, case: str, value: int, structure: str, recs: List[Dict]) -> List[Dict]:
    return [dict(mode=mode, method=method, case=case, value=value, structure=structure, **r) for r in recs]


def _log_line(log, mode, case, value, recs, seconds):
    log(f"  [{mode}] {case} label {value}: " + " ".join(f"{r['dice']:.3f}" for r in recs)
        + f"  ({seconds:.1f}s, cpu {np.mean([r['cpu_s'] for r in recs]):.2f}s/click)")


def evaluate_method(segmenter, method: str, pairs, values: Optional[Sequence[int]], num_clicks: int,
                    nsd_at: Sequence[int] = (), nsd_tolerance_mm: float = 2.0, names=None, log=print) -> List[Dict]:
    """Rows for a classical segmenter (lib.interaction.classical.ClassicalSegmenter), mode = method name."""
    names = names or {}
    rows: List[Dict] = []
    for case, image_path, value, gt in iter_targets(pairs, values, log):
        t = time.perf_counter()
        recs = simulate_clicks(lambda fg, bg: segmenter.segment(image_path, fg, bg), gt, segmenter.spacing(image_path),
                               num_clicks, nsd_at, nsd_tolerance_mm)
        _log_line(log, method, case, value, recs, time.perf_counter() - t)
        rows += _rows(method, method, case, value, names.get((case, value), ""), recs)
    return rows


def evaluate(engine, pairs, values: Optional[Sequence[int]], num_clicks: int, modes: Sequence[str], log=print,
             nsd_at: Sequence[int] = (), nsd_tolerance_mm: float = 2.0, names=None, model_name: Optional[str] = None) -> List[Dict]:
    """Model rows {mode, method, case, value, structure, clicks, dice, nsd, cpu_s, wall_s} for every target,
    click mode and click count. mode is the click mode, or "<model_name>:<click mode>" with model_name."""
    names = names or {}
    rows = []
    for mode in modes:
        engine.click_mode = mode
        tag = f"{model_name}:{mode}" if model_name else mode
        for case, image_path, value, gt in iter_targets(pairs, values, log):
            t = time.perf_counter()
            label = f"eval-{value}"
            spacing = engine.volume(image_path).image.GetSpacing()
            engine.reset(case, label)
            recs = simulate_clicks(_model_segment(engine, case, image_path, label), gt, spacing, num_clicks,
                                   nsd_at, nsd_tolerance_mm)
            engine.reset(case, label)
            _log_line(log, tag, case, value, recs, time.perf_counter() - t)
            rows += _rows(tag, "model", case, value, names.get((case, value), ""), recs)
    return rows


def _mean(vals) -> Optional[float]:
    vals = [float(v) for v in vals if v is not None and v != ""]
    return float(np.mean(vals)) if vals else None


def summarise(rows: List[Dict], report_at: Sequence[int]) -> List[Dict]:
    """Per mode and report point: mean Dice, mean NSD (where measured), mean CPU s of that click, targets."""
    out = []
    for mode in _modes(rows):
        for n in report_at:
            sel = [r for r in rows if r["mode"] == mode and int(r["clicks"]) == n]
            if sel:
                out.append(dict(mode=mode, clicks=n, mean_dice=_mean(r["dice"] for r in sel),
                                mean_nsd=_mean(r.get("nsd") for r in sel),
                                cpu_s=_mean(r.get("cpu_s") for r in sel), targets=len(sel)))
    return out


def _modes(rows) -> List[str]:
    """Modes in the order they first appear (model rows first, as evaluated)."""
    seen: List[str] = []
    for r in rows:
        if r["mode"] not in seen:
            seen.append(r["mode"])
    return seen


def per_structure(rows: List[Dict], report_at: Sequence[int], nsd_at: Optional[int] = None) -> List[Dict]:
    """One record per (case, value, mode): Dice at the report points, NSD at nsd_at, mean CPU/wall s per click."""
    out = []
    keys = []
    for r in rows:
        k = (r["case"], int(r["value"]))
        if k not in keys:
            keys.append(k)
    for case, value in keys:
        for mode in _modes(rows):
            sel = [r for r in rows if r["mode"] == mode and r["case"] == case and int(r["value"]) == value]
            if not sel:
                continue
            by_n = {int(r["clicks"]): r for r in sel}
            rec = dict(case=case, value=value, structure=sel[0].get("structure", ""), mode=mode)
            for n in report_at:
                rec[f"dice@{n}"] = float(by_n[n]["dice"]) if n in by_n else None
            if nsd_at is not None:
                nsd = by_n.get(nsd_at, {}).get("nsd")
                rec[f"nsd@{nsd_at}"] = None if nsd in (None, "") else float(nsd)
            rec["cpu_s_per_click"] = _mean(r.get("cpu_s") for r in sel)
            rec["wall_s_per_click"] = _mean(r.get("wall_s") for r in sel)
            out.append(rec)
    return out


ROW_FIELDS = ["mode", "method", "case", "value", "structure", "clicks", "dice", "nsd", "cpu_s", "wall_s"]


def read_rows(path: str) -> List[Dict]:
    """Rows of a per_target.csv written by write_outputs (numbers parsed, blanks -> None)."""
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            row = dict(r)
            row["value"], row["clicks"] = int(row["value"]), int(row["clicks"])
            for k in ("dice", "nsd", "cpu_s", "wall_s"):
                row[k] = float(row[k]) if row.get(k) not in (None, "") else None
            rows.append(row)
    return rows


def _fmt(v, digits=3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def write_outputs(rows: List[Dict], summary: List[Dict], out_dir: str, report_at: Sequence[int],
                  title: Optional[str] = None) -> List[str]:
    """per_target.csv (every click), summary.csv, per_structure.csv/.md (report points), dice_vs_clicks.png."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    path = os.path.join(out_dir, "per_target.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS, restval="", extrasaction="ignore")
        w.writeheader()
        w.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    written.append(path)
    path = os.path.join(out_dir, "summary.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["mode", "clicks", "mean_dice", "mean_nsd", "cpu_s", "targets"])
        w.writeheader()
        w.writerows([{k: ("" if v is None else v) for k, v in s.items()} for s in summary])
    written.append(path)
    ns = [n for n in report_at if n <= max(int(r["clicks"]) for r in rows)]
    nsd_at = max(ns) if ns else None
    table = per_structure(rows, ns, nsd_at)
    if table:
        path = os.path.join(out_dir, "per_structure.csv")
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0].keys()))
            w.writeheader()
            w.writerows([{k: ("" if v is None else v) for k, v in t.items()} for t in table])
        written.append(path)
        path = os.path.join(out_dir, "per_structure.md")
        with open(path, "w") as f:
            f.write(per_structure_markdown(table, ns, nsd_at) + "\n")
        written.append(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the PNG plot (CSV files are written)")
        return written
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in _modes(rows):
        cn = sorted({int(r["clicks"]) for r in rows if r["mode"] == mode})
        means = [np.mean([float(r["dice"]) for r in rows if r["mode"] == mode and int(r["clicks"]) == n]) for n in cn]
        model_mode = mode in ("all", "newest") or ":" in mode
        ax.plot(cn, means, marker="o", label=f"{mode} clicks" if mode in ("all", "newest") else mode,
                linestyle="-" if model_mode else "--")
    ax.set_xlabel("number of clicks")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1)
    ax.set_xticks([n for n in report_at if n <= max(int(r["clicks"]) for r in rows)])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    path = os.path.join(out_dir, "dice_vs_clicks.png")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    return written


def per_structure_markdown(table: List[Dict], report_at: Sequence[int], nsd_at: Optional[int]) -> str:
    """Long table: one line per structure and method, then the mean of each method."""
    head = ["case", "structure", "method"] + [f"Dice@{n}" for n in report_at]
    if nsd_at is not None:
        head.append(f"NSD@{nsd_at} (2 mm)")
    head.append("CPU s/click")
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]

    def cells(t):
        c = [_fmt(t[f"dice@{n}"]) for n in report_at]
        if nsd_at is not None:
            c.append(_fmt(t.get(f"nsd@{nsd_at}")))
        c.append(_fmt(t["cpu_s_per_click"], 2))
        return c

    for t in table:
        name = t["structure"] or str(t["value"])
        lines.append("| " + " | ".join([t["case"], name, t["mode"]] + cells(t)) + " |")
    for mode in _modes(table):
        sel = [t for t in table if t["mode"] == mode]
        mean = {k: _mean(t[k] for t in sel) for k in sel[0] if k.startswith(("dice@", "nsd@", "cpu_s"))}
        lines.append("| " + " | ".join([f"**mean of {len(sel)}**", "", f"**{mode}**"] + [f"**{c}**" for c in cells(mean)]) + " |")
    return "\n".join(lines)


def markdown(summary: List[Dict], rows: Optional[List[Dict]] = None) -> str:
    """Mean Dice per mode at the report points, then NSD at the last point and CPU s per click
    (click 1 / the later clicks: from `rows` when given, else from the later report points)."""
    modes = _modes(summary)
    ns = sorted({s["clicks"] for s in summary})
    has_nsd = any(s.get("mean_nsd") is not None for s in summary)
    head = ["mode"] + [f"{n} click{'s' if n > 1 else ''}" for n in ns]
    if has_nsd:
        head.append(f"NSD@{ns[-1]}")
    head.append("CPU s (click 1 / later)")
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for m in modes:
        vals = {s["clicks"]: s for s in summary if s["mode"] == m}
        cells = [f"{vals[n]['mean_dice']:.4f}" if n in vals else "-" for n in ns]
        if has_nsd:
            cells.append(_fmt(vals.get(ns[-1], {}).get("mean_nsd"), 4))
        if rows is not None:
            later = [r.get("cpu_s") for r in rows if r["mode"] == m and int(r["clicks"]) > 1]
        else:
            later = [s.get("cpu_s") for s in summary if s["mode"] == m and s["clicks"] > 1]
        cells.append(f"{_fmt(vals.get(ns[0], {}).get('cpu_s'), 2)} / {_fmt(_mean(later), 2)}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
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
    p.add_argument("--method", nargs="*", default=["model"], choices=["model", *CLASSICAL_METHODS],
                   help="segmenters to run on the same cases and clicks: the model (SegmentationEngine) and/or the "
                        "classical comparison rows (lib/interaction/classical.py); default: model; none (an empty "
                        "--method) with --reuse-rows only merges earlier runs")
    p.add_argument("--classical-params", default=None,
                   help='JSON overriding the tuned classical parameters, e.g. \'{"random_walker": {"beta": 500}}\'')
    p.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    p.add_argument("--no-nsd", action="store_true", help="skip the NSD (surface Dice) at the report points")
    p.add_argument("--click-mode", nargs="+", default=["all"], choices=["all", "newest"], help="one or both click modes")
    p.add_argument("--checkpoint", help="model checkpoint (.pth)")
    p.add_argument("--random-weights", action="store_true", help="random weights (geometry/speed checks only)")
    p.add_argument("--model-config", help="JSON model config for --random-weights (default: released size)")
    p.add_argument("--model-name", default=None,
                   help="label the model rows '<name>:<click mode>' (e.g. default-v1) instead of the click mode alone")
    p.add_argument("--reuse-rows", nargs="+", default=None,
                   help="per_target.csv files from earlier runs: their rows of modes not run now are added to the "
                        "outputs, in the order given (re-run only the model rows and keep the stored classical rows)")
    p.add_argument("--title", default=None, help="title of the PNG plot")
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
    nsd_at = () if args.no_nsd else tuple(n for n in report_at if n <= num_clicks)
    names = load_names(pairs)
    rows: List[Dict] = []
    if "model" in args.method:
        engine = build_engine(args)
        print(f"{len(pairs)} case(s), {num_clicks} clicks, modes {args.click_mode}, device {args.device}, "
              f"model {engine.model_version}, torch threads {_torch_threads()}")
        rows += evaluate(engine, pairs, values, num_clicks, args.click_mode, nsd_at=nsd_at,
                         nsd_tolerance_mm=args.nsd_tolerance, names=names, model_name=args.model_name)
    classical = [m for m in args.method if m != "model"]
    if classical:
        from .classical import TUNED, ClassicalSegmenter

        overrides = json.loads(args.classical_params) if args.classical_params else {}
        for method in classical:
            params = replace(TUNED[method], **overrides.get(method, {}))
            print(f"{len(pairs)} case(s), {num_clicks} clicks, {method} {params}")
            rows += evaluate_method(ClassicalSegmenter(method, params, args.modality), method, pairs, values,
                                    num_clicks, nsd_at, args.nsd_tolerance, names)
    if args.medsam:
        from lib.medsam.evaluate import build_medsam_engine, evaluate_medsam

        rows += evaluate_medsam(build_medsam_engine(args.device), pairs, values, num_clicks, modality=args.modality)
    run_modes = {r["mode"] for r in rows}  # modes run now win over stored rows of the same mode
    seen = {(r["mode"], r["case"], int(r["value"]), int(r["clicks"])) for r in rows}
    for path in args.reuse_rows or []:
        kept = []
        for r in read_rows(path):
            key = (r["mode"], r["case"], r["value"], r["clicks"])
            if r["mode"] not in run_modes and key not in seen:  # the first file wins on duplicates
                seen.add(key)
                kept.append(r)
        print(f"reused {len(kept)} rows of modes {_modes(kept)} from {path}")
        rows += kept
    if not rows:
        print("no targets found")
        return 1
    summary = summarise(rows, [n for n in report_at if n <= num_clicks])
    for path in write_outputs(rows, summary, args.out, report_at, args.title):
        print("wrote", path)
    print(markdown(summary, rows))
    return 0


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
