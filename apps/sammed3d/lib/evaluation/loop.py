"""The click loop: the simulated annotator against any segmenter, and the rows of the evaluation.

For every target the first click goes to the centre of the target and each next one to the centre
of the largest error region (include for missed voxels, exclude for false positives;
lib.evaluation.clicks.next_click, in mm on the image's stored grid). The model is driven through the
SAME SegmentationEngine the server uses (`evaluate`, `evaluate_target`), so loading, orientation,
resampling, crops and paste-back are all exercised; the classical methods through
lib.evaluation.classical.ClassicalSegmenter (`evaluate_method`). Per click: Dice, NSD at the report
points (lib.evaluation.metrics), process CPU seconds and wall seconds of the segmentation call.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from .cases import iter_targets
from .clicks import next_click
from .metrics import dice, surface_dice


def simulate_clicks(segment, gt: np.ndarray, spacing: Sequence[float], num_clicks: int,
                    nsd_at: Sequence[int] = (), nsd_tolerance_mm: float = 2.0) -> List[Dict]:
    """Run the simulated annotator against `segment(fg, bg) -> mask` for one target.

    One record per click: {clicks, dice, nsd (None unless the click count is in nsd_at), cpu_s, wall_s}, and
    where a click was placed also {point, include, voxels (the mask's), overlap (its voxels in the target)},
    which --trace prints and the CSVs leave out. cpu_s / wall_s time the `segment` call only (process CPU
    time: all threads of this process), not the click simulation or the metrics. Clicks: the first at the centre of the target, then the
    centre of the largest error region, in mm on the stored grid (next_click).
    """
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
            rec = dict(clicks=n, dice=dice(pred, gt), cpu_s=time.process_time() - c0, wall_s=time.perf_counter() - w0,
                       point=[int(x) for x in point], include=bool(include), voxels=int(np.count_nonzero(pred)),
                       overlap=int(np.count_nonzero(pred & gt)))
            nsd_cache = None
        rec["nsd"] = None
        if n in nsd_at:
            if nsd_cache is None:
                nsd_cache = surface_dice(pred, gt, spacing, nsd_tolerance_mm)
            rec["nsd"] = nsd_cache
        out.append(rec)
    return out


def _model_segment(engine, case: str, image_path: str, label: str, prior_flood: Optional[str] = None):
    return lambda fg, bg: engine.segment(case, image_path, label, fg, bg, prior_flood=prior_flood).mask


def flood_choice(gt: np.ndarray, spacing: Sequence[float], min_ml: Optional[float]) -> Optional[str]:
    """The simulated annotator's per-segment prior_flood: "on" for a target of at least `min_ml` ml (an
    annotator drawing a lung or a liver knows it is large), else None (the server's setting)."""
    if min_ml is None:
        return None
    return "on" if float(np.count_nonzero(gt)) * float(np.prod(spacing)) / 1000.0 >= min_ml else None


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


def _rows(mode: str, method: str, case: str, value: int, structure: str, recs: List[Dict]) -> List[Dict]:
    return [dict(mode=mode, method=method, case=case, value=value, structure=structure, **r) for r in recs]


def _log_line(log, mode, case, value, recs, seconds, trace_target: Optional[np.ndarray] = None):
    log(f"  [{mode}] {case} label {value}: " + " ".join(f"{r['dice']:.3f}" for r in recs)
        + f"  ({seconds:.1f}s, cpu {np.mean([r['cpu_s'] for r in recs]):.2f}s/click)")
    if trace_target is not None:  # --trace: where each click went and what the mask became (leaks, collapses)
        size = int(np.count_nonzero(trace_target))
        for r in recs:
            if "point" in r:
                log(f"    click {r['clicks']}: {'include' if r['include'] else 'exclude'} at {tuple(r['point'])}: "
                    f"mask {r['voxels']} voxels, {r['overlap']} of the target's {size}, Dice {r['dice']:.3f}")


def evaluate_method(segmenter, method: str, pairs, values: Optional[Sequence[int]], num_clicks: int,
                    nsd_at: Sequence[int] = (), nsd_tolerance_mm: float = 2.0, names=None, log=print,
                    trace: bool = False) -> List[Dict]:
    """Rows for a classical segmenter (lib.evaluation.classical.ClassicalSegmenter), mode = method name.
    trace: log each click's position and the mask's size (as evaluate)."""
    names = names or {}
    rows: List[Dict] = []
    for case, image_path, value, gt in iter_targets(pairs, values, log):
        t = time.perf_counter()
        recs = simulate_clicks(lambda fg, bg: segmenter.segment(image_path, fg, bg), gt, segmenter.spacing(image_path),
                               num_clicks, nsd_at, nsd_tolerance_mm)
        _log_line(log, method, case, value, recs, time.perf_counter() - t, gt if trace else None)
        rows += _rows(method, method, case, value, names.get((case, value), ""), recs)
    return rows


def evaluate(engine, pairs, values: Optional[Sequence[int]], num_clicks: int, modes: Sequence[str], log=print,
             nsd_at: Sequence[int] = (), nsd_tolerance_mm: float = 2.0, names=None, model_name: Optional[str] = None,
             flood_min_ml: Optional[float] = None, trace: bool = False, segment: Optional[str] = None) -> List[Dict]:
    """Model rows {mode, method, case, value, structure, clicks, dice, nsd, cpu_s, wall_s} for every target,
    click mode and click count. mode is the click mode, or "<model_name>:<click mode>" with model_name.
    flood_min_ml: the annotator asks for prior_flood on for targets of at least that many ml (flood_choice).
    trace: also log, per click, where it went and the mask's size and overlap with the target (how a leak or a
    collapse shows itself; the Dice alone does not say which). segment: the segment name every request carries
    (a fine-tuned version answers with its residual only for the segments it learnt); None: eval-<label value>."""
    names = names or {}
    rows = []
    for mode in modes:
        engine.click_mode = mode
        tag = f"{model_name}:{mode}" if model_name else mode
        for case, image_path, value, gt in iter_targets(pairs, values, log):
            t = time.perf_counter()
            label = segment or f"eval-{value}"
            spacing = engine.volume(image_path).image.GetSpacing()
            engine.reset(case, label)
            flood = flood_choice(gt, spacing, flood_min_ml)
            recs = simulate_clicks(_model_segment(engine, case, image_path, label, flood), gt, spacing, num_clicks,
                                   nsd_at, nsd_tolerance_mm)
            engine.reset(case, label)
            _log_line(log, tag, case, value, recs, time.perf_counter() - t, gt if trace else None)
            rows += _rows(tag, "model", case, value, names.get((case, value), ""), recs)
    return rows
