"""Tuning of the classical comparison methods (lib.evaluation.classical) on development cases, never
the test table: a coordinate search over GRID, one parameter at a time, keeping the best value
(highest mean of Dice@1, @3 and @5 over the development targets, with the evaluation's simulated
annotator), two passes. The chosen values are lib.evaluation.classical.TUNED
(docs/eval/classical_tuning.md).

    cd apps/sammed3d && python -m lib.evaluation.tune --data DEV_DIR [--methods random_walker geodesic] \
        [--clicks 5] [--passes 2] [--start JSON] [--only beta ...] [--grid JSON] --out tried.csv
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import asdict, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .cases import find_pairs
from lib.session.classical_region import METHODS, ClassicalParams

from .classical import ClassicalSegmenter
from .loop import evaluate_method

GRID = {
    "margin_mm": [10.0, 20.0, 40.0, 80.0],
    "border": ["always", "until_exclude"],
    "seed_radius_mm": [0.0, 2.0],
    "sigma_mm": [0.0, 1.0],
    "beta": [130.0, 1000.0, 4000.0, 16000.0],
    "gamma": [3.0, 10.0, 30.0, 100.0, 300.0],
}
# Coordinate search: one parameter at a time, in this order, keeping the best value (highest mean
# of Dice@1, @3 and @5 over the development targets), two passes.
ORDER = {"random_walker": ["beta", "margin_mm", "border", "seed_radius_mm", "sigma_mm"],
         "geodesic": ["gamma", "margin_mm", "border", "seed_radius_mm", "sigma_mm"]}


def _score(rows: List[Dict]) -> float:
    return float(np.mean([r["dice"] for r in rows if r["clicks"] in (1, 3, 5)]))


def tune(method: str, pairs, values, num_clicks: int = 5, passes: int = 2, log=print,
         start: Optional[ClassicalParams] = None, only: Optional[Sequence[str]] = None) -> Tuple[ClassicalParams, List[Dict]]:
    """Coordinate search over GRID on development pairs -> (best params, one record per tried setting).

    `start`: the setting to start from (default ClassicalParams()); `only`: the parameters to search.
    """
    start = start or ClassicalParams()
    tried: Dict[Tuple, float] = {}
    records: List[Dict] = []

    def run(p: ClassicalParams) -> float:
        key = tuple(sorted(asdict(p).items()))
        if key not in tried:
            t = time.perf_counter()
            rows = evaluate_method(ClassicalSegmenter(method, p), method, pairs, values, num_clicks,
                                   nsd_at=(), log=lambda *_: None)
            tried[key] = _score(rows)
            rec = dict(method=method, **asdict(p), score=tried[key], seconds=time.perf_counter() - t,
                       **{f"dice@{n}": float(np.mean([r["dice"] for r in rows if r["clicks"] == n])) for n in (1, 3, 5)})
            records.append(rec)
            log(json.dumps(rec))
        return tried[key]

    best, best_score = start, run(start)
    for _ in range(passes):
        changed = False
        for name in [n for n in ORDER[method] if not only or n in only]:
            for v in GRID[name]:
                cand = replace(best, **{name: v})
                s = run(cand)
                if s > best_score + 1e-9:
                    best, best_score, changed = cand, s, True
        if not changed:
            break
    return best, records


def main(argv=None) -> int:
    t = argparse.ArgumentParser(prog="python -m lib.evaluation.tune",
                                description="Tune the classical comparison methods on development cases (coordinate "
                                            "search over GRID; never the test table).")
    t.add_argument("--data", required=True, help="development folder with images/ and labels/")
    t.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    t.add_argument("--clicks", type=int, default=5)
    t.add_argument("--passes", type=int, default=2)
    t.add_argument("--out", required=True, help="CSV of every tried setting")
    t.add_argument("--start", default=None, help='JSON {method: {param: value}} to start the search from')
    t.add_argument("--only", nargs="+", default=None, help="search only these parameters")
    t.add_argument("--grid", default=None, help='JSON {param: [values]} replacing those GRID entries')
    args = t.parse_args(argv)
    pairs = find_pairs(args.data)
    if args.grid:
        GRID.update(json.loads(args.grid))
    all_records, chosen = [], {}
    for method in args.methods:
        start = ClassicalParams(**json.loads(args.start).get(method, {})) if args.start else None
        best, records = tune(method, pairs, None, args.clicks, args.passes, start=start, only=args.only)
        chosen[method] = asdict(best)
        all_records += records
        print(f"{method}: best {json.dumps(asdict(best))} score {max(r['score'] for r in records):.4f}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fields = list(all_records[0].keys())
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(all_records)
    print(json.dumps(chosen, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
