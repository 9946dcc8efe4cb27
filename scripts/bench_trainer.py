"""Trainer steps per second with and without the frozen-encoder embedding cache (CPU by default).

One step = a batch of training crops through the SAM-Med3D click-simulation recipe (num_clicks
decoder iterations, DiceCE, backward, clipping, AdamW) -- lib.training.recipe.train_step, as the
fine-tuning task runs it.
  * cached:    embeddings of the crop variants were computed earlier (epoch >= 2 of a run): the
               step reads them from the EmbeddingCache and runs the click chain
  * no cache:  what the same trainer does without the cache: each example is cropped through the
               session from the loaded volume (resample, clamp, z-normalise, jitter offset, flips),
               encoded (no grad: the encoder is frozen), then the same click chain
  * reference chain (--reference): the cached step with the chain computed as before the
               optimisation (Sam3D.decode + F.interpolate + autograd DiceCE; ClickChain(fast=False))

The paths run interleaved, one step each in turn, each on its own copy of the model and optimiser,
so load from other jobs on the machine hits them alike. Medians; the first step of each is warm-up.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python scripts/bench_trainer.py --threads 1 --model default --steps 5 --reference
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python scripts/bench_trainer.py --threads 1 --model released --steps 3 --reference

Data: CT phantoms (lib.synthetic.phantoms) written as NIfTI; targets = their labelled objects.
"""
import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "apps", "sammed3d"))

from lib.model import build_sam_med3d, load_checkpoint  # noqa: E402
from lib.trainers.data import CropSource, EmbeddingCache, find_targets, make_variants  # noqa: E402
from lib.trainers.finetune import _example  # noqa: E402
from lib.trainers.options import FineTuneOptions  # noqa: E402
from lib.training.recipe import ClickChain, build_optimizer, click_rngs, set_trainable, train_step  # noqa: E402
from lib.synthetic.cases import write_nifti  # noqa: E402
from lib.synthetic.phantoms import generate_phantom  # noqa: E402
from lib.versions import encoder_fingerprint  # noqa: E402


def phantom_samples(folder, n):
    out = []
    for s in range(n):
        img, lab, _ = generate_phantom(1000 + s, (128, 128, 128), modality="ct")
        paths = [write_nifti(img, os.path.join(folder, f"img{s}.nii.gz"), (1.5, 1.5, 1.5), dtype=img.dtype),
                 write_nifti(lab, os.path.join(folder, f"lab{s}.nii.gz"), (1.5, 1.5, 1.5), dtype=np.uint8)]
        out.append({"image": paths[0], "label": paths[1]})
    return out


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        return None


def load_model(which):
    if which == "released":
        torch.manual_seed(0)
        return build_sam_med3d(None), "released-size architecture, random weights"
    path = os.path.join(REPO, "apps", "sammed3d", "model", "default", "model.pt") if which == "default" else which
    return load_checkpoint(path)[0], os.path.relpath(path, REPO)


class Path:
    """One way of stepping: its own model copy, optimiser, chain, cache."""

    def __init__(self, model, targets, opts, cached, fast):
        self.model, self.targets, self.opts, self.cached = copy.deepcopy(model), targets, opts, cached
        set_trainable(self.model, opts.train_parts)
        self.opt = build_optimizer(self.model, opts)
        self.chain = ClickChain(self.model, False, opts.loss_size, fast=fast)
        self.sha = encoder_fingerprint(self.model)
        self.source = CropSource()
        self.cache = EmbeddingCache() if cached else None
        self.variants = [make_variants(opts.variants, opts.jitter, opts.flip, np.random.default_rng([0, i]))
                         for i in range(len(targets))]
        self.rs = np.random.default_rng(0)
        self.times = []
        if cached:  # warm: every variant encoded once (what epoch 1 does)
            for i, t in enumerate(targets):
                for v in self.variants[i]:
                    _example(self.model, t, v, self.source, self.cache, True, self.sha, opts, "cpu")
        else:  # the volumes are loaded once (CropSource keeps them), as in a real run
            for i, t in enumerate(targets):
                self.source.build(t, self.variants[i][0])

    def step(self, step):
        t0 = time.perf_counter()
        idx = self.rs.integers(len(self.targets), size=self.opts.batch_size)
        xs, ys = zip(*[_example(self.model, self.targets[i], self.variants[i][self.rs.integers(len(self.variants[i]))],
                                self.source, self.cache, True, self.sha, self.opts, "cpu") for i in idx])
        train_step(self.chain, self.opt, torch.cat(xs), torch.cat(ys), self.opts, *click_rngs(step, "cpu"),
                   encode=not self.cached)
        self.times.append(time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="default | released | checkpoint path")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--loss-size", type=int, default=64)
    p.add_argument("--num-clicks", type=int, default=11)
    p.add_argument("--volumes", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--reference", action="store_true", help="also time the cached step with the pre-optimisation chain")
    p.add_argument("--out", default=None, help="write the result as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    model, desc = load_model(args.model)
    opts = FineTuneOptions(batch_size=args.batch, loss_size=args.loss_size, num_clicks=args.num_clicks, variants=2)
    with tempfile.TemporaryDirectory() as tmp:
        targets = find_targets(phantom_samples(tmp, args.volumes), max_components=1)[:4]
        paths = {"cached": Path(model, targets, opts, True, True), "no_cache": Path(model, targets, opts, False, True)}
        if args.reference:
            paths["cached_reference_chain"] = Path(model, targets, opts, True, False)
        for step in range(args.steps + 1):
            for name, path in paths.items():
                path.step(step)
            print(f"step {step}: " + ", ".join(f"{n} {p.times[-1]:.3f} s" for n, p in paths.items()), flush=True)
        res = {}
        for name, path in paths.items():
            t = path.times[1:]  # the first step warms up allocators
            res[name] = {"median_step_s": float(np.median(t)), "steps_per_s": 1 / float(np.median(t)),
                         "step_s": [round(x, 3) for x in t]}
            print(f"{name:24s} median {np.median(t):.3f} s/step = {1 / np.median(t):.3f} steps/s", flush=True)
    res["speedup"] = res["cached"]["steps_per_s"] / res["no_cache"]["steps_per_s"]
    if args.reference:
        res["chain_speedup_vs_reference"] = res["cached"]["steps_per_s"] / res["cached_reference_chain"]["steps_per_s"]
    res.update(model=desc, batch=args.batch, loss_size=args.loss_size, num_clicks=args.num_clicks, steps=args.steps,
               threads=torch.get_num_threads(), machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               load_avg_start=load_start, load_avg=os.getloadavg(), torch=torch.__version__,
               omp_num_threads=os.environ.get("OMP_NUM_THREADS"), commit=_commit(), date=time.strftime("%Y-%m-%d %H:%M"))
    print(f"speedup {res['speedup']:.1f}x  ({desc}, batch {args.batch}, loss grid {args.loss_size}^3, {args.num_clicks} clicks)")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
