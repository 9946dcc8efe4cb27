"""Offline active-learning simulation with a simulated annotator (the ground truth).

    cd apps/sammed3d && python -m lib.activelearning.simulate --out OUT [--seeds 0 1 2] [--quick]

Loop per strategy (random, uncertainty, diversity, combined) and seed: start from `--init`
randomly chosen labelled volumes (the same for every strategy of a seed), then repeat: fine-tune
on the labelled volumes, evaluate on the fixed held-out set, score the pool, label the `--k`
volumes the strategy picks. Writes curves.csv (every round), summary.csv / summary.md (mean over
seeds, the target check) and dice_vs_labelled.png.

The pool (docs/activelearning.md): 128^3 synthetic volumes on the model's 1.5 mm grid, each with
one target structure near the centre (a consistent location, as an organ has) plus distractors,
in four KINDS = simulated scanner x contrast x object type. The pool is imbalanced (most volumes
are the common kind); the held-out set has the same number of each kind. So random selection
mostly labels the common kind, and a strategy that finds the rare kinds should generalise better.

CPU budget (this project's 2-core machine): the embedded default model, encoder frozen and run
once per volume (embeddings cached on disk under --cache). Fine-tuning is "decoder head" tuning:
the prompt encoder, the two-way transformer and the up-convolutions are frozen too, so their
output for a volume's click is computed once and cached; each round trains the mask
hypernetwork MLP (which turns the mask token into the per-voxel weights of the mask; single
click at the target's centre, DiceCE on the 32^3 logits), from the base weights every round. Evaluation: Dice after one click at the target's
centre on the full 128^3 mask. Uncertainty uses the same perturbations as the server's scoring
(lib.activelearning.uncertainty) at a click from the location prior learned from the labelled
volumes (lib.activelearning.prompts); diversity the same pooled features and k-center
(lib.activelearning.diversity / select). The trainer's full `fine_tune` is the route on a GPU
(not wired here; see docs/activelearning.md).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..interaction.clicks import first_click
from ..model import load_checkpoint
from ..training.losses import dice_ce_loss, dice_score
from ..training.phantoms import _gaussian_blur, _thick_slices  # reuse the generator's scanner effects
from ..training.shapes import FourierField, VectorField, random_shape
from .diversity import pool_features
from .prompts import LocationPrior
from .select import METHODS, select_batch
from .uncertainty import Perturbation, disagreement, make_perturbations, perturbed_inputs, unflip

S = 128  # crop edge = volume edge (volumes are generated on the model grid)
SPACING = 1.5

# kind -> (modality, object shapes, contrast, noise range, bias amplitude, thick-slice factor)
KINDS = {
    "ct_bright_blob": ("ct", ("ellipsoid", "blob"), "bright", (5.0, 15.0), 0.0, 0),  # the common kind
    "mr_dark_tube": ("mr", ("tube",), "dark", (0.03, 0.06), 0.4, 0),
    "ct_lowcontrast_shell": ("ct", ("shell", "lobulated"), "low", (25.0, 40.0), 0.0, 0),
    "mr_thick_irregular": ("mr", ("irregular",), "bright", (0.02, 0.05), 0.2, 4),
}
COMMON = "ct_bright_blob"


# ----------------------------------------------------------------------------------------- volumes
def make_volume(seed: int, kind: str):
    """-> image (S, S, S) float32 (HU for CT), target (S, S, S) bool. Deterministic per seed."""
    modality, shapes, contrast, noise_rng, bias, thick = KINDS[kind]
    rs = np.random.default_rng(seed)
    ax = (torch.arange(S, dtype=torch.float32) - (S - 1) / 2) * SPACING
    grid = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"))
    P = grid + VectorField(rs, rs.uniform(0.0, 4.0), (60.0, 200.0))(grid)
    noise = rs.uniform(*noise_rng)
    if modality == "ct":
        tissue, air = rs.uniform(20.0, 60.0), -1000.0
        obj = {"bright": tissue + rs.uniform(150, 400), "low": tissue + rs.choice([-1, 1]) * rs.uniform(25, 45),
               "dark": tissue - rs.uniform(80, 150)}[contrast]
    else:
        tissue, air = rs.uniform(300.0, 600.0), 0.0
        obj = tissue * {"bright": rs.uniform(1.6, 2.5), "dark": rs.uniform(0.2, 0.45), "low": rs.uniform(1.15, 1.3)}[contrast]
        noise = noise * tissue
    body = ((P / torch.tensor([80.0, 75.0, 85.0]).view(3, 1, 1, 1) * rs.uniform(0.9, 1.1)).norm(dim=0) < 1.0)
    image = torch.where(body, tissue + 0.3 * noise * FourierField(rs, 8, (10.0, 60.0))(P), torch.full((S,) * 3, air))
    # distractors first (unlabelled structures of other kinds/contrasts), the target last (on top)
    for _ in range(int(rs.integers(2, 4))):
        c = rs.uniform(-45, 45, size=3)
        if np.linalg.norm(c) < 30:
            c = c / max(np.linalg.norm(c), 1e-6) * 35
        sdf, _, _ = random_shape(rs, ("ellipsoid", "blob", "tube")[rs.integers(3)], c, rs.uniform(10, 30))
        mu = tissue + (rs.uniform(-200, 300) if modality == "ct" else tissue * rs.uniform(-0.6, 1.0))
        image = torch.where(sdf(P) < 0, torch.full_like(image, float(mu)), image)
    centre = rs.normal(0.0, 8.0 * SPACING, size=3)
    sdf, _, cavity = random_shape(rs, shapes[rs.integers(len(shapes))], centre, rs.uniform(18.0, 36.0))
    target = sdf(P) < 0
    image = torch.where(target, obj + 0.15 * abs(obj - tissue) * FourierField(rs, 6, (5.0, 40.0))(P), image)
    if cavity is not None:
        image = torch.where(cavity(P) < 0, torch.full_like(image, float(tissue)), image)
    image = _gaussian_blur(image, [rs.uniform(0.3, 1.0)] * 3)
    if bias > 0:
        image = image * torch.exp(bias * FourierField(rs, 4, (150.0, 400.0))(grid))
    gen = torch.Generator().manual_seed(int(rs.integers(2 ** 62)))
    n1 = torch.randn((S,) * 3, generator=gen) * noise
    if modality == "ct":
        image = image + n1
    else:
        image = torch.sqrt((image + n1) ** 2 + (torch.randn((S,) * 3, generator=gen) * noise) ** 2)
    if thick:
        image = _thick_slices(image, int(rs.integers(3)), thick)
    return image.float(), target


def normalise(image: torch.Tensor, ct: bool) -> torch.Tensor:
    from ..session.preprocess import normalise as session_normalise

    return session_normalise(image.numpy(), ct)  # the session's own model-input normalisation


# ----------------------------------------------------------------------------------------- frozen decoder split
def decoder_trunk(model, emb, coords, labels):
    """Frozen part of a first-click decode -> (upscaled features (B, 4s, 4s, 4s, C/8), mask token (B, C))."""
    md = model.mask_decoder
    b = emb.shape[0]
    n = model.image_size // 4
    sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=torch.zeros(b, 1, n, n, n))
    out_tok = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0).unsqueeze(0).expand(b, -1, -1)
    tokens = torch.cat((out_tok, sparse.to(out_tok.dtype)), dim=1)
    src = emb + dense
    pos = torch.repeat_interleave(model.prompt_encoder.get_dense_pe(), b, dim=0)
    _, c, x, y, z = src.shape
    hs, src = md.transformer(src, pos, tokens)
    up = md._upscale(src.reshape(b, x, y, z, c))  # (B, 4s, 4s, 4s, C/8) channels-last
    return up.half(), hs[:, 1, :]  # fp16 in the cache (halves its memory); the head computes in fp32


def decoder_head(model, up, token):
    """Trainable part: the mask hypernetwork MLP -> logits (B, 1, 4s, 4s, 4s)."""
    md = model.mask_decoder
    b, X, Y, Z, c8 = up.shape
    w = md.output_hypernetworks_mlps[0](token.float())  # (B, C/8)
    return (up.float().reshape(b, -1, c8) @ w[:, :, None]).reshape(b, 1, X, Y, Z)


def head_parameters(model):
    return list(model.mask_decoder.output_hypernetworks_mlps[0].parameters())


# ----------------------------------------------------------------------------------------- the pool
class Volume:
    def __init__(self, vid, kind, emb, target, click):
        self.id, self.kind, self.emb, self.target, self.click = vid, kind, emb, target, click
        self.target_low = (F.avg_pool3d(target[None, None].float(), 4) > 0.5).float()[0]  # (1, 32, 32, 32)
        self.feature = pool_features([emb])
        self.centroid = torch.nonzero(target).float().mean(0).numpy() / (S - 1)
        self.trunk = None  # (x16, token) at the target's centre click
        self.pert = {}  # prompt cell -> (x16 (T, ...), token (T, C))


def build_pool(model, n_pool: int, n_common_frac: float, n_heldout_per_kind: int, seed: int, cache: str, log):
    """Imbalanced pool + balanced held-out set, embeddings cached on disk."""
    kinds = list(KINDS)
    n_common = int(round(n_pool * n_common_frac))
    rare = [k for k in kinds if k != COMMON]
    pool_kinds = [COMMON] * n_common + [rare[i % len(rare)] for i in range(n_pool - n_common)]
    held_kinds = [k for k in kinds for _ in range(n_heldout_per_kind)]
    specs = [(f"pool{i:03d}", k, seed * 100_000 + i) for i, k in enumerate(pool_kinds)]
    specs += [(f"test{i:03d}", k, seed * 100_000 + 50_000 + i) for i, k in enumerate(held_kinds)]
    os.makedirs(cache, exist_ok=True)
    vols = {}
    t0 = time.time()
    for n, (vid, kind, s) in enumerate(specs, 1):
        path = os.path.join(cache, f"{vid}_{kind}_{s}.pt")
        if os.path.exists(path):
            d = torch.load(path)
        else:
            image, target = make_volume(s, kind)
            x = normalise(image, KINDS[kind][0] == "ct")
            with torch.inference_mode():
                emb = model.encode(x).float()
            c = first_click(target.numpy())[0]
            d = {"emb": emb.clone(), "target": target.clone(), "click": list(c)}
            torch.save(d, path)
        vols[vid] = Volume(vid, kind, d["emb"], d["target"], d["click"])
        if n % 10 == 0 or n == len(specs):
            log(f"pool: {n}/{len(specs)} volumes ready ({time.time() - t0:.0f} s)")
    with torch.inference_mode():
        for v in vols.values():
            c = torch.tensor([[v.click]], dtype=torch.float32)
            x16, tok = decoder_trunk(model, v.emb, c, torch.ones(1, 1, dtype=torch.long))
            v.trunk = (x16[0], tok[0])
    pool = [v for v in vols.values() if v.id.startswith("pool")]
    held = [v for v in vols.values() if v.id.startswith("test")]
    return pool, held


# ----------------------------------------------------------------------------------------- train / eval / score
def train_head(model, base_state, labelled: List[Volume], steps: int, batch: int, lr: float, seed: int):
    model.load_state_dict(base_state)
    params = head_parameters(model)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rs = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rs.integers(len(labelled), size=min(batch, max(len(labelled), 1) * 4))
        x16 = torch.stack([labelled[i].trunk[0] for i in idx])
        tok = torch.stack([labelled[i].trunk[1] for i in idx])
        tgt = torch.stack([labelled[i].target_low for i in idx])
        loss = dice_ce_loss(decoder_head(model, x16, tok), tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@torch.no_grad()
def evaluate(model, held: List[Volume]) -> Dict[str, float]:
    per_kind: Dict[str, List[float]] = {}
    for i in range(0, len(held), 8):
        vs = held[i:i + 8]
        logits = decoder_head(model, torch.stack([v.trunk[0] for v in vs]), torch.stack([v.trunk[1] for v in vs]))
        pred = F.interpolate(logits, size=(S,) * 3, mode="trilinear", align_corners=False) > 0
        d = dice_score(pred, torch.stack([v.target for v in vs])[:, None])
        for v, x in zip(vs, d.tolist()):
            per_kind.setdefault(v.kind, []).append(x)
    out = {k: float(np.mean(x)) for k, x in per_kind.items()}
    out["mean"] = float(np.mean([x for xs in per_kind.values() for x in xs]))
    return out


@torch.no_grad()
def uncertainty_scores(model, cands: List[Volume], prior: LocationPrior, perts: Sequence[Perturbation]) -> Dict[str, float]:
    frac = prior.fractions(1)[0]
    point = np.clip(np.round(frac * (S - 1) / 4) * 4 + 1.5, 0, S - 1)  # prior cell (cached per cell)
    key = tuple(point.tolist())
    out = {}
    for v in cands:
        if key not in v.pert:
            emb, coords, labels = perturbed_inputs(v.emb, point, perts, S)
            v.pert[key] = decoder_trunk(model, emb, coords, labels)
        x16, tok = v.pert[key]
        logits = decoder_head(model, x16, tok)
        out[v.id] = disagreement(unflip(logits, perts) > 0)
    return out


def run_strategy(model, base_state, pool, held, method, seed, args, perts, log):
    rows = []
    rs = np.random.default_rng(1000 + seed)
    ids = [v.id for v in pool]
    by_id = {v.id: v for v in pool}
    labelled = [ids[i] for i in np.random.default_rng(seed).choice(len(ids), size=args.init, replace=False)]
    for rnd in range(args.rounds + 1):
        t = time.time()
        lab = [by_id[i] for i in labelled]
        train_head(model, base_state, lab, args.steps, args.batch, args.lr, seed * 100 + rnd)
        ev = evaluate(model, held)
        kinds = {k: sum(1 for v in lab if v.kind == k) for k in KINDS}
        rows.append({"strategy": method, "seed": seed, "round": rnd, "n_labelled": len(lab), "dice": ev["mean"],
                     **{f"dice_{k}": ev.get(k, float("nan")) for k in KINDS},
                     **{f"n_{k}": kinds[k] for k in KINDS}})
        if rnd == args.rounds:
            log(f"{method} seed {seed} round {rnd}: {len(lab)} labelled, Dice {ev['mean']:.4f} ({time.time() - t:.1f} s)")
            break
        cands = [i for i in ids if i not in labelled]
        unc = feats = None
        centres = [by_id[i].feature for i in labelled]
        if method in ("uncertainty", "combined"):
            prior = LocationPrior()
            for v in lab:
                prior.add_position(1, v.centroid)
            unc = uncertainty_scores(model, [by_id[i] for i in cands], prior, perts)
        if method in ("diversity", "combined"):
            feats = {i: by_id[i].feature for i in cands}
        picks = select_batch(method, cands, args.k, rng=rs, uncertainty=unc, features=feats, centres=centres,
                             weight=args.weight)
        labelled += picks
        log(f"{method} seed {seed} round {rnd}: {len(lab)} labelled, Dice {ev['mean']:.4f}; picks "
            f"{[by_id[p].kind for p in picks]} ({time.time() - t:.1f} s)")
    return rows


# ----------------------------------------------------------------------------------------- report
def labels_to_reach(ns: Sequence[float], dice: Sequence[float], goal: float) -> float:
    """Smallest number of labelled volumes (linear interpolation) at which the curve reaches goal."""
    for i, (n, d) in enumerate(zip(ns, dice)):
        if d >= goal:
            if i == 0:
                return float(n)
            n0, d0 = ns[i - 1], dice[i - 1]
            return float(n0 + (goal - d0) / max(d - d0, 1e-12) * (n - n0))
    return float("inf")


def summarise(rows: List[Dict], out: str, log) -> Dict:
    methods = [m for m in METHODS if any(r["strategy"] == m for r in rows)]
    curves = {}
    for m in methods:
        rr = [r for r in rows if r["strategy"] == m]
        ns = sorted({r["n_labelled"] for r in rr})
        mean = [float(np.mean([r["dice"] for r in rr if r["n_labelled"] == n])) for n in ns]
        std = [float(np.std([r["dice"] for r in rr if r["n_labelled"] == n])) for n in ns]
        curves[m] = (ns, mean, std)
    with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["strategy", "n_labelled", "dice_mean", "dice_std"])
        for m, (ns, mean, std) in curves.items():
            for n, a, s in zip(ns, mean, std):
                w.writerow([m, n, f"{a:.4f}", f"{s:.4f}"])
    result = {}
    if "random" in curves:
        ns_r, mean_r, _ = curves["random"]
        goal, n_final = mean_r[-1], ns_r[-1]
        result = {"random_final_dice": goal, "random_final_n": n_final}
        for m, (ns, mean, _) in curves.items():
            need = labels_to_reach(ns, mean, goal)
            result[m] = {"labels_to_reach_random_final": need, "fraction_of_random": need / n_final,
                         "final_dice": mean[-1]}
        c = result.get("combined")
        # the check only means something when labelling more volumes helps random at all
        result["random_gain"] = mean_r[-1] - mean_r[0]
        result["meaningful"] = bool(result["random_gain"] > 0)
        if c:
            result["target_met"] = bool(c["fraction_of_random"] <= 0.7) if result["meaningful"] else None
    lines = ["| strategy | " + " | ".join(f"n={n}" for n in curves[methods[0]][0]) + " | labels to reach random's final | fraction |",
             "|---" * (len(curves[methods[0]][0]) + 3) + "|"]
    for m, (ns, mean, std) in curves.items():
        r = result.get(m, {})
        need = r.get("labels_to_reach_random_final", float("nan"))
        lines.append(f"| {m} | " + " | ".join(f"{a:.3f} ± {s:.3f}" for a, s in zip(mean, std)) +
                     f" | {need:.1f} | {r.get('fraction_of_random', float('nan')):.2f} |")
    if result:
        lines.append("")
        verdict = {True: "MET", False: "NOT MET", None: "NOT MEANINGFUL: random's Dice does not rise with more labels "
                   f"({result['random_gain']:+.4f} from first to last point), so any strategy 'reaches' it at once"}
        lines.append(f"Random's final mean Dice {result['random_final_dice']:.4f} at {result['random_final_n']} labelled volumes; "
                     f"target (combined <= 70 %): {verdict[result.get('target_met')]}.")
    md = "\n".join(lines)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(result, f, indent=2)
    log(md)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for m, (ns, mean, std) in curves.items():
            ax.errorbar(ns, mean, yerr=std, marker="o", capsize=3, label=m)
        if result:
            ax.axhline(result["random_final_dice"], color="grey", ls=":", lw=1)
        ax.set_xlabel("labelled volumes")
        ax.set_ylabel("held-out Dice (1 click)")
        ax.set_title("Active learning, simulated annotator (mean ± sd over seeds)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "dice_vs_labelled.png"), dpi=120)
    except ImportError:
        log("matplotlib not installed: no PNG")
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint", default=os.path.join(os.path.dirname(__file__), "..", "..", "model", "default", "model.pt"))
    ap.add_argument("--cache", default=None, help="embedding cache folder (default OUT/cache)")
    ap.add_argument("--strategies", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--pool", type=int, default=36)
    ap.add_argument("--common", type=float, default=0.75, help="fraction of the pool that is the common kind")
    ap.add_argument("--heldout-per-kind", type=int, default=4)
    ap.add_argument("--init", type=int, default=2)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--weight", type=float, default=0.5, help="uncertainty weight of the combined rank mix")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: more threads oversubscribe a busy 2-core CPU)")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the pool / held-out volumes")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the summary from OUT/curves.csv")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    if args.report_only:
        with open(os.path.join(args.out, "curves.csv")) as f:
            rows = [{k: (v if k == "strategy" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]
        return summarise(rows, args.out, print)
    logf = open(os.path.join(args.out, "log.txt"), "a")

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    log(f"simulate: {vars(args)}")
    model, meta = load_checkpoint(args.checkpoint, map_location="cpu")
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head_parameters(model):
        p.requires_grad_(True)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    log(f"model {meta.get('version')} ({args.checkpoint})")
    pool, held = build_pool(model, args.pool, args.common, args.heldout_per_kind, args.data_seed,
                            args.cache or os.path.join(args.out, "cache"), log)
    log("pool kinds: " + json.dumps({k: sum(v.kind == k for v in pool) for k in KINDS}) +
        "; held-out kinds: " + json.dumps({k: sum(v.kind == k for v in held) for k in KINDS}))
    perts = make_perturbations(n_jitter=3, sigma=3.0, flips=(0, 1, 2))
    rows: List[Dict] = []
    path = os.path.join(args.out, "curves.csv")
    for seed in args.seeds:
        for method in args.strategies:
            rows += run_strategy(model, base_state, pool, held, method, seed, args, perts, log)
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
    return summarise(rows, args.out, log)


if __name__ == "__main__":
    main()
