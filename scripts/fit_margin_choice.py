#!/usr/bin/env python
"""Fit the first click's learned margin choice (apps/sammed3d/lib/session/margin_choice.py) and measure it.

    # 1. candidate tables: every target's first click (the evaluation's click rule), the classical geodesic region
    #    for each margin, its features and its Dice
    .venv/bin/python scripts/fit_margin_choice.py table --fit-set --out work_data/margin/fit.npz
    .venv/bin/python scripts/fit_margin_choice.py table --data work_data/dev_table --out work_data/margin/dev_table.npz
    # 2. fit on the fitting set (cross-validated by source), report every table, write the scorer
    .venv/bin/python scripts/fit_margin_choice.py fit --train work_data/margin/fit.npz \
        --eval work_data/margin/dev_*.npz --margins 20,30,40,60,80 --out work_data/margin/scorer.json
    # 3. the first click's flood levels as candidates too (lib.session.flood_candidates): flood tables of the same
    #    targets under the same names, then a scorer over both
    .venv/bin/python scripts/fit_margin_choice.py table --flood --fit-set --out work_data/flood/fit.npz
    .venv/bin/python scripts/fit_margin_choice.py table --flood --data work_data/dev_table --out work_data/flood/dev_table.npz
    .venv/bin/python scripts/fit_margin_choice.py fit --train work_data/margin/fit.npz work_data/margin/fit_dk.npz \
        --eval 'work_data/margin/dev_*.npz' --margins 30,40,60,80 --flood-levels 8,16,32,64,128 --flood-dir work_data/flood

The fitting set is training-side only (the licences of docs/default_model.md "Sources and licences"): the
training .npz volumes' labels (but not the MNI 2009a grey / white matter, which the development table uses),
supervoxel regions and synthetic lesions on them, and phantoms (lib.synthetic.phantoms, seeds 5000+; the
development table's are 9000+) and synthetic chests (lib.synthetic.chest, seeds 100+; development 0-2). The
development cases choose between scorers; the test table is not read here.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "apps", "sammed3d"))

MARGINS = (15.0, 20.0, 30.0, 40.0, 60.0, 80.0, 100.0)


def candidates_for(image, gt, ct, spacing, margins=MARGINS):
    """(features (n, F), Dice (n,)) of the first click's region per margin (the served candidates:
    lib.session.plain_region.margin_candidates)."""
    from lib.evaluation.clicks import first_click
    from lib.evaluation.metrics import dice
    from lib.session.classical_region import TUNED
    from lib.session.plain_region import margin_candidates

    (point, _) = first_click(gt, spacing=spacing)
    cands, features = margin_candidates(image, ct, spacing, [list(point)], TUNED["geodesic"], margins)
    dices = []
    for _, box, region, _ in cands:
        full = np.zeros(gt.shape, dtype=bool)
        full[box] = region
        dices.append(dice(full, gt))
    return features, np.array(dices)


def flood_candidates_for(image, gt, ct, spacing, levels=None):
    """(features (n, len(FLOOD_FEATURES)), Dice (n,)) of the first click's flood per level
    (lib.session.flood_candidates), the Dice on the stored grid."""
    from lib.evaluation.clicks import first_click
    from lib.evaluation.metrics import dice
    from lib.session.flood_candidates import LEVELS, FloodField

    levels = levels or LEVELS
    (point, _) = first_click(gt, spacing=spacing)
    field = FloodField.solve(image, ct, spacing, point)
    dices = []
    for level in levels:
        box, region = field.region(level)
        full = np.zeros(gt.shape, dtype=bool)
        full[box] = region
        dices.append(dice(full, gt))
    return field.features(levels), np.array(dices)


# ------------------------------------------------------------------ targets


def fit_targets(npz_dir: str, seed: int = 0):
    """Yield (name, group, image (i, j, k), gt bool, ct, spacing) of the training-side fitting set."""
    import torch

    from lib.dataengine.lesions import insert_lesion
    from lib.dataengine.sampler import _RealVolume
    from lib.synthetic.chest import CHEST_LABELS, chest_case
    from lib.synthetic.phantoms import generate_phantom_torch

    rs = np.random.default_rng(seed)
    for s in range(24):  # phantoms as the development table makes them, other seeds
        pseed = 5000 + s
        torch.manual_seed(pseed)
        img, lab, modality = generate_phantom_torch(pseed, (80, 80, 80), 1.5, "cpu", modality="ct" if s % 2 == 0 else "mr")
        img, lab, spacing = img.numpy(), lab.numpy(), [1.5, 1.5, 1.5]
        if s % 4 >= 2:  # thick slices (4.5 mm) along one axis
            sl = [slice(None)] * 3
            sl[s % 3] = slice(1, None, 3)
            img, lab = img[tuple(sl)], lab[tuple(sl)]
            spacing[s % 3] = 4.5
        vals, counts = np.unique(lab[lab > 0], return_counts=True)
        for v in [int(v) for v, c in sorted(zip(vals, counts), key=lambda t: -t[1])[:3] if c >= 50]:
            yield f"phantom{pseed}_{v}", "phantom", img, lab == v, modality == "ct", spacing
    for s in range(100, 104):
        img, lab, spacing = chest_case(s)
        for name, v in CHEST_LABELS.items():
            if (lab == v).sum() >= 50:
                yield f"chest{s}_{name}", "chest", img, lab == v, True, list(spacing)
    for path in sorted(glob.glob(os.path.join(npz_dir, "*.npz"))):
        vol = _RealVolume(path, npz_dir, 6000)
        spacing = [1.5, 1.5, 1.5]
        for v in vol.train_values:
            if "2009a" not in vol.name:  # its grey / white matter are development targets
                yield f"{vol.name}_label{v}", "label", vol.image, vol.label == v, vol.is_ct, spacing
        for k in range(12):
            ids = vol.graph.random_region(rs, int(rs.choice([1, 3, 8, 20, 60])), tolerance=float(rs.uniform(0.3, 1.2)))
            mask = np.isin(vol.graph.labels, ids)
            if mask.sum() >= 50:
                yield f"{vol.name}_sv{k}", "supervoxel", vol.image, mask, vol.is_ct, spacing
        for k in range(8):
            image, mask = insert_lesion(vol.image, vol.foreground, rs, vol.is_ct)
            if mask.sum() >= 20:
                yield f"{vol.name}_lesion{k}", "lesion", image, mask, vol.is_ct, spacing


def data_targets(data: str):
    """Yield the evaluation cases of a data folder (lib.evaluation.cases), as fit_targets does."""
    from lib.evaluation.cases import find_pairs, iter_targets
    from lib.evaluation.classical import ClassicalSegmenter

    seg = ClassicalSegmenter("geodesic")  # reads an image as the evaluation's classical rows do
    for case, image_path, value, gt in iter_targets(find_pairs(data), None, log=lambda *_: None):
        arr, ct, spacing = seg.load(image_path)
        yield f"{case}_{value}", os.path.basename(os.path.normpath(data)), arr, gt, ct, list(spacing)


def cmd_table(args):
    targets = fit_targets(args.npz_dir) if args.fit_set else data_targets(args.data)
    from lib.session.flood_candidates import LEVELS

    values, unit = (LEVELS, "cells") if args.flood else (MARGINS, "mm")
    names, groups, feats, dices = [], [], [], []
    t0 = time.time()
    for i, (name, group, image, gt, ct, spacing) in enumerate(targets):
        if args.shard and i % args.shard[1] != args.shard[0]:
            continue
        f, d = (flood_candidates_for if args.flood else candidates_for)(
            np.asarray(image, dtype=np.float32), gt, ct, spacing)
        names.append(name), groups.append(group), feats.append(f), dices.append(d)
        print(f"{time.time() - t0:7.1f}s {name:40s} best {values[int(np.argmax(d))]:5.0f} {unit} {d.max():.3f}",
              flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez(args.out, names=np.array(names), groups=np.array(groups), features=np.array(feats),
             dices=np.array(dices), **{"levels" if args.flood else "margins": np.array(values)})


# ------------------------------------------------------------------ fit


def load_tables(paths):
    parts = [np.load(p) for p in paths]
    return (np.concatenate([p["names"] for p in parts]), np.concatenate([p["groups"] for p in parts]),
            np.concatenate([p["features"] for p in parts]), np.concatenate([p["dices"] for p in parts]))


def fit_scorer(margins, feats: np.ndarray, dices: np.ndarray, l2: float = 0.01, steps: int = 400, levels=()):
    """Conditional logit: weights maximising the mean expected Dice of softmax(score) over targets, L2 on the
    weights; features standardised over all candidates; `levels`: the scorer's flood levels (the candidates after
    the margins). -> MarginScorer."""
    import torch

    from lib.session.margin_choice import MarginScorer

    flat = feats.reshape(-1, feats.shape[-1])
    mean, std = flat.mean(0), flat.std(0) + 1e-6
    x = torch.tensor((feats - mean) / std, dtype=torch.float64)
    y = torch.tensor(dices, dtype=torch.float64)
    w = torch.zeros(feats.shape[-1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        p = torch.softmax(x @ w * 4.0, dim=1)  # a fixed temperature: the weights' scale stays comparable
        loss = -(p * y).sum(1).mean() + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return MarginScorer(margins, mean, std, w.detach().numpy(), levels)


def report(name, feats, dices, scorer):
    """One line: the mean Dice of the learned choice, the contrast rule, the fixed 40 mm and the best margin
    (candidates in the scorer's margins)."""
    from lib.session.margin_choice import FEATURES

    chosen = np.array([scorer.choose(f) for f in feats])
    fixed = dices[:, list(scorer.margins).index(40.0)] if 40.0 in scorer.margins else np.full(len(dices), np.nan)
    contrast = dices[np.arange(len(dices)), np.argmax(feats[:, :, FEATURES.index("contrast")], axis=1)]
    m = len(scorer.margins)
    print(f"  {name:14s} n={len(dices):3d}  learned {dices[np.arange(len(dices)), chosen].mean():.3f}  "
          f"contrast {contrast.mean():.3f}  40 mm {fixed.mean():.3f}  oracle {dices.max(1).mean():.3f} "
          f"(margins {dices[:, :m].max(1).mean():.3f})  chosen {np.bincount(chosen, minlength=dices.shape[1]).tolist()}")


def cmd_fit(args):
    margins = tuple(float(m) for m in args.margins.split(","))
    idx = [MARGINS.index(m) for m in margins]

    from lib.session.flood_candidates import LEVELS
    from lib.session.margin_choice import with_flood_columns

    asked = [float(x) for x in args.flood_levels.split(",")] if args.flood_levels else []
    lidx = [i for i, v in enumerate(LEVELS) if any(abs(v - x) < 0.01 * v for x in asked)]
    levels = tuple(LEVELS[i] for i in lidx)

    def select(paths):
        names, groups, feats, dices = load_tables(paths)
        # features that compare candidates are recomputed on the selected margins
        feats, dices = restrict(feats, idx), dices[:, idx]
        if levels:  # the same targets' flood candidates, from the table of the same name in --flood-dir
            fnames, _, ffeats, fdices = load_tables([os.path.join(args.flood_dir, os.path.basename(p)) for p in paths])
            if list(fnames) != list(names):
                raise SystemExit(f"the flood tables of {paths} hold other targets")
            feats = np.concatenate([with_flood_columns(feats), restrict(ffeats, lidx)], axis=1)
            dices = np.concatenate([dices, fdices[:, lidx]], axis=1)
        return names, groups, feats, dices

    names, groups, feats, dices = select(args.train)
    print(f"fitting set: {len(names)} targets, groups {dict(zip(*np.unique(groups, return_counts=True)))}")
    print("leave one group out (fitted on the others):")
    for g in np.unique(groups):
        scorer = fit_scorer(margins, feats[groups != g], dices[groups != g], args.l2, levels=levels)
        report(str(g), feats[groups == g], dices[groups == g], scorer)
    scorer = fit_scorer(margins, feats, dices, args.l2, levels=levels)
    print("fitted on all of it:")
    report("fit (seen)", feats, dices, scorer)
    print("  weights: " + ", ".join(f"{f} {w:+.2f}" for f, w in zip(scorer.features, scorer.weights)))
    evals = [p for pattern in args.eval for p in sorted(glob.glob(pattern))]
    all_f, all_d = [], []
    for p in evals:
        _, _, f, d = select([p])
        report(os.path.basename(p)[:-4], f, d, scorer)
        all_f.append(f), all_d.append(d)
    if all_f:
        report("all eval", np.concatenate(all_f), np.concatenate(all_d), scorer)
    if args.served:
        predicted = [served_prediction(p, select([p])[2:], scorer, args.served, args.served_scorer) for p in evals]
        print(f"  predicted served Dice@1 (the default's answer where its plain region did not answer): all "
              f"{np.concatenate(predicted).mean():.3f} ({np.concatenate(predicted).size}) | " + "  ".join(
                  f"{os.path.basename(p)[:-4]} {v.mean():.3f}" for p, v in zip(evals, predicted)))
    if args.out:
        cfg = scorer.to_config()
        with open(args.out, "w") as fh:
            json.dump(cfg, fh, indent=1)
        print("wrote", args.out)


def served_prediction(table: str, candidates, scorer, served_dir: str, served_scorer: str) -> np.ndarray:
    """Per target of a development table, the served Dice after one click if `scorer` replaced the default's: where
    the default's plain region answered (its served Dice, from `served_dir`/<set>/per_target.csv of the evaluation,
    equals its own scorer's chosen margin's Dice) the new choice's Dice, elsewhere the default's answer (the model's
    flood, grown box or fine region), which the plain region's scorer does not change. `candidates`: (features,
    Dice) of the table as `scorer` sees them. Reproduces the served evaluation's Dice@1 exactly (docs/default_model.md,
    "Eighteenth run")."""
    import csv

    from lib.session.margin_choice import MarginScorer

    with open(served_scorer) as fh:
        default = MarginScorer.from_config(json.load(fh))
    name = os.path.basename(table)[:-4]
    with open(os.path.join(served_dir, name, "per_target.csv")) as fh:
        served = {f"{r['case']}_{r['value']}": float(r["dice"]) for r in csv.DictReader(fh) if r["clicks"] == "1"}
    names, _, feats, dices = load_tables([table])
    idx = [MARGINS.index(m) for m in default.margins]
    feats, dices = restrict(feats, idx), dices[:, idx]
    new_feats, new_dices = candidates
    out = []
    for i, target in enumerate(names):
        plain = abs(served[target] - dices[i, default.choose(feats[i])]) < 2e-3
        out.append(new_dices[i, scorer.choose(new_feats[i])] if plain else served[target])
    return np.array(out)


def restrict(feats: np.ndarray, idx):
    """Features of a subset of the margins (or flood levels): those comparing a candidate with the others
    (contrast_rel and its products; grow_next / overlap_next against the next margin KEPT) are recomputed from
    the stored ones."""
    from lib.session.margin_choice import FLOOD_FEATURES

    f = feats[:, idx].copy()
    col = {n: i for i, n in enumerate(FLOOD_FEATURES)}
    best = f[:, :, col["contrast"]].max(1, keepdims=True)
    f[:, :, col["contrast_rel"]] = f[:, :, col["contrast"]] / np.maximum(best, 1e-6)
    f[:, :, col["ct_contrast_rel"]] = f[:, :, col["ct"]] * f[:, :, col["contrast_rel"]]
    if f.shape[-1] == len(FLOOD_FEATURES):
        f[:, :, col["flood_contrast_rel"]] = f[:, :, col["flood"]] * f[:, :, col["contrast_rel"]]
    if list(idx) != list(range(feats.shape[1])):
        # the next kept margin may not be the next stored one: growth compounds along the stored chain;
        # overlap with a margin further on is approximated by the product of the steps' overlaps
        grow, over = feats[:, :, col["grow_next"]], feats[:, :, col["overlap_next"]]
        for j, i in enumerate(idx):
            nxt = idx[j + 1] if j + 1 < len(idx) else None
            f[:, j, col["grow_next"]] = grow[:, i:nxt].sum(1) if nxt is not None else 0.0
            f[:, j, col["overlap_next"]] = np.prod(over[:, i:nxt], axis=1) if nxt is not None else 1.0
    return f


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table")
    t.add_argument("--fit-set", action="store_true", help="the training-side fitting set")
    t.add_argument("--data", help="an evaluation data folder (images/ + labels/)")
    t.add_argument("--flood", action="store_true", help="the first click's flood levels instead of the margins")
    t.add_argument("--npz-dir", default="work_data/train_npz")
    t.add_argument("--shard", type=lambda s: tuple(int(v) for v in s.split("/")), help="i/n: every n-th target from i")
    t.add_argument("--out", required=True)
    f = sub.add_parser("fit")
    f.add_argument("--train", nargs="+", required=True)
    f.add_argument("--eval", nargs="*", default=[])
    f.add_argument("--margins", default="20,30,40,60,80")
    f.add_argument("--l2", type=float, default=0.01)
    f.add_argument("--flood-levels", help="cells (of lib.session.flood_candidates.LEVELS, e.g. 8,16,32,64,128): "
                   "the first click's flood at these levels are candidates too")
    f.add_argument("--served", help="the default's development evaluations (<dir>/<set>/per_target.csv, "
                   "python -m lib.evaluation --out <dir>/<set>): report the scorer's predicted served Dice@1")
    f.add_argument("--served-scorer", default="docs/eval/click_unet/margin_scorer_30_80.json",
                   help="the default's own scorer (with --served)")
    f.add_argument("--flood-dir", default="work_data/flood", help="the flood tables (table --flood), same names")
    f.add_argument("--out")
    args = ap.parse_args()
    if args.cmd == "table" and not (args.fit_set or args.data):
        ap.error("table needs --fit-set or --data")
    (cmd_table if args.cmd == "table" else cmd_fit)(args)


if __name__ == "__main__":
    main()
