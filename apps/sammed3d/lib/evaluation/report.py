"""Reports of the evaluation: the summary per mode and report point, the per-structure table, the
CSV files (per_target.csv: every click; summary.csv; per_structure.csv/.md) and the markdown tables
printed by the command; the PNG plot is lib.evaluation.plots.

Rows are {mode, method, case, value, structure, clicks, dice, nsd, cpu_s, wall_s} (ROW_FIELDS): the
model's, the classical methods' (lib.evaluation.loop) and MedSAM's (lib.evaluation.medsam) alike.
"""
from __future__ import annotations

import csv
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from .plots import modes as _modes, plot_dice_vs_clicks

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
    png = plot_dice_vs_clicks(rows, out_dir, report_at, title)
    if png:
        written.append(png)
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
