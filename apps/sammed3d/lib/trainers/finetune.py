"""fine_tune(model, samples, options) -> (model, metrics): SAM-Med3D fine-tuning on labelled volumes.

Usable without a server (active learning, notebooks); the MONAI Label train task (task.py) wraps it
and adds publishing. Recipe (lib.training.recipe, shared with from-scratch training): per step, 11
simulated click iterations with the newest click drawn uniformly from the error region, the previous
logits fed back, two mask-only iterations, DiceCE on the upsampled logits (the loss grid: 128^3 on
CUDA, 64^3 on CPU unless loss_size says otherwise) summed over iterations, gradients clipped; AdamW
with the paper's ratios (encoder lr, prompt encoder + decoder 0.1 x lr). Crops come from the session's preprocessing
(lib.session.extract_training_crop); with the encoder frozen (default) their embeddings are
computed once per (image, crop variant, encoder) and reused across epochs (data.EmbeddingCache).

Validation after every epoch (and once before training: the live model's score) is the session's
click evaluation (lib.evaluation.loop.evaluate_target: the SegmentationEngine the server uses,
clicks at the centre of the largest error) on held-out labelled images: Dice after 1 and 5 clicks.

world_size > 1 runs torch.distributed processes (torch.multiprocessing.spawn, as MONAI Label's
multi-GPU training does): targets sharded with DistributedSampler, the learned parts wrapped in
DistributedDataParallel, validation and progress on rank 0.
"""
from __future__ import annotations

import datetime
import logging
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lib.evaluation.loop import evaluate_target
from lib.model import model_click_mode, model_refine
from lib.session.fine_region import resolve_fine
from lib.session.plain_region import resolve_region
from lib.session.local_update import resolve_local
from lib.session import DEFAULT_CLICK_MODE, SegmentationEngine
from lib.session.refine import resolve_refine
from lib.training.recipe import ClickChain, build_optimizer, click_rngs, resolve_loss_size, set_trainable, train_step
from lib.versions import encoder_fingerprint

from .data import CropSource, EmbeddingCache, Target, cache_key, find_targets, make_variants
from .options import FineTuneOptions, options_from_request
from .progress import Progress

logger = logging.getLogger(__name__)
VAL_CLICKS = 5


def image_order(samples: Sequence[Dict], seed: int = 0) -> Tuple[List[Dict], np.ndarray]:
    """(the samples sorted by image path, a seeded permutation of their indices): how held-out images are drawn,
    by split_samples and by lib.trainers.crossval's folds."""
    samples = sorted(samples, key=lambda s: s["image"])
    return samples, np.random.default_rng(seed).permutation(len(samples))


def split_samples(samples: Sequence[Dict], val_split: float, seed: int = 0) -> Tuple[List[Dict], List[Dict]]:
    """Deterministic train/validation split by image (sorted by path, then a seeded permutation)."""
    samples, order = image_order(samples, seed)
    n = len(samples)
    n_val = int(round(n * val_split))
    if val_split > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = 0
    val = [samples[i] for i in sorted(order[:n_val])]
    train = [samples[i] for i in sorted(order[n_val:])]
    return train, val


def _device(opts: FineTuneOptions, rank: int, world: int) -> torch.device:
    want = (opts.device or "auto").lower()
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("device cuda asked for, but CUDA is not available")
        if world > 1:
            torch.cuda.set_device(rank)
            return torch.device(f"cuda:{rank}")
    return torch.device(want)


@torch.no_grad()
def validate(engine: SegmentationEngine, model, version: str, encoder_changed: bool, targets: Sequence[Target],
             source: CropSource) -> Dict[str, float]:
    """The session's click evaluation of `model` on held-out targets -> Dice after 1 and 5 clicks."""
    engine.set_model(model, version, encoder_changed=encoder_changed)
    first, last, per = [], [], []
    for t in targets:
        gt = source.component_mask(t)
        d = evaluate_target(engine, t.case, t.image, gt, t.value * 100 + t.component, VAL_CLICKS)
        first.append(d[0])
        last.append(d[-1])
        per.append({"target": t.name, "dice@1": d[0], "dice@5": d[-1]})
    m = {"dice@1": float(np.mean(first)), "dice@5": float(np.mean(last))}
    m["dice_mean"] = (m["dice@1"] + m["dice@5"]) / 2
    model.train()
    return m


def _callbacks(callbacks, method: str, *args) -> Dict[str, Any]:
    extra: Dict[str, Any] = {}
    for cb in callbacks or ():
        fn = getattr(cb, method, None)
        if fn is not None:
            out = fn(*args)
            if isinstance(out, dict):
                extra.update(out)
    return extra


def _all_mean(values: List[float], world: int, device) -> List[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(t)
        t /= world
    return t.tolist()


def _progress_bar(total: int, desc: str, enabled: bool):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, mininterval=2.0, ascii=True,
                    dynamic_ncols=False, ncols=100)
    except ImportError:
        return None


def _train_process(rank: int, world: int, model, train_targets: List[Target], val_targets: List[Target],
                   opts: FineTuneOptions, callbacks, work_dir: Optional[str], init_method: Optional[str],
                   run_id: str) -> Optional[Dict[str, Any]]:
    """One process (of `world`). Rank 0 validates, reports, calls the callbacks and returns the result."""
    if world > 1:
        logging.basicConfig(level=logging.INFO, force=True,
                            format=f"[%(asctime)s][rank {rank}][%(levelname)s](%(name)s) - %(message)s")
    device = _device(opts, rank, world)
    if world > 1:
        backend = opts.backend or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend, init_method=init_method, world_size=world, rank=rank,
                                timeout=datetime.timedelta(hours=4))
    try:
        return _train(rank, world, device, model, train_targets, val_targets, opts, callbacks, work_dir, run_id)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(rank, world, device, model, train_targets, val_targets, opts, callbacks, work_dir, run_id):
    torch.manual_seed(opts.seed)
    model = model.to(device)
    parts = set_trainable(model, opts.train_parts)
    encoder_frozen = "image_encoder" not in parts
    enc_sha = encoder_fingerprint(model)
    optimizer = build_optimizer(model, opts)
    loss_size = resolve_loss_size(opts.loss_size, device, model.image_size)
    chain = ClickChain(model, bf16=device.type == "cuda", loss_size=loss_size)
    net = chain
    if world > 1:
        net = nn.parallel.DistributedDataParallel(chain, device_ids=[device.index] if device.type == "cuda" else None,
                                                  find_unused_parameters=True)  # the IoU head never gets a loss
    cache = EmbeddingCache(opts.cache_dir) if (encoder_frozen and opts.embedding_cache) else None
    source = CropSource(opts.modality)
    variants = [make_variants(opts.variants, opts.jitter, opts.flip, np.random.default_rng([opts.seed, i]))
                for i in range(len(train_targets))]
    sampler = torch.utils.data.distributed.DistributedSampler(
        list(range(len(train_targets))), num_replicas=world, rank=rank, shuffle=True, seed=opts.seed)
    steps_per_epoch = opts.steps_per_epoch or math.ceil(len(sampler) / opts.batch_size)
    main = rank == 0

    progress = engine = None
    baseline = None
    if main:
        logger.info(f"fine-tuning run {run_id}: {len(train_targets)} training targets, {len(val_targets)} validation "
                    f"targets; learning {parts} (encoder {'frozen' if encoder_frozen else 'learns'}); "
                    f"{opts.max_epochs} epochs x {steps_per_epoch} steps x batch {opts.batch_size} x {world} process(es); "
                    f"lr {opts.lr:g} (prompt/decoder {opts.lr * opts.decoder_lr_ratio:g}); loss grid {loss_size}^3; device {device}")
        progress = Progress(opts.stats_path, opts.tensorboard_dir, opts.max_epochs, steps_per_epoch, opts.key_metric,
                            run_id, extra={"status": "RUNNING", "train_parts": list(parts), "world_size": world})
        if val_targets:
            engine = SegmentationEngine(model, f"{run_id}-e0", device=device, cache_bytes=2 << 30,
                                        modality=opts.modality,
                                        click_mode=opts.click_mode or model_click_mode(model) or DEFAULT_CLICK_MODE,
                                        max_crops=opts.val_max_crops,
                                        # validated as served: the model config's refinement (default-v3's)
                                        refine=resolve_refine("auto", model_refine(model)),
                                        fine=resolve_fine("auto", getattr(model, "config", None)),
                                        local=resolve_local("auto", getattr(model, "config", None)),
                                        region=resolve_region("auto", getattr(model, "config", None),
                                                              getattr(model, "prior", None) is not None))
            t = time.perf_counter()
            baseline = validate(engine, model, f"{run_id}-e0", False, val_targets, source)
            logger.info(f"epoch 0 (live model): validation dice@1 {baseline['dice@1']:.4f} dice@5 {baseline['dice@5']:.4f} "
                        f"({time.perf_counter() - t:.1f} s)")
        else:
            logger.warning("no held-out labelled images: no validation (publish=improved will not publish)")
        progress.baseline(baseline)
    best_score = baseline[opts.key_metric] if baseline else -math.inf
    best_state = _learned_state(model, parts) if baseline else None
    best_epoch, best_val = 0, baseline
    history: List[Dict[str, Any]] = []
    published: List[str] = []
    global_step, train_time, n_steps = 0, 0.0, 0

    for epoch in range(1, opts.max_epochs + 1):
        sampler.set_epoch(epoch)
        order = list(sampler)
        need = steps_per_epoch * opts.batch_size
        order = (order * math.ceil(need / max(len(order), 1)))[:need]
        rs = np.random.default_rng([opts.seed, epoch, rank])
        losses, dices = [], []
        bar = _progress_bar(steps_per_epoch, f"epoch {epoch}/{opts.max_epochs}", opts.progress and main)
        model.train()
        t_epoch = time.perf_counter()
        for step in range(steps_per_epoch):
            xs, ys = [], []
            for i in order[step * opts.batch_size:(step + 1) * opts.batch_size]:
                t, v = train_targets[i], variants[i][int(rs.integers(len(variants[i])))]
                x, y = _example(model, t, v, source, cache, encoder_frozen, enc_sha, opts, device)
                xs.append(x)
                ys.append(y)
            x = torch.cat(xs).to(device)
            y = torch.cat(ys).to(device)
            seed = int(np.random.default_rng([opts.seed, epoch, step, rank]).integers(2**31))
            rs_click, gen = click_rngs(seed, x.device)
            r = train_step(net, optimizer, x, y, opts, rs_click, gen, encode=cache is None)  # cached: x is the embedding
            losses.append(r["loss"])
            dices.append(r["dice"])
            global_step += 1
            if main:
                progress.step(losses[-1], global_step)
            if bar is not None:
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
                bar.update(1)
        if bar is not None:
            bar.close()
        train_time += time.perf_counter() - t_epoch
        n_steps += steps_per_epoch
        loss_mean, dice_mean = _all_mean([float(np.mean(losses)), float(np.mean(dices))], world, device)
        train_m = {"loss": loss_mean, "dice": dice_mean}
        val, improved, extra = None, False, {}
        if main:
            if engine is not None:
                val = validate(engine, model, f"{run_id}-e{epoch}", not encoder_frozen, val_targets, source)
                improved = val[opts.key_metric] > best_score + opts.min_improvement
            if improved or engine is None:
                best_state = _learned_state(model, parts)
                best_epoch, best_val = epoch, val
            if improved:
                best_score = val[opts.key_metric]
            extra = _callbacks(callbacks, "on_epoch_end", epoch, model, {"train": train_m, "val": val,
                                                                        "baseline": baseline}, improved)
            if extra.get("published"):
                published.append(extra["published"])
            cache_stats = cache.stats() if cache else None
            row = {"epoch": epoch, "train": train_m, "val": val, "improved": improved,
                   "seconds": round(time.perf_counter() - t_epoch, 2)}
            history.append(row)
            logger.info(f"epoch {epoch}/{opts.max_epochs}: loss {loss_mean:.4f} train dice {dice_mean:.4f}"
                        + (f"; validation dice@1 {val['dice@1']:.4f} dice@5 {val['dice@5']:.4f} "
                           f"({'improved' if improved else 'no improvement'} on {best_score:.4f})" if val else "")
                        + (f"; published {extra['published']}" if extra.get("published") else "")
                        + f"; {steps_per_epoch / max(train_time / max(epoch, 1), 1e-9):.2f} steps/s"
                        + (f"; embedding cache {cache_stats}" if cache_stats else ""))
            progress.epoch_end(epoch, train_m, val, improved, published=list(published),
                               embedding_cache=cache_stats, steps_per_s=round(n_steps / max(train_time, 1e-9), 4))
        if world > 1:
            dist.barrier()

    if work_dir:  # the DDP test compares the ranks' final weights
        torch.save({k: v.detach().cpu() for k, v in _learned_state(model, parts).items()},
                   os.path.join(work_dir, f"rank{rank}_final.pt"))
    if not main:
        return None
    improved_any = best_epoch > 0 and baseline is not None
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    metrics = {
        "run_id": run_id, "key_metric": opts.key_metric, "baseline": baseline, "best": best_val,
        "best_epoch": best_epoch, "improved": improved_any, "epochs": history, "published": published,
        "train_targets": len(train_targets), "val_targets": len(val_targets),
        "train_cases": sorted({t.case for t in train_targets}), "val_cases": sorted({t.case for t in val_targets}),
        "train_parts": list(parts), "steps": n_steps * world, "train_seconds": round(train_time, 2),
        "steps_per_s": round(n_steps / max(train_time, 1e-9), 4), "world_size": world,
        "embedding_cache": cache.stats() if cache else None, "encoder_sha256": encoder_fingerprint(model),
        "base_encoder_sha256": enc_sha, "options": {k: v for k, v in opts.to_config().items()},
    }
    stats = progress.finish(status="DONE", published=list(published), best_epoch=best_epoch)
    metrics["train_stats"] = stats
    return metrics


def _learned_state(model, parts) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone().cpu() for k, v in model.state_dict().items() if k.split(".")[0] in parts}


def _example(model, t: Target, v, source: CropSource, cache: Optional[EmbeddingCache], encoder_frozen: bool,
             enc_sha: str, opts: FineTuneOptions, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(model input, target) for one (target, variant): the cached embedding, or the crop itself."""
    if cache is not None:
        key = cache_key(t, v, enc_sha, opts.modality)
        item = cache.get(key)
        if item is None:
            img, tgt = source.build(t, v)
            with torch.no_grad():
                emb = model.encode(img.to(device)).float()
            cache.put(key, emb, tgt)
            item = (emb, tgt)
        return item[0].to(device), item[1].to(device)
    img, tgt = source.build(t, v)
    return img, tgt


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_entry(rank, world, model, train_targets, val_targets, opts, callbacks, work_dir, init_method, run_id):
    result = _train_process(rank, world, model, train_targets, val_targets, opts, callbacks, work_dir, init_method, run_id)
    if rank == 0:
        torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "metrics": result},
                   os.path.join(work_dir, "result.pt"))


def fine_tune(model, samples: Sequence[Dict[str, str]], options=None, callbacks=()) -> Tuple[Any, Dict[str, Any]]:
    """Fine-tune `model` (lib.model Sam3D) on labelled volumes.

    Args:
        samples: [{"image": path, "label": path}] (MONAI Label's datastore.datalist()); every
            nonzero label value's largest components become targets. Held-out images for
            validation are split off by options.val_split unless options.val_samples is given.
        options: FineTuneOptions or a dict of train options (see FineTuneOptions).
        callbacks: objects with optional on_epoch_end(epoch, model, metrics, improved) -> dict,
            called on rank 0 after each epoch's validation (the train task publishes there).
    Returns:
        (model with the best validated weights -- the input weights when no epoch beat them, or
        the last epoch's when there is no validation set; metrics dict: baseline, best,
        best_epoch, improved, per-epoch history, steps/s, embedding-cache statistics, ...).
    """
    opts = options if isinstance(options, FineTuneOptions) else options_from_request(options or {})
    if opts.val_samples is not None:
        train_s, val_s = list(samples), list(opts.val_samples)
    else:
        train_s, val_s = split_samples(samples, opts.val_split, opts.seed)
    train_targets = find_targets(train_s, opts.max_components, opts.min_voxels)
    val_targets = find_targets(val_s, opts.max_components, opts.min_voxels)
    if not train_targets:
        raise ValueError(f"no labelled structure (>= {opts.min_voxels} voxels) in the {len(train_s)} training sample(s)")
    run_id = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    if hasattr(model, "residual_on"):  # validated with its residual for every target; the published version
        model.config["learned_segments"] = None  # names the segments it learnt (lib.model.segments)
    if opts.cache_dir and "image_encoder" not in opts.train_parts and opts.embedding_cache:
        EmbeddingCache(opts.cache_dir).bind_encoder(encoder_fingerprint(model))
    if opts.world_size <= 1:
        metrics = _train_process(0, 1, model, train_targets, val_targets, opts, callbacks, opts.work_dir, None, run_id)
        return model.cpu(), metrics
    work_dir = opts.work_dir or tempfile.mkdtemp(prefix="sammed3d-ddp-")
    os.makedirs(work_dir, exist_ok=True)
    try:
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        logger.info(f"distributed fine-tuning: spawning {opts.world_size} processes ({init_method})")
        torch.multiprocessing.spawn(_spawn_entry, nprocs=opts.world_size, join=True,
                                    args=(opts.world_size, model.cpu(), train_targets, val_targets, opts, callbacks,
                                          work_dir, init_method, run_id))
        out = torch.load(os.path.join(work_dir, "result.pt"), map_location="cpu", weights_only=False)
        model.load_state_dict(out["state_dict"])
        return model.cpu(), out["metrics"]
    finally:
        if not opts.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
