"""Published model versions: the folder, the live pointer, rollback, and the server's hot swap.

Layout of the versions folder (default ``apps/sammed3d/model/versions/``, ``--conf versions_dir``):

    v0001.pt  v0001.json     checkpoint (app format, lib.model.save_checkpoint) + its metrics
    v0002.pt  v0002.json     every version is kept
    LIVE.json                {"version": "v0002", "sha256": ..., "encoder_sha256": ..., "base_sha256": ...}
    train_stats.json         MONAI Label's training progress file (what the Slicer plugin reads)

Publishing order (lib.trainers.publish): checkpoint (temp file + os.replace) -> metrics JSON (same)
-> LIVE.json (same). A crash at any point leaves LIVE.json naming a complete checkpoint. What a
kill can leave behind: a `.tmp-*` file (swept at server start once it is an hour old) and the empty
`vNNNN.json` that reserved the name (never a version; the name is skipped by the next publish).

Which weights are served (`resolve_served_weights`), on top of lib.weights.resolve_weights (the base):
  * ``--conf model_version vNNNN``  -> that version (rollback); the server also points LIVE.json at it
  * ``--conf model_version base``   -> the base checkpoint; LIVE.json is reset to it
  * otherwise LIVE.json's version, if it was fine-tuned from the same base checkpoint (same sha256)
  * otherwise the base.
Training subprocesses (MONAI Label re-imports the app for every train/scoring run) never write
LIVE.json here, so a rollback setting on the command line cannot undo a version published later.

The hot swap (`LiveModelWatcher.poll`, called before every infer and /info, and by scoring through
`live_version`): when LIVE.json's mtime changes, the named checkpoint is loaded and handed to
SegmentationEngine.set_model; cached embeddings are kept when the encoder's fingerprint did not
change (decoder-only fine-tuning). lib.configs.sammed3d builds the watcher and passes it in.
Only this module and lib.trainers touch the folder.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from .model.checkpoint import atomic_write
from .util import sha256_file
from .weights import SAMMed3DWeights, WeightsChoice, WeightsError, resolve_weights

logger = logging.getLogger(__name__)

LIVE_FILE = "LIVE.json"
STATS_FILE = "train_stats.json"
VERSIONS_SUBDIR = "versions"
_NAME = re.compile(r"^v(\d{4,})$")
TEMP_MAX_AGE_S = 3600.0  # temp files older than this are swept at server start (VersionStore.sweep_temp_files)


def write_json_atomic(path: str, obj: Any) -> None:
    """JSON written atomically (lib.model.atomic_write): readers see the old or the new file."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, default=str).encode()))


def versions_dir(conf: Dict[str, str], model_dir: str) -> str:
    return os.path.abspath(os.path.expanduser(conf.get("versions_dir") or os.path.join(model_dir, VERSIONS_SUBDIR)))


def in_task_subprocess() -> bool:
    """True inside MONAI Label's train/scoring subprocess (`python -m monailabel.interfaces.utils.app`)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "monailabel.interfaces.utils.app"


def encoder_fingerprint(model) -> str:
    """SHA-256 of the image encoder's tensors: equal fingerprints = embeddings stay valid."""
    h = hashlib.sha256()
    for name, t in model.image_encoder.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class VersionStore:
    """The versions folder. Names are v0001, v0002, ...; LIVE.json says which one is served."""

    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ names and files
    def checkpoint_path(self, name: str) -> str:
        return os.path.join(self.folder, f"{name}.pt")

    def metrics_path(self, name: str) -> str:
        return os.path.join(self.folder, f"{name}.json")

    @property
    def live_path(self) -> str:
        return os.path.join(self.folder, LIVE_FILE)

    @property
    def stats_path(self) -> str:
        return os.path.join(self.folder, STATS_FILE)

    def list_versions(self) -> List[str]:
        """Complete versions, oldest first: checkpoint present, and its metrics JSON not the empty file
        that reserves the name (publish_version writes the metrics after the checkpoint: an empty one
        means that publish was killed before it finished). An empty reserved name alone is no version."""
        names = []
        for p in glob.glob(os.path.join(self.folder, "v*.pt")):
            stem = os.path.basename(p)[:-3]
            if _NAME.match(stem) and not self._reserved_only(stem):
                names.append(stem)
        return sorted(names, key=lambda n: int(n[1:]))

    def _reserved_only(self, name: str) -> bool:
        try:
            return os.path.getsize(self.metrics_path(name)) == 0
        except OSError:
            return False  # no metrics file at all: a checkpoint put there by hand is still a version

    def sweep_temp_files(self, max_age_s: float = TEMP_MAX_AGE_S) -> List[str]:
        """Remove `.tmp-*` files (atomic writes a killed process never renamed) not modified for
        `max_age_s`. A publisher writing now keeps its temp file's mtime fresh and renames it within
        seconds of its last write, so only abandoned ones are this old. -> the names removed."""
        removed = []
        now = time.time()
        for p in glob.glob(os.path.join(self.folder, ".tmp-*")):
            try:
                if os.path.isfile(p) and not os.path.islink(p) and now - os.stat(p).st_mtime > max_age_s:
                    os.remove(p)
                    removed.append(os.path.basename(p))
            except OSError:  # gone already (renamed by its writer, or another sweeper)
                continue
        if removed:
            logger.warning(f"versions folder {self.folder}: removed {len(removed)} temp file(s) older than "
                           f"{max_age_s / 3600:g} h left by an interrupted publish: {', '.join(sorted(removed))}")
        return removed

    def next_name(self) -> str:
        used = [int(n[1:]) for n in self.list_versions()]
        used += [int(m.group(1)) for p in glob.glob(os.path.join(self.folder, "v*.json"))
                 if (m := _NAME.match(os.path.basename(p)[:-5]))]
        return f"v{(max(used) if used else 0) + 1:04d}"

    def metrics(self, name: str) -> Dict[str, Any]:
        try:
            with open(self.metrics_path(name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    # ------------------------------------------------------------------ the live pointer
    def read_live(self) -> Optional[Dict[str, Any]]:
        """LIVE.json's content, or None when absent or unreadable (= serve the base)."""
        try:
            with open(self.live_path) as f:
                live = json.load(f)
            return live if isinstance(live, dict) else None
        except (OSError, ValueError):
            return None

    def live_stamp(self):
        """(mtime_ns, size) of LIVE.json, None when absent: cheap change detection."""
        try:
            st = os.stat(self.live_path)
            return st.st_mtime_ns, st.st_size
        except OSError:
            return None

    def set_live(self, name: Optional[str], **extra: Any) -> Dict[str, Any]:
        """Point LIVE.json at version `name` (None: the base checkpoint). Atomic."""
        with self._lock:
            if name is None:
                live = {"version": None, "updated": time.time(), **extra}
            else:
                path = self.checkpoint_path(name)
                if not os.path.isfile(path) or self._reserved_only(name):
                    raise WeightsError(f"model version {name!r} not found in {self.folder}; have {self.list_versions()}")
                meta = self.metrics(name)
                live = {
                    "version": name,
                    "path": path,
                    "sha256": meta.get("sha256") or sha256_file(path),
                    "encoder_sha256": meta.get("encoder_sha256"),
                    "base_sha256": meta.get("base_sha256"),
                    "updated": time.time(),
                    **extra,
                }
            write_json_atomic(self.live_path, live)
            return live

    def choice_for(self, name: str, live: Optional[Dict[str, Any]] = None) -> WeightsChoice:
        """WeightsChoice for version `name`, its SHA-256 checked against its metrics/pointer."""
        path = self.checkpoint_path(name)
        if not os.path.isfile(path) or self._reserved_only(name):
            raise WeightsError(f"model version {name!r} not found in {self.folder} (or its publish did not finish); "
                               f"have {self.list_versions()}")
        digest = sha256_file(path)
        want = (live or {}).get("sha256") or self.metrics(name).get("sha256")
        if want and want != digest:
            raise WeightsError(f"model version {name}: SHA-256 {digest[:12]} differs from the recorded {want[:12]}")
        return WeightsChoice(path, "version", sha256=digest, tried=[f"model version {name} in {self.folder}"])


def resolve_served_weights(conf: Dict[str, str], model_dir: str, write_pointer: Optional[bool] = None):
    """-> (WeightsChoice served now, base WeightsChoice, VersionStore). See the module docstring."""
    base = resolve_weights(conf, model_dir)
    store = VersionStore(versions_dir(conf, model_dir))
    if write_pointer is None:
        write_pointer = not in_task_subprocess()
    if write_pointer and os.path.isdir(store.folder):  # server start: temp files of a publish killed long ago
        store.sweep_temp_files()
    want = (conf.get("model_version") or "").strip()
    if want.lower() == "base":
        if write_pointer and store.read_live():
            store.set_live(None, reason="--conf model_version base")
        return base, base, store
    if want:
        choice = store.choice_for(want)
        if write_pointer:
            store.set_live(want, reason=f"--conf model_version {want}")
        logger.info(f"Weights: rollback/pin to model version {want} ({choice.path})")
        return choice, base, store
    live = store.read_live()
    name = live.get("version") if live else None
    if not name:
        return base, base, store
    if live.get("base_sha256") != base.sha256:
        logger.warning(f"Weights: live version {name} in {store.folder} was fine-tuned from another base "
                       f"({str(live.get('base_sha256'))[:12]} vs {str(base.sha256)[:12]}); serving the base")
        return base, base, store
    try:
        return store.choice_for(name, live), base, store
    except WeightsError as e:
        logger.error(f"Weights: live version unusable ({e}); serving the base")
        return base, base, store


def version_label(choice: WeightsChoice, meta_version: Optional[str]) -> str:
    """The model_version string the engine and /info show: '<name>@<sha12>'."""
    return f"{meta_version or choice.source}@{choice.sha256[:12]}"


class LiveModelWatcher:
    """Follows LIVE.json in the serving process and hot-swaps the engine's model.

    `weights` is the served weights' frozen description (lib.weights.SAMMed3DWeights); a swap
    replaces it with a new one (what /info shows). Cheap when nothing changed: one stat. Whoever
    needs the live version gets this watcher (or its `live_version`) as a constructor argument.
    """

    def __init__(self, store: VersionStore, engine, weights: SAMMed3DWeights, base: WeightsChoice,
                 served: WeightsChoice, prepare: Optional[Callable[[Any], Any]] = None):
        """prepare: applied to every swapped-in model before it serves, so what the server's --conf sets on
        the model itself (prior_flood: lib.model.flood_region.switch_flood) holds for each version too."""
        self.store, self.engine, self.weights, self.base = store, engine, weights, base
        self.prepare = prepare
        self._stamp = store.live_stamp()
        self._served_sha = served.sha256
        self._encoder_sha: Optional[str] = None  # of the engine's current model, computed lazily
        if served.source == "version":
            live = store.read_live() or {}
            if live.get("sha256") == served.sha256:
                self._encoder_sha = live.get("encoder_sha256")
        self._lock = threading.Lock()

    def live_version(self) -> str:
        """The model version served now, after a poll (a version the trainer just published is seen
        before the next click); a failing poll is logged and the current version returned."""
        try:
            self.poll()
        except Exception as e:
            logger.warning(f"live model poll failed: {e}")
        return str(self.engine.model_version)

    def poll(self) -> bool:
        """Swap to LIVE.json's version if it changed since the last poll; True when swapped."""
        stamp = self.store.live_stamp()
        if stamp == self._stamp:
            return False
        with self._lock:
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            live = self.store.read_live()
            if live is None:
                return False
            try:
                return self._swap(live)
            except Exception as e:  # a broken version must never take the server down
                logger.error(f"hot swap to {live.get('version')!r} failed, still serving {self.engine.model_version}: {e}")
                return False

    def _swap(self, live: Dict[str, Any]) -> bool:
        from .model import load_checkpoint  # torch only when a swap happens

        name = live.get("version")
        if name and live.get("base_sha256") != self.base.sha256:
            logger.warning(f"LIVE.json names {name}, fine-tuned from another base; not swapping")
            return False
        choice = self.store.choice_for(name, live) if name else self.base
        if choice.sha256 == self._served_sha:
            return False
        if choice.is_random:
            raise WeightsError("cannot swap back to random weights")
        t = time.perf_counter()
        model, meta = load_checkpoint(choice.path, map_location="cpu")
        if self.prepare is not None:
            self.prepare(model)
        new_enc = (live.get("encoder_sha256") if name else None) or encoder_fingerprint(model)
        if self._encoder_sha is None:
            self._encoder_sha = encoder_fingerprint(self.engine.runner.model)
        encoder_changed = new_enc != self._encoder_sha
        version = version_label(choice, meta.get("version") or name)
        self.engine.set_model(model, version, encoder_changed=encoder_changed)
        self._encoder_sha, self._served_sha = new_enc, choice.sha256
        self.weights = dataclasses.replace(self.weights, source=choice.source, path=choice.path,
                                           sha256=choice.sha256, model_version=version, version_name=name)
        logger.info(f"hot swap: now serving {version} (encoder {'changed: embeddings dropped' if encoder_changed else 'unchanged: embeddings kept'}; "
                    f"{time.perf_counter() - t:.2f} s)")
        return True
