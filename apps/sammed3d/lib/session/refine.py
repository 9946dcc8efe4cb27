"""Image-aware refinement of a crop's mask at twice the logits' resolution (optional post-processing).

Why: every promptable model served here predicts logits on the S/4 grid (32^3 cells for a 128^3
crop: 6 mm at 1.5 mm), and its mask is their trilinear upsampling, so a boundary can only be as
sharp as a cell. Where the model is unsure (|logit| < band), the boundary is re-decided on the
S/factor grid (64^3 by default: 3 mm) by the image itself: a voxel of that band goes to the
geodesically nearer of the confident inside and the confident outside (the geodesic region of
lib.evaluation.classical, seeded by the model instead of by a box). The model still decides WHAT
the structure is; the image decides WHERE its edge runs. Clicks keep their own label.

    refine_logits(logits (1, 1, L, L, L), image (M, M, M) normalised crop at S/factor,
                  points [(crop coords)], labels [1/0], params)   -> (1, 1, M, M, M) logits

The solve is restricted to the band plus a one-voxel shell of seeds (infinite cost elsewhere), so
it costs in proportion to the boundary's area, not the crop's volume. The returned logits equal
the upsampled model logits outside the band; inside it they are clip(d_out - d_in, -band, band),
so the mask the paste-back thresholds at 0 follows the image there.

With fine_band > 0 a second stage follows on the crop's own grid (S, 1.5 mm): the first stage's
result is upsampled and the voxels within fine_band of its edge are re-decided the same way, so the
edge is placed to the voxel while the wide, costly solve stays on the coarse grid (opt-in:
--conf refine_fine_band; measured in docs/default_model.md, "Fourth run").

    refine_logits(logits, {factor: image, 1: full image} (refine_images), points, labels, params)
        -> (1, 1, S, S, S) logits

With full_res_max_voxels > 0 the grid follows the band's size instead: a band whose bounding box on
the crop's own grid holds at most that many voxels is decided there in one stage (a small structure's
edge to 1.5 mm), a larger one at S/factor (where 1.5 mm would triple a click's CPU for no gain; default-v5
asks for 150,000: docs/default_model.md, "Fifth run").
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..model.geodesic_graph import geodesic_cost, geodesic_from_each

REFINE_MODES = ("auto", "none", "geodesic")


@dataclass(frozen=True)
class GeodesicRefine:
    """Parameters of refine_logits (chosen on development cases, see docs/default_model.md)."""

    band: float = 2.0  # logits with |x| < band are re-decided by the image
    gamma: float = 20.0  # cost sqrt(1 + (gamma |grad I|)^2) per refinement voxel
    factor: int = 2  # refinement grid = crop / factor
    # second stage at the crop's own resolution (factor > 1 only; 0: none): the voxels within fine_band
    # (in first-stage logits) of the first stage's edge are re-decided on the full grid. Why: deciding
    # the whole wide band at full resolution measured better on the development table but costs 3x a
    # click; the edge found at S/factor is within a few voxels, so only a thin shell needs the fine solve
    # (still 2-3x a click; no gain on the test table, so default-v4/v5 do not ask for it)
    fine_band: float = 0.0
    # size-adaptive grid (0: off): when the band's bounding box on the crop's own grid (estimated on the
    # logits' grid) holds at most this many voxels, the band is decided at factor 1 instead of `factor`.
    # Why: the full-resolution band measured best on the small development structures, where it is cheap,
    # and gained nothing on the large ones, where it costs 3x a click (docs/default_model.md, "Fifth run")
    full_res_max_voxels: int = 0

    def __post_init__(self):
        if not (self.band > 0 and self.gamma >= 0):
            raise ValueError(f"refine band must be > 0 and refine gamma >= 0, got {self.band}, {self.gamma}")
        if self.factor not in (1, 2, 4):
            raise ValueError(f"refine factor must be 1, 2 or 4, got {self.factor}")
        if not self.fine_band >= 0:
            raise ValueError(f"refine fine_band must be >= 0, got {self.fine_band}")
        if not (self.full_res_max_voxels >= 0 and int(self.full_res_max_voxels) == self.full_res_max_voxels):
            raise ValueError(f"refine full_res_max_voxels must be an integer >= 0, got {self.full_res_max_voxels}")

    @property
    def fine_stage(self) -> Optional["GeodesicRefine"]:
        """The second stage's own parameters (band fine_band on the full grid), or None without one."""
        return replace(self, band=self.fine_band, factor=1, fine_band=0.0, full_res_max_voxels=0) \
            if self.fine_band > 0 and self.factor > 1 else None

    @property
    def full_res(self) -> Optional["GeodesicRefine"]:
        """The one-stage refinement at factor 1 that a small band switches to, or None when off."""
        return replace(self, factor=1, fine_band=0.0, full_res_max_voxels=0) \
            if self.full_res_max_voxels > 0 and self.factor > 1 else None

    def describe(self) -> str:
        """One line for /info and the log, e.g. "geodesic band 6 gamma 60 factor 2 full resolution up to
        150000 voxels"."""
        text = f"geodesic band {self.band:g} gamma {self.gamma:g} factor {self.factor}"
        if self.fine_stage is not None:
            text += f" fine band {self.fine_band:g}"
        if self.full_res is not None:
            text += f" full resolution up to {self.full_res_max_voxels} voxels"
        return text

    @property
    def factors(self) -> Tuple[int, ...]:
        """The grids refine_image must provide: S/factor, and the full grid for a second stage or a
        size-adaptive one."""
        return (self.factor, 1) if self.fine_stage is not None or self.full_res is not None else (self.factor,)


def resolve_refine(mode: str, model_default: Optional[dict],
                   **overrides: Optional[float]) -> Optional["GeodesicRefine"]:
    """The refinement to serve: mode "none" | "geodesic" | "auto" (what the model's config asks for,
    lib.model.model_refine); band / gamma / factor / fine_band / full_res_max_voxels given (not None) override
    it. One rule for the server's --conf refine and the evaluation's --refine, so both measure what users get."""
    mode = str(mode or "auto").strip().lower()
    if mode not in REFINE_MODES:
        raise ValueError(f"refine must be auto, none or geodesic, got {mode!r}")
    if mode == "none" or (mode == "auto" and not model_default):
        return None
    params = dict(model_default or {})
    params.update({k: v for k, v in overrides.items() if v is not None})
    factor = params.get("factor", 2)
    if factor != int(factor):
        raise ValueError(f"refine factor must be 1, 2 or 4, got {factor!r}")
    params["factor"] = int(factor)
    budget = params.get("full_res_max_voxels", 0)
    if budget != int(budget):
        raise ValueError(f"refine full_res_max_voxels must be an integer >= 0, got {budget!r}")
    params["full_res_max_voxels"] = int(budget)
    return GeodesicRefine(**params)


def refine_image(image: torch.Tensor, factor: int) -> np.ndarray:
    """The normalised crop (1, 1, S, S, S) -> (S/factor,)^3 float32 block means (what refine_logits reads);
    clamped as the model clamps its input, so air in a tissue-poor crop does not dominate the gradient.
    float32 because that is what torch computed (geodesic_cost widens the band's box to float64 exactly):
    half the cache and no 16 MB copy per crop for the full-resolution grid."""
    x = image.float().clamp(-10.0, 10.0)
    if factor > 1:
        x = F.avg_pool3d(x, factor)
    return np.ascontiguousarray(x[0, 0].cpu().numpy())


def refine_images(image: torch.Tensor, params: GeodesicRefine) -> Dict[int, np.ndarray]:
    """refine_image at each of params.factors (what refine_logits reads for a two-stage refinement)."""
    return {f: refine_image(image, f) for f in params.factors}


def _voxels(points: Sequence[Sequence[float]], factor: int, size: int) -> np.ndarray:
    """Crop voxel coordinates -> refinement-grid indices (K, 3)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return np.clip(np.floor((pts + 0.5) / factor), 0, size - 1).astype(np.int64)


def refine_logits(logits: torch.Tensor, image: Union[np.ndarray, Dict[int, np.ndarray]],
                  points: Sequence[Sequence[float]], labels: Sequence[int], params: GeodesicRefine) -> torch.Tensor:
    """See the module doc. `image`: refine_image's output for the same crop at params.factor, or
    refine_images' {factor: image} (needed for a second stage or a size-adaptive grid)."""
    images = image if isinstance(image, dict) else {params.factor: image}
    if set(params.factors) - set(images):
        raise ValueError(f"refine_logits needs the crop at factors {params.factors} (refine_images), "
                         f"got {sorted(images)}")
    full = params.full_res
    if full is not None and _band_box_voxels(logits, params.band, images[1].shape[0]) <= params.full_res_max_voxels:
        return _refine_stage(logits, images[1], points, labels, full)
    out = _refine_stage(logits, images[params.factor], points, labels, params)
    fine = params.fine_stage
    return out if fine is None else _refine_stage(out, images[1], points, labels, fine)


def _band_box_voxels(logits: torch.Tensor, band: float, size: int) -> int:
    """Voxels of the band's bounding box on a size^3 grid, from the logits' own (coarser) grid: what a
    stage on that grid would solve over."""
    small = (logits.detach().abs() < band)[0, 0].cpu().numpy()
    if not small.any():
        return 0
    box = _bounding_box(small, grow=1)
    scale = size / small.shape[0]
    return int(np.prod([(b.stop - b.start) * scale for b in box]))


def _refine_stage(logits: torch.Tensor, image: np.ndarray, points: Sequence[Sequence[float]],
                  labels: Sequence[int], params: GeodesicRefine) -> torch.Tensor:
    """One stage: the logits upsampled to `image`'s grid (S/params.factor), |logit| < params.band
    re-decided by the image."""
    size = image.shape[0]
    up = F.interpolate(logits.detach().float().cpu(), size=(size,) * 3, mode="trilinear",
                       align_corners=False)[0, 0].numpy().copy()
    inside, outside = up >= params.band, up <= -params.band
    labels = np.asarray(list(labels), dtype=np.int64)
    clicks = _voxels(points, params.factor, size) if len(labels) else np.zeros((0, 3), np.int64)
    for p, lab in zip(clicks, labels):
        if lab in (0, 1):
            inside[tuple(p)], outside[tuple(p)] = lab == 1, lab == 0
    band = ~(inside | outside)
    if not band.any() or not inside.any() or not outside.any():
        _keep_clicks(up, clicks, labels, params.band)
        return torch.from_numpy(up)[None, None]
    box = _bounding_box(band, grow=1)  # the solve only needs the band and its one-voxel shell
    sub = lambda a: a[box]  # noqa: E731
    region = ndimage.binary_dilation(sub(band), structure=np.ones((3, 3, 3), bool))
    cost = geodesic_cost(sub(image), params.gamma)
    cost[~region] = np.inf  # impassable: the solve stays in the band and its seed shell
    seeds_in, seeds_out = np.argwhere(region & sub(inside)), np.argwhere(region & sub(outside))
    d_in, d_out = _distances(cost, seeds_in, seeds_out)  # both sides at once, on two cores
    with np.errstate(invalid="ignore"):  # inf - inf where neither side reaches a voxel
        decided = np.clip(d_out - d_in, -params.band, params.band)
    # a band voxel that neither side reaches (cut off by the band's shape) keeps the model's own logit
    update = sub(band) & (np.isfinite(d_in) | np.isfinite(d_out))
    target = up[box]  # a view: writes go to `up`
    target[update] = decided[update]
    _keep_clicks(up, clicks, labels, params.band)
    return torch.from_numpy(up)[None, None]


def _distances(cost: np.ndarray, *seed_sets: np.ndarray):
    """The geodesic distance from each seed set; inf everywhere for a side with no seed in the band (e.g. an
    unsure hole enclosed by the confident inside: its voxels then go to the side that reaches them, as any
    voxel one side cannot reach)."""
    solved = iter(geodesic_from_each(cost, [s for s in seed_sets if len(s)]))
    return [next(solved) if len(s) else np.full(cost.shape, np.inf) for s in seed_sets]


def _keep_clicks(up: np.ndarray, clicks: np.ndarray, labels: np.ndarray, band: float) -> None:
    """A click's own voxel keeps its label (as the classical rows' seeds do)."""
    for p, lab in zip(clicks, labels):
        if lab in (0, 1):
            up[tuple(p)] = band if lab == 1 else -band


def _bounding_box(mask: np.ndarray, grow: int = 0) -> Tuple[slice, slice, slice]:
    idx = np.argwhere(mask)
    lo, hi = np.maximum(idx.min(0) - grow, 0), np.minimum(idx.max(0) + 1 + grow, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
