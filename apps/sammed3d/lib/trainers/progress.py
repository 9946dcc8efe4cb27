"""Training progress where clients look: MONAI Label's train_stats.json, TensorBoard, log lines.

train_stats.json carries the keys MONAI Label's BasicTrainTask writes (prepare_stats: the ignite
trainer's get_stats() plus epoch, start_ts, total_time | current_time, best_metric, train/eval
blocks) -- the 3D Slicer plugin reads `epoch`, `total_epochs`, `total_time` and `best_metric`
(its accuracy bar) -- plus a few of ours (run_id, live/published versions, cache statistics, and
who writes it: pid, host and the process's start time).

A trainer that is SIGKILLed (or crashes, or is stopped) leaves the file saying "RUNNING" for ever.
`reconcile` reports such a file as "INTERRUPTED" when the process that wrote it is gone (same host:
no process with that pid and start time), and the server rewrites it so at start
(`mark_interrupted`, lib/trainers/task.py); a new POST /train is accepted as usual (MONAI Label
tracks running tasks in memory only).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import time
from typing import Any, Dict, List, Optional

from lib.versions import write_json_atomic

logger = logging.getLogger(__name__)


class Progress:
    """Collects per-epoch numbers on rank 0 and writes them out."""

    def __init__(self, stats_path: Optional[str], tensorboard_dir: Optional[str], max_epochs: int,
                 steps_per_epoch: int, key_metric: str, run_id: str, extra: Optional[Dict[str, Any]] = None):
        self.stats_path = stats_path
        self.max_epochs, self.steps_per_epoch = max_epochs, steps_per_epoch
        self.key_metric, self.run_id = key_metric, run_id
        self.start_ts = time.time()
        self.extra = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": process_start(os.getpid()),
                      **dict(extra or {})}
        self.epoch = 0
        self.iteration = 0
        self.train_metrics: Dict[str, float] = {}
        self.eval_metrics: Dict[str, float] = {}
        self.best_train: Optional[float] = None
        self.best_train_epoch = 0
        self.best_metric: Optional[float] = None
        self.best_metric_epoch = 0
        self.history: List[Dict[str, Any]] = []
        self.finished = False
        self.writer = None
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=tensorboard_dir)
                logger.info(f"TensorBoard events: {tensorboard_dir}")
            except ImportError as e:
                logger.info(f"TensorBoard not available ({e}); no event files written")

    def baseline(self, metrics: Optional[Dict[str, float]]) -> None:
        if metrics:
            self.eval_metrics = {f"val_{k}": v for k, v in metrics.items()}
            self.best_metric = metrics[self.key_metric]
            self.best_metric_epoch = 0
            self.extra["baseline_metric"] = self.best_metric
            self._scalars(0, {f"val/{k}": v for k, v in metrics.items()})
        self.write()

    def step(self, loss: float, global_step: int) -> None:
        self.iteration = global_step
        self._scalars(global_step, {"train/loss_step": loss})

    def epoch_end(self, epoch: int, train: Dict[str, float], val: Optional[Dict[str, float]], improved: bool,
                  **extra: Any) -> None:
        self.epoch = epoch
        self.train_metrics = {f"train_{k}": v for k, v in train.items()}
        if self.best_train is None or train["dice"] > self.best_train:
            self.best_train, self.best_train_epoch = train["dice"], epoch
        if val:
            self.eval_metrics = {f"val_{k}": v for k, v in val.items()}
            if improved:
                self.best_metric, self.best_metric_epoch = val[self.key_metric], epoch
        self.extra.update(extra)
        self.history.append({"epoch": epoch, **self.train_metrics, **self.eval_metrics, "improved": improved})
        self._scalars(epoch, {**{f"train/{k}": v for k, v in train.items()},
                              **({f"val/{k}": v for k, v in val.items()} if val else {})})
        self.write()

    def finish(self, **extra: Any) -> Dict[str, Any]:
        self.finished = True
        self.extra.update(extra)
        if self.writer is not None:
            self.writer.close()
        return self.write()

    def _scalars(self, step: int, values: Dict[str, float]) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if v is not None:
                self.writer.add_scalar(k, float(v), step)
        self.writer.flush()

    def stats(self) -> Dict[str, Any]:
        elapsed = str(datetime.timedelta(seconds=int(time.time() - self.start_ts)))
        s: Dict[str, Any] = {
            "rank": 0,
            "current_epoch": self.epoch,
            "current_iteration": self.iteration,
            "total_epochs": self.max_epochs,
            "total_iterations": self.steps_per_epoch,
            "epoch": self.epoch,
            "start_ts": int(self.start_ts),
        }
        s["total_time" if self.finished else "current_time"] = elapsed
        s["best_metric"] = self.best_metric if self.best_metric is not None else 0.0
        s["train"] = {"metrics": dict(self.train_metrics), "key_metric_name": "train_dice",
                      "best_metric": self.best_train, "best_metric_epoch": self.best_train_epoch}
        s["eval"] = {"metrics": dict(self.eval_metrics), "key_metric_name": f"val_{self.key_metric}",
                     "best_metric": self.best_metric, "best_metric_epoch": self.best_metric_epoch}
        s["run_id"] = self.run_id
        s["history"] = list(self.history)
        s.update(self.extra)
        return s

    def write(self) -> Dict[str, Any]:
        s = self.stats()
        if self.stats_path:
            write_json_atomic(self.stats_path, s)
        return s


RUNNING, INTERRUPTED = "RUNNING", "INTERRUPTED"


def process_start(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), None when
    there is no such (living) process or no /proc. With the pid it names one process: pids are reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def writer_alive(stats: Dict[str, Any]) -> Optional[bool]:
    """Is the process that wrote these stats still running? None when it cannot be told (another host)."""
    pid, host = stats.get("pid"), stats.get("host")
    if not isinstance(pid, int):
        return False  # written before the file named its writer: no such trainer runs now
    if host and host != socket.gethostname():
        return None
    start = process_start(pid)
    if start is not None:
        return stats.get("proc_start") in (None, start)
    if not os.path.isdir("/proc"):  # no /proc: the pid alone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return False


def reconcile(stats: Dict[str, Any]) -> Dict[str, Any]:
    """The stats as a client should see them: "RUNNING" written by a process that is gone is "INTERRUPTED"."""
    if not isinstance(stats, dict) or stats.get("status") != RUNNING or writer_alive(stats) is not False:
        return stats
    out = dict(stats)
    out["status"] = INTERRUPTED
    out["message"] = (f"training (run {stats.get('run_id')}, process {stats.get('pid')}) ended without finishing, at "
                      f"epoch {stats.get('epoch')} of {stats.get('total_epochs')}: the process was killed, crashed or "
                      "was stopped (see the server log). The live model is the last version published completely "
                      "('published' lists this run's). Start a new training with POST /train.")
    return out


def mark_interrupted(stats_path: str) -> Optional[Dict[str, Any]]:
    """At server start: rewrite a stats file left "RUNNING" by a dead trainer as "INTERRUPTED" (atomic).
    Returns the new stats when it did, else None."""
    try:
        with open(stats_path) as f:
            stats = json.load(f)
    except (OSError, ValueError):
        return None
    fixed = reconcile(stats)
    if fixed is stats:
        return None
    write_json_atomic(stats_path, fixed)
    logger.warning(f"{stats_path}: {fixed['message']}")
    return fixed
