"""The offline simulation: its fine-tuning step learns, its curves are kept right, its target
arithmetic is honest. CPU, a reduced-size model, a tiny pool of hand-made volumes."""
import argparse
import math

import numpy as np
import torch

from lib.activelearning.select import METHODS
from lib.activelearning.sim_pool import KINDS, S, Volume, pool_specs
from lib.activelearning.sim_report import labels_to_reach, mean_curves, target_check
from lib.activelearning.sim_train import evaluate, fine_tune_decoder, uncertainty_scores
from lib.activelearning.simulate import initial_labels, parse_args, run_strategy
from lib.activelearning.uncertainty import make_perturbations
from lib.model import build_sam_med3d

TINY = {"encoder_embed_dim": 48, "encoder_depth": 2, "encoder_num_heads": 2, "encoder_global_attn_indexes": [1],
        "prompt_embed_dim": 48, "decoder_transformer": {"mlp_dim": 64, "num_heads": 2}}
KIND_LIST = list(KINDS)


def _ball(centre, r):
    ax = torch.arange(S, dtype=torch.float32)
    g = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"))
    return ((g - torch.tensor(centre, dtype=torch.float32).view(3, 1, 1, 1)) ** 2).sum(0) < r * r


def _volumes(n, prefix, seed):
    """Embeddings that carry the ball's position (a channel is 1 inside it at the 8^3 grid)."""
    rs = np.random.default_rng(seed)
    out = []
    for i in range(n):
        c = [float(x) for x in rs.uniform(44, 84, size=3)]
        tgt = _ball(c, float(rs.uniform(14, 24)))
        emb = torch.randn(1, 48, 8, 8, 8, generator=torch.Generator().manual_seed(seed * 100 + i)) * 0.1
        emb[0, :8] += torch.nn.functional.avg_pool3d(tgt[None, None].float(), 16)[0, 0]
        out.append(Volume(f"{prefix}{i:03d}", KIND_LIST[i % 4], emb, tgt, [int(round(x)) for x in c]))
    return out


def _model():
    torch.manual_seed(0)
    model = build_sam_med3d(TINY).float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_fine_tuning_reduces_the_loss_and_improves_dice_on_the_training_volumes():
    torch.set_num_threads(1)
    model = _model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    vols = _volumes(3, "pool", 1)
    before = evaluate(model, vols, n_clicks=2)
    losses = fine_tune_decoder(model, base, vols, steps=40, batch=3, lr=3e-3, num_clicks=2, seed=0)
    after = evaluate(model, vols, n_clicks=2)
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert after[1]["mean"] > before[1]["mean"] + 0.05, (before, after)
    assert set(after) == {1, 2} and set(after[1]) == {v.kind for v in vols} | {"mean"}
    # only the decoder learned; the next call starts again from the base weights
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, base[k])}
    assert changed == {"mask_decoder"}
    assert not any(p.requires_grad for p in model.parameters())
    fine_tune_decoder(model, base, vols, steps=0, batch=3, lr=3e-3, num_clicks=2)
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())


def test_uncertainty_scores_every_candidate():
    model = _model()
    vols = _volumes(4, "pool", 2)
    scores = uncertainty_scores(model, vols[2:], vols[:2], make_perturbations(1, 3.0, (0,)))
    assert set(scores) == {v.id for v in vols[2:]}
    assert all(0.0 <= s <= 1.0 for s in scores.values())


def test_curves_bookkeeping():
    model = _model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    pool, held = _volumes(8, "pool", 3), _volumes(4, "test", 4)
    args = parse_args(["--out", "unused", "--init", "2", "--k", "2", "--rounds", "2", "--steps", "2", "--batch", "2",
                       "--clicks", "2", "--eval-clicks", "2"])
    memo, logs, rows = {}, [], {}
    for m in METHODS:
        rows[m] = run_strategy(model, base, pool, held, m, 0, args, make_perturbations(1, 3.0, (0,)), logs.append, memo)
    for m, rr in rows.items():
        assert [r["n_labelled"] for r in rr] == [2, 4, 6]
        assert [r["round"] for r in rr] == [0, 1, 2]
        for r in rr:
            assert sum(r[f"n_{k}"] for k in KINDS) == r["n_labelled"]
            assert 0.0 <= r["dice"] <= 1.0 and 0.0 <= r["dice@2"] <= 1.0
    # every strategy starts from the same labelled volumes, hence the same first point (trained once)
    assert len({(r[0]["dice"], r[0]["dice@2"]) for r in rows.values()}) == 1
    assert len(memo) < 3 * len(METHODS)
    assert initial_labels([v.id for v in pool], 2, 0) == initial_labels([v.id for v in pool], 2, 0)
    assert any("picks" in line for line in logs)


def test_pool_specs_are_imbalanced_and_the_heldout_set_balanced():
    specs = pool_specs(36, 0.75, 4, 0)
    pool = [k for vid, k, _ in specs if vid.startswith("pool")]
    held = [k for vid, k, _ in specs if vid.startswith("test")]
    assert len(pool) == 36 and pool.count("ct_bright_blob") == 27
    assert all(pool.count(k) == 3 for k in KINDS if k != "ct_bright_blob")
    assert all(held.count(k) == 4 for k in KINDS)
    assert len({s for _, _, s in specs}) == len(specs)


def _rows(curves):
    """{strategy: [[dice per n] per seed]} at n = 2, 4, 6, 8, 10 -> curves.csv-like rows."""
    rows = []
    for m, seeds in curves.items():
        for seed, ds in enumerate(seeds):
            for rnd, d in enumerate(ds):
                rows.append({"strategy": m, "seed": seed, "round": rnd, "n_labelled": 2 + 2 * rnd, "dice": d})
    return rows


def test_target_arithmetic_on_hand_made_curves():
    rows = _rows({"random": [[0.2, 0.3, 0.4, 0.5, 0.6], [0.2, 0.32, 0.42, 0.52, 0.62]],
                  "combined": [[0.2, 0.4, 0.6, 0.65, 0.7], [0.2, 0.42, 0.62, 0.66, 0.7]]})
    ns, mean, sd = mean_curves(rows)["random"]
    assert ns == [2, 4, 6, 8, 10] and math.isclose(mean[-1], 0.61) and math.isclose(sd[-1], 0.01)
    res = target_check(rows)
    assert res["meaningful"] and math.isclose(res["random_final_dice"], 0.61)
    # combined's mean curve: 0.41 at n=4, 0.61 at n=6 -> reaches 0.61 at exactly n=6, 60 % of 10
    assert math.isclose(res["combined"]["labels_to_reach_random_final"], 6.0)
    assert math.isclose(res["combined"]["fraction_of_random"], 0.6) and res["target_met"] is True
    assert math.isclose(res["random"]["fraction_of_random"], 1.0)
    assert res["per_seed_reached"] == "2/2"
    # a second combination rule gets its own fraction, per-seed fractions and verdict
    rows += _rows({"combined_product": [[0.2, 0.3, 0.4, 0.61, 0.7], [0.2, 0.3, 0.4, 0.61, 0.7]]})
    res = target_check(rows)
    cp = res["combined_product"]
    assert math.isclose(cp["labels_to_reach_random_final"], 8.0) and cp["target_met"] is False
    assert cp["per_seed_reached"] == "2/2" and math.isclose(res["combined"]["fraction_of_random"], 0.6)
    # 7.5 of 10 labels: not met
    rows = _rows({"random": [[0.2, 0.3, 0.4, 0.5, 0.6]], "combined": [[0.2, 0.3, 0.4, 0.5, 0.7]]})
    res = target_check(rows)
    assert math.isclose(res["combined"]["labels_to_reach_random_final"], 9.0) and res["target_met"] is False
    # random does not rise: the check is not meaningful, whatever combined does
    rows = _rows({"random": [[0.3, 0.3, 0.29, 0.3, 0.29], [0.3, 0.31, 0.3, 0.3, 0.31]],
                  "combined": [[0.3, 0.3, 0.3, 0.3, 0.3], [0.3, 0.3, 0.3, 0.3, 0.3]]})
    res = target_check(rows)
    assert not res["meaningful"] and res["target_met"] is None


def test_labels_to_reach_interpolates():
    assert labels_to_reach([2, 4, 6], [0.1, 0.2, 0.4], 0.3) == 5.0
    assert labels_to_reach([2, 4], [0.5, 0.6], 0.4) == 2.0
    assert math.isinf(labels_to_reach([2, 4], [0.1, 0.2], 0.3))


def test_summary_files_from_curves(tmp_path):
    from lib.activelearning.sim_report import summarise

    rows = _rows({"random": [[0.2, 0.3, 0.4, 0.5, 0.6]], "combined": [[0.2, 0.4, 0.6, 0.65, 0.7]]})
    for r in rows:
        r.update({"dice@3": r["dice"] + 0.01, **{f"dice_{k}": r["dice"] for k in KINDS},
                  **{f"n_{k}": r["n_labelled"] if k == "ct_bright_blob" else 0 for k in KINDS}})
    res = summarise(rows, str(tmp_path), log=lambda m: None)
    assert res["dice"]["target_met"] is True and set(res) == {"dice", "dice@3"}
    md = (tmp_path / "summary.md").read_text()
    assert "-> MET" in md and "| combined |" in md
    assert (tmp_path / "summary.csv").read_text().count("\n") == 1 + 2 * 2 * 5
