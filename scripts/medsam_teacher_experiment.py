#!/usr/bin/env python
"""Does fine-tuning the embedded default SAM-Med3D on LiteMedSAM pseudo-labels raise held-out Dice?

Issue 8, item 4. Split by structure (only three real volumes ship in registry packages):
  * training structures: 15 compact IBSR structures of the CAT12 T1 template (caudate, putamen,
    pallidum, amygdala, ventral DC, cerebellar cortex and white matter, left + right; 4th ventricle).
    Condition "pseudo": their labels are LiteMedSAM's output for boxes = each structure's bounding
    box (lib.medsam.teacher; no voxel of theirs is used). Condition "gt": their true labels.
  * held out (evaluated, never trained on): the other 15 IBSR structures (cerebral WM/GM, lateral
    ventricles, thalamus, hippocampus, accumbens l/r; brain stem, 3rd ventricle, CSF) and both lungs
    of the slicerio chest CT (another volume and modality).
The default model never saw any IBSR structure (model card). Encoder frozen, mask decoder learns
(lib.trainers.fine_tune, no validation set: a fixed schedule, so no held-out structure selects a
checkpoint). Evaluation: lib.evaluation.loop.evaluate_target / lib.evaluation.cases.iter_targets, Dice after 1 and
5 simulated clicks on the stored grid, one 128^3 crop (max_crops 1).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/medsam_teacher_experiment.py --work work_data/medsam_teacher \
        --docs docs/eval/medsam_teacher [--seeds 0,1] [--epochs 6 --steps 8]
Stages are resumable: pseudo-labels, fine-tuned decoders and evaluations already in --work are reused.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "apps", "sammed3d"))

import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

TRAIN = ["lCau", "rCau", "lPut", "rPut", "lPal", "rPal", "lAmy", "rAmy", "lVenDC", "rVenDC",
         "lCbeGM", "rCbeGM", "lCbeWM", "rCbeWM", "b4thVen"]
# held out in the brain: every IBSR structure not in TRAIN (prepare_real_volumes.py's 7 test structures
# lLatVen rLatVen lThaPro rThaPro lHip rHip bBst among them)
HELDOUT_BRAIN = ["lCbrWM", "rCbrWM", "lCbrGM", "rCbrGM", "lLatVen", "rLatVen", "lThaPro", "rThaPro", "lHip", "rHip",
                 "bBst", "b3thVen", "bCSF", "lAcc", "rAcc"]
HELDOUT_CHEST = ["right lung", "left lung"]
DEFAULT_MODEL = os.path.join(REPO, "apps", "sammed3d", "model", "default", "model.pt")
log = logging.getLogger("teacher_experiment")


def ras_npz_to_nifti(arr: np.ndarray, path: str, spacing: float) -> None:
    """(R, A, S)-ordered array (prepare_real_volumes.py's .npz) -> NIfTI whose stored axes are RAS."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    img.SetSpacing([float(spacing)] * 3)
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # ITK is LPS: +i = right = -L, +j = anterior = -P
    sitk.WriteImage(img, path, True)


def prepare(npz_dir: str, data: str) -> dict:
    """NIfTI images + label files of the split under `data` -> paths and value maps."""
    os.makedirs(data, exist_ok=True)
    out = {}
    b = np.load(os.path.join(npz_dir, "brain_t1_cat12_ibsr.npz"))
    names = {str(n): int(v) for v, n in zip(b["values"], b["names"])}
    out["brain_names"] = {v: n for n, v in names.items()}
    out["train_values"] = [names[n] for n in TRAIN]
    out["heldout_brain_values"] = [names[n] for n in HELDOUT_BRAIN]
    lab = b["label"]
    files = {"brain": b["image"], "brain_train_gt": np.where(np.isin(lab, out["train_values"]), lab, 0),
             "brain_heldout": np.where(np.isin(lab, out["heldout_brain_values"]), lab, 0)}
    c = np.load(os.path.join(npz_dir, "chest_ct_slicerio.npz"))
    cnames = {str(n): int(v) for v, n in zip(c["values"], c["names"])}
    out["chest_names"] = {v: n for n, v in cnames.items()}
    out["heldout_chest_values"] = [cnames[n] for n in HELDOUT_CHEST]
    files["chest"] = c["image"]
    files["chest_heldout"] = np.where(np.isin(c["label"], out["heldout_chest_values"]), c["label"], 0)
    # control: each training structure's filled bounding box (what the extents alone give, no MedSAM);
    # larger boxes first so smaller structures overwrite them, as the teacher resolves overlaps
    from lib.medsam.teacher import boxes_from_label

    box = np.zeros_like(lab)
    for bx in sorted(boxes_from_label(files["brain_train_gt"]), key=lambda bx: -np.prod(np.diff(np.reshape(bx.roi, (3, 2))) + 1)):
        r = bx.roi
        box[r[0]:r[1] + 1, r[2]:r[3] + 1, r[4]:r[5] + 1] = bx.value
    files["brain_train_box"] = box
    for name, arr in files.items():
        path = os.path.join(data, f"{name}.nii.gz")
        if not os.path.exists(path):
            ras_npz_to_nifti(arr.astype(np.int16 if name in ("brain", "chest") else np.uint8), path, 1.5)
        out[name] = path
    return out


def run_teacher(d: dict, work: str) -> dict:
    """LiteMedSAM pseudo-labels of the training structures (boxes from their extents) + report."""
    report_path = os.path.join(work, "pseudo", "teacher_report.json")
    if os.path.exists(report_path):
        return json.load(open(report_path))
    from lib.medsam.teacher import parser, run

    args = parser().parse_args(["--images", d["brain"], "--box-labels", d["brain_train_gt"], "--gt", "box-labels",
                                "--out", os.path.join(work, "pseudo"), "--report", report_path])
    return run(args)


def fine_tuned(d: dict, work: str, cond: str, label: str, seed: int, a) -> tuple:
    """Decoder fine-tuned on (brain image, label) -> (model, metrics); cached in work/ft_{cond}_s{seed}.pt."""
    from lib.model import load_checkpoint

    path = os.path.join(work, f"ft_{cond}_s{seed}.pt")
    model, _ = load_checkpoint(DEFAULT_MODEL)
    model = model.float()
    if os.path.exists(path):
        obj = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(obj["state"], strict=False)
        return model.eval(), obj["metrics"]
    from lib.trainers import fine_tune  # imported late: another engineer may be editing lib.trainers

    opts = {"train_parts": "mask_decoder", "max_epochs": a.epochs, "steps_per_epoch": a.steps, "batch_size": 2,
            "lr": a.lr, "decoder_lr_ratio": 0.1, "num_clicks": a.clicks_train, "loss_size": 32, "val_split": 0.0,
            "val_samples": [], "max_components": 1, "variants": a.variants, "seed": seed, "device": "cpu",
            "publish": "never", "cache_dir": os.path.join(work, f"emb_cache_{cond}"), "progress": False}
    t = time.perf_counter()
    model, metrics = fine_tune(model, [{"image": d["brain"], "label": label}], opts)
    metrics = {"seconds": round(time.perf_counter() - t, 1), "epochs": metrics.get("epochs"),
               "train_targets": metrics.get("train_targets"), "steps": metrics.get("steps"),
               "embedding_cache": metrics.get("embedding_cache"), "options": {k: v for k, v in opts.items()
                                                                            if k != "val_samples"}}
    state = {k: v for k, v in model.state_dict().items() if k.startswith("mask_decoder")}
    torch.save({"state": state, "metrics": metrics}, path)
    return model.eval(), metrics


def evaluate_model(engine, model, version: str, pairs, clicks: int) -> list:
    """Rows {model, case, value, dice@1, dice@5, dices} on the held-out targets (the project's evaluation)."""
    from lib.evaluation.cases import iter_targets
    from lib.evaluation.loop import evaluate_target

    engine.set_model(model, version, encoder_changed=False)  # same frozen encoder: embeddings are shared
    rows = []
    for case, image, value, gt in iter_targets([p[:3] for p in pairs], None, log.info):
        t = time.perf_counter()
        ds = evaluate_target(engine, case, image, gt, value, clicks)
        rows.append({"model": version, "case": case, "value": value, "dice@1": round(ds[0], 4),
                     "dice@5": round(ds[min(4, len(ds) - 1)], 4), "dices": [round(x, 4) for x in ds]})
        log.info(f"  [{version}] {case} {value}: " + " ".join(f"{x:.3f}" for x in ds)
                 + f" ({time.perf_counter() - t:.1f} s)")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--npz", default=os.path.join(REPO, "work_data", "real_npz"))
    p.add_argument("--work", default=os.path.join(REPO, "work_data", "medsam_teacher"))
    p.add_argument("--docs", default=os.path.join(REPO, "docs", "eval", "medsam_teacher"))
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.01, help="x decoder_lr_ratio 0.1 = the decoder's lr")
    p.add_argument("--clicks-train", type=int, default=5)
    p.add_argument("--variants", type=int, default=2)
    p.add_argument("--clicks", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--conditions", default="pseudo,gt,box", help="training labels: MedSAM pseudo, ground truth, filled boxes")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(a.threads)
    os.makedirs(a.work, exist_ok=True)
    os.makedirs(a.docs, exist_ok=True)
    t_all = time.perf_counter()
    timings = {}
    d = prepare(a.npz, os.path.join(a.work, "data"))
    t = time.perf_counter()
    teacher = run_teacher(d, a.work)
    timings["teacher_s"] = teacher.get("seconds", round(time.perf_counter() - t, 1))
    pseudo = teacher["volumes"][0]["pseudo_label"]
    with open(os.path.join(a.docs, "teacher_report.json"), "w") as f:
        json.dump({**teacher, "volumes": [{**v, "image": os.path.relpath(v["image"], REPO),
                                           "pseudo_label": os.path.relpath(v["pseudo_label"], REPO)}
                                          for v in teacher["volumes"]]}, f, indent=1)
    names = d["brain_names"]
    pairs = [("brain_t1_cat12_ibsr", d["brain"], d["brain_heldout"]), ("chest_ct_slicerio", d["chest"], d["chest_heldout"])]
    cnames = {("brain_t1_cat12_ibsr", v): names[v] for v in d["heldout_brain_values"]}
    cnames.update({("chest_ct_slicerio", v): d["chest_names"][v] for v in d["heldout_chest_values"]})

    from lib.model import load_checkpoint
    from lib.session import SegmentationEngine

    base, _ = load_checkpoint(DEFAULT_MODEL)
    base = base.float().eval()
    engine = SegmentationEngine(base, "base", device="cpu", cache_bytes=2 << 30, max_crops=1)
    evals_path = os.path.join(a.work, "evals.json")
    evals = json.load(open(evals_path)) if os.path.exists(evals_path) else {}
    runs = {}

    def evaluate_once(key, model):
        if key not in evals:
            t = time.perf_counter()
            evals[key] = evaluate_model(engine, model, key, pairs, a.clicks)
            timings[f"eval_{key}_s"] = round(time.perf_counter() - t, 1)
            json.dump(evals, open(evals_path, "w"))

    evaluate_once("base", base)
    for seed in [int(s) for s in a.seeds.split(",")]:
        labels = {"pseudo": pseudo, "gt": d["brain_train_gt"], "box": d["brain_train_box"]}
        for cond in a.conditions.split(","):
            label = labels[cond]
            key = f"{cond}_s{seed}"
            t = time.perf_counter()
            model, metrics = fine_tuned(d, a.work, cond, label, seed, a)
            timings.setdefault(f"train_{key}_s", metrics.get("seconds", round(time.perf_counter() - t, 1)))
            runs[key] = metrics
            evaluate_once(key, model)

    # tables: per held-out structure x model, and means
    rows = []
    for key, rs in evals.items():
        for r in rs:
            rows.append({"model": key, "case": r["case"], "structure": cnames[(r["case"], r["value"])],
                         "value": r["value"], "dice@1": r["dice@1"], "dice@5": r["dice@5"]})
    with open(os.path.join(a.docs, "heldout_dice.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = {}
    for key in evals:
        rs = [r for r in rows if r["model"] == key]
        summary[key] = {"targets": len(rs)}
        for part, sel in (("all", rs), ("brain", [r for r in rs if r["case"] == "brain_t1_cat12_ibsr"]),
                          ("lungs", [r for r in rs if r["case"] == "chest_ct_slicerio"])):
            for m in ("dice@1", "dice@5"):
                summary[key][f"{part}_{m}"] = round(float(np.mean([r[m] for r in sel])), 4)
    # per condition over seeds: mean (and the per-seed values) of the held-out means
    conds = {}
    for key, v in summary.items():
        conds.setdefault(key.split("_s")[0], []).append(v)
    by_cond = {c: {m: {"mean": round(float(np.mean([v[m] for v in vs])), 4), "seeds": [v[m] for v in vs]}
                   for m in vs[0] if m != "targets"} for c, vs in conds.items()}
    table = []  # per held-out structure: condition means over seeds
    for (case, value), name in cnames.items():
        row = {"case": case, "structure": name, "value": value}
        for c in conds:
            for m in ("dice@1", "dice@5"):
                row[f"{c}_{m}"] = round(float(np.mean([r[m] for r in rows if r["model"].split("_s")[0] == c
                                                       and r["case"] == case and r["value"] == value])), 4)
        table.append(row)
    with open(os.path.join(a.docs, "heldout_table.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    with open(os.path.join(a.docs, "evals.json"), "w") as f:
        json.dump(evals, f)
    from lib.medsam.teacher import dice, read_label

    gt_lab, box_lab = read_label(d["brain_train_gt"])[0], read_label(d["brain_train_box"])[0]
    pseudo_rows = [{"structure": names[s["value"]], "value": s["value"], "dice_vs_gt": s["dice_vs_gt"],
                    "box_fill_dice_vs_gt": round(dice(box_lab == s["value"], gt_lab == s["value"]), 4),
                    "slices_encoded": s["slices_encoded"], "seconds": s["seconds"]["total"]}
                   for s in teacher["volumes"][0]["structures"]]
    with open(os.path.join(a.docs, "pseudo_label_dice.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(pseudo_rows[0]))
        w.writeheader()
        w.writerows(pseudo_rows)
    timings["total_s"] = round(time.perf_counter() - t_all, 1)
    out = {"split": {"train_structures": TRAIN, "heldout": HELDOUT_BRAIN + HELDOUT_CHEST},
           "options": vars(a), "by_condition": by_cond, "summary": summary, "pseudo_label_mean_dice": teacher.get("mean_dice_vs_gt"),
           "runs": runs, "timings_this_invocation": timings, "torch_threads": torch.get_num_threads(),
           "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}"}
    with open(os.path.join(a.docs, "summary.json"), "w") as f:
        json.dump(out, f, indent=1, default=str)
    log.info(json.dumps(by_cond, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
