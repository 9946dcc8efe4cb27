"""Trainer steps per second with and without the frozen-encoder embedding cache (CPU by default).

One step = a batch of training crops through the SAM-Med3D click-simulation recipe (num_clicks
decoder iterations, DiceCE, backward, AdamW) -- exactly lib.trainers.finetune's step.
  * cached:    embeddings of the crop variants were computed earlier (epoch >= 2 of a run)
  * no cache:  each example is cropped through the session (resample + z-normalise) and encoded

    .venv/bin/python scripts/bench_trainer.py --model default --steps 3 --loss-size 64
    .venv/bin/python scripts/bench_trainer.py --model released --steps 2 --loss-size 64   # random weights, full size

Data: CT phantoms (lib.training.phantoms) written as NIfTI; targets = their labelled objects.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import SimpleITK as sitk
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "apps", "sammed3d"))

from lib.model import build_sam_med3d, load_checkpoint  # noqa: E402
from lib.trainers.data import CropSource, EmbeddingCache, find_targets, make_variants  # noqa: E402
from lib.trainers.finetune import ClickChain, _example, build_optimizer, set_trainable  # noqa: E402
from lib.trainers.options import FineTuneOptions  # noqa: E402
from lib.training.phantoms import generate_phantom  # noqa: E402
from lib.versions import encoder_fingerprint  # noqa: E402


def phantom_samples(folder, n):
    out = []
    for s in range(n):
        img, lab, _ = generate_phantom(1000 + s, (128, 128, 128), modality="ct")
        paths = []
        for arr, name in ((img, f"img{s}.nii.gz"), (lab.astype(np.uint8), f"lab{s}.nii.gz")):
            im = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
            im.SetSpacing((1.5, 1.5, 1.5))
            paths.append(os.path.join(folder, name))
            sitk.WriteImage(im, paths[-1])
        out.append({"image": paths[0], "label": paths[1]})
    return out


def load_model(which):
    if which == "released":
        torch.manual_seed(0)
        return build_sam_med3d(None), "released-size architecture, random weights"
    path = os.path.join(REPO, "apps", "sammed3d", "model", "default", "model.pt") if which == "default" else which
    return load_checkpoint(path)[0], os.path.relpath(path, REPO)


def run(model, targets, opts, cached, steps, rs):
    set_trainable(model, opts.train_parts)
    opt = build_optimizer(model, opts)
    chain = ClickChain(model, False, opts.loss_size)
    sha = encoder_fingerprint(model)
    source = CropSource()
    cache = EmbeddingCache() if cached else None
    variants = [make_variants(opts.variants, opts.jitter, opts.flip, np.random.default_rng([0, i])) for i in range(len(targets))]
    if cached:  # warm: every variant encoded once (what epoch 1 does)
        for i, t in enumerate(targets):
            for v in variants[i]:
                _example(model, t, v, source, cache, True, sha, opts, "cpu")
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        idx = rs.integers(len(targets), size=opts.batch_size)
        xs, ys = zip(*[_example(model, targets[i], variants[i][rs.integers(len(variants[i]))], source, cache, True, sha, opts, "cpu")
                       for i in idx])
        opt.zero_grad(set_to_none=True)
        loss, _ = chain(torch.cat(xs), torch.cat(ys), step, opts.num_clicks, not cached)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times[1:]  # the first step warms up allocators


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="default | released | checkpoint path")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--loss-size", type=int, default=64)
    p.add_argument("--num-clicks", type=int, default=11)
    p.add_argument("--volumes", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=None, help="write the result as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, desc = load_model(args.model)
    opts = FineTuneOptions(batch_size=args.batch, loss_size=args.loss_size, num_clicks=args.num_clicks, variants=2)
    with tempfile.TemporaryDirectory() as tmp:
        targets = find_targets(phantom_samples(tmp, args.volumes), max_components=1)[:4]
        res = {}
        for cached in (True, False):
            t = run(model, targets, opts, cached, args.steps, np.random.default_rng(0))
            res["cached" if cached else "no_cache"] = {"median_step_s": float(np.median(t)), "steps_per_s": 1 / float(np.median(t)),
                                                       "step_s": [round(x, 3) for x in t]}
            print(("cached  " if cached else "no cache"), f"median {np.median(t):.3f} s/step = {1 / np.median(t):.3f} steps/s", flush=True)
    res["speedup"] = res["cached"]["steps_per_s"] / res["no_cache"]["steps_per_s"]
    res.update(model=desc, batch=args.batch, loss_size=args.loss_size, num_clicks=args.num_clicks, steps=args.steps,
               threads=torch.get_num_threads(), machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               load_avg=os.getloadavg(), torch=torch.__version__)
    print(f"speedup {res['speedup']:.1f}x  ({desc}, batch {args.batch}, loss grid {args.loss_size}^3, {args.num_clicks} clicks)")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
