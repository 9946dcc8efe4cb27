"""MONAI Label strategies (POST /activelearning/<name>): the best-scored unlabeled volume.

* Skips volumes handed out (by any strategy, MONAI Label's own included) within `timeout`
  seconds to another annotator (another client_id; anonymous requests cannot be told apart, so
  for them every recent hand-out counts). When everything is handed out, the least recently
  served volume is returned, so Next Sample never comes back empty while work is left.
* Checks the live model version: when a candidate's score is missing or from an older version,
  the matching scoring method is started in the background (`trigger`) and the newest scores
  available are used meanwhile ("stale": true in the answer). No score at all: MONAI Label's
  random choice weighted by time since last served.
* diversity / combined use the pooled features in the datastore when they are current: the
  distance is then taken to the labelled volumes AND the ones handed out but not yet labelled
  (greedy k-center), so two annotators asking in turn get different kinds of volumes.
  combined uses the rule `combine` ("rank" mix or "product", select.py). Not given: the rule
  recorded with the stored combined scores (so --conf al_combine, read by the scoring methods,
  reaches the strategy too), else select.DEFAULT_COMBINE.
"""
from __future__ import annotations

import logging
import random
import time
from typing import Callable, Dict, Optional

from monailabel.interfaces.tasks.strategy import Strategy

from . import store
from .diversity import decode_feature
from .select import COMBINE_RULES, DEFAULT_COMBINE, combine_scores, select_batch

logger = logging.getLogger(__name__)

TriggerFn = Callable[[str], None]


class ScoreStrategy(Strategy):
    def __init__(self, method: str, version_fn: Callable[[], str], trigger: Optional[TriggerFn] = None,
                 timeout: float = 3600.0, weight: float = 0.5, combine: Optional[str] = None):
        if method not in store.SCORE_KEYS:
            raise ValueError(f"unknown strategy {method!r}")
        if combine is not None and combine not in COMBINE_RULES:
            raise ValueError(f"unknown combination rule {combine!r}; one of {COMBINE_RULES}")
        super().__init__(f"Unlabeled volume with the highest {method} score (SAM-Med3D); skips volumes "
                         f"handed to another annotator in the last {int(timeout)} s")
        self.method, self.version_fn, self.trigger = method, version_fn, trigger
        self.timeout, self.weight, self.combine = float(timeout), float(weight), combine

    def __call__(self, request, datastore):
        store.reload(datastore)
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        now = time.time()
        client = request.get("client_id")
        infos = {i: datastore.get_image_info(i) for i in images}
        free = [i for i in images if not store.busy_with_other(infos[i], client, now, self.timeout)]
        if not free:
            image = min(images, key=lambda i: (store.last_served(infos[i]), i))
            logger.info(f"{self.method}: every unlabeled volume is handed out; least recently served: {image}")
            return {"id": image, "reason": "all handed out"}

        version = self.version_fn()
        key = store.SCORE_KEYS[self.method]
        entries = {i: infos[i].get(key) for i in free}
        stale = [i for i in free if not store.current(entries[i], version)]
        if stale and self.trigger is not None:
            logger.info(f"{self.method}: {len(stale)} score(s) missing or older than model {version}; refreshing in the background")
            try:
                self.trigger(self.method)
            except Exception as e:
                logger.warning(f"{self.method}: could not start scoring: {e}")

        pick, score, how = self._pick(datastore, free, infos, entries, version)
        if pick is None:
            weights = [now - store.last_served(infos[i]) + 1.0 for i in free]
            pick = random.choices(free, weights=weights)[0]
            logger.info(f"{self.method}: no scores yet; random pick {pick}")
            return {"id": pick, "reason": "no scores yet (random)", "model_version": version}
        fresh = store.current(entries.get(pick), version)
        logger.info(f"{self.method}: selected {pick} (score {score:.4f}, {how}, {'current' if fresh else 'STALE'} model "
                    f"version; {len(free)} free of {len(images)} unlabeled)")
        return {"id": pick, self.method: score, "model_version": version, "stale": not fresh, "reason": how}

    def _pick(self, datastore, free, infos, entries, version):
        scored = {i: float(e["score"]) for i, e in entries.items() if e and e.get("score") is not None}
        if self.method in ("diversity", "combined"):
            live = self._live_features(datastore, free, infos, version)
            if live is not None:
                feats, centres = live
                unc = {i: float(infos[i][store.KEY_UNCERTAINTY]["score"]) for i in free
                       if (infos[i].get(store.KEY_UNCERTAINTY) or {}).get("score") is not None}
                if self.method == "diversity" or unc:
                    from .diversity import diversity_scores

                    div = diversity_scores(feats, centres)
                    s = div if self.method == "diversity" else combine_scores(
                        self._rule(entries), unc, div, self.weight, have_centres=bool(centres))
                    best = max(s, key=lambda i: (s[i], i))
                    return best, float(s[best]), "features vs labelled + handed-out"
        if not scored:
            return None, None, None
        best = select_batch("uncertainty", list(scored), 1, uncertainty=scored)[0]
        return best, scored[best], "stored score"

    def _rule(self, entries) -> str:
        """The combination rule: the constructor's, else the stored scores' (newest), else the default."""
        if self.combine:
            return self.combine
        stored = sorted((e.get("ts", 0), e["rule"]) for e in entries.values() if e and e.get("rule") in COMBINE_RULES)
        return stored[-1][1] if stored else DEFAULT_COMBINE

    def _live_features(self, datastore, free, infos, version):
        """Current features of every free, labelled and handed-out volume, or None."""
        def feat(info):
            e = info.get(store.KEY_FEATURES)
            return decode_feature(e["f16"]) if store.current(e, version) else None

        feats = {i: feat(infos[i]) for i in free}
        if any(f is None for f in feats.values()):
            return None
        busy = [i for i in infos if i not in feats]  # unlabeled but handed out to others
        centres = []
        for i in list(datastore.get_labeled_images()) + busy:
            f = feat(infos[i] if i in infos else datastore.get_image_info(i))
            if f is None:
                return None
            centres.append(f)
        return feats, centres


def scoring_trigger(min_interval: float = 30.0) -> TriggerFn:
    """Start MONAI Label's scoring task for a method in the background (its subprocess), at most
    once per `min_interval` seconds per method, and never while a scoring task is running."""
    last: Dict[str, float] = {}

    def trigger(method: str) -> None:
        now = time.monotonic()
        if now - last.get(method, -1e9) < min_interval:
            return
        last[method] = now
        from monailabel.utils.async_tasks.task import AsyncTask

        res, detail = AsyncTask.run("scoring", request={"method": method}, enqueue=False)
        logger.info(f"scoring[{method}] background refresh: {detail or (res or {}).get('id')}")

    return trigger
