"""The first click's box margin, chosen among candidates by a learned score of each candidate's region.

Why: with one click only the box bounds the classical region (lib.session.classical_region): in homogeneous
tissue it fills about half the margin, so one fixed margin is too tight for an organ and too loose for a small
lesion. On the development cases the best margin per target averages 0.62 Dice at the first click against 0.34
for the fixed 40 mm, and the hand-made rules (the region's contrast, its stability from one margin to the next)
each win on one kind of image and lose on another (docs/default_model.md, "Fifteenth run"). Here a few measured
properties of every candidate region (`FEATURES`) are weighed by a conditional-logit scorer fitted to maximise
the expected Dice of the chosen region on training-side targets (scripts/fit_margin_choice.py), so no single
hand rule decides.

    own_features(box, region, data, spacing, shape) -> dict    (one candidate alone; on the solving thread)
    candidate_features(candidates, ct, spacing, shape, own=None) -> (n, len(FEATURES)) float array
    MarginScorer.from_config(cfg).choose(features) -> index of the chosen candidate

A candidate is (margin_mm, box slices, region bool array in the box, the box's normalised intensities), as
lib.session.classical_region.segment_box gives it (with its margin first).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

_CUBE = np.ones((3, 3, 3), dtype=bool)

FEATURES = (
    "log_margin",  # log(margin / 40 mm)
    "contrast",  # |mean inside - mean of the one-voxel shell| / std inside (the hand rule's score)
    "contrast_rel",  # contrast / the largest contrast among the candidates
    "edge",  # mean |gradient| on the shell / (mean |gradient| inside + 0.1): an edge bounds it, or tissue goes on
    "fill",  # region voxels / box voxels
    "log_volume",  # log(region volume / 1 ml)
    "touch",  # share of the shell on the box's inner faces (a box-bounded region, not an edge-bounded one)
    "grow_next",  # log(volume at the next larger margin / this volume): still growing with the box
    "overlap_next",  # |this & next| / |this|: the larger box keeps this region
    "ct",  # 1 for CT (absolute HU edges), 0 for MR
    "ct_log_margin",  # ct * log_margin: the margin's effect per modality
    "ct_contrast_rel",  # ct * contrast_rel
)
# a scorer that also weighs the first click's flood levels (lib.session.flood_candidates) has these columns after
# FEATURES; a margin candidate has 0 in them, a flood candidate has log_margin 0
FLOOD_FEATURES = FEATURES + (
    "flood",  # 1 for a flood candidate
    "flood_log_level",  # log(level / 16 cells)
    "flood_log_sigma",  # log(the click's robust spread / 0.3): high at an edge or in texture
    "flood_contrast_rel",  # flood * contrast_rel (among the floods)
    "flood_touch",  # flood * touch (on the flood window's inner faces: it runs past the window)
)


def _global(box: Tuple[slice, ...], region: np.ndarray, frame: Tuple[slice, ...]) -> np.ndarray:
    """`region` (in `box`) placed in the larger `frame` (a box holding it)."""
    out = np.zeros(tuple(s.stop - s.start for s in frame), dtype=bool)
    out[tuple(slice(b.start - f.start, b.stop - f.start) for b, f in zip(box, frame))] = region
    return out


def own_features(box: Tuple[slice, ...], region: np.ndarray, data: np.ndarray, spacing: Sequence[float],
                 shape: Sequence[int], grad: Optional[np.ndarray] = None,
                 inner: Optional[Sequence[Tuple[bool, bool]]] = None) -> Dict[str, float]:
    """The features of one candidate that need no other candidate (contrast, edge, fill, log_volume, touch).
    `grad`: |gradient| of `data` where the caller shares it among candidates on one array; `inner`: per axis
    whether the box's low / high face lies inside the image (default: from `box` and the volume's `shape`)."""
    shell = ndimage.binary_dilation(region, _CUBE) & ~region
    n = int(region.sum())
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out = {"fill": n / float(region.size), "log_volume": float(np.log(max(n, 1) * voxel_ml))}
    if n == 0 or not shell.any():
        out.update(contrast=0.0, edge=0.0, touch=0.0)
        return out
    inside = data[region]
    out["contrast"] = float(abs(inside.mean() - data[shell].mean()) / (inside.std() + 1e-3))
    if grad is None:
        grad = np.sqrt(sum(g ** 2 for g in np.gradient(data, *[float(s) for s in spacing])))
    out["edge"] = float(grad[shell].mean() / (grad[region].mean() + 0.1))
    faces = np.zeros(region.shape, dtype=bool)  # the voxels next to a box face that lies inside the image
    if inner is None:
        inner = [(sl.start > 0, sl.stop < shape[a]) for a, sl in enumerate(box)]
    for a, (low_inside, high_inside) in enumerate(inner):
        idx = [slice(None)] * 3
        if low_inside:
            idx[a] = slice(0, 2)
            faces[tuple(idx)] = True
        if high_inside:
            idx[a] = slice(-2, None)
            faces[tuple(idx)] = True
    out["touch"] = float((shell & faces).sum() / shell.sum())
    return out


def candidate_features(candidates: Sequence[tuple], ct: bool, spacing: Sequence[float], shape: Sequence[int],
                       own: Optional[Sequence[Dict[str, float]]] = None) -> np.ndarray:
    """(n, len(FEATURES)) features of the candidates (sorted by margin by the caller; see the module doc).
    `shape`: the whole volume's, so a box face on the volume's border is not counted as the box's bound.
    `own`: each candidate's own_features where the caller computed them already (on the solving threads)."""
    rows = [dict(r) for r in own] if own is not None else [
        own_features(box, region, data, spacing, shape) for _, box, region, data in candidates]
    best_contrast = max([r["contrast"] for r in rows] + [1e-6])
    for i, (margin, box, region, _) in enumerate(candidates):
        r = rows[i]
        r["log_margin"] = float(np.log(margin / 40.0))
        r["contrast_rel"] = r["contrast"] / best_contrast
        if i + 1 < len(candidates):
            _, nbox, nregion, _ = candidates[i + 1]
            frame = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(box, nbox))
            this, nxt = _global(box, region, frame), _global(nbox, nregion, frame)
            r["grow_next"] = float(np.log((nxt.sum() + 1.0) / (this.sum() + 1.0)))
            r["overlap_next"] = float((this & nxt).sum() / max(this.sum(), 1))
        else:  # the largest candidate: nothing larger was tried
            r["grow_next"], r["overlap_next"] = 0.0, 1.0
        r["ct"] = float(ct)
        r["ct_log_margin"] = r["ct"] * r["log_margin"]
        r["ct_contrast_rel"] = r["ct"] * r["contrast_rel"]
    return np.array([[r[f] for f in FEATURES] for r in rows], dtype=np.float64)


class MarginScorer:
    """Linear scores of standardised features; the chosen candidate is the best-scored one (a conditional logit:
    P(candidate) = softmax(score), fitted by scripts/fit_margin_choice.py to maximise the expected Dice).

    Config (the model config's `plain_region_margin_scorer`): {"margins": [mm, ascending], "features": FEATURES,
    "mean": [...], "std": [...], "weights": [...]}, and with "flood_levels": [cells, ascending] the features are
    FLOOD_FEATURES and the flood's levels are candidates after the margins. The features compare a candidate with
    the next margin (level), so a scorer serves only with those it was fitted on; one fitted on other features is
    refused."""

    def __init__(self, margins: Sequence[float], mean: Sequence[float], std: Sequence[float],
                 weights: Sequence[float], flood_levels: Sequence[float] = ()):
        self.margins = tuple(float(m) for m in margins)
        self.flood_levels = tuple(round(float(v), 4) for v in flood_levels)  # geomspace's 31.999... as 32
        self.features = FLOOD_FEATURES if self.flood_levels else FEATURES
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.weights = np.asarray(weights, dtype=np.float64)
        if len(self.margins) < 2 or list(self.margins) != sorted(set(self.margins)) or not 0 < self.margins[0] \
                or self.margins[-1] > 500:
            raise ValueError(f"a margin scorer needs two or more ascending margins in (0, 500] mm, got {margins!r}")
        if self.flood_levels and (list(self.flood_levels) != sorted(set(self.flood_levels))
                                  or not 0 < self.flood_levels[0] or self.flood_levels[-1] > 1000):
            raise ValueError(f"a margin scorer's flood levels must ascend in (0, 1000] cells, got {flood_levels!r}")
        n = len(self.features)
        if not (self.mean.shape == self.std.shape == self.weights.shape == (n,)):
            raise ValueError(f"a margin scorer needs {n} means, stds and weights")
        if not (np.all(np.isfinite(self.mean)) and np.all(self.std > 0) and np.all(np.isfinite(self.weights))):
            raise ValueError("a margin scorer needs finite means and weights and positive stds")

    @classmethod
    def from_config(cls, cfg: dict) -> "MarginScorer":
        expected = FLOOD_FEATURES if isinstance(cfg, dict) and cfg.get("flood_levels") else FEATURES
        if not isinstance(cfg, dict) or list(cfg.get("features", [])) != list(expected):
            raise ValueError(f"plain_region_margin_scorer must be a dict whose features are {list(FEATURES)} "
                             f"(with flood_levels: {list(FLOOD_FEATURES)})")
        try:
            return cls(cfg["margins"], cfg["mean"], cfg["std"], cfg["weights"], cfg.get("flood_levels") or ())
        except (KeyError, TypeError) as e:
            raise ValueError(f"plain_region_margin_scorer needs margins, mean, std and weights ({e})") from None

    def to_config(self) -> dict:
        rounded = lambda v: [round(float(x), 6) for x in v]  # noqa: E731
        cfg = {"margins": list(self.margins), "features": list(self.features), "mean": rounded(self.mean),
               "std": rounded(self.std), "weights": rounded(self.weights)}
        if self.flood_levels:
            cfg["flood_levels"] = list(self.flood_levels)
        return cfg

    def scores(self, features: np.ndarray) -> np.ndarray:
        return ((np.asarray(features, dtype=np.float64) - self.mean) / self.std) @ self.weights

    def choose(self, features: np.ndarray) -> int:
        """The index of the best-scored candidate (the first of equals)."""
        return int(np.argmax(self.scores(features)))


def with_flood_columns(features: np.ndarray) -> np.ndarray:
    """Margin candidates' (n, len(FEATURES)) features as FLOOD_FEATURES rows (0 in the flood's columns)."""
    features = np.asarray(features, dtype=np.float64)
    pad = np.zeros(features.shape[:-1] + (len(FLOOD_FEATURES) - len(FEATURES),))
    return np.concatenate([features, pad], axis=-1)
