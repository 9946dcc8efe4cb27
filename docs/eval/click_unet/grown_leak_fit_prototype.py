"""Prototype measured in docs/default_model.md, "Twentieth run": the evidence behind grown_leak_prototype.py's LEAK.

    # 1. low-contrast lesions inside one large tissue on training-side backgrounds (15 in synthetic-chest hearts, CT;
    #    10 in the MNI 2009a white matter, MR), as an evaluation folder
    .venv/bin/python docs/eval/click_unet/grown_leak_fit_prototype.py lowc work_data/lowc_lesions
    # 2. per data folder: the served first click, who answered it and its answer's features (from apps/sammed3d)
    OMP_NUM_THREADS=1 ../../.venv/bin/python ../../docs/eval/click_unet/grown_leak_fit_prototype.py features $W/gf_$SET.jsonl \
        --data ../../work_data/$SET --model sammed3d --checkpoint model/default/model.pt --model-name g --click-mode all \
        --clicks 1 --report-at 1 --no-nsd --out /tmp/g_$SET > $W/g_$SET.log     # SET: fit_later lowc_lesions dev_*
    # 3. the grown answers against the learned margin choice, and the gain of each threshold (fitting side: fit_later and
    #    lowc_lesions; development: the rest), from the repository root (margin tables: scripts/fit_margin_choice.py table)
    W=$W .venv/bin/python docs/eval/click_unet/grown_leak_fit_prototype.py threshold
"""
import glob, json, os, re, runpy, sys
import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "apps", "sammed3d")); sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def cmd_lowc(out):
    import nibabel as nib
    from scipy import ndimage
    from lib.dataengine.lesions import insert_lesion
    from lib.dataengine.sampler import _RealVolume
    from lib.synthetic.chest import CHEST_LABELS, chest_case
    os.makedirs(f"{out}/images", exist_ok=True); os.makedirs(f"{out}/labels", exist_ok=True)
    rs, names = np.random.default_rng(11), {}

    def save(name, img, gt, sp):
        aff = np.diag(list(sp) + [1.0])
        nib.save(nib.Nifti1Image(np.asarray(img, np.float32), aff), f"{out}/images/{name}.nii.gz")
        nib.save(nib.Nifti1Image(gt.astype(np.uint8), aff), f"{out}/labels/{name}.nii.gz")
        names[name] = {"lesion": 1}
    for k in range(15):
        img, lab, sp = chest_case(400 + k)
        heart = lab == CHEST_LABELS["heart"]
        new, mask = insert_lesion(img, ndimage.binary_erosion(heart, iterations=4), rs, True, kind=("hypo", "hyper")[k % 2])
        if (mask & heart).sum() >= 20:
            save(f"heart_lesion{k}", new, mask & heart, sp)
    npz = os.path.join(ROOT, "work_data", "train_npz")
    vol = _RealVolume(glob.glob(os.path.join(npz, "*2009a*.npz"))[0], npz, 6000)
    wm = max(vol.train_values, key=lambda v: int((vol.label == v).sum()))
    for j in range(10):
        new, mask = insert_lesion(vol.image, ndimage.binary_erosion(vol.label == wm, iterations=3), rs, False,
                                  kind=("hypo", "hyper")[j % 2])
        if mask.sum() >= 20:
            save(f"wm_lesion{j}", new, mask, [1.5] * 3)
    json.dump(names, open(f"{out}/labels/labels.json", "w"), indent=1)


def cmd_features(argv):
    """The evaluation with its first click's answer logged: who answered and the mask's features (JSON lines)."""
    import SimpleITK as sitk
    from grown_leak_prototype import leak_share  # noqa: E402 (patches the engine only when run as a script)
    import lib.evaluation.loop as loop
    import lib.session.engine as engine
    out, flags = open(argv[0], "w"), []
    answered = engine.answered_plainly
    engine.answered_plainly = lambda *f: (flags.append(f), answered(*f))[1]
    model_segment = loop._model_segment

    def patched(eng, case, image_path, label, prior_flood=None):
        segment = model_segment(eng, case, image_path, label, prior_flood)

        def run(fg, bg):
            del flags[:]
            mask = np.asarray(segment(fg, bg)).astype(bool)
            if len(fg) == 1 and not bg:
                vol = eng.volume(image_path)
                image = sitk.GetArrayViewFromImage(vol.image).transpose(2, 1, 0)
                out.write(json.dumps(dict(case=case, label=label, flags=np.array(flags, bool).any(0).tolist() if flags else None,
                                          ml=float(mask.sum() * np.prod(vol.image.GetSpacing()) / 1000),
                                          weak=leak_share(mask, image) if mask.any() else 0.0)) + "\n")
                out.flush()
            return mask
        return run
    loop._model_segment = patched
    sys.argv = ["lib.evaluation"] + argv[1:]
    runpy.run_module("lib.evaluation", run_name="__main__")


def cmd_threshold():
    import torch
    from fit_margin_choice import restrict
    from lib.session.margin_choice import MarginScorer
    w = os.environ.get("W", "work_data/first_click")
    cfg = torch.load(os.path.join(ROOT, "apps/sammed3d/model/default/model.pt"), weights_only=False)["config"]
    scorer = MarginScorer.from_config(cfg["plain_region_margin_scorer"])
    idx = [(15.0, 20.0, 30.0, 40.0, 60.0, 80.0, 100.0).index(m) for m in scorer.margins]
    rows = []
    for s in ("fit_later", "lowc_lesions", "dev_table", "dev_ct", "dev_lesions", "dev_brain", "dev_dk"):
        table = os.path.join(ROOT, "work_data", "margin", ("fit" if s == "fit_later" else s) + ".npz")
        if s == "lowc_lesions":
            table = os.path.join(w, "margin_lowc_lesions.npz")
        if not os.path.exists(os.path.join(w, f"gf_{s}.jsonl")):
            continue
        m = np.load(table)
        feats, dices = restrict(m["features"], idx), m["dices"][:, idx]
        logged = {r["case"] + "_" + r["label"].split("-")[1]: r for r in map(json.loads, open(os.path.join(w, f"gf_{s}.jsonl")))}
        served = {}
        for line in open(os.path.join(w, f"g_{s}.log")):
            hit = re.match(r"\s+\[\S+\] (.+) label (\d+): ([\d.]+)", line)
            if hit:
                served[f"{hit.group(1)}_{hit.group(2)}"] = float(hit.group(3))
        for t, name in enumerate(m["names"]):
            key = name + "_1" if s == "fit_later" else name
            r = logged.get(key)
            if r is None or not r["flags"] or not (r["flags"][0] and r["flags"][2] and not r["flags"][1] and not r["flags"][3]):
                continue
            chosen = dices[t, scorer.choose(feats[t])]
            rows.append((s, name, served[key], chosen, r["weak"]))
            print(f"{s:12s} {name[-24:]:24s} grown {served[key]:.2f} margin choice {chosen:.2f} shell like inside {r['weak']:.2f}")
    for t in np.arange(0.0, 0.5, 0.02):
        fit = [c - g for s, _, g, c, weak in rows if not s.startswith("dev") and weak >= t]
        dev = [c - g for s, _, g, c, weak in rows if s.startswith("dev") and weak >= t]
        print(f"threshold {t:.2f}: fitting side {sum(fit):+.2f} ({len(fit)} switched), development {sum(dev):+.2f} ({len(dev)})")


if __name__ == "__main__":
    mode = sys.argv[1]
    cmd_lowc(sys.argv[2]) if mode == "lowc" else cmd_features(sys.argv[2:]) if mode == "features" else cmd_threshold()
