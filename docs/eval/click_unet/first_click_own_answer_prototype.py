"""Prototype measured in docs/default_model.md, "Twentieth run": who answers each first click (the engine's
`answered_plainly` inputs: the plain region, the model's flood, its grown box, its fine region) and a conditional
logit that weighs the model's own first-click answer (its kind as features) against the classical region at each box
margin, fitted on the fitting set's served answers (scripts/fit_margin_choice.py's tables give the margins' features
and Dice), cross-validated by leaving one group of fitting targets out, measured on the development targets.

    # 1. the served first click and who answered it, per data folder (from apps/sammed3d)
    OMP_NUM_THREADS=1 ../../.venv/bin/python ../../docs/eval/click_unet/first_click_own_answer_prototype.py flags \
        --data ../../work_data/$SET --model sammed3d --checkpoint model/default/model.pt --model-name fl \
        --click-mode all --clicks 1 --report-at 1 --no-nsd --out /tmp/fl_$SET > $W/flags_$SET.log
    #    SET: fit_later (scripts/fit_margin_choice.fit_targets as a data folder: later_click_fit_prototype.py --export),
    #    fit_dk and the five development folders
    # 2. the fit (from the repository root; the margin tables of the sixteenth run in work_data/margin)
    FLAGS=$W .venv/bin/python docs/eval/click_unet/first_click_own_answer_prototype.py fit
"""
import os, re, sys
import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
KINDS = ("plain", "fine", "grown", "grown+fine")  # the model's flood keeps its answer: not a candidate here
MARGINS = (15.0, 20.0, 30.0, 40.0, 60.0, 80.0, 100.0)  # the columns of scripts/fit_margin_choice.py's tables


def parse_flags(path):
    """{"<case>_<value>": (served Dice@1, kind)} from a `flags` run's log."""
    out, flags = {}, []
    for line in open(path).read().splitlines():
        if line.startswith("FLAGS"):
            flags.append(line)
        m = re.match(r"\s+\[\S+\] (\S+) label (\d+): ([\d.]+)", line)
        if m:
            f = flags[-1] if flags else ""
            kind = ("learned" if "prior_only=0" in f else "plain" if "flooded=0 grown=0 fine=0" in f else "flood"
                    if "flooded=1" in f else "grown+fine" if "grown=1 fine=1" in f else "grown" if "grown=1" in f else "fine")
            out[f"{m.group(1)}_{m.group(2)}"], flags = (float(m.group(3)), kind), []
    return out


def cmd_flags(argv):
    import runpy
    sys.path.insert(0, os.path.join(ROOT, "apps", "sammed3d"))
    import lib.session.engine as engine
    original = engine.answered_plainly

    def logged(prior_only, flooded, grown, fine):
        print(f"FLAGS prior_only={int(prior_only)} flooded={int(flooded)} grown={int(grown)} fine={int(fine)}", flush=True)
        return original(prior_only, flooded, grown, fine)
    engine.answered_plainly = logged
    sys.argv = ["lib.evaluation"] + argv
    runpy.run_module("lib.evaluation", run_name="__main__")


def load(table, flags_log, key):
    """(X (n, 1 + margins, F + kinds), Dice (n, 1 + margins), groups): the own answer first, then the margins."""
    m, flags = np.load(table), parse_flags(flags_log)
    X, D, G = [], [], []
    for t, name in enumerate(m["names"]):
        served = flags.get(key(name))
        if served is None or served[1] not in KINDS:
            continue
        f = m["features"][t]
        own = np.zeros(f.shape[1] + len(KINDS)); own[f.shape[1] + KINDS.index(served[1])] = 1
        X.append([own] + [np.r_[row, np.zeros(len(KINDS))] for row in f]); D.append([served[0]] + list(m["dices"][t]))
        G.append(str(m["groups"][t]))
    return np.array(X), np.array(D), np.array(G)


def fit(X, D, l2):
    from first_click_cnn_scorer_prototype import fit_logit
    nf = X.shape[-1] - len(KINDS)
    flat = X[:, 1:, :nf].reshape(-1, nf)
    mean, std = np.r_[flat.mean(0), np.zeros(len(KINDS))], np.r_[flat.std(0) + 1e-6, np.ones(len(KINDS))]

    def standard(Xa):
        Z = (Xa - mean) / std; Z[:, 0, :nf] = 0; return Z  # the own answer has only its kind
    w = fit_logit(standard(X), D, l2)
    return lambda Xa: np.argmax(standard(Xa) @ w, 1)


def cmd_fit(argv):
    flags = os.environ.get("FLAGS", ".")
    tables = os.path.join(ROOT, "work_data", "margin")
    for margins in ((15, 20, 30, 40, 60, 80), (20, 30, 40, 60, 80), (15, 30, 40, 60, 80), MARGINS):
        cols = [0] + [1 + MARGINS.index(float(x)) for x in margins]

        def pick(X, D, G):
            return X[:, cols], D[:, cols], G
        parts = [pick(*load(os.path.join(tables, "fit.npz"), os.path.join(flags, "flags_fit_later.log"), lambda n: n + "_1")),
                 pick(*load(os.path.join(tables, "fit_dk.npz"), os.path.join(flags, "flags_fit_dk.log"), lambda n: n))]
        X, D, G = (np.concatenate([p[i] for p in parts]) for i in range(3))
        for l2 in (0.003, 0.01, 0.03):
            cv = np.zeros(3)
            for g in np.unique(G):
                c = fit(X[G != g], D[G != g], l2)(X[G == g])
                cv += [D[G == g][np.arange((G == g).sum()), c].sum(), D[G == g][:, 0].sum(), (G == g).sum()]
            choose, dev = fit(X, D, l2), np.zeros(3)
            for s in ("dev_table", "dev_ct", "dev_lesions", "dev_brain", "dev_dk"):
                Xd, Dd, _ = pick(*load(os.path.join(tables, f"{s}.npz"), os.path.join(flags, f"flags_{s}.log"), lambda n: n))
                dev += [Dd[np.arange(len(Dd)), choose(Xd)].sum(), Dd[:, 0].sum(), len(Dd)]
            print(f"margins {margins} l2 {l2}: fitting set, one group left out: served {cv[1] / cv[2]:.3f} -> chosen "
                  f"{cv[0] / cv[2]:.3f} | development (not flooded, {int(dev[2])}): {dev[1] / dev[2]:.3f} -> {dev[0] / dev[2]:.3f}")


if __name__ == "__main__":
    {"flags": cmd_flags, "fit": cmd_fit}[sys.argv[1]](sys.argv[2:])
