"""Fine-tuning SAM-Med3D on accepted labels: the MONAI Label train task and the API behind it.

    from lib.trainers import fine_tune, FineTuneOptions
    model, metrics = fine_tune(model, [{"image": img, "label": lab}, ...], {"max_epochs": 3})

Publishing (new versions, LIVE.json) is lib.trainers.publish + lib.versions; fine_tune itself
never publishes.
"""
from .data import EmbeddingCache, Target, find_targets
from .finetune import fine_tune, split_samples
from .options import FineTuneOptions, options_from_request
from .publish import Publisher, publish_version

__all__ = ["EmbeddingCache", "FineTuneOptions", "Publisher", "Target", "find_targets", "fine_tune",
           "options_from_request", "publish_version", "split_samples"]
