"""lib.trainers.crossval: publishing decided by k-fold cross-validation (train option val_folds)."""
import json

import numpy as np
import pytest
import torch

from trainer_utils import make_samples, tiny_model

from lib.trainers import options_from_request
from lib.trainers.crossval import fine_tune_cross_validated, split_folds


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return make_samples(str(tmp_path_factory.mktemp("vols")), 3)


class Recorder:
    """Stands in for the task's Publisher: records what it is asked to publish."""

    def __init__(self):
        self.calls = []

    def on_epoch_end(self, epoch, model, metrics, improved):
        self.calls.append((epoch, improved, metrics))
        return {"published": "v0001"} if improved else {}


def test_folds_are_by_image_deterministic_and_cover_every_image():
    samples = [{"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz"} for i in range(8)]
    folds = split_folds(list(reversed(samples)), 4, seed=0)
    assert folds == split_folds(samples, 4, seed=0) and [len(f) for f in folds] == [2, 2, 2, 2]
    assert sorted(s["image"] for f in folds for s in f) == sorted(s["image"] for s in samples)
    assert folds != split_folds(samples, 4, seed=1)
    for k in (1, 9):
        with pytest.raises(ValueError, match="val_folds"):
            split_folds(samples, k)
    with pytest.raises(ValueError, match="val_folds"):
        options_from_request({"val_folds": 1})


def _opts(tmp_path, min_improvement):
    opts = options_from_request({"max_epochs": 2, "steps_per_epoch": 1, "num_clicks": 2, "loss_size": 32,
                                 "variants": 1, "batch_size": 1, "max_components": 1, "lr": 1e-2, "val_folds": 3,
                                 "progress": False})
    opts.min_improvement = min_improvement
    opts.stats_path = str(tmp_path / "train_stats.json")
    return opts


def test_every_image_validates_once_and_the_final_model_trains_on_all(samples, tmp_path):
    publisher = Recorder()
    model, m = fine_tune_cross_validated(tiny_model(), samples, _opts(tmp_path, -10.0), callbacks=[publisher])
    cv = m["cross_validation"]
    assert cv["folds"] == 3 and len(cv["epochs"]) == 2 and cv["best_epoch"] == int(np.argmax(cv["epochs"])) + 1
    assert sorted(c for f in cv["per_fold"] for c in f["val_cases"]) == ["case00", "case01", "case02"]
    assert cv["live"] == pytest.approx(np.mean([f["live"] for f in cv["per_fold"]]))
    # published once, at the cross-validated best epoch of the training on all three images
    assert [(e, imp) for e, imp, _ in publisher.calls] == [(cv["best_epoch"], True)]
    assert publisher.calls[0][2]["cross_validation"] == cv
    assert m["train_targets"] == 3 and m["val_targets"] == 0 and m["published"] == ["v0001"]
    stats = json.loads((tmp_path / "train_stats.json").read_text())
    assert stats["status"] == "DONE" and stats["baseline_metric"] == pytest.approx(cv["live"])
    assert stats["best_metric"] == pytest.approx(cv["epochs"][cv["best_epoch"] - 1])


def test_nothing_is_published_when_the_live_model_validates_better(samples, tmp_path):
    live = tiny_model()
    before = {k: v.clone() for k, v in live.state_dict().items()}
    publisher = Recorder()
    model, m = fine_tune_cross_validated(live, samples, _opts(tmp_path, 10.0), callbacks=[publisher])
    assert publisher.calls == [] and m["published"] == [] and not m["improved"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    stats = json.loads((tmp_path / "train_stats.json").read_text())
    assert stats["status"] == "DONE" and stats["published"] == [] and stats["cross_validation"]["folds"] == 3
