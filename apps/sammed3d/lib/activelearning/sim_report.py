"""The simulation's report: mean curves over seeds, the target check, tables and the PNG.

Target check (issue 6): "combined reaches random selection's final Dice with at most 70 % of the
labelled volumes, averaged over the seeds". Here:

* Each strategy's curve is the mean held-out Dice over the seeds at each number of labelled
  volumes n (every seed has the same n's).
* goal = random's mean Dice at its last point n_final.
* labels_to_reach(combined) = the first n at which combined's mean curve reaches the goal, linearly
  interpolated between the two curve points around the crossing (the first point if it is
  already there; infinity if never).
* fraction = labels_to_reach / n_final; the target is met when fraction <= 0.7.
* The check is "meaningful" only when random's curve rises: random's gain (final - first) must
  exceed the seed sd of random's final point. Otherwise any curve "reaches" it at once.

Per seed (secondary): the same arithmetic with each seed's own curves; the mean of the finite
fractions and how many seeds reached the goal at all are reported too.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Dict, List, Sequence

import numpy as np

from .select import STRATEGIES
from .sim_pool import KINDS

SHORT = {"ct_bright_blob": "common", "mr_dark_blob": "MR dark", "ct_dark_lobulated": "CT dark",
         "mr_thick_irregular": "thick"}


def labels_to_reach(ns: Sequence[float], dice: Sequence[float], goal: float) -> float:
    """Smallest number of labelled volumes (linear interpolation) at which the curve reaches goal."""
    for i, (n, d) in enumerate(zip(ns, dice)):
        if d >= goal:
            if i == 0:
                return float(n)
            n0, d0 = ns[i - 1], dice[i - 1]
            return float(n0 + (goal - d0) / max(d - d0, 1e-12) * (n - n0))
    return float("inf")


def mean_curves(rows: List[Dict], metric: str = "dice") -> Dict[str, tuple]:
    """-> {strategy: (ns, mean over seeds, sd over seeds)}."""
    curves = {}
    for m in STRATEGIES:
        rr = [r for r in rows if r["strategy"] == m]
        if not rr:
            continue
        ns = sorted({int(r["n_labelled"]) for r in rr})
        vals = [[float(r[metric]) for r in rr if int(r["n_labelled"]) == n] for n in ns]
        curves[m] = (ns, [float(np.mean(v)) for v in vals], [float(np.std(v)) for v in vals])
    return curves


def target_check(rows: List[Dict], metric: str = "dice", strategy: str = "combined", limit: float = 0.7) -> Dict:
    curves = mean_curves(rows, metric)
    if "random" not in curves:
        return {}
    ns_r, mean_r, sd_r = curves["random"]
    goal, n_final = mean_r[-1], ns_r[-1]
    res: Dict = {"metric": metric, "random_final_dice": goal, "random_final_sd": sd_r[-1], "random_final_n": n_final,
                 "random_first_dice": mean_r[0], "random_gain": goal - mean_r[0]}
    res["meaningful"] = bool(res["random_gain"] > max(sd_r[-1], 0.0) and res["random_gain"] > 0)
    for m, (ns, mean, _) in curves.items():
        need = labels_to_reach(ns, mean, goal)
        res[m] = {"labels_to_reach_random_final": need, "fraction_of_random": need / n_final, "final_dice": mean[-1]}
    for m in curves:
        if m == "random":
            continue
        per_seed = []
        for seed in sorted({int(r["seed"]) for r in rows}):
            def curve(name):
                rr = sorted((r for r in rows if r["strategy"] == name and int(r["seed"]) == seed),
                            key=lambda r: int(r["n_labelled"]))
                return [int(r["n_labelled"]) for r in rr], [float(r[metric]) for r in rr]
            (nr, dr), (nc, dc) = curve("random"), curve(m)
            if nr and nc:
                per_seed.append(labels_to_reach(nc, dc, dr[-1]) / nr[-1])
        finite = [f for f in per_seed if np.isfinite(f)]
        res[m]["per_seed_fractions"] = per_seed
        res[m]["per_seed_reached"] = f"{len(finite)}/{len(per_seed)}"
        res[m]["target_met"] = bool(res[m]["fraction_of_random"] <= limit) if res["meaningful"] else None
        if m == strategy:  # the target's strategy, also at the top level
            res["per_seed_fractions"] = per_seed
            res["per_seed_mean_fraction"] = float(np.mean(finite)) if finite else float("inf")
            res["per_seed_reached"] = res[m]["per_seed_reached"]
            res["target_met"] = res[m]["target_met"]
    return res


def _table(curves, result, fmt="{:.3f} ± {:.3f}") -> List[str]:
    ns0 = next(iter(curves.values()))[0]
    lines = ["| strategy | " + " | ".join(f"n={n}" for n in ns0) + " | n to reach random's final | fraction |",
             "|---" * (len(ns0) + 3) + "|"]
    for m, (ns, mean, sd) in curves.items():
        r = result.get(m, {})
        lines.append(f"| {m} | " + " | ".join(fmt.format(a, s) for a, s in zip(mean, sd)) +
                     f" | {r.get('labels_to_reach_random_final', float('nan')):.1f} | "
                     f"{r.get('fraction_of_random', float('nan')):.2f} |")
    return lines


def summarise(rows: List[Dict], out: str, log=print) -> Dict:
    """Write summary.csv / summary.md / summary.json / dice_vs_labelled.png; -> the target check."""
    metrics = [m for m in ("dice", "dice@3") if m in rows[0]]
    curves = {m: mean_curves(rows, m) for m in metrics}
    with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "strategy", "n_labelled", "dice_mean", "dice_sd"])
        for metric, cs in curves.items():
            for m, (ns, mean, sd) in cs.items():
                for n, a, s in zip(ns, mean, sd):
                    w.writerow([metric, m, n, f"{a:.4f}", f"{s:.4f}"])
    result = {metric: target_check(rows, metric) for metric in metrics}
    lines = []
    for metric in metrics:
        lines += [f"Held-out mean {metric} (mean ± sd over seeds)", ""] + _table(curves[metric], result[metric]) + [""]
    # final-round kinds labelled and per-kind Dice
    last = max(int(r["round"]) for r in rows)
    lines += ["Last round: kinds labelled (mean over seeds) and held-out Dice per kind (mean over seeds)", "",
              "| strategy | " + " | ".join(f"n {SHORT.get(k, k)}" for k in KINDS) + " | " +
              " | ".join(f"Dice {SHORT.get(k, k)}" for k in KINDS) + " |", "|---" * (2 * len(KINDS) + 1) + "|"]
    first = [r for r in rows if int(r["round"]) == 0 and r["strategy"] == "random"]
    if first:
        lines.append("| random, round 0 | " + " | ".join(f"{np.mean([float(r[f'n_{k}']) for r in first]):.1f}" for k in KINDS)
                     + " | " + " | ".join(f"{np.mean([float(r[f'dice_{k}']) for r in first]):.3f}" for k in KINDS) + " |")
    for m in curves[metrics[0]]:
        rr = [r for r in rows if r["strategy"] == m and int(r["round"]) == last]
        lines.append(f"| {m} | " + " | ".join(f"{np.mean([float(r[f'n_{k}']) for r in rr]):.1f}" for k in KINDS) + " | "
                     + " | ".join(f"{np.mean([float(r[f'dice_{k}']) for r in rr]):.3f}" for k in KINDS) + " |")
    res = result[metrics[0]]
    if res and "target_met" in res:
        verdict = {True: "MET", False: "NOT MET", None: "NOT MEANINGFUL (random's curve does not rise beyond its "
                   "seed spread)"}[res["target_met"]]
        c = res["combined"]
        lines += ["", f"Target ({metrics[0]}): random's final {res['random_final_dice']:.4f} ± {res['random_final_sd']:.4f} "
                  f"at n={res['random_final_n']} (gain {res['random_gain']:+.4f} from n={curves[metrics[0]]['random'][0][0]}); "
                  f"combined reaches it at n={c['labels_to_reach_random_final']:.2f} = "
                  f"{100 * c['fraction_of_random']:.0f} % of random's labels -> {verdict} (limit 70 %). "
                  f"Per seed: fractions {[round(f, 2) for f in res['per_seed_fractions']]}, "
                  f"reached in {res['per_seed_reached']} seeds."]
        for m, c in res.items():
            if m.startswith("combined_") and isinstance(c, dict):
                v = {True: "MET", False: "NOT MET", None: "NOT MEANINGFUL"}[c["target_met"]]
                lines += ["", f"{m}: reaches random's final at n={c['labels_to_reach_random_final']:.2f} = "
                          f"{100 * c['fraction_of_random']:.0f} % -> {v}. Per seed: fractions "
                          f"{[round(f, 2) for f in c['per_seed_fractions']]}, reached in {c['per_seed_reached']} seeds."]
    md = "\n".join(lines)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(result, f, indent=2, default=str)
    log(md)
    plot(curves, result, os.path.join(out, "dice_vs_labelled.png"), log)
    return result


def plot(curves, result, path, log=print) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no PNG")
        return
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.2), squeeze=False)
    for ax, (metric, cs) in zip(axes[0], curves.items()):
        for m, (ns, mean, sd) in cs.items():
            ax.errorbar(np.asarray(ns) + 0.08 * (list(cs).index(m) - (len(cs) - 1) / 2), mean, yerr=sd, marker="o", capsize=3, label=m)
        r = result.get(metric) or {}
        if r:
            ax.axhline(r["random_final_dice"], color="grey", ls=":", lw=1)
            ax.axvline(0.7 * r["random_final_n"], color="grey", ls="--", lw=0.8)
        ax.set_xlabel("labelled volumes")
        ax.set_ylabel(f"held-out {metric} ({'1 click' if metric == 'dice' else '3 clicks'})")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Active learning, simulated annotator (mean ± sd over seeds; dashed: 70 % of random's labels)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
