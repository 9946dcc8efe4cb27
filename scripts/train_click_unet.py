#!/usr/bin/env python
"""Train the offline default model (ClickUNet3D, lib/model/click_unet.py): resumable, CPU-friendly.

Data: lib/dataengine (real backgrounds from scripts/prepare_real_volumes.py with licensed labels,
supervoxel regions and synthetic lesions; phantoms), on 64^3 crops by default (the model is fully
convolutional and serves 128^3 crops; 64^3 trains 8x cheaper on a CPU).
Step: the one training recipe (lib.training.recipe: build_optimizer, click_losses: newest click drawn uniformly in
the error region, previous logits fed back, mask-only iterations), DiceCE on a loss grid of
--loss-size^3, AdamW, gradient clipping.

Resumable: every --checkpoint-min minutes OUT/state.pt (model, optimiser, step) and OUT/model.pt
(app checkpoint the server loads) are replaced atomically; a new run with the same --out continues
from state.pt. OUT/train_log.jsonl gets a line per step and a dev-set evaluation (Dice after 1 and
5 clicks on fixed 128^3 crops drawn with a seed the training never uses) every --eval-every-min.

    .venv/bin/python scripts/train_click_unet.py --out work_data/click_unet --npz-dir work_data/train_npz \
        --minutes 120 --threads 1
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "apps", "sammed3d"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lib.dataengine import TrainingSampler  # noqa: E402
from lib.model import CLICK_UNET_CONFIG, atomic_write, build_model, load_checkpoint, save_checkpoint  # noqa: E402
from lib.model.training_view import LossGridView  # noqa: E402
from lib.training.loop import evaluate_clicks, summarise  # noqa: E402
from lib.training.recipe import (  # noqa: E402
    RecipeOptions, build_optimizer, click_losses, loss_targets, set_lr_scale, trains_on_click_history)

DEV_SEED = 987_654  # the dev crops' sampler seed; training uses --seed (never this one)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--npz-dir", default=None)
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget of this invocation")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--config", default=None,
                   help="model config JSON of a new run (default: CLICK_UNET_CONFIG); a resumed run keeps its own")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--loss-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--num-clicks", type=int, default=6)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--cosine", type=int, default=0, metavar="STEPS",
                   help="decay the lr by a cosine from --lr at the step this invocation starts to 5%% of it STEPS "
                        "steps later (then it stays there); 0: constant after warm-up. A resumed run takes --lr "
                        "and restarts the cosine from its own step")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dev-crops", type=int, default=16)
    p.add_argument("--checkpoint-min", type=float, default=5.0)
    p.add_argument("--eval-every-min", type=float, default=20.0)
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--init", default=None,
                   help="start from this app checkpoint or state.pt (ignored when resuming); tensors that grew in "
                        "input channels (the decoder's first layer when geodesic maps are added) keep the old "
                        "weights in their leading channels and zeros in the new ones")
    p.add_argument("--zero-head", action="store_true",
                   help="with --init: zero the decoder's output layer, so a model with a geodesic prior "
                        "(prior_margin_cells) starts as exactly the classical region and learns a residual")
    p.add_argument("--eval-only", default=None, metavar="CHECKPOINT",
                   help="only evaluate this app checkpoint on --dev-crops development crops (the same crops a "
                        "run's log reports, more of them with a larger --dev-crops), print the JSON and exit")
    p.add_argument("--export", default=None, metavar="MODEL_PT",
                   help="write the model this command would start from (resumed state, or --init [--zero-head] "
                        "with --config) as an app checkpoint and exit without training: how a prior-only default "
                        "or a chosen step is packaged for serving")
    p.add_argument("--export-config", default=None, metavar="JSON",
                   help="with --export: keys that update the exported config, e.g. the serving refinement "
                        "'{\"refine\": {\"band\": 6.0, \"gamma\": 60.0}}' (no key may change a weight's shape)")
    p.add_argument("--export-version", default=None, help="with --export: the version string saved with it")
    return p.parse_args(argv)


def lr_scale(step: int, first: int, warmup: int, cosine: int) -> float:
    """The lr multiplier at `step`: linear warm-up over the run's first `warmup` steps, then 1, or with
    `cosine` > 0 a cosine from 1 at `first` (this invocation's first step) to 0.05 `cosine` steps later."""
    scale = min(1.0, (step + 1) / warmup)
    if cosine > 0:
        t = min(1.0, (step - first) / cosine)
        scale *= 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t))
    return scale


def dev_set(sampler: TrainingSampler, n: int):
    imgs, tgts, kinds = [], [], []
    for i in range(n):
        x, y, k = sampler.sample(DEV_SEED + i, crop=128)  # the served crop size
        imgs.append(x)
        tgts.append(y)
        kinds.append(k)
    return torch.stack(imgs), torch.stack(tgts), kinds


def evaluate(model, dev):
    x, y, kinds = dev
    t = time.time()
    res = evaluate_clicks(model, x, y, n_clicks=5, batch=2, accumulate=trains_on_click_history(model))
    out = summarise(res)
    for kind in sorted(set(kinds)):
        sel = [i for i, k in enumerate(kinds) if k == kind]
        out[f"{kind}_dice@5"] = float(np.mean([res["dice@5"][i] for i in sel]))
    out["seconds"] = round(time.time() - t, 1)
    model.train()
    return out


def warm_start(model, path: str) -> None:
    """Load `path` (state.pt or app checkpoint) into `model`; see --init for widened tensors."""
    st = torch.load(path, map_location="cpu", weights_only=True)
    src = st["model"] if "model" in st and "step" in st else load_checkpoint(path)[0].state_dict()
    own = model.state_dict()
    for name, t in own.items():
        old = src.get(name)
        if old is None:
            continue
        if old.shape == t.shape:
            t.copy_(old)
        elif old.dim() == t.dim() and old.dim() > 1 and old.shape[0] == t.shape[0] and old.shape[2:] == t.shape[2:] \
                and old.shape[1] < t.shape[1]:
            t.zero_()
            t[:, : old.shape[1]] = old
        else:
            raise SystemExit(f"--init: {name} is {tuple(old.shape)} there, {tuple(t.shape)} here")
    model.load_state_dict(own)


def export(model, args, step: int) -> None:
    """--export: the model as an app checkpoint, its config updated by --export-config (strict load)."""
    config = {**model.config, **json.loads(args.export_config or "{}")}
    out = build_model(config)
    out.load_state_dict(model.state_dict(), strict=True)
    version = args.export_version or f"click-unet-step{step}"
    save_checkpoint(out.eval(), args.export, version=version, exported_from=args.init if step == 0 else args.out)
    print(json.dumps({"export": args.export, "version": version, "step": step, "config": out.config}), flush=True)


def save_state(path, model, opt, step, args):
    payload = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
               "config": model.config, "args": vars(args)}
    atomic_write(path, lambda f: torch.save(payload, f))


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.eval_only:
        model = load_checkpoint(args.eval_only)[0].to(args.device)
        dev = dev_set(TrainingSampler(args.npz_dir, crop=args.crop, seed=DEV_SEED), args.dev_crops)
        print(json.dumps({"checkpoint": args.eval_only, "dev_crops": args.dev_crops, **evaluate(model.eval(), dev)}))
        return
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    device = torch.device(args.device)
    state_path = os.path.join(args.out, "state.pt")
    st = torch.load(state_path, map_location=device, weights_only=True) if os.path.exists(state_path) else None
    # a resumed run keeps the config it was started with (--config applies to a new run only)
    config = st["config"] if st else (json.loads(args.config) if args.config else dict(CLICK_UNET_CONFIG))
    model = build_model(config).to(device)
    recipe = RecipeOptions(lr=args.lr, decoder_lr_ratio=1.0, weight_decay=args.weight_decay,
                           num_clicks=args.num_clicks, grad_clip=args.grad_clip)
    opt = build_optimizer(model, recipe)
    step = 0
    if st:
        model.load_state_dict(st["model"])
        try:
            opt.load_state_dict(st["optimizer"])
        except ValueError as e:  # saved by an earlier optimiser layout: the moments restart
            print(f"optimiser state not restored ({e}); continuing with fresh moments", flush=True)
        step = int(st["step"])
        for g in opt.param_groups:  # --lr applies to a resumed run too (decoder_lr_ratio 1: one lr)
            g["base_lr"] = args.lr
        print(f"resumed at step {step}", flush=True)
    elif args.init:
        warm_start(model, args.init)
        if args.zero_head:
            with torch.no_grad():
                model.mask_decoder.head.weight.zero_()
                model.mask_decoder.head.bias.zero_()
        print(f"initialised from {args.init}" + (" (output layer zeroed)" if args.zero_head else ""), flush=True)
    if args.export:
        export(model, args, step)
        return
    sampler = TrainingSampler(args.npz_dir, crop=args.crop, seed=args.seed)
    dev_sampler = TrainingSampler(args.npz_dir, crop=args.crop, seed=DEV_SEED)
    dev = dev_set(dev_sampler, args.dev_crops)
    print(f"params {sum(p.numel() for p in model.parameters()):,}; data ready ({time.time() - t0:.0f} s); "
          f"real volumes {[v.name for v in sampler.real]}", flush=True)
    log = open(os.path.join(args.out, "train_log.jsonl"), "a")
    if step == 0:
        ev = evaluate(model, dev)
        log.write(json.dumps({"step": 0, "dev": ev, "time": time.time()}) + "\n")
        log.flush()
    last_ckpt = last_eval = time.time()
    model.train()
    ema = None
    first = step
    while time.time() - t0 < args.minutes * 60 and not (args.max_steps and step >= args.max_steps):
        ts = time.time()
        x, y, kinds = sampler.batch(range(step * args.batch, (step + 1) * args.batch))
        x, y = x.to(device), y.to(device)
        set_lr_scale(opt, lr_scale(step, first, args.warmup_steps, args.cosine))
        rs = np.random.default_rng([args.seed, step])
        gen = torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + step)
        emb = model.encode(x)
        loss, dice = click_losses(LossGridView(model, args.loss_size, crop=args.crop), emb,
                                  loss_targets(y, args.loss_size), args.num_clicks, rs, gen, False,
                                  history=trains_on_click_history(model))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        step += 1
        lv = float(loss.detach()) / args.num_clicks
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        rec = {"step": step, "loss": round(lv, 4), "loss_ema": round(ema, 4), "dice": round(float(dice.mean()), 4),
               "grad_norm": round(float(gnorm), 3), "lr": float(f"{opt.param_groups[0]['lr']:.3g}"), "kinds": kinds,
               "s": round(time.time() - ts, 2)}
        log.write(json.dumps(rec) + "\n")
        if step % 20 == 0:
            log.flush()
            print(json.dumps(rec), flush=True)
        if not math.isfinite(lv):
            raise SystemExit(f"non-finite loss at step {step}")
        if time.time() - last_ckpt > args.checkpoint_min * 60:
            save_state(state_path, model, opt, step, args)
            save_checkpoint(model, os.path.join(args.out, "model.pt"), version=f"click-unet-step{step}")
            last_ckpt = time.time()
        if time.time() - last_eval > args.eval_every_min * 60:
            ev = evaluate(model, dev)
            log.write(json.dumps({"step": step, "dev": ev, "time": time.time()}) + "\n")
            log.flush()
            print("dev", step, json.dumps(ev), flush=True)
            last_eval = time.time()
    save_state(state_path, model, opt, step, args)
    save_checkpoint(model, os.path.join(args.out, "model.pt"), version=f"click-unet-step{step}")
    ev = evaluate(model, dev)
    log.write(json.dumps({"step": step, "dev": ev, "time": time.time(), "final": True}) + "\n")
    log.close()
    print("final dev", step, json.dumps(ev), flush=True)


if __name__ == "__main__":
    main()
