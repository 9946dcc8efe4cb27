"""Classical click-to-segment methods on a volume array: the comparison rows of the evaluation command
(issue 14, through lib.evaluation.classical.ClassicalSegmenter) and, for the geodesic region, what the server
answers where the offline default's prior gives its plain box competition (lib.session.plain_region).

Two methods a user without a learned model would reach for, driven by the SAME simulated clicks
as the model (lib.evaluation.loop):

* ``random_walker``: scikit-image's random walker (Grady 2006), with the voxel spacing passed on;
* ``geodesic``: a geodesic-distance region (as GeoS / DeepIGeoS's geodesic maps, Criminisi et al.
  2008, Wang et al. 2018): every voxel of the region goes to the nearer of the include and exclude
  seeds, where the distance is the minimal path length in mm weighted by the image gradient,
  ``cost = sqrt(1 + (gamma * |grad I|)^2)`` per mm (I: normalised intensity, grad in 1/mm),
  with ``skimage.graph.MCP_Geometric``'s metric (``sampling`` = spacing, 26-connected), solved by the app's
  one shortest-path home, lib.model.geodesic_graph (a compiled Dijkstra, MCP itself without numba). The
  PyPI packages FastGeodis and GeodisTK ship only source distributions whose build fails here (they
  import torch / numpy at build time), so this is our own.

What the user gives, and how it becomes seeds (one rule for both methods):

* The region: the bounding box of all clicks so far plus ``margin_mm`` on every side (at least one
  voxel), clamped to the image, on the image's STORED grid (no resampling; anisotropic voxels are
  handled through the spacing). Outside the box the mask is empty. The box grows as include clicks
  land outside it, as a user would redraw a region of interest.
* Include clicks are foreground seeds, exclude clicks background seeds; each seed is the click's
  voxel plus the voxels within ``seed_radius_mm`` (a small brush).
* Background seeds on the box border: the faces of the box that lie inside the image (a face on the
  image's own border is not a seed: the structure may continue past the scan). ``border="always"``
  keeps them for every click; ``border="until_exclude"`` drops them once the user has placed an
  exclude click. With no background seed at all (the box fills the image and no exclude click yet)
  the whole box is foreground.
* Intensities are normalised as the model's preprocessing does (lib.session.preprocess.normalise:
  CT clamped to [-1000, 1000], then z-normalised with the statistics of the voxels > 0 of the box),
  then smoothed with a Gaussian of ``sigma_mm`` (per-axis sigma in voxels = sigma_mm / spacing).

Parameters were chosen once on development cases (synthetic phantoms and training-side MNI
structures, never the test table): ``python -m lib.evaluation.tune`` (lib/evaluation/tune.py, see
docs/eval/classical_tuning.md); the chosen values are ``TUNED`` below.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from lib.model.geodesic_graph import geodesic_cost, geodesic_from_each, nearest_seed_set

METHODS = ("random_walker", "geodesic")


@dataclass(frozen=True)
class ClassicalParams:
    margin_mm: float = 20.0  # box around the clicks
    border: str = "always"  # "always" | "until_exclude": box faces inside the image as background seeds
    seed_radius_mm: float = 2.0  # brush radius around each click
    sigma_mm: float = 1.0  # Gaussian pre-smoothing (0: none)
    beta: float = 1000.0  # random walker edge weight (scikit-image scales it by 1 / (10 * std))
    gamma: float = 10.0  # geodesic: weight of the gradient in the local cost
    tol: float = 1e-3  # random walker conjugate-gradient tolerance
    max_voxels: int = 1_500_000  # larger boxes are solved on a coarser grid (fixed budget, not tuned)


# Chosen on the development cases (docs/eval/classical_tuning.md); never on test cases.
TUNED: Dict[str, ClassicalParams] = {
    "random_walker": ClassicalParams(margin_mm=40.0, border="always", seed_radius_mm=2.0, sigma_mm=0.0, beta=16000.0),
    "geodesic": ClassicalParams(margin_mm=40.0, border="always", seed_radius_mm=2.0, sigma_mm=1.0, gamma=300.0),
}


# ----------------------------------------------------------------------------------------------
# Region, seeds, normalisation


def roi_box(points: Sequence[Sequence[int]], shape: Sequence[int], spacing: Sequence[float],
            margin_mm: float) -> Tuple[Tuple[slice, ...], List[Tuple[bool, bool]]]:
    """Box of `points` plus margin_mm (>= 1 voxel) per axis, clamped to `shape`.

    Returns the box as slices and, per axis, whether its low/high face lies inside the image
    (True: a border-seed face; False: the face is the image's own border).
    """
    pts = np.asarray(points, dtype=np.int64).reshape(-1, 3)
    box, inner = [], []
    for a in range(3):
        m = max(1, int(round(margin_mm / float(spacing[a]))))
        lo = max(0, int(pts[:, a].min()) - m)
        hi = min(int(shape[a]), int(pts[:, a].max()) + m + 1)
        box.append(slice(lo, hi))
        inner.append((lo > 0, hi < int(shape[a])))
    return tuple(box), inner


def _ball_offsets(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Integer offsets (n, 3) of the voxels within radius_mm of the centre (always the centre)."""
    r = [int(np.floor(radius_mm / float(s))) for s in spacing]
    grid = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in r], indexing="ij"), -1).reshape(-1, 3)
    d2 = ((grid * np.asarray(spacing, dtype=np.float64)) ** 2).sum(1)
    return grid[d2 <= radius_mm ** 2 + 1e-9]


def seed_labels(roi_shape: Sequence[int], fg: Sequence[Sequence[int]], bg: Sequence[Sequence[int]],
                inner_faces: Optional[List[Tuple[bool, bool]]], spacing: Sequence[float],
                seed_radius_mm: float) -> np.ndarray:
    """uint8 seed map of the box: 0 unlabelled, 1 foreground, 2 background.

    fg/bg are box-local voxel indices. Border faces (inner_faces[a] = (low, high)) are background;
    click brushes are painted after them (background first, then foreground), so a click always keeps
    its own label.
    """
    lab = np.zeros(tuple(int(s) for s in roi_shape), dtype=np.uint8)
    if inner_faces is not None:
        for a, (lo, hi) in enumerate(inner_faces):
            idx = [slice(None)] * 3
            if lo:
                idx[a] = 0
                lab[tuple(idx)] = 2
            if hi:
                idx[a] = -1
                lab[tuple(idx)] = 2
    offs = _ball_offsets(seed_radius_mm, spacing)
    for points, value in ((bg, 2), (fg, 1)):
        for p in points:
            q = offs + np.asarray(p, dtype=np.int64)[None]
            q = q[((q >= 0) & (q < np.asarray(lab.shape))).all(1)]
            lab[q[:, 0], q[:, 1], q[:, 2]] = value
    for points, value in ((bg, 2), (fg, 1)):  # the click voxels themselves win over any brush
        for p in points:
            lab[tuple(int(v) for v in p)] = value
    return lab


def normalise_roi(roi: np.ndarray, ct: bool, spacing: Sequence[float], sigma_mm: float) -> np.ndarray:
    """The model's normalisation (CT clamp, z-score over voxels > 0), then optional Gaussian smoothing."""
    from lib.session.preprocess import normalise

    x = normalise(np.ascontiguousarray(roi, dtype=np.float32), ct)[0, 0].numpy().astype(np.float64)
    if sigma_mm > 0:
        x = ndimage.gaussian_filter(x, [sigma_mm / float(s) for s in spacing], mode="nearest")
    return x


# ----------------------------------------------------------------------------------------------
# The two methods on a box (data: normalised float array, labels: seed map)


def random_walker_score(data: np.ndarray, labels: np.ndarray, spacing: Sequence[float], beta: float,
                        tol: float = 1e-3) -> np.ndarray:
    """(P(foreground) - P(background)) / 2 from skimage.segmentation.random_walker (spacing passed on)."""
    from skimage.segmentation import random_walker

    if not (labels == 2).any():
        return np.full(labels.shape, 0.5)
    if not (labels == 1).any():
        return np.full(labels.shape, -0.5)
    if (labels != 0).all():
        return np.where(labels == 1, 0.5, -0.5)
    with warnings.catch_warnings():  # "probability outside [0, 1] within tolerance" at high beta
        warnings.simplefilter("ignore")
        prob = random_walker(data, labels, beta=beta, mode="cg_j", tol=tol, return_full_prob=True,
                             spacing=np.asarray(spacing, dtype=np.float64), channel_axis=None)
    # Each label's probability is solved separately (to `tol`), so they need not sum to 1: compare them,
    # as random_walker's own label output (argmax) does, instead of thresholding one at 0.5.
    return 0.5 * (prob[0] - prob[1])  # channel 0 is label 1 (foreground)


def geodesic_score(data: np.ndarray, labels: np.ndarray, spacing: Sequence[float], gamma: float) -> np.ndarray:
    """Distance to the background seeds minus distance to the foreground seeds (> 0: foreground); the
    mm-weighted geodesic distance the model's click maps also use (lib.model.geodesic_maps)."""
    if not (labels == 2).any():
        return np.ones(labels.shape)
    if not (labels == 1).any():
        return -np.ones(labels.shape)
    cost = geodesic_cost(data, gamma, spacing)
    d_bg, d_fg = geodesic_from_each(cost, [np.argwhere(labels == 2), np.argwhere(labels == 1)], spacing)
    return d_bg - d_fg


def geodesic_sign(data: np.ndarray, labels: np.ndarray, spacing: Sequence[float], gamma: float) -> np.ndarray:
    """The sign of geodesic_score (+1 foreground, -1 otherwise, a tie included), the same mask, from one solve
    that labels each voxel with its nearer seed set (lib.model.geodesic_graph.nearest_seed_set) instead of two
    whole distance fields: half the CPU (a 1 mm MR box: 0.11 s on one thread, as the two solves on two)."""
    if not ((labels == 2).any() and (labels == 1).any()):
        return geodesic_score(data, labels, spacing, gamma)  # nothing competes: its rule
    nearest = nearest_seed_set(geodesic_cost(data, gamma, spacing), [np.argwhere(labels == 2),
                                                                     np.argwhere(labels == 1)], spacing)
    return np.where(nearest == 1, 1.0, -1.0)  # the background seeds are listed first: a tie is background


def coarse_factors(shape: Sequence[int], spacing: Sequence[float], max_voxels: int) -> Tuple[int, int, int]:
    """Integer block factors per axis so the box has at most max_voxels; the finest axis grows first."""
    f = [1, 1, 1]
    while int(np.prod([-(-n // k) for n, k in zip(shape, f)])) > max_voxels:
        a = min(range(3), key=lambda i: (float(spacing[i]) * f[i], -shape[i]))
        f[a] += 1
    return tuple(f)


def _block_mean(x: np.ndarray, f: Sequence[int]) -> np.ndarray:
    pad = [(0, (-n) % k) for n, k in zip(x.shape, f)]
    x = np.pad(x, pad, mode="edge")
    s = x.shape
    return x.reshape(s[0] // f[0], f[0], s[1] // f[1], f[1], s[2] // f[2], f[2]).mean(axis=(1, 3, 5))


def _coarse_labels(labels: np.ndarray, f: Sequence[int]) -> np.ndarray:
    """A coarse voxel is a foreground seed if it holds one, else background if it holds one."""
    pad = [(0, (-n) % k) for n, k in zip(labels.shape, f)]
    x = np.pad(labels, pad)
    s = x.shape
    blocks = x.reshape(s[0] // f[0], f[0], s[1] // f[1], f[1], s[2] // f[2], f[2])
    out = np.zeros(blocks.shape[::2], dtype=np.uint8)
    out[(blocks == 2).any(axis=(1, 3, 5))] = 2
    out[(blocks == 1).any(axis=(1, 3, 5))] = 1
    return out


def region_score(method: str, data: np.ndarray, labels: np.ndarray, spacing: Sequence[float],
                 params: ClassicalParams, sign_only: bool = True) -> np.ndarray:
    """Score over the box (> 0: foreground). Boxes over params.max_voxels are solved on a grid coarsened
    by integer block factors (block mean of the data; seeds kept) and the score is interpolated back
    linearly, so the mask is still on the stored grid (there the geodesic score's size matters; on the stored
    grid only its sign, `geodesic_sign`, unless sign_only is False)."""
    f = coarse_factors(data.shape, spacing, params.max_voxels)
    if f != (1, 1, 1):
        cdata, clab = _block_mean(data, f), _coarse_labels(labels, f)
        cspacing = [float(sp) * k for sp, k in zip(spacing, f)]
        score = region_score(method, cdata, clab, cspacing, replace(params, max_voxels=int(1e18)), sign_only=False)
        zoom = [k for k in f]
        up = ndimage.zoom(score, zoom, order=1, mode="nearest", grid_mode=True)
        return up[: data.shape[0], : data.shape[1], : data.shape[2]]
    if method == "random_walker":
        return random_walker_score(data, labels, spacing, params.beta, params.tol)
    return (geodesic_sign if sign_only else geodesic_score)(data, labels, spacing, params.gamma)


# ----------------------------------------------------------------------------------------------
# The segmenter used by the evaluation command


def segment_array(method: str, image: np.ndarray, ct: bool, spacing: Sequence[float], fg: Sequence[Sequence[int]],
                  bg: Sequence[Sequence[int]], params: ClassicalParams) -> np.ndarray:
    """Boolean mask on the stored grid of `image` ((i, j, k) array) from include/exclude clicks."""
    if method not in METHODS:
        raise ValueError(f"unknown classical method {method!r}; choose from {METHODS}")
    mask = np.zeros(image.shape, dtype=bool)
    if fg:
        box, region, _ = segment_box(method, image, ct, spacing, fg, bg, params)
        mask[box] = region
    return mask


def segment_box(method: str, image: np.ndarray, ct: bool, spacing: Sequence[float], fg: Sequence[Sequence[int]],
                bg: Sequence[Sequence[int]], params: ClassicalParams) -> Tuple[Tuple[slice, ...], np.ndarray, np.ndarray]:
    """segment_array inside its box (at least one include click): (the box as slices, the region in it (bool),
    the box's normalised intensities the method solved on)."""
    if method not in METHODS:
        raise ValueError(f"unknown classical method {method!r}; choose from {METHODS}")
    if params.border not in ("always", "until_exclude"):
        raise ValueError(f"border must be 'always' or 'until_exclude', not {params.border!r}")
    box, inner = roi_box(list(fg) + list(bg), image.shape, spacing, params.margin_mm)
    lo = np.array([s.start for s in box])
    local = lambda pts: [tuple(int(v) for v in np.asarray(p) - lo) for p in pts]  # noqa: E731
    faces = inner if (params.border == "always" or not bg) else None
    roi = image[box]
    labels = seed_labels(roi.shape, local(fg), local(bg), faces, spacing, params.seed_radius_mm)
    data = normalise_roi(roi, ct, spacing, params.sigma_mm)
    region = region_score(method, data, labels, spacing, params) > 0
    region[labels == 1] = True  # the seeds themselves (they may be lost when solved on a coarser grid)
    region[labels == 2] = False
    return box, region, data
