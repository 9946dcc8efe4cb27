"""MONAI Label scoring methods (POST /scoring/<name>): uncertainty, diversity, combined.

MONAI Label runs each scoring request in a subprocess that rebuilds the app (so the server keeps
answering clicks); `MONAI_LABEL_AUTO_UPDATE_SCORING` (default true) also runs every method at
start-up, after each /activelearning call and after training. A run is cheap when nothing
changed: an image whose stored score carries the live model version is skipped (pass
{"force": true} to recompute). Progress goes to the log, one line per image.

Request options (JSON body of POST /scoring/<name>, all optional):
    force (false), images ([ids]: only these), max_images (0 = all), threads (conf scoring_threads),
    nice (conf al_nice, default 10: the scoring subprocess runs at this lower CPU priority, so a click
    that arrives meanwhile gets the cores first; 0 = the server's priority), idle (conf al_idle,
    default 0; 1: also Linux's SCHED_IDLE policy, i.e. only CPU time nothing else wants; measured no
    better than nice 10 on the shared 2-core machine; see scripts/bench_scoring_click.py and docs/benchmarks.md),
    yield (conf al_yield, default 1: the server stops this scoring subprocess while it serves a click and
    lets it continue when the clicks pause; lib/activelearning/gate.py. 0 = nice only, the previous behaviour),
    n_jitter, sigma, flips, max_prompts, feature_crops, weight, combine ("product", the default, | "rank":
    the combined method's rule; see select.py).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from monailabel.interfaces.tasks.scoring import ScoringMethod

from ..session.engine import SegmentationEngine
from ..session.io import read_label
from . import store
from .gate import CLICKS, truthy
from .diversity import decode_feature, diversity_scores, encode_feature, pool_features
from .prompts import LocationPrior, choose_prompts
from .select import DEFAULT_COMBINE, combine_scores
from .uncertainty import make_perturbations, point_uncertainty

logger = logging.getLogger(__name__)

DEFAULTS = {"n_jitter": 4, "sigma": 3.0, "flips": [0, 1, 2], "max_prompts": 3, "feature_crops": 4, "weight": 0.5,
            "combine": DEFAULT_COMBINE, "threads": 1, "max_prior_labels": 50, "nice": 10,
            "idle": 0, "yield": 1}


@contextlib.contextmanager
def torch_threads(n: Optional[int]):
    """Limit torch's intra-op threads while scoring (leave cores to the clicks), then restore."""
    old = torch.get_num_threads()
    if n and n > 0:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def in_task_subprocess() -> bool:
    """True in the subprocess MONAI Label starts for a scoring/training task (not in the server)."""
    import sys

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "monailabel.interfaces.utils.app"


def lower_priority(nice: int, idle: bool = False) -> int:
    """Raise this process's nice value to `nice` and, with `idle`, switch it to SCHED_IDLE (every
    thread: Linux keeps both per thread), only in a task subprocess: the server's own threads are
    never touched. Returns the nice value now."""
    if not in_task_subprocess() or ((not nice or nice <= 0) and not idle):
        return os.getpriority(os.PRIO_PROCESS, 0)
    tids = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]
    for tid in tids:
        try:
            if nice and os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, int(nice))
            if idle and hasattr(os, "SCHED_IDLE"):
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except OSError:  # a thread that has just exited
            pass
    return os.getpriority(os.PRIO_PROCESS, 0)


def scheduling_policy() -> str:
    """'idle' when this thread runs under SCHED_IDLE, else 'normal' (for the log)."""
    try:
        return "idle" if os.sched_getscheduler(0) == getattr(os, "SCHED_IDLE", -1) else "normal"
    except (OSError, AttributeError):
        return "normal"


class ActiveLearningScorer:
    """Computes and stores the three scores for a datastore; shared by the three scoring methods.

    engine: the serving SegmentationEngine (embeddings from its cache, decodes through its lock and
    runner); version_fn: the live model version (lib.versions.LiveModelWatcher.live_version, passed in
    by lib.configs.sammed3d, so a version the trainer published is seen before the next click)."""

    def __init__(self, engine: SegmentationEngine, version_fn: Callable[[], str], options: Optional[Dict] = None):
        self.engine = engine
        self.version_fn = version_fn
        self.options = dict(DEFAULTS)
        self.options.update(options or {})
        # the server stops a scoring subprocess during clicks unless its request says {"yield": 0};
        # --conf al_yield (this option) is the default for requests that do not say
        CLICKS.configure(default_yield=truthy(self.options["yield"]))

    # --------------------------------------------------------------------------- helpers
    @staticmethod
    def _yield(o: Dict) -> None:
        """Scoring run in the server's own process waits here while a click is served (in the
        scoring subprocess the server stops the whole process instead: gate.py)."""
        if truthy(o.get("yield", 1)):
            CLICKS.wait_idle()

    def _opts(self, request: Dict) -> Dict:
        o = dict(self.options)
        o.update({k: v for k, v in (request or {}).items() if k in DEFAULTS or k in ("force", "images", "max_images")})
        return o

    @staticmethod
    def _targets(datastore, ids: List[str], o: Dict) -> List[str]:
        if o.get("images"):
            wanted = set(o["images"])
            ids = [i for i in ids if i in wanted]
        n = int(o.get("max_images") or 0)
        return sorted(ids)[:n] if n > 0 else sorted(ids)

    def _prior(self, datastore, o: Dict) -> LocationPrior:
        prior = LocationPrior()
        for image_id in sorted(datastore.get_labeled_images())[: int(o["max_prior_labels"])]:
            try:
                label_id = datastore.get_label_by_image_id(image_id, "final")
                arr, grid = read_label(datastore.get_label_uri(label_id, "final"))
                prior.add(arr, grid.affine)
            except Exception as e:  # an unreadable label must not stop scoring
                logger.warning(f"location prior: skipping label of {image_id}: {e}")
        return prior

    @staticmethod
    def _original_label(datastore, image_id: str):
        try:
            label_id = datastore.get_label_by_image_id(image_id, "original")
            if label_id:
                return read_label(datastore.get_label_uri(label_id, "original"))[0]
        except Exception as e:
            logger.warning(f"original label of {image_id} unreadable: {e}")
        return None

    # --------------------------------------------------------------------------- uncertainty
    def uncertainty_of(self, image_id: str, path: str, info: Dict, prior: Optional[LocationPrior], o: Dict,
                       original=None):
        """(score, prompt source, number of prompts) of one volume."""
        vol = self.engine.volume(path)  # the volume the embeddings below use (loaded once, then cached)
        shape, affine = vol.shape, vol.affine
        source, points = choose_prompts(info, shape, affine, original, prior, int(o["max_prompts"]))
        perts = make_perturbations(int(o["n_jitter"]), float(o["sigma"]), tuple(o["flips"]))
        decode = self.engine.decode_first_clicks  # the engine's lock and runner (CUDA graphs), as a click
        scores = []
        for p in points:
            p = [float(np.clip(x, 0, n - 1)) for x, n in zip(p[:3], shape)] if len(p) >= 3 else [(n - 1) / 2 for n in shape]
            self._yield(o)
            ce = self.engine.point_embedding(image_id, path, p)
            scores.append(point_uncertainty(decode, ce.embedding, ce.to_crop([p])[0], ce.crop, perts))
        return float(np.mean(scores)), source, len(points)

    def update_uncertainty(self, datastore, request: Dict) -> Dict[str, Any]:
        o = self._opts(request)
        version = self.version_fn()
        store.reload(datastore)
        ids = self._targets(datastore, datastore.get_unlabeled_images(), o)
        todo = [i for i in ids if o.get("force") or not store.current(datastore.get_image_info(i).get(store.KEY_UNCERTAINTY), version)]
        logger.info(f"scoring[uncertainty] model {version}: {len(todo)} of {len(ids)} unlabeled volumes to score")
        prior = self._prior(datastore, o) if todo else None
        done = 0
        for n, image_id in enumerate(todo, 1):
            self._yield(o)
            t = time.perf_counter()
            try:
                info = datastore.get_image_info(image_id)
                score, source, k = self.uncertainty_of(image_id, datastore.get_image_uri(image_id), info, prior, o,
                                                       self._original_label(datastore, image_id))
            except Exception as e:
                logger.warning(f"scoring[uncertainty] {n}/{len(todo)} {image_id}: failed ({e})")
                continue
            dt = time.perf_counter() - t
            store.write_info(datastore, image_id, {store.KEY_UNCERTAINTY: {
                "score": round(score, 6), "model_version": version, "prompts": source, "n_prompts": k,
                "ts": int(time.time()), "seconds": round(dt, 3)}})
            done += 1
            logger.info(f"scoring[uncertainty] {n}/{len(todo)} {image_id}: {score:.4f} ({k} {source} prompt(s), {dt:.1f} s)")
        return {"scored": done, "skipped": len(ids) - len(todo), "model_version": version}

    # --------------------------------------------------------------------------- features / diversity
    def update_features(self, datastore, request: Dict) -> Dict[str, Any]:
        o = self._opts(request)
        version = self.version_fn()
        store.reload(datastore)
        ids = sorted(datastore.list_images())
        todo = [i for i in ids if o.get("force") or not store.current(datastore.get_image_info(i).get(store.KEY_FEATURES), version)]
        logger.info(f"scoring[features] model {version}: {len(todo)} of {len(ids)} volumes to encode")
        for n, image_id in enumerate(todo, 1):
            self._yield(o)
            t = time.perf_counter()
            try:
                crops = self.engine.volume_embeddings(image_id, datastore.get_image_uri(image_id), int(o["feature_crops"]))
                f = pool_features([c.embedding for c in crops])
            except Exception as e:
                logger.warning(f"scoring[features] {n}/{len(todo)} {image_id}: failed ({e})")
                continue
            store.write_info(datastore, image_id, {store.KEY_FEATURES: {
                "model_version": version, "dim": int(f.size), "f16": encode_feature(f), "crops": len(crops),
                "ts": int(time.time())}})
            logger.info(f"scoring[features] {n}/{len(todo)} {image_id}: {len(crops)} crop(s), {time.perf_counter() - t:.1f} s")
        return {"encoded": len(todo), "model_version": version}

    def features(self, datastore, version: str, ids) -> Dict[str, np.ndarray]:
        out = {}
        for i in ids:
            e = datastore.get_image_info(i).get(store.KEY_FEATURES)
            if store.current(e, version):
                out[i] = decode_feature(e["f16"])
        return out

    def update_diversity(self, datastore, request: Dict) -> Dict[str, Any]:
        res = self.update_features(datastore, request)
        version = res["model_version"]
        store.reload(datastore)
        labelled = sorted(datastore.get_labeled_images())
        unlabeled = sorted(datastore.get_unlabeled_images())
        feats = self.features(datastore, version, labelled + unlabeled)
        h = store.labelled_hash(labelled)
        cands = {i: feats[i] for i in unlabeled if i in feats}
        centres = [feats[i] for i in labelled if i in feats]
        scores = diversity_scores(cands, centres)
        for n, (image_id, s) in enumerate(sorted(scores.items()), 1):
            old = datastore.get_image_info(image_id).get(store.KEY_DIVERSITY) or {}
            if old.get("model_version") == version and old.get("labelled_hash") == h and not self._opts(request).get("force"):
                continue
            store.write_info(datastore, image_id, {store.KEY_DIVERSITY: {
                "score": round(s, 6), "model_version": version, "labelled": len(centres), "labelled_hash": h,
                "ts": int(time.time())}})
        logger.info(f"scoring[diversity] model {version}: {len(scores)} unlabeled volumes vs {len(centres)} labelled")
        return {"scored": len(scores), "labelled": len(centres), "model_version": version, "encoded": res["encoded"]}

    def update_combined(self, datastore, request: Dict) -> Dict[str, Any]:
        o = self._opts(request)
        ru = self.update_uncertainty(datastore, request)
        rd = self.update_diversity(datastore, request)
        version = ru["model_version"]
        store.reload(datastore)
        unlabeled = sorted(datastore.get_unlabeled_images())
        infos = {i: datastore.get_image_info(i) for i in unlabeled}
        unc = {i: infos[i][store.KEY_UNCERTAINTY]["score"] for i in unlabeled if store.current(infos[i].get(store.KEY_UNCERTAINTY), version)}
        div = {i: infos[i][store.KEY_DIVERSITY]["score"] for i in unlabeled if store.current(infos[i].get(store.KEY_DIVERSITY), version)}
        rule = str(o.get("combine") or DEFAULT_COMBINE)
        mixed = combine_scores(rule, unc, div, float(o["weight"]), have_centres=rd.get("labelled", 0) > 0)
        for image_id, s in mixed.items():
            store.write_info(datastore, image_id, {store.KEY_COMBINED: {
                "score": round(s, 6), "model_version": version, "weight": float(o["weight"]), "rule": rule,
                "ts": int(time.time())}})
        logger.info(f"scoring[combined] model {version}: {len(mixed)} unlabeled volumes ranked ({rule} rule)")
        return {"scored": len(mixed), "model_version": version, "uncertainty": ru, "diversity": rd}


class SAMMed3DScoring(ScoringMethod):
    """One of "uncertainty", "diversity", "combined" (see module docstring)."""

    def __init__(self, scorer: ActiveLearningScorer, method: str):
        if method not in store.SCORE_KEYS:
            raise ValueError(f"unknown scoring method {method!r}")
        desc = {
            "uncertainty": "SAM-Med3D disagreement under jittered clicks and flips (higher = more informative)",
            "diversity": "k-center distance of pooled encoder features to the labelled volumes",
            "combined": f"{scorer.options.get('combine', DEFAULT_COMBINE)} combination of uncertainty and diversity",
        }[method]
        super().__init__(desc)
        self.scorer = scorer
        self.method = method

    def __call__(self, request, datastore):
        t = time.perf_counter()
        request = dict(request or {})
        nice = lower_priority(int(request.get("nice", self.scorer.options["nice"]) or 0),
                              bool(int(request.get("idle", self.scorer.options["idle"]) or 0)))
        yields = truthy(request.get("yield", self.scorer.options["yield"]))
        logger.info(f"scoring[{self.method}] at nice {nice}, {scheduling_policy()} scheduling, "
                    f"{request.get('threads', self.scorer.options['threads'])} thread(s), "
                    f"{'yields to clicks' if yields else 'does not yield to clicks'}")
        with torch_threads(int(request.get("threads", self.scorer.options["threads"]) or 0)):
            fn = getattr(self.scorer, f"update_{self.method}")
            result = fn(datastore, request)
        result.update(method=self.method, seconds=round(time.perf_counter() - t, 2))
        logger.info(f"scoring[{self.method}] finished: {result}")
        return result
