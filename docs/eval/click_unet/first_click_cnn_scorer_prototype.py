"""Prototype measured in docs/default_model.md, "Twentieth run": a small 3D CNN that scores the first click's
candidates (the classical region at box margins 15-100 mm and the click's flood at 5.7-128 cells, as
scripts/fit_margin_choice.py tabulates them), from a 32^3 crop of the image and the candidate around the click at the
candidate's own scale plus the candidates' hand features (lib.session.margin_choice.FLOOD_FEATURES); and the linear
conditional logit over the same features on the same targets, with and without each group of targets.

    W=work_data/first_click      # from the repository root
    .venv/bin/python docs/eval/click_unet/first_click_cnn_scorer_prototype.py data fit 1 600 $W/fit1.npz   # ~2.3 s a target
    .venv/bin/python docs/eval/click_unet/first_click_cnn_scorer_prototype.py data fit 2 500 $W/fit2.npz
    for s in dev_table dev_ct dev_lesions dev_brain dev_dk; do
      .venv/bin/python docs/eval/click_unet/first_click_cnn_scorer_prototype.py data $s $W/$s.npz; done
    # FLAGS: the folder of first_click_own_answer_prototype.py's flags_<set>.log (who answered each development first
    # click); WORK: the folder of the development tables above
    WORK=$W FLAGS=$W .venv/bin/python docs/eval/click_unet/first_click_cnn_scorer_prototype.py train $W/cnn.pt 16 $W/fit1.npz $W/fit2.npz
    WORK=$W FLAGS=$W .venv/bin/python docs/eval/click_unet/first_click_cnn_scorer_prototype.py linear $W/fit1.npz $W/fit2.npz
    # a diagnostic, not a candidate: the linear choice fitted on four development sets, measured on the fifth
    WORK=$W FLAGS=$W .venv/bin/python docs/eval/click_unet/first_click_cnn_scorer_prototype.py loso $W/fit1.npz $W/fit2.npz

The development report: each set's chosen candidates' Dice, and the predicted served Dice@1 (the development targets
the plain region answers take the chosen candidate, the others keep default-v11's answer), as fit_margin_choice.py's
served prediction does.
"""
import glob, os, sys, time
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "apps", "sammed3d")); sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(1)
MARGINS = (15.0, 20.0, 30.0, 40.0, 60.0, 80.0, 100.0)
LEVELS = (5.6569, 8.0, 11.3137, 16.0, 22.6274, 32.0, 45.2548, 64.0, 90.5097, 128.0)
DEV = ("dev_table", "dev_ct", "dev_lesions", "dev_brain", "dev_dk")
G = 32  # crop cells per axis


def gen_fit(seed, n):
    """Training-side targets as fit_margin_choice.fit_targets makes them (other seeds), one kind drawn per target."""
    from lib.dataengine.lesions import insert_lesion
    from lib.dataengine.sampler import _RealVolume
    from lib.synthetic.chest import CHEST_LABELS, chest_case
    from lib.synthetic.phantoms import generate_phantom_torch
    rs = np.random.default_rng(seed)
    npz = os.path.join(ROOT, "work_data", "train_npz")
    vols = [_RealVolume(p, npz, 6000) for p in sorted(glob.glob(os.path.join(npz, "*.npz")))]
    k = 0
    while k < n:
        kind = rs.choice(["phantom", "chest", "label", "supervoxel", "lesion"], p=[0.3, 0.08, 0.12, 0.32, 0.18])
        if kind == "phantom":
            pseed = 20000 + seed * 1000 + k
            torch.manual_seed(pseed)
            modality = "ct" if rs.random() < 0.5 else "mr"
            img, lab, _ = generate_phantom_torch(pseed, (80, 80, 80), 1.5, "cpu", modality=modality)
            img, lab, spacing = img.numpy(), lab.numpy(), [1.5, 1.5, 1.5]
            if rs.random() < 0.4:  # thick slices
                ax = int(rs.integers(3)); sl = [slice(None)] * 3; sl[ax] = slice(1, None, 3)
                img, lab = img[tuple(sl)], lab[tuple(sl)]; spacing[ax] = 4.5
            vals, counts = np.unique(lab[lab > 0], return_counts=True)
            vals = [int(v) for v, c in zip(vals, counts) if c >= 50]
            if not vals:
                continue
            v = int(rs.choice(vals))
            yield f"ph{pseed}_{v}", "phantom", img, lab == v, modality == "ct", spacing
        elif kind == "chest":
            s = 300 + seed * 100 + k
            img, lab, spacing = chest_case(s)
            name, v = list(CHEST_LABELS.items())[int(rs.integers(len(CHEST_LABELS)))]
            if (lab == v).sum() < 50:
                continue
            yield f"chest{s}_{name}", "chest", img, lab == v, True, list(spacing)
        else:
            vol, sp = vols[int(rs.integers(len(vols)))], [1.5, 1.5, 1.5]
            if kind == "label":
                if not vol.train_values or "2009a" in vol.name:  # its grey / white matter are development targets
                    continue
                v = vol.train_values[int(rs.integers(len(vol.train_values)))]
                yield f"{vol.name}_l{v}_{k}", "label", vol.image, vol.label == v, vol.is_ct, sp
            elif kind == "supervoxel":
                ids = vol.graph.random_region(rs, int(rs.choice([1, 3, 8, 20, 60])), tolerance=float(rs.uniform(0.3, 1.2)))
                mask = np.isin(vol.graph.labels, ids)
                if mask.sum() < 50:
                    continue
                yield f"{vol.name}_sv{k}", "supervoxel", vol.image, mask, vol.is_ct, sp
            else:
                image, mask = insert_lesion(vol.image, vol.foreground, rs, vol.is_ct)
                if mask.sum() < 20:
                    continue
                yield f"{vol.name}_les{k}", "lesion", image, mask, vol.is_ct, sp
        k += 1


def _crop(arr, centre, half_vox, order):
    from scipy import ndimage
    grid = np.stack(np.meshgrid(*[np.linspace(c - h, c + h, G) for c, h in zip(centre, half_vox)], indexing="ij"))
    return ndimage.map_coordinates(arr, grid, order=order, mode="constant", cval=0.0)


def sample(image, gt, ct, spacing):
    """(crops (n, 3, G, G, G) float16: image relative to the click's tissue, CT HU/1000, candidate; Dice (n,);
    features (n, len(FLOOD_FEATURES) + 1): the hand features and the crop's log half-size)."""
    from lib.evaluation.clicks import first_click
    from lib.evaluation.metrics import dice
    from lib.session.classical_region import TUNED
    from lib.session.flood_candidates import FloodField
    from lib.session.margin_choice import with_flood_columns
    from lib.session.plain_region import margin_candidates
    sp = np.asarray(spacing, float)
    point = first_click(gt, spacing=spacing)[0]
    pt = np.array([int(round(float(c))) for c in point])
    cands, mfeat = margin_candidates(image, ct, spacing, [list(point)], TUNED["geodesic"], MARGINS)
    field = FloodField.solve(image, ct, spacing, point)
    boxes = [(box, region) for _, box, region, _ in cands] + [field.region(lv) for lv in LEVELS]
    feats = np.concatenate([with_flood_columns(mfeat), field.features(LEVELS)])
    click = float(np.median(image[tuple(slice(max(a - 1, 0), a + 2) for a in pt)]))
    X = np.zeros((len(boxes), 3, G, G, G), np.float16); D = np.zeros(len(boxes)); H = np.zeros(len(boxes))
    for c, (box, region) in enumerate(boxes):
        h = 12.0
        if region.any():
            idx = np.nonzero(region)
            lo = np.array([i.min() + b.start for i, b in zip(idx, box)]); hi = np.array([i.max() + b.start for i, b in zip(idx, box)])
            h = max(float((np.maximum(np.abs(lo - pt), np.abs(hi - pt)) * sp).max()) * 1.3 + 3.0, 12.0)
            full = np.zeros(gt.shape, bool); full[box] = region; D[c] = dice(full, gt)
        img = _crop(image, pt, h / sp, 1)
        spread = max(1.4826 * np.median(np.abs(img - np.median(img))), 0.05 * (np.percentile(img, 99) - np.percentile(img, 1)), 1e-3)
        X[c, 0] = np.clip((img - click) / spread, -6, 6)
        X[c, 1] = np.clip(img / 1000.0, -1, 2) if ct else 0
        X[c, 2] = _crop(region.astype(np.float32), pt - np.array([b.start for b in box]), h / sp, 1)
        H[c] = np.log(h / 20.0)
    return X, D, np.c_[feats, H]


def cmd_data(argv):
    from fit_margin_choice import data_targets
    if argv[0] == "fit":
        out, targets = argv[3], gen_fit(int(argv[1]), int(argv[2]))
    else:
        out, targets = argv[1], data_targets(os.path.join(ROOT, "work_data", argv[0]))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    rows, t0 = [], time.time()
    save = lambda: np.savez(out, names=np.array([r[0] for r in rows]), groups=np.array([r[1] for r in rows]),  # noqa: E731
                            X=np.array([r[2] for r in rows]), D=np.array([r[3] for r in rows]), F=np.array([r[4] for r in rows]))
    for i, (name, group, image, gt, ct, spacing) in enumerate(targets):
        rows.append((name, group) + sample(np.asarray(image, np.float32), gt, ct, spacing))
        print(f"{time.time() - t0:6.0f}s {i} {name[-30:]:30s} best {rows[-1][3].argmax():2d} {rows[-1][3].max():.2f}", flush=True)
        if (i + 1) % 50 == 0:
            save()
    save()


def fit_logit(x: np.ndarray, y: np.ndarray, l2: float = 0.01) -> np.ndarray:
    """Weights w of a conditional logit over candidates: x (targets, candidates, features) already standardised, y their
    Dice; maximises the mean expected Dice of softmax(4 x @ w) with L2 on w (scripts/fit_margin_choice.fit_scorer's
    objective, on features standardised by the caller)."""
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    w = torch.zeros(x.shape[-1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=400, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad(); loss = -(torch.softmax(xt @ w * 4.0, 1) * yt).sum(1).mean() + l2 * (w ** 2).sum()
        loss.backward(); return loss
    opt.step(closure)
    return w.detach().numpy()


def load(paths):
    parts = [np.load(p) for p in paths]
    return [np.concatenate([p[k] for p in parts]) for k in ("names", "groups", "X", "D", "F")]


def dev_report(choose):
    """choose(X, F) -> chosen index per target; the development sets' chosen Dice and predicted served Dice@1."""
    from first_click_own_answer_prototype import parse_flags
    tot, out = np.zeros(5), []
    for s in DEV:
        d = np.load(os.path.join(os.environ.get("WORK", "work_data/first_click"), f"{s}.npz"))
        ch = choose(d["X"], d["F"]); pick = d["D"][np.arange(len(ch)), ch]
        flags = parse_flags(os.path.join(os.environ.get("FLAGS", "."), f"flags_{s}.log"))
        served = np.array([flags[n][0] for n in d["names"]]); plain = np.array([flags[n][1] == "plain" for n in d["names"]])
        pred = np.where(plain, pick, served)
        tot += [len(ch), pick.sum(), pred.sum(), plain.sum(), pick[plain].sum()]
        out.append(f"{s[4:]}:{pred.mean():.3f}")
    return (f"dev chosen {tot[1] / tot[0]:.3f} predicted served {tot[2] / tot[0]:.3f} (plain-answered "
            f"{tot[4] / tot[3]:.3f}) | " + " ".join(out))


class Scorer(nn.Module):
    """(B, 3, 32^3) crop + (B, nf) features -> (B,) score; about 0.1 M parameters."""

    def __init__(self, nf):
        super().__init__()
        c = lambda i, o, s: nn.Sequential(nn.Conv3d(i, o, 3, s, 1), nn.BatchNorm3d(o), nn.ReLU(inplace=True))  # noqa: E731
        self.net = nn.Sequential(c(3, 16, 2), c(16, 32, 2), c(32, 48, 2), c(48, 64, 1))
        self.head = nn.Sequential(nn.Linear(128 + nf, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x, f):
        h = self.net(x)
        return self.head(torch.cat([h.mean((2, 3, 4)), h.amax((2, 3, 4)), f], 1))[:, 0]


def cmd_train(argv):
    out, minutes, paths = argv[0], float(argv[1]), argv[2:]
    _, _, X, D, Fe = load(paths)
    fm, fs = Fe.reshape(-1, Fe.shape[-1]).mean(0), Fe.reshape(-1, Fe.shape[-1]).std(0) + 1e-6
    rs = np.random.default_rng(0); perm = rs.permutation(len(D)); nval = len(D) // 6; val, tr = perm[:nval], perm[nval:]
    torch.manual_seed(0)
    model = Scorer(Fe.shape[-1]); opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-4)

    def scores(Xa, Fa):
        model.eval(); res = []
        with torch.no_grad():
            for i in range(0, len(Xa), 8):
                x = torch.from_numpy(Xa[i:i + 8].astype(np.float32)).flatten(0, 1)
                f = torch.from_numpy(((Fa[i:i + 8] - fm) / fs).astype(np.float32)).flatten(0, 1)
                res.append(model(x, f).view(-1, Xa.shape[1]).numpy())
        model.train(); return np.concatenate(res)

    t0, step = time.time(), 0
    while time.time() - t0 < minutes * 60:
        idx = rs.choice(tr, 12, replace=False)
        x = torch.from_numpy(X[idx].astype(np.float32)).flatten(0, 1)
        for ax in (2, 3, 4):
            if rs.random() < 0.5:
                x = x.flip(ax)
        p = [2, 3, 4]; rs.shuffle(p); x = x.permute(0, 1, *p)
        f = torch.from_numpy(((Fe[idx] - fm) / fs).astype(np.float32)).flatten(0, 1)
        y = torch.from_numpy(D[idx].astype(np.float32))
        s = model(x, f).view(len(idx), -1)
        loss = F.binary_cross_entropy_with_logits(s, y) - (torch.softmax(s * 4, 1) * y).sum(1).mean()
        opt.zero_grad(); loss.backward(); opt.step(); step += 1
        if step % 150 == 0:
            ch = scores(X[val], Fe[val]).argmax(1)
            print(f"{time.time() - t0:5.0f}s step {step} | held-out fitting targets {D[val][np.arange(nval), ch].mean():.3f} "
                  f"(oracle {D[val].max(1).mean():.3f}) | {dev_report(lambda Xd, Fd: scores(Xd, Fd).argmax(1))}", flush=True)
            torch.save({"model": model.state_dict(), "mean": fm, "std": fs}, out)


def cmd_linear(paths):
    _, groups, _, D, Fe = load(paths)
    fm, fs = Fe.reshape(-1, Fe.shape[-1]).mean(0), Fe.reshape(-1, Fe.shape[-1]).std(0) + 1e-6

    def fit(idx, cand, l2=0.01):
        return fit_logit((Fe[idx][:, cand] - fm) / fs, D[idx][:, cand], l2)

    sets = {"all": None, "no supervoxel": ["supervoxel"], "no supervoxel, lesion": ["supervoxel", "lesion"],
            "no supervoxel, chest": ["supervoxel", "chest"]}
    cands = {"all 17": list(range(17)), "margins 30-80": [2, 3, 4, 5], "margins 15-100": list(range(7))}
    for sname, drop in sets.items():
        idx = np.nonzero(~np.isin(groups, drop or []))[0]
        for cname, cand in cands.items():
            w = fit(idx, cand)
            print(f"{sname:24s} {cname:15s}", dev_report(lambda Xd, Fd: np.array(cand)[((Fd[:, cand] - fm) / fs @ w).argmax(1)]))


def cmd_loso(paths):
    from first_click_own_answer_prototype import parse_flags
    work, flags = os.environ.get("WORK", "work_data/first_click"), os.environ.get("FLAGS", ".")
    dev = {s: np.load(os.path.join(work, f"{s}.npz")) for s in DEV}
    every = np.concatenate([d["F"] for d in dev.values()] + [load(paths)[4]])
    fm, fs = every.reshape(-1, every.shape[-1]).mean(0), every.reshape(-1, every.shape[-1]).std(0) + 1e-6
    for cname, cand in {"all 17": list(range(17)), "margins 30-80": [2, 3, 4, 5], "margins 15-100": list(range(7))}.items():
        for l2 in (0.01, 0.1):
            tot, out = np.zeros(3), []
            for held in DEV:
                rest = [s for s in DEV if s != held]
                w = fit_logit((np.concatenate([dev[s]["F"][:, cand] for s in rest]) - fm) / fs,
                              np.concatenate([dev[s]["D"][:, cand] for s in rest]), l2)
                d = dev[held]
                pick = d["D"][:, cand][np.arange(len(d["D"])), ((d["F"][:, cand] - fm) / fs @ w).argmax(1)]
                fl = parse_flags(os.path.join(flags, f"flags_{held}.log"))
                served = np.array([fl[n][0] for n in d["names"]]); plain = np.array([fl[n][1] == "plain" for n in d["names"]])
                pred = np.where(plain, pick, served)
                tot += [pred.sum(), len(pred), served.sum()]; out.append(f"{held[4:]}:{pred.mean():.3f}")
            print(f"{cname:15s} l2 {l2}: predicted served {tot[0] / tot[1]:.3f} (default-v11 {tot[2] / tot[1]:.3f}) | " + " ".join(out))


if __name__ == "__main__":
    {"data": cmd_data, "train": cmd_train, "linear": cmd_linear, "loso": cmd_loso}[sys.argv[1]](sys.argv[2:])
