"""Publishing a fine-tuned model as a new version (lib.versions layout), atomically.

Order: checkpoint (save_checkpoint: temp file + fsync + os.replace) -> metrics JSON (same) ->
LIVE.json (same). Until the last rename the server keeps serving the previous version; a crash at
any point leaves LIVE.json naming a complete, loadable checkpoint.
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from typing import Any, Dict, List, Optional

from lib.model import save_checkpoint
from lib.util import sha256_file
from lib.versions import VersionStore, encoder_fingerprint, write_json_atomic

logger = logging.getLogger(__name__)


def publish_version(store: VersionStore, model, metrics: Dict[str, Any], base_sha256: Optional[str],
                    parent: Optional[str], make_live: bool = True, segments: Optional[List[str]] = None) -> str:
    """Write `model` as the next version vNNNN with its metrics; point LIVE.json at it. -> name. `segments`: the
    segment names it learnt (lib.model.segments; a model with a switchable residual only); None: every segment."""
    os.makedirs(store.folder, exist_ok=True)
    name = reserve_name(store)
    path = store.checkpoint_path(name)
    try:
        enc = encoder_fingerprint(model)
        with _learned(model, segments):
            save_checkpoint(model, path,  # state_dict on any device; load_checkpoint maps to cpu
                            version=name, parent=parent, base_sha256=base_sha256, encoder_sha256=enc,
                            metrics=_plain(metrics), created=time.time())
        meta = {"version": name, "path": path, "sha256": sha256_file(path), "encoder_sha256": enc,
                "base_sha256": base_sha256, "parent": parent, "created": time.time(), "metrics": _plain(metrics)}
        write_json_atomic(store.metrics_path(name), meta)
    except BaseException:
        _release(store, name)
        raise
    if make_live:
        store.set_live(name)
    logger.info(f"published model version {name} ({path}); parent {parent}; live: {make_live}")
    return name


@contextmanager
def _learned(model, segments: Optional[List[str]]):
    """The model's config names `segments` as learnt while it is saved (the trained model keeps validating every
    segment with its residual)."""
    if not hasattr(model, "residual_on"):
        yield
        return
    saved = model.config.get("learned_segments")
    model.config["learned_segments"] = list(segments) if segments else None
    try:
        yield
    finally:
        model.config["learned_segments"] = saved


def reserve_name(store: VersionStore) -> str:
    """Claim the next free vNNNN, also against other processes publishing into the same folder
    (a second server, a command-line training): its metrics file is created with O_EXCL, and
    `next_name` counts metrics files, so no two publishers write the same version."""
    while True:
        name = store.next_name()
        try:
            fd = os.open(store.metrics_path(name), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:  # another publisher claimed it between next_name and here
            continue
        os.close(fd)
        return name


def _release(store: VersionStore, name: str) -> None:
    """Give a claimed name back when publishing failed before its metrics were written."""
    try:
        if os.path.getsize(store.metrics_path(name)) == 0:
            os.remove(store.metrics_path(name))
    except OSError:
        pass


def _plain(obj):
    """Metrics as JSON/torch-save friendly plain values."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    try:
        return float(obj)
    except (TypeError, ValueError):
        return str(obj)


class Publisher:
    """fine_tune callback of the train task: publishes after an epoch per the `publish` policy.

    Picklable (plain fields) so it travels to the rank-0 process of a distributed run.
    """

    def __init__(self, folder: str, policy: str, base_sha256: Optional[str], parent: Optional[str],
                 key_metric: str, run_id: str = "", segments: Optional[List[str]] = None):
        self.folder, self.policy, self.base_sha256 = folder, policy, base_sha256
        self.parent, self.key_metric, self.run_id = parent, key_metric, run_id
        self.segments = list(segments) if segments else None  # the names of the labels it trains on

    def on_epoch_end(self, epoch: int, model, metrics: Dict[str, Any], improved: bool) -> Dict[str, Any]:
        if self.policy == "never" or (self.policy == "improved" and not improved):
            return {}
        store = VersionStore(self.folder)
        payload = {"epoch": epoch, "key_metric": self.key_metric, "run_id": self.run_id, **metrics}
        name = publish_version(store, model, payload, self.base_sha256, self.parent, segments=self.segments)
        self.parent = name
        return {"published": name, "live_version": name}
