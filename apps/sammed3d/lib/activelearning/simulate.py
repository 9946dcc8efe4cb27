"""Offline active-learning simulation with a simulated annotator (the ground truth).

    cd apps/sammed3d && python -m lib.activelearning.simulate --out OUT [--seeds 0 1 2] [--help]

Loop per strategy (random, uncertainty, diversity, combined = the rank mix, combined_product =
the uncertainty-weighted k-center; see select.py) and seed: start from `--init`
randomly chosen labelled volumes (the same for every strategy of a seed), then repeat: fine-tune
on the labelled volumes, evaluate on the fixed held-out set, score the pool, label the `--k`
volumes the strategy picks. Writes curves.csv (every round), summary.csv / summary.md /
summary.json (mean over seeds, the target check) and dice_vs_labelled.png.

Parts: the pool (sim_pool: four kinds of synthetic volume, imbalanced pool, balanced held-out
set, embeddings cached), the model steps (sim_train: the trainer's click-chain fine-tuning of the
mask decoder on cached embeddings, evaluation with the session's click rule, the server's
uncertainty), the report (sim_report: the target arithmetic, tables, PNG). Diversity uses the
server's pooled features and k-center (diversity / select). docs/activelearning.md describes the
design and the measured run.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time
from typing import Dict, List

import numpy as np
import torch

from ..model import load_checkpoint
from .select import STRATEGIES, select_batch
from .sim_pool import KINDS, build_pool
from .sim_report import summarise
from .sim_train import evaluate, fine_tune_decoder, uncertainty_scores
from .uncertainty import make_perturbations


def initial_labels(pool_ids: List[str], n: int, seed: int) -> List[str]:
    """The seed's random start set (shared by every strategy of that seed)."""
    return [pool_ids[i] for i in np.random.default_rng(seed).choice(len(pool_ids), size=n, replace=False)]


def curve_row(method: str, seed: int, rnd: int, labelled, ev: Dict[int, Dict[str, float]], losses) -> Dict:
    """One row of curves.csv: Dice@1 (overall and per kind), Dice@last click, kinds labelled."""
    k_last = max(ev)
    row = {"strategy": method, "seed": seed, "round": rnd, "n_labelled": len(labelled), "dice": ev[1]["mean"]}
    if k_last > 1:
        row[f"dice@{k_last}"] = ev[k_last]["mean"]
    row.update({f"dice_{k}": ev[1].get(k, float("nan")) for k in KINDS})
    row.update({f"n_{k}": sum(1 for v in labelled if v.kind == k) for k in KINDS})
    row["loss_first"] = float(np.mean(losses[:5])) if losses else float("nan")
    row["loss_last"] = float(np.mean(losses[-5:])) if losses else float("nan")
    return row


def run_strategy(model, base_state, pool, held, method, seed, args, perts, log, memo=None) -> List[Dict]:
    """One curve. `memo` (dict) shares trained rounds between strategies with the same labelled set."""
    memo = {} if memo is None else memo
    rows = []
    rs = np.random.default_rng(1000 + seed)
    by_id = {v.id: v for v in pool}
    ids = [v.id for v in pool]
    labelled = initial_labels(ids, args.init, seed)
    for rnd in range(args.rounds + 1):
        t = time.time()
        lab = [by_id[i] for i in sorted(labelled)]
        key = (tuple(sorted(labelled)), seed * 100 + rnd)
        if key in memo:  # same labelled set and training seed (every strategy's round 0): same result
            state, losses, ev = memo[key]
            model.load_state_dict(state, strict=False)
        else:
            losses = fine_tune_decoder(model, base_state, lab, args.steps, args.batch, args.lr, args.clicks,
                                       parts=args.parts, seed=seed * 100 + rnd)
            ev = evaluate(model, held, n_clicks=args.eval_clicks)
            memo[key] = ({k: v.clone() for k, v in model.state_dict().items() if k.split(".")[0] in args.parts},
                         losses, ev)
        rows.append(curve_row(method, seed, rnd, lab, ev, losses))
        msg = (f"{method} seed {seed} round {rnd}: {len(lab)} labelled, Dice@1 {ev[1]['mean']:.4f} "
               f"Dice@{args.eval_clicks} {ev[args.eval_clicks]['mean']:.4f} "
               f"[{' '.join(f'{k[:6]} {ev[1][k]:.3f}' for k in KINDS)}] loss {rows[-1]['loss_first']:.3f}->"
               f"{rows[-1]['loss_last']:.3f}")
        if rnd == args.rounds:
            log(f"{msg} ({time.time() - t:.1f} s)")
            break
        cands = [i for i in ids if i not in labelled]
        unc = feats = None
        sel, rule = STRATEGIES[method]
        if sel in ("uncertainty", "combined"):
            unc = uncertainty_scores(model, [by_id[i] for i in cands], lab, perts)
        if sel in ("diversity", "combined"):
            feats = {i: by_id[i].feature for i in cands}
        picks = select_batch(sel, cands, args.k, rng=rs, uncertainty=unc, features=feats,
                             centres=[by_id[i].feature for i in labelled], weight=args.weight, combine_rule=rule)
        labelled += picks
        log(f"{msg}; picks {[by_id[p].kind for p in picks]} ({time.time() - t:.1f} s)")
    return rows


def write_curves(rows: List[Dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint", default=os.path.join(os.path.dirname(__file__), "..", "..", "model", "default", "model.pt"))
    ap.add_argument("--cache", default=None, help="embedding cache folder (default OUT/cache)")
    ap.add_argument("--strategies", nargs="+", default=["random", "uncertainty", "diversity", "combined"],
                    choices=list(STRATEGIES), help="combined_product: the combined method with the product rule")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--pool", type=int, default=36)
    ap.add_argument("--common", type=float, default=0.75, help="fraction of the pool that is the common kind")
    ap.add_argument("--heldout-per-kind", type=int, default=4)
    ap.add_argument("--init", type=int, default=2)
    ap.add_argument("--k", type=int, default=3, help="volumes labelled per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=70, help="optimiser steps per round (from the base weights)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--clicks", type=int, default=3, help="click-chain iterations per training step")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--parts", nargs="+", default=["mask_decoder"], choices=["prompt_encoder", "mask_decoder"])
    ap.add_argument("--eval-clicks", type=int, default=3, help="held-out Dice after 1..N clicks (evaluation rule)")
    ap.add_argument("--weight", type=float, default=0.5, help="uncertainty weight of the combined rank mix")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: more threads oversubscribe a busy 2-core CPU)")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the pool / held-out volumes")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the summary from OUT/curves.csv")
    ap.add_argument("--merge", nargs="+", default=None, metavar="CSV",
                    help="with --report-only: first concatenate these curves.csv files (parallel runs) into OUT/curves.csv")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "curves.csv")
    if args.report_only:
        rows = []
        for p in args.merge or [path]:
            with open(p) as f:
                rows += list(csv.DictReader(f))
        if args.merge:
            write_curves(rows, path)
        return summarise(rows, args.out, print)
    logf = open(os.path.join(args.out, "log.txt"), "a")

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    t0 = time.time()
    log(f"simulate: {vars(args)}; load average {os.getloadavg()}")
    model, meta = load_checkpoint(args.checkpoint, map_location="cpu")
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    log(f"model {meta.get('version')} ({args.checkpoint})")
    pool, held = build_pool(model, args.pool, args.common, args.heldout_per_kind, args.data_seed,
                            args.cache or os.path.join(args.out, "cache"), log)
    log("pool kinds: " + json.dumps({k: sum(v.kind == k for v in pool) for k in KINDS}) +
        "; held-out kinds: " + json.dumps({k: sum(v.kind == k for v in held) for k in KINDS}))
    base = evaluate(model, held, n_clicks=args.eval_clicks)
    log(f"base weights: held-out Dice@1 {base[1]['mean']:.4f} " + json.dumps({k: round(base[1][k], 3) for k in KINDS}))
    perts = make_perturbations(n_jitter=3, sigma=3.0, flips=(0, 1, 2))
    rows: List[Dict] = []
    memo: Dict = {}
    for seed in args.seeds:
        for method in args.strategies:
            rows += run_strategy(model, base_state, pool, held, method, seed, args, perts, log, memo)
            write_curves(rows, path)
    log(f"done in {time.time() - t0:.0f} s; load average {os.getloadavg()}")
    return summarise(rows, args.out, log)


if __name__ == "__main__":
    main()
