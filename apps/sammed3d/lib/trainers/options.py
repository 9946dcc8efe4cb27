"""Fine-tuning options: defaults (shown in the train task's /info config), request parsing, checks."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from lib.util import parse_bool
from lib.training.recipe import PARTS, RecipeOptions

logger = logging.getLogger(__name__)
KEY_METRICS = ("dice@1", "dice@5", "dice_mean")
PUBLISH = ("improved", "always", "never")


@dataclass
class FineTuneOptions(RecipeOptions):
    """The recipe's options (lr, decoder_lr_ratio, weight_decay, num_clicks, grad_clip: inherited,
    same defaults; lr * decoder_lr_ratio = 8e-5 is the paper's fine-tuning lr) plus the task's own."""
    # what learns, for how long
    train_parts: Tuple[str, ...] = ("mask_decoder",)
    max_epochs: int = 10
    batch_size: int = 2
    steps_per_epoch: int = 0  # 0: one pass over the training targets (per process)
    loss_size: int = 0  # DiceCE/click grid: 128 = the recipe (128^3 upsampled logits); 64 or 32 are 8x/64x cheaper; 0: 128 on CUDA, 64 on CPU
    # data
    val_split: float = 0.2
    val_folds: int = 0  # >= 2: publishing decided by k-fold cross-validation (lib.trainers.crossval)
    max_components: int = 2  # per label value: the largest connected components become targets
    min_voxels: int = 50
    variants: int = 4  # cached crop variants per target (0: centred; others jittered and flipped)
    jitter: int = 8  # grid voxels (1.5 mm) of crop-centre jitter
    flip: bool = True
    embedding_cache: bool = True  # only used while the image encoder is frozen
    cache_dir: Optional[str] = None  # on-disk embedding cache (None: memory only)
    modality: Optional[str] = None
    # validation (the session's click evaluation on held-out labels: Dice after 1 and 5 clicks)
    val_max_crops: int = 8
    click_mode: Optional[str] = None  # None: the session's default
    key_metric: str = "dice_mean"  # mean of Dice after 1 and after 5 clicks
    min_improvement: float = 0.0
    publish: str = "improved"  # improved | always | never (the train task publishes; fine_tune never does)
    # runtime
    device: str = "auto"
    world_size: int = 1  # > 1: DistributedDataParallel over that many processes
    backend: Optional[str] = None  # None: nccl on CUDA, gloo on CPU
    seed: int = 0
    progress: bool = True  # tqdm bar in the log
    tensorboard_dir: Optional[str] = None
    stats_path: Optional[str] = None  # MONAI Label train_stats.json (rank 0 writes it)
    work_dir: Optional[str] = None  # DDP exchange folder (kept when given; a temp folder otherwise)
    val_samples: Optional[List[Dict[str, str]]] = field(default=None, repr=False)  # explicit held-out set

    def to_config(self) -> Dict[str, Any]:
        """JSON-friendly defaults for the train task's /info config (lists as plain strings), in the
        order the task has always listed them (the recipe's fields sit among the task's own)."""
        out = {}
        for name in sorted((f.name for f in dataclasses.fields(self)), key=_config_position):
            if name in ("val_samples", "work_dir", "stats_path", "tensorboard_dir", "cache_dir"):
                continue
            v = getattr(self, name)
            out[name] = "+".join(v) if isinstance(v, tuple) else v
        return out


# /info lists these first, in this order (a client shows them as listed); the rest follow in field order
_CONFIG_HEAD = ("train_parts", "max_epochs", "lr", "decoder_lr_ratio", "weight_decay", "batch_size",
                "steps_per_epoch", "num_clicks", "grad_clip")


def _config_position(name: str) -> Tuple[int, int]:
    if name in _CONFIG_HEAD:
        return 0, _CONFIG_HEAD.index(name)
    return 1, [f.name for f in dataclasses.fields(FineTuneOptions)].index(name)


_ALIASES = {"epochs": "max_epochs", "learning_rate": "lr", "train_batch_size": "batch_size"}
# MONAI Label / client keys that are not ours: accepted and ignored
_IGNORED = {"model", "name", "pretrained", "multi_gpu", "gpus", "dataset", "dataloader", "tracking", "tracking_uri",
            "tracking_experiment_name", "tracking_run_name", "val_batch_size", "early_stop_patience", "run_id",
            "bundle_path", "client_id", "local_rank", "user", "force_sync", "enqueue"}


def parse_parts(value) -> Tuple[str, ...]:
    if isinstance(value, str):
        items = [p.strip() for p in value.replace("+", ",").split(",") if p.strip()]
        if items == ["all"]:
            items = list(PARTS)
    elif isinstance(value, (list, tuple)):
        items = [str(p).strip() for p in value]
    else:
        raise ValueError(f"train_parts must be a list or a '+'-separated string of {PARTS}, got {value!r}")
    bad = [p for p in items if p not in PARTS]
    if bad or not items:
        raise ValueError(f"train_parts {value!r}: each part must be one of {PARTS}")
    return tuple(p for p in PARTS if p in items)


def options_from_request(request: Dict[str, Any], base: Optional[FineTuneOptions] = None,
                         strict: bool = True) -> FineTuneOptions:
    """Merge a train request over `base` (defaults); ValueError names the bad option.

    strict=False (the server's train task) logs unknown keys and ignores them: MONAI Label and its
    clients add keys of their own."""
    opts = dataclasses.replace(base) if base is not None else FineTuneOptions()
    fields = {f.name: f for f in dataclasses.fields(FineTuneOptions)}
    for key, value in (request or {}).items():
        key = _ALIASES.get(key, key)
        if key in _IGNORED:
            continue
        if key not in fields:
            if not strict:
                logger.warning(f"train option {key!r} is not one of ours: ignored")
                continue
            raise ValueError(f"unknown train option {key!r}; known: {sorted(set(fields) - {'val_samples'})}")
        default = getattr(FineTuneOptions(), key)
        if value is None or key == "val_samples":
            setattr(opts, key, value)
            continue
        try:
            if key == "train_parts":
                value = parse_parts(value)
            elif isinstance(default, bool):
                value = parse_bool(value, key)
            elif isinstance(default, int):
                if isinstance(value, bool) or float(value) != int(float(value)):
                    raise ValueError
                value = int(float(value))
            elif isinstance(default, float):
                value = float(value)
            elif default is None or isinstance(default, str):
                value = str(value)
        except (TypeError, ValueError):
            raise ValueError(f"train option {key}: bad value {value!r}") from None
        setattr(opts, key, value)
    check(opts)
    return opts


def options_for_model(request: Dict[str, Any], defaults: FineTuneOptions, model) -> FineTuneOptions:
    """The options a train request runs with on `model`: the request over the model config's own
    `finetune` defaults (lib.model.model_finetune) over the task's. Why: the task's defaults are
    SAM-Med3D's fine-tuning recipe (decoder lr 8e-5); the embedded default's zero-started residual
    needs far larger steps to move at all (docs/finetune.md). A bad option in the model's config is
    the checkpoint's fault and raises (strict); unknown request keys are logged and ignored."""
    from lib.model import model_finetune

    try:
        base = options_from_request(model_finetune(model) or {}, defaults, strict=True)
    except ValueError as e:
        raise ValueError(f"the checkpoint's finetune config: {e}") from None
    return options_from_request(request, base, strict=False)


def check(o: FineTuneOptions) -> None:
    if o.max_epochs < 1:
        raise ValueError("max_epochs must be >= 1")
    if o.lr <= 0 or o.decoder_lr_ratio <= 0 or o.weight_decay < 0:
        raise ValueError("lr and decoder_lr_ratio must be > 0, weight_decay >= 0")
    if o.batch_size < 1 or o.num_clicks < 1 or o.variants < 1 or o.world_size < 1:
        raise ValueError("batch_size, num_clicks, variants and world_size must be >= 1")
    if o.val_folds < 0 or o.val_folds == 1:
        raise ValueError("val_folds must be 0 (one split by val_split) or >= 2")
    if not 0.0 <= o.val_split < 1.0:
        raise ValueError("val_split must be in [0, 1)")
    if o.key_metric not in KEY_METRICS:
        raise ValueError(f"key_metric must be one of {KEY_METRICS}")
    if o.publish not in PUBLISH:
        raise ValueError(f"publish must be one of {PUBLISH}")
    o.train_parts = parse_parts(o.train_parts)
