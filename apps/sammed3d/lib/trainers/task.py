"""The MONAI Label train task: `POST /train/sammed3d` fine-tunes the live model on FINAL labels.

Runs in MONAI Label's train subprocess. Request options (defaults in /info -> trainers -> config,
under the served model config's own `finetune` options, lib.trainers.options.options_for_model)
are FineTuneOptions fields, e.g. {"max_epochs": 5, "train_parts": "mask_decoder+prompt_encoder",
"lr": 8e-4, "val_split": 0.2}. MONAI Label's own keys (multi_gpu, gpus, ...) are accepted:
multi_gpu true with 2+ GPUs runs DistributedDataParallel over them; {"world_size": 2,
"device": "cpu"} does the same on CPU with gloo.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, Optional

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from lib.util import parse_bool
from lib.model import load_checkpoint
from lib.versions import VersionStore, in_task_subprocess

from .crossval import fine_tune_cross_validated
from .data import segment_names
from .finetune import fine_tune
from .options import FineTuneOptions, options_for_model, options_from_request
from .progress import mark_interrupted, reconcile
from .publish import Publisher

logger = logging.getLogger(__name__)


class SAMMed3DTrainTask(TrainTask):
    """Fine-tunes the live checkpoint; publishes a new version when validation improves."""

    def __init__(self, store: VersionStore, live: Callable[[], Any], defaults: Optional[FineTuneOptions] = None,
                 description: str = "Fine-tune SAM-Med3D (frozen encoder by default) on the datastore's final labels",
                 live_model: Optional[Callable[[], Any]] = None, prepare: Optional[Callable[[Any], Any]] = None):
        super().__init__(description)
        self.store = store
        self.live = live  # () -> (WeightsChoice served now, base WeightsChoice)
        self.defaults = defaults or FineTuneOptions()
        # () -> the model the server holds now (its config's `finetune` options show in /info)
        self.live_model = live_model
        # applied to the loaded checkpoint before it trains, as the server's hot swap applies it before a
        # version serves (its --conf prior_flood): trained and validated with the prior users get
        self.prepare = prepare
        if not in_task_subprocess():  # server start: a training killed with the last server is not RUNNING
            mark_interrupted(store.stats_path)

    def config(self) -> Dict[str, Any]:
        """The options a client shows and sends back (Slicer's train dialog returns every value listed):
        the task's defaults under the live model's own (options_for_model), so a client that echoes them
        trains as a request without options would."""
        model = self.live_model() if self.live_model is not None else None
        if model is None:
            return self.defaults.to_config()
        try:
            return options_for_model({}, self.defaults, model).to_config()
        except ValueError as e:  # a broken checkpoint config: training will say so; /info still answers
            logger.warning(f"train options: {e}; listing the task's defaults")
            return self.defaults.to_config()

    def info(self) -> Dict[str, Any]:
        info = super().info()
        live = self.store.read_live() or {}
        info["live_version"] = live.get("version")
        info["versions"] = self.store.list_versions()
        info["versions_dir"] = self.store.folder
        return info

    def stats(self) -> Dict[str, Any]:
        try:
            import json

            with open(self.store.stats_path) as f:
                return reconcile(json.load(f))  # "RUNNING" whose trainer is gone: "INTERRUPTED"
        except (OSError, ValueError):
            return {}

    def __call__(self, request: Dict[str, Any], datastore: Datastore) -> Dict[str, Any]:
        logger.info(f"train request: {request}")
        req = dict(request)
        if parse_bool(req.get("multi_gpu"), "multi_gpu", default=False) and "world_size" not in req:
            gpus = req.get("gpus", "all")
            n = torch.cuda.device_count() if gpus in (None, "", "all") else len(str(gpus).split(","))
            if n >= 2:
                req["world_size"] = n
        options_from_request(req, self.defaults, strict=False)  # a bad request fails before any work
        samples = [d for d in datastore.datalist() if d.get("label")]
        if not samples:
            raise ValueError("no final labels in the datastore: save some labels (tag final) before training")
        served, base = self.live()
        if served.path is None:
            raise ValueError("the server runs on random weights (allow_random_weights): nothing to fine-tune")
        model, meta = load_checkpoint(served.path, map_location="cpu")
        if self.prepare is not None:
            self.prepare(model)
        opts = options_for_model(req, self.defaults, model)  # request > the model's finetune config > task
        logger.info(f"train options: lr {opts.lr:g} (decoder x{opts.decoder_lr_ratio:g}), {opts.max_epochs} epochs x "
                    f"{opts.steps_per_epoch or 'one pass'} steps, {opts.num_clicks} clicks, loss grid {opts.loss_size or 'auto'}")
        opts.stats_path = self.store.stats_path
        if opts.tensorboard_dir is None:
            opts.tensorboard_dir = os.path.join(self.store.folder, "runs")
        if opts.cache_dir is None:
            opts.cache_dir = os.path.join(self.store.folder, "embedding_cache")
        parent = meta.get("version") if served.source == "version" else None
        logger.info(f"fine-tuning {served.source} {served.path} on {len(samples)} labelled image(s)")
        import datetime

        opts.tensorboard_dir = os.path.join(opts.tensorboard_dir, datetime.datetime.now().strftime("%Y%m%d_%H%M%S"))
        segments = segment_names(datastore)
        logger.info(f"the labels' segments: {', '.join(segments) if segments else 'not named (answers every segment)'}")
        publisher = Publisher(self.store.folder, opts.publish, base.sha256, parent, opts.key_metric, segments=segments)
        train = fine_tune_cross_validated if opts.val_folds >= 2 else fine_tune
        _, metrics = train(model, samples, opts, callbacks=[publisher])
        stats = metrics.get("train_stats", {})
        logger.info(f"training done: best epoch {metrics.get('best_epoch')}, published {metrics['published'] or 'nothing'}")
        return stats
