"""Prototype measured in docs/default_model.md, "Nineteenth run": a later-click chooser among
later_click_candidates_prototype.py's candidates (CANDS), one conditional logit per click sign (the weights maximise the
expected Dice of softmax(score), as scripts/fit_margin_choice.py does for the first click), fitted on the rows that
prototype logged on the fitting set (scripts/fit_margin_choice.fit_targets written as an evaluation data folder by
`--export DIR`, and work_data/fit_dk) with POLICY=mix; 5-fold cross-validation by target, one step (the next click's
Dice given the same shown mask):

    .venv/bin/python docs/eval/click_unet/later_click_fit_prototype.py --export work_data/fit_later
    .venv/bin/python docs/eval/click_unet/later_click_fit_prototype.py '/tmp/mix_*.jsonl' /tmp/later_weights.json 0.01
    # the twentieth run's diagnostic: logs of the learned policy on the development sets (POLICY=learned LOG=...)
    .venv/bin/python docs/eval/click_unet/later_click_fit_prototype.py --loso '/tmp/L3_{set}.jsonl' 0.01
"""
import json, sys, glob, numpy as np
import os
CANDS = os.environ.get("CANDS", "E,piece_15,piece_25,piece_40,piece_60").split(",")
BASE = ["is_e", "log_m", "ch_ml", "ch_rel", "other_rel", "ch_face", "r_fill", "r_log_volume", "r_contrast", "r_edge", "r_touch"]


def vec(r, k):
    f = r["feats"][k]
    b = [f.get(n, 0.0) for n in BASE]
    b = [max(min(x, 20.0), -20.0) for x in b]
    agree = r["agree"][k]
    ls = float(np.log(r["s_ml"] + 1e-3))
    ctx = [agree, f["is_e"] * r["eplain"], f["is_e"] * r["ct"], f["log_m"] * r["ct"], f["log_m"] * ls, f["is_e"] * ls,
           f["is_e"] * (r["click"] - 3), f["log_m"] * (r["click"] - 3)]
    return b + ctx


NAMES = BASE + ["agree", "e_plain", "e_ct", "m_ct", "m_size", "e_size", "e_click", "m_click"]


def table(rows):
    X = np.array([[vec(r, k) for k in CANDS] for r in rows], dtype=np.float64)
    Y = np.array([[r["dice"][k] for k in CANDS] for r in rows], dtype=np.float64)
    return X, Y


def fit(X, Y, l2=0.01):
    """The conditional logit on standardised features (first_click_cnn_scorer_prototype.fit_logit, one home)."""
    from first_click_cnn_scorer_prototype import fit_logit
    flat = X.reshape(-1, X.shape[-1]); mean, std = flat.mean(0), flat.std(0) + 1e-6
    w = fit_logit((X - mean) / std, Y, l2)
    return dict(mean=mean.tolist(), std=std.tolist(), weights=w.tolist())


def choose(model, X):
    s = ((X - np.array(model["mean"])) / np.array(model["std"])) @ np.array(model["weights"])
    return s.argmax(-1)


def load(pattern):
    return [json.loads(l) for f in sorted(glob.glob(pattern)) for l in open(f)]


def export(out):
    """The margin-choice fitting set as an evaluation data folder (one case per target, label value 1)."""
    sys.path.insert(0, "scripts"); sys.path.insert(0, "apps/sammed3d")
    import nibabel as nib
    import fit_margin_choice as F
    os.makedirs(f"{out}/images", exist_ok=True); os.makedirs(f"{out}/labels", exist_ok=True)
    names = {}
    for name, group, img, gt, ct, sp in F.fit_targets("work_data/train_npz"):
        aff = np.diag(list(sp) + [1.0])
        nib.save(nib.Nifti1Image(np.asarray(img, np.float32), aff), f"{out}/images/{name}.nii.gz")
        nib.save(nib.Nifti1Image(gt.astype(np.uint8), aff), f"{out}/labels/{name}.nii.gz")
        names[name] = {group: 1}
    json.dump(names, open(f"{out}/labels/labels.json", "w"), indent=1)


def loso(pattern, l2=0.01):
    """A diagnostic (twentieth run): the chooser fitted on four development sets' logged later clicks ('{set}' in
    `pattern`), measured one step on the fifth, in turn."""
    sets = ("dev_table", "dev_ct", "dev_lesions", "dev_brain", "dev_dk")
    rows = {s: load(pattern.format(set=s)) for s in sets}
    for lab in (1, 0):
        tot = np.zeros(4)
        for held in sets:
            test = [r for r in rows[held] if r["include"] == lab]
            if test:
                model = fit(*table([r for s in sets if s != held for r in rows[s] if r["include"] == lab]), l2)
                X, Y = table(test)
                tot += [Y[np.arange(len(Y)), choose(model, X)].sum(), Y[:, 0].sum(), Y.max(1).sum(), len(Y)]
        print(f"{'include' if lab else 'exclude'} clicks: E {tot[1] / tot[3]:.3f} -> chosen {tot[0] / tot[3]:.3f} "
              f"(oracle {tot[2] / tot[3]:.3f}, {int(tot[3])} clicks)")


if __name__ == "__main__" and sys.argv[1] == "--export":
    export(sys.argv[2])
elif __name__ == "__main__" and sys.argv[1] == "--loso":  # --loso '/tmp/L3_{set}.jsonl' [l2]
    loso(sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.01)
elif __name__ == "__main__":
    rows = load(sys.argv[1])
    l2 = float(sys.argv[3]) if len(sys.argv) > 3 else 0.01
    models = {}
    for lab in (1, 0):
        rr = [r for r in rows if r["include"] == lab]
        X, Y = table(rr)
        # 5-fold CV by target
        tg = np.array([hash((r["case"], r["value"])) % 5 for r in rr])
        pred = np.zeros(len(rr), int)
        for f in range(5):
            m = fit(X[tg != f], Y[tg != f], l2)
            pred[tg == f] = choose(m, X[tg == f])
        models[lab] = fit(X, Y, l2)
        ins = choose(models[lab], X)
        print(f"{'inc' if lab else 'exc'} n={len(rr)} E {Y[:,0].mean():.3f} best-fixed {Y.mean(0).max():.3f} ({CANDS[Y.mean(0).argmax()]}) "
              f"cv {Y[np.arange(len(rr)), pred].mean():.3f} in-sample {Y[np.arange(len(rr)), ins].mean():.3f} oracle {Y.max(1).mean():.3f} "
              f"chosen {np.bincount(pred, minlength=len(CANDS)).tolist()}")
    json.dump({"include": models[1], "exclude": models[0], "names": NAMES, "cands": CANDS}, open(sys.argv[2], "w"))
