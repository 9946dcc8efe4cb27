"""Selection rules shared by the server strategies and the offline simulation.

* random:      uniform among candidates.
* uncertainty: highest uncertainty first.
* diversity:   greedy k-center on pooled encoder features (each pick becomes a centre).
* combined:    w * rank(uncertainty) + (1 - w) * rank(diversity), both ranks normalised to [0, 1]
               among the current candidates; diversity is recomputed after each pick, so a batch
               does not take several near-duplicates of one uncertain kind.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from .diversity import diversity_scores

METHODS = ("random", "uncertainty", "diversity", "combined")


def rank_normalise(scores: Dict[str, float]) -> Dict[str, float]:
    """Scores -> rank in [0, 1] (0 = lowest, 1 = highest; ties share their mean rank)."""
    ids = list(scores)
    if len(ids) == 1:
        return {ids[0]: 1.0}
    vals = np.array([scores[i] for i in ids], dtype=np.float64)
    order = np.argsort(vals, kind="mergesort")
    ranks = np.empty(len(ids))
    ranks[order] = np.arange(len(ids), dtype=np.float64)
    for v in np.unique(vals):  # mean rank for ties
        m = vals == v
        ranks[m] = ranks[m].mean()
    ranks /= max(len(ids) - 1, 1)
    return {i: float(r) for i, r in zip(ids, ranks)}


def combine(uncertainty: Dict[str, float], diversity: Dict[str, float], weight: float = 0.5) -> Dict[str, float]:
    """Rank-normalised mix over the ids both know; an id missing one score gets rank 0.5 for it."""
    ids = sorted(set(uncertainty) | set(diversity))
    ru = rank_normalise({i: uncertainty[i] for i in ids if i in uncertainty}) if uncertainty else {}
    rd = rank_normalise({i: diversity[i] for i in ids if i in diversity}) if diversity else {}
    return {i: weight * ru.get(i, 0.5) + (1.0 - weight) * rd.get(i, 0.5) for i in ids}


def select_batch(method: str, candidates: Sequence[str], k: int, rng: Optional[np.random.Generator] = None,
                 uncertainty: Optional[Dict[str, float]] = None, features: Optional[Dict[str, np.ndarray]] = None,
                 centres: Sequence[np.ndarray] = (), weight: float = 0.5,
                 diversity: Optional[Dict[str, float]] = None) -> List[str]:
    """Pick k ids from `candidates`.

    Args:
        uncertainty: id -> uncertainty (uncertainty, combined).
        features: id -> pooled feature (diversity, combined); `centres` = features of the labelled
            (and handed-out) volumes. Without features, a precomputed `diversity` score is used as is.
    """
    cands = list(candidates)
    k = min(int(k), len(cands))
    if k <= 0:
        return []
    if method == "random":
        rng = rng or np.random.default_rng()
        return [cands[i] for i in rng.choice(len(cands), size=k, replace=False)]
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; one of {METHODS}")
    picks: List[str] = []
    centres = list(centres)
    unc = uncertainty or {}
    for _ in range(k):
        left = [c for c in cands if c not in picks]
        if method == "uncertainty":
            s = {c: unc.get(c, float("-inf")) for c in left}
        else:
            if features is not None and all(c in features for c in left):
                div = diversity_scores({c: features[c] for c in left}, centres)
            else:
                div = {c: (diversity or {}).get(c, 0.0) for c in left}
            s = div if method == "diversity" else combine({c: unc[c] for c in left if c in unc}, div, weight)
        best = max(left, key=lambda c: (s[c], c))
        picks.append(best)
        if features is not None and best in features:
            centres.append(features[best])
    return picks
