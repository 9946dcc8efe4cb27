#!/usr/bin/env python
"""Train the embedded default SAM-Med3D model (reduced size, from scratch, encoder included).

Data: synthetic phantoms generated on the training device (lib/synthetic/phantoms.py), optionally
mixed with real volumes prepared by scripts/prepare_real_volumes.py (.npz at 1.5 mm; only their
training structures are used; held-out structures are only evaluated).

Needs only torch + numpy + scipy. Run from the repo root:
    python scripts/train_default_model.py --out artifacts/default_model --minutes 7 --device cuda \
        --npz-dir work_data/real_npz

Writes into --out: model.pt (app checkpoint format, parameters in fp16 so it stays <= 25 MB,
written atomically), metrics.json (config, training log, validation Dice after 1 and 5 clicks on
held-out phantoms and on held-out real structures, per structure), train_log.jsonl.
"""
from __future__ import annotations

import argparse
import copy
import glob
import json
import math
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "apps", "sammed3d"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lib.model import build_sam_med3d, save_checkpoint  # noqa: E402
from lib.training.crops import CROP_SIZE, load_npz_volume, make_crop, pick_target  # noqa: E402
from lib.training.loop import TrainConfig, build_optimizer, evaluate_clicks, set_lr_scale, summarise, train_step  # noqa: E402
from lib.synthetic.phantoms import generate_phantom_torch  # noqa: E402
from lib.training.pool import VolumePool  # noqa: E402

VERSION = "default-v1"
# About 11.4 M parameters: 21.7 MB with fp16 parameters. Window 4 gives the non-global blocks real
# locality on the 8^3 token grid (the released window 14 would pad 512 tokens to 2,744).
DEFAULT_CONFIG = {
    "image_size": 128, "vit_patch_size": 16, "in_chans": 1,
    "encoder_embed_dim": 288, "encoder_depth": 7, "encoder_num_heads": 6, "encoder_global_attn_indexes": [2, 5],
    "window_size": 4, "mlp_ratio": 4, "qkv_bias": True, "use_rel_pos": True, "use_abs_pos": True,
    "layernorm_eps": 1e-06, "prompt_embed_dim": 192, "mask_in_chans": 16, "num_multimask_outputs": 3,
    "iou_head_depth": 3, "iou_head_hidden_dim": 256,
    "decoder_transformer": {"depth": 2, "mlp_dim": 1024, "num_heads": 8, "attention_downsample_rate": 2,
                            "activation": "ReLU"},
}
MAX_BYTES = 25 * 1024 * 1024


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--minutes", type=float, default=7.0, help="wall-clock budget, evaluation included")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--config", default=None, help="model config: JSON string or path (default: built-in)")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--decoder-lr-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--num-clicks", type=int, default=11)
    p.add_argument("--warmup-steps", type=int, default=150)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--npz-dir", default=None, help="folder of real .npz volumes (prepare_real_volumes.py)")
    p.add_argument("--real-fraction", type=float, default=0.25, help="share of crops from real volumes")
    p.add_argument("--pool-size", type=int, default=48, help="phantoms kept on the device")
    p.add_argument("--phantom-size", type=int, default=144)
    p.add_argument("--refresh-per-step", type=int, default=2, help="new phantoms per step")
    p.add_argument("--jitter", type=int, default=16)
    p.add_argument("--val-phantoms", type=int, default=24)
    p.add_argument("--eval-every-min", type=float, default=3.0)
    p.add_argument("--eval-reserve-s", type=float, default=60.0, help="time kept for the final evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None, help="start from this checkpoint (same config)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: time only)")
    return p.parse_args(argv)


def load_config(arg):
    if arg is None:
        return copy.deepcopy(DEFAULT_CONFIG)
    text = open(arg).read() if os.path.exists(arg) else arg
    return json.loads(text)


def phantom_val_set(n, seed, device, size=144, jitter=8):
    """Held-out phantoms: seeds far from the training range, one structure each, fixed crops."""
    imgs, tgts = [], []
    for i in range(n):
        rs = np.random.default_rng([seed, 777, i])
        image, label, mod = generate_phantom_torch(10**9 + seed * 10_007 + i, (size,) * 3, device=device)
        v = pick_target(label, None, rs)
        if v is None:
            continue
        a, b = make_crop(image, label == v, mod == "ct", rs, jitter, False, CROP_SIZE)
        imgs.append(a.cpu())
        tgts.append(b.cpu())
    return torch.stack(imgs), torch.stack(tgts)


def real_val_sets(npz_dir):
    """Held-out real structures: {name: (images (N,1,128^3), targets)}; crops centred, no flip."""
    out = {}
    for path in sorted(glob.glob(os.path.join(npz_dir, "*.npz"))) if npz_dir else []:
        image, label, is_ct, _ = load_npz_volume(path)
        with np.load(path, allow_pickle=False) as z:
            test_values = [int(v) for v in z["test_values"]]
            names = dict(zip([int(v) for v in z["values"]], [str(s) for s in z["names"]]))
        for v in test_values:
            mask = label == v
            if int(mask.sum()) < 30:
                continue
            a, b = make_crop(image, mask, is_ct, np.random.default_rng(0), 0, False, CROP_SIZE)
            key = f"{os.path.splitext(os.path.basename(path))[0]}:{names.get(v, v)}"
            out[key] = (a[None], b[None])
    return out


def run_eval(model, phantom_val, real_val, bf16, accumulate_modes=(False,)):
    res = {}
    for acc in accumulate_modes:
        tag = "accumulate" if acc else "newest"
        r = summarise(evaluate_clicks(model, *phantom_val, accumulate=acc, bf16=bf16))
        res[f"phantom_{tag}"] = r
        per = {}
        for name, (x, y) in real_val.items():
            per[name] = summarise(evaluate_clicks(model, x, y, accumulate=acc, bf16=bf16))
        if per:
            res[f"real_heldout_{tag}"] = {
                "per_structure": per,
                "mean": {k: float(np.mean([p[k] for p in per.values()])) for k in ("dice@1", "dice@5")},
            }
    return res


def save_model(model, path, **meta):
    """App checkpoint with parameters cast to fp16 (buffers stay fp32) -> size in bytes."""
    half = copy.deepcopy(model).cpu()
    for p in half.parameters():
        p.data = p.data.half()
    save_checkpoint(half, path, **meta)
    return os.path.getsize(path)


def write_json(path, obj):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    budget = args.minutes * 60.0
    os.makedirs(args.out, exist_ok=True)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    config = load_config(args.config)
    model = build_sam_med3d(config).to(device)
    if args.init:
        from lib.model import load_checkpoint
        init_model, _ = load_checkpoint(args.init, config=config)
        model.load_state_dict(init_model.state_dict())
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params:,} (fp16 {n_params * 2 / 2**20:.1f} MB)", flush=True)
    if n_params * 2 > MAX_BYTES:
        raise SystemExit(f"model too large for a 25 MB checkpoint: {n_params:,} parameters")
    cfg = TrainConfig(lr=args.lr, decoder_lr_ratio=args.decoder_lr_ratio, weight_decay=args.weight_decay,
                      num_clicks=args.num_clicks, grad_clip=args.grad_clip,
                      bf16=not args.no_bf16 and device.type == "cuda")
    opt = build_optimizer(model, cfg)
    pool = VolumePool(device, args.pool_size, (args.phantom_size,) * 3, args.seed, args.npz_dir,
                      args.real_fraction, args.jitter)
    phantom_val = phantom_val_set(args.val_phantoms, args.seed, device, args.phantom_size)
    real_val = real_val_sets(args.npz_dir)
    print(f"pool ready: {len(pool.phantoms)} phantoms, {len(pool.real)} real volumes, "
          f"val {phantom_val[0].shape[0]} phantom crops + {len(real_val)} real held-out structures "
          f"({time.time() - t0:.0f}s)", flush=True)
    rs = np.random.default_rng(args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    log_path = os.path.join(args.out, "train_log.jsonl")
    log = open(log_path, "w")
    history, evals = [], []
    t_train = time.time()
    train_budget = budget - args.eval_reserve_s - (t_train - t0)
    next_eval = t_train + args.eval_every_min * 60
    step, ema = 0, None
    while True:
        elapsed = time.time() - t_train
        if elapsed >= train_budget or (args.max_steps and step >= args.max_steps):
            break
        frac = min(1.0, elapsed / max(train_budget, 1.0))
        scale = min(1.0, (step + 1) / args.warmup_steps) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        set_lr_scale(opt, scale)
        images, targets = pool.sample(args.batch, rs)
        r = train_step(model, opt, images, targets, cfg, rs, gen)
        pool.refresh(args.refresh_per_step)
        step += 1
        ema = r["loss"] if ema is None else 0.95 * ema + 0.05 * r["loss"]
        rec = {"step": step, "t": round(time.time() - t0, 1), "lr_scale": round(scale, 4), "loss_ema": round(ema, 4), **r}
        log.write(json.dumps(rec) + "\n")
        if step % 25 == 0 or step == 1:
            history.append(rec)
            print(json.dumps(rec), flush=True)
            log.flush()
        if time.time() >= next_eval and time.time() - t_train < train_budget - args.eval_reserve_s:
            ev = run_eval(model, phantom_val, real_val, cfg.bf16)
            ev["step"] = step
            evals.append(ev)
            print("eval", json.dumps(ev), flush=True)
            size = save_model(model, os.path.join(args.out, "model.pt"), version=VERSION,
                              metrics={"partial": True, **ev}, training={"step": step})
            next_eval = time.time() + args.eval_every_min * 60
    log.close()
    final = run_eval(model, phantom_val, real_val, cfg.bf16, accumulate_modes=(False, True))
    print("final", json.dumps(final), flush=True)
    training = {"steps": step, "seconds": round(time.time() - t0, 1), "args": vars(args),
                "train_config": cfg.__dict__, "n_params": n_params, "device": str(device),
                "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
                "torch": str(torch.__version__), "crops_seen": step * args.batch}
    path = os.path.join(args.out, "model.pt")
    size = save_model(model, path, version=VERSION, metrics=final, training=training)
    if size > MAX_BYTES:
        print(f"WARNING: checkpoint is {size / 2**20:.1f} MB > 25 MB", flush=True)
    write_json(os.path.join(args.out, "metrics.json"),
               {"version": VERSION, "config": model.config, "final": final, "evals": evals,
                "history": history, "training": training, "checkpoint_bytes": size})
    print(f"saved {path} ({size / 2**20:.1f} MB) after {step} steps, {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
