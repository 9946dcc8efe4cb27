"""Publishing decided by k-fold cross-validation, for the few labels a user has at first (train option `val_folds`).

Why: with one split, 8 labelled images leave 2 to validate on, and one unusual image decides. Measured
(docs/default_model.md, "Seventeenth run"): fine-tuned on the demo's lobes, the model was far better than the
default-v11 candidate on all 6 held-out volumes (Dice@1 / 5 0.647 / 0.819 against 0.299 / 0.639), but on one of
the two validation volumes (the one lobe walled by dense tissue) it filled 87 % of the volume, so the trainer kept
the live model. Cross-validation validates on every labelled image once:

    the images are split into k folds (by image, sorted by path, then a seeded permutation: split_samples' rule);
    for each fold, the live model is fine-tuned on the other folds for max_epochs, validating every epoch on the
    fold (the live model first) -> per epoch, the mean over folds of the key metric;
    the best epoch e* (cross-validated) is compared with the live model's cross-validated score: when it is
    better by more than min_improvement, the live model is fine-tuned on all the images for e* epochs and that
    model is published (by the task's callbacks, e.g. lib.trainers.publish.Publisher); otherwise nothing is.

It costs k + 1 trainings. The train stats (/info) carry the folds' numbers under `cross_validation`, with the
cross-validated scores as `baseline_metric` and `best_metric`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from lib.versions import write_json_atomic

from .finetune import fine_tune, image_order
from .options import FineTuneOptions, options_from_request
from .progress import Progress

logger = logging.getLogger(__name__)


def split_folds(samples: Sequence[Dict], k: int, seed: int = 0) -> List[List[Dict]]:
    """k folds of the samples by image (sorted by path, then a seeded permutation), as even as they divide."""
    if not 2 <= k <= len(samples):
        raise ValueError(f"val_folds {k} needs 2 <= val_folds <= the {len(samples)} labelled image(s)")
    samples, order = image_order(samples, seed)
    return [[samples[i] for i in sorted(part)] for part in np.array_split(order, k)]


class _PublishAt:
    """Calls the task's callbacks at epoch `epoch` of the final training as an improved epoch, with the
    cross-validation's numbers as its metrics (the final training has no validation of its own)."""

    def __init__(self, callbacks, epoch: int, cv: Dict[str, Any]):
        self.callbacks, self.epoch, self.cv = list(callbacks), epoch, cv

    def on_epoch_end(self, epoch: int, model, metrics: Dict[str, Any], improved: bool) -> Dict[str, Any]:
        if epoch != self.epoch:
            return {}
        out: Dict[str, Any] = {}
        for cb in self.callbacks:
            if hasattr(cb, "on_epoch_end"):
                out.update(cb.on_epoch_end(epoch, model, {**metrics, "cross_validation": self.cv}, True) or {})
        return out


def fine_tune_cross_validated(model, samples: Sequence[Dict[str, str]], options=None,
                              callbacks=()) -> Tuple[Any, Dict[str, Any]]:
    """fine_tune's contract (returns (model, metrics)) with the publish decision made by k-fold cross-validation
    (options.val_folds >= 2; see the module doc). The returned model is the one trained on every image when the
    cross-validation favoured it, else the input weights."""
    opts = options if isinstance(options, FineTuneOptions) else options_from_request(options or {})
    folds = split_folds(samples, opts.val_folds, opts.seed)
    live = {k: v.detach().clone() for k, v in model.state_dict().items()}
    key, runs = opts.key_metric, []
    for i, val in enumerate(folds):
        _progress(opts, f"fold {i + 1}/{len(folds)}").write()
        model.load_state_dict(live)
        train = [s for j, fold in enumerate(folds) if j != i for s in fold]
        fold_opts = dataclasses.replace(opts, val_samples=val, publish="never", stats_path=None, tensorboard_dir=None)
        _, m = fine_tune(model, train, fold_opts)
        if not m.get("baseline") or any(e.get("val") is None for e in m["epochs"]):
            raise ValueError(f"fold {i + 1}: no validation target in {[s['image'] for s in val]}")
        runs.append(m)
        logger.info(f"cross-validation fold {i + 1}/{len(folds)}: live {m['baseline'][key]:.4f}, epochs "
                    + " ".join(f"{e['val'][key]:.4f}" for e in m["epochs"]))
    live_cv = float(np.mean([m["baseline"][key] for m in runs]))
    per_epoch = [float(np.mean([m["epochs"][e]["val"][key] for m in runs])) for e in range(opts.max_epochs)]
    best = int(np.argmax(per_epoch)) + 1
    cv = {"folds": len(folds), "key_metric": key, "live": live_cv, "epochs": per_epoch, "best_epoch": best,
          "per_fold": [{"val_cases": m["val_cases"], "live": m["baseline"][key],
                        "epochs": [e["val"][key] for e in m["epochs"]]} for m in runs]}
    improved = per_epoch[best - 1] > live_cv + opts.min_improvement
    logger.info(f"cross-validated {key}: live {live_cv:.4f}, epochs {' '.join(f'{v:.4f}' for v in per_epoch)}; "
                + (f"training on all {len(samples)} images for {best} epoch(s)" if improved else "nothing published"))
    model.load_state_dict(live)
    if not improved:
        p = _progress(opts, "done")
        p.baseline({key: live_cv})
        stats = p.finish(status="DONE", published=[], cross_validation=cv)
        return model, {"cross_validation": cv, "improved": False, "published": [], "train_stats": stats}
    final_opts = dataclasses.replace(opts, val_samples=[], max_epochs=best)
    model, metrics = fine_tune(model, samples, final_opts, callbacks=[_PublishAt(callbacks, best, cv)])
    metrics.update(cross_validation=cv, improved=True)
    if opts.stats_path:  # the final training has no validation: its stats get the cross-validated scores
        with open(opts.stats_path) as f:
            stats = json.load(f)
        stats.update(cross_validation=cv, baseline_metric=live_cv, best_metric=per_epoch[best - 1])
        write_json_atomic(opts.stats_path, stats)
        metrics["train_stats"] = stats
    return model, metrics


def _progress(opts: FineTuneOptions, stage: str) -> Progress:
    return Progress(opts.stats_path, None, opts.max_epochs, opts.steps_per_epoch, opts.key_metric, "cross-validation",
                    extra={"status": "RUNNING" if stage != "done" else "DONE", "cross_validation_stage": stage})
