"""Selection rules shared by the server strategies and the offline simulation.

* random:      uniform among candidates.
* uncertainty: highest uncertainty first.
* diversity:   greedy k-center on pooled encoder features (each pick becomes a centre).
* combined:    two combination rules (`combine=`):
  - "rank": w * rank(uncertainty) + (1 - w) * rank(diversity), both ranks normalised to
    [0, 1] among the current candidates;
  - "product" (default): uncertainty-weighted k-center, each pick maximises u(x) * dmin(x), u = uncertainty
    min-max normalised to [floor, 1] over the candidates, dmin = distance to the nearest labelled
    (or already picked) volume. With no centre yet (nothing labelled) that pick falls back to the
    rank mix, as the k-center score then has no distance to use.
  Diversity is recomputed after each pick, so a batch does not take several near-duplicates of
  one uncertain kind.

The offline simulation names the product rule's curves "combined_product" (STRATEGIES).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from .diversity import diversity_scores

METHODS = ("random", "uncertainty", "diversity", "combined")
COMBINE_RULES = ("rank", "product")
# the rule when none is given: chosen by the fifteen-seed simulation (docs/activelearning.md)
DEFAULT_COMBINE = "product"
PRODUCT_FLOOR = 0.05
# simulation / report strategy names -> (select_batch method, combination rule)
STRATEGIES = {"random": ("random", "rank"), "uncertainty": ("uncertainty", "rank"),
              "diversity": ("diversity", "rank"), "combined": ("combined", "rank"),
              "combined_product": ("combined", "product")}


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


def minmax_normalise(scores: Dict[str, float], floor: float = PRODUCT_FLOOR) -> Dict[str, float]:
    """Scores -> [floor, 1] by min-max over the given ids (all 1.0 when they are all equal)."""
    if not scores:
        return {}
    vals = np.array(list(scores.values()), dtype=np.float64)
    lo, hi = float(vals.min()), float(vals.max())
    if not np.isfinite(hi - lo) or hi - lo <= 0:
        return {i: 1.0 for i in scores}
    return {i: floor + (1.0 - floor) * (float(v) - lo) / (hi - lo) for i, v in scores.items()}


def combine_product(uncertainty: Dict[str, float], diversity: Dict[str, float], weight: float = 0.5,
                    floor: float = PRODUCT_FLOOR, have_centres: bool = True) -> Dict[str, float]:
    """Uncertainty-weighted k-center score: minmax(u) * dmin, `diversity` being dmin (>= 0).

    An id without an uncertainty gets the floor. With no centres (`have_centres` False, the
    diversity score is then minus the distance to the pool mean) -> the rank mix instead."""
    if not have_centres:
        return combine(uncertainty, diversity, weight)
    un = minmax_normalise(uncertainty, floor)
    return {i: un.get(i, floor) * max(float(d), 0.0) for i, d in diversity.items()}


def combine_scores(rule: str, uncertainty: Dict[str, float], diversity: Dict[str, float], weight: float = 0.5,
                   have_centres: bool = True) -> Dict[str, float]:
    """Dispatch on the combination rule ("rank" or "product")."""
    if rule == "rank":
        return combine(uncertainty, diversity, weight)
    if rule == "product":
        return combine_product(uncertainty, diversity, weight, have_centres=have_centres)
    raise ValueError(f"unknown combination rule {rule!r}; one of {COMBINE_RULES}")


def select_batch(method: str, candidates: Sequence[str], k: int, rng: Optional[np.random.Generator] = None,
                 uncertainty: Optional[Dict[str, float]] = None, features: Optional[Dict[str, np.ndarray]] = None,
                 centres: Sequence[np.ndarray] = (), weight: float = 0.5,
                 diversity: Optional[Dict[str, float]] = None, combine_rule: str = DEFAULT_COMBINE) -> List[str]:
    """Pick k ids from `candidates`.

    Args:
        uncertainty: id -> uncertainty (uncertainty, combined).
        features: id -> pooled feature (diversity, combined); `centres` = features of the labelled
            (and handed-out) volumes. Without features, a precomputed `diversity` score is used as is.
        combine_rule: "rank" (mix) or "product" (uncertainty-weighted k-center), for combined.
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
    if combine_rule not in COMBINE_RULES:
        raise ValueError(f"unknown combination rule {combine_rule!r}; one of {COMBINE_RULES}")
    picks: List[str] = []
    centres = list(centres)
    unc = uncertainty or {}
    unc_all = {c: unc[c] for c in cands if c in unc}  # the product rule normalises over all candidates
    for _ in range(k):
        left = [c for c in cands if c not in picks]
        if method == "uncertainty":
            s = {c: unc.get(c, float("-inf")) for c in left}
        else:
            use_feats = features is not None and all(c in features for c in left)
            if use_feats:
                div = diversity_scores({c: features[c] for c in left}, centres)
            else:
                div = {c: (diversity or {}).get(c, 0.0) for c in left}
            if method == "diversity":
                s = div
            elif combine_rule == "product":
                have = bool(centres) if use_feats else all(v >= 0 for v in div.values())
                s = combine_product(unc_all, div, weight, have_centres=have)
            else:
                s = combine({c: unc[c] for c in left if c in unc}, div, weight)
        best = max(left, key=lambda c: (s[c], c))
        picks.append(best)
        if features is not None and best in features:
            centres.append(features[best])
    return picks
