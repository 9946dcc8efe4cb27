"""Prototype measured in docs/default_model.md, "Twentieth run": does LiteMedSAM (the app's MedSAM box model,
lib.medsam) confirm a first-click candidate? For each candidate of the first click (the classical region at box
margins 15-100 mm and the click's flood at its 13 levels, as scripts/fit_margin_choice.py tabulates them), on each of
the three planes through the click: the candidate's section's bounding box is given to LiteMedSAM; the agreement is the
Dice of its mask with the section, beside its own IoU estimate. `eval` ranks the default's scorer's candidates (30-80
mm) by these, alone and added to its score.

    W=work_data/first_click; for s in dev_table dev_lesions; do    # from the repository root; ~10 s a target
      .venv/bin/python docs/eval/click_unet/first_click_medsam_agreement_prototype.py table $s $W/medsam_$s.npz; done
    .venv/bin/python docs/eval/click_unet/first_click_medsam_agreement_prototype.py eval $W/medsam_*.npz
"""
import os, sys, time
import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "apps", "sammed3d")); sys.path.insert(0, os.path.join(ROOT, "scripts"))
MARGINS = (15.0, 20.0, 30.0, 40.0, 60.0, 80.0, 100.0)


def cmd_table(data, out):
    import torch
    from fit_margin_choice import data_targets
    from lib.evaluation.clicks import first_click
    from lib.evaluation.metrics import dice
    from lib.medsam.engine import build_medsam_engine, choose_window
    from lib.medsam.predictor import VolumePredictor
    from lib.medsam.preprocess import box_to_256
    from lib.session.classical_region import TUNED
    from lib.session.flood_candidates import LEVELS, FloodField
    from lib.session.plain_region import margin_candidates
    torch.set_num_threads(1)
    model = build_medsam_engine("cpu").model
    rows, t0 = [], time.time()
    for name, _, image, gt, ct, spacing in data_targets(os.path.join(ROOT, "work_data", data)):
        image = np.asarray(image, dtype=np.float32)
        point = first_click(gt, spacing=spacing)[0]
        pt = [int(round(float(c))) for c in point]
        cands, _ = margin_candidates(image, ct, spacing, [list(point)], TUNED["geodesic"], MARGINS)
        field = FloodField.solve(image, ct, spacing, point)
        masks = []
        for box, region in [(b, r) for _, b, r, _ in cands] + [field.region(lv) for lv in LEVELS]:
            full = np.zeros(gt.shape, dtype=bool); full[box] = region; masks.append(full)
        agree, iou = np.zeros((3, len(masks))), np.zeros((3, len(masks)))
        for ax in range(3):
            roi = [v for a in range(3) for v in (max(0, pt[a] - 10), min(image.shape[a] - 1, pt[a] + 10))]
            pred = VolumePredictor(model, image, spacing, (1, 0, 0, 0, 1, 0, 0, 0, 1), ct,
                                   window=choose_window(image, roi, ct, None, ax), slice_axis=ax, cache_bytes=64 << 20)
            for c, m in enumerate(masks):
                section = pred.frame.slice_of(m, pt[ax])
                if not section.any():
                    continue
                r, k = np.nonzero(section)
                logits, estimate = pred.predict_256(pt[ax], box_to_256([k.min(), r.min(), k.max(), r.max()], pred.frame.slice_shape))
                answer = logits.numpy() > 0
                agree[ax, c] = 2 * (answer & section).sum() / (answer.sum() + section.sum())
                iou[ax, c] = estimate
        rows.append((name, np.array([dice(m, gt) for m in masks]), agree, iou))
        print(f"{time.time() - t0:6.0f}s {name}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez(out, names=np.array([r[0] for r in rows]), dices=np.array([r[1] for r in rows]),
             agree=np.array([r[2] for r in rows]), iou=np.array([r[3] for r in rows]))


def cmd_eval(paths):
    import torch
    from scipy.stats import spearmanr
    from fit_margin_choice import restrict
    from lib.session.margin_choice import MarginScorer
    cfg = torch.load(os.path.join(ROOT, "apps/sammed3d/model/default/model.pt"), weights_only=False)["config"]
    scorer = MarginScorer.from_config(cfg["plain_region_margin_scorer"])
    idx = [MARGINS.index(m) for m in scorer.margins]
    res = []
    for p in paths:
        a = np.load(p)
        tab = np.load(os.path.join(ROOT, "work_data", "margin", os.path.basename(p).replace("medsam_", "")))
        feats = restrict(tab["features"], idx)
        for t in range(len(a["names"])):
            valid = (a["agree"][t] > 0).any(1)
            res.append((a["dices"][t][idx], a["agree"][t][valid][:, idx].mean(0), a["iou"][t][valid][:, idx].mean(0),
                        scorer.scores(feats[t])))
    rules = {"default-v11's scorer": lambda r: r[3], "oracle": lambda r: r[0], "agreement": lambda r: r[1],
             "LiteMedSAM's IoU estimate": lambda r: r[2]}
    for a in (1.0, 4.0, 8.0):
        rules[f"score + {a:g} agreement"] = lambda r, a=a: r[3] + a * r[1]
        rules[f"score + {a:g} IoU estimate"] = lambda r, a=a: r[3] + a * r[2]
    for name, rule in rules.items():
        print(f"{name:28s} {np.mean([r[0][int(np.argmax(rule(r)))] for r in res]):.3f}  ({len(res)} targets)")
    varied = [r for r in res if np.std(r[0]) > 0.02]
    print("within-target Spearman with Dice: agreement %.2f, IoU estimate %.2f" % (
        np.nanmean([spearmanr(r[1], r[0]).correlation for r in varied]),
        np.nanmean([spearmanr(r[2], r[0]).correlation for r in varied])))


if __name__ == "__main__":
    cmd_table(*sys.argv[2:4]) if sys.argv[1] == "table" else cmd_eval(sys.argv[2:])
