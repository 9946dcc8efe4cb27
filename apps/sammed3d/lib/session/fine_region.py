"""A click in a small walled structure, seen at the crop's own resolution (1.5 mm).

Why: the prior decides on 6 mm cells. A lesion of 1-10 ml is 2-4 cells across and its edge a few HU
deep, so the cell means do not show it: the box prior grows to the next strong wall (a head CT's
lesion: the whole intracranial contents, 3.6 million voxels for a 5,000-voxel lesion, Dice 0.003) and
the flood fills the tissue around it. At 1.5 mm the same lesion is walled: the flood of the clicked
intensity (lib.model.flood_region.FloodRegion with a noise-level spread floor) plateaus inside a
small window around the first include click. Where it does, that region is the crop's answer; where
the clicked tissue reaches the window's faces (a lung, a liver, white matter: the large structures the
coarse prior is for) nothing changes.

    FineRegion(window)(image (S, S, S) normalised crop, points [(crop coords)], labels [1/0],
                       logits (1, 1, g, g, g)) -> (1, 1, g, g, g) logits (the region's cell coverage
                       as logits, the refinement then places its edge), or `logits` unchanged
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..model.flood_region import FloodRegion


# --conf prior_fine / --prior-fine: "auto" serves what the model's config asks for (prior_fine_window)
FINE_SWITCH = ("auto", "on", "off")
DEFAULT_WINDOW = 24  # 36 mm each side of the click (chosen on the development cases: 16 and 32 measured worse)


class FineRegion:
    """Parameters chosen on the development cases (docs/default_model.md, "Eighth run"): the flood's
    tolerance 2 spreads and a spread floor at the noise level (0.005 of the normalised intensity: the
    coarse flood's 0.1 floor would span a lesion's few-HU edge); exclude clicks "compete" (an exclude
    on a lesion's leaked edge then takes only its side, where "level" also cut the lesion's far parts)."""

    def __init__(self, window: int = DEFAULT_WINDOW, tolerance: float = 2.0, beta: float = 2.0,
                 sigma_floor: float = 0.005, max_sigma: float = 0.25, slope: float = 1.0, clip: float = 6.0):
        self.window, self.clip = int(window), float(clip)
        self.flood = FloodRegion(beta, tolerance, slope=slope, max_sigma=max_sigma, exclude_mode="compete",
                                 sigma_floor=sigma_floor, enclosed=True)

    def __call__(self, image: np.ndarray, points: Sequence[Sequence[float]], labels: Sequence[int],
                 logits: torch.Tensor) -> torch.Tensor:
        pts = np.floor(np.asarray(points, dtype=np.float64).reshape(-1, 3) + 0.5).astype(np.int64)
        labs = np.asarray(list(labels), dtype=np.int64)
        size = image.shape[0]
        inside = np.all((pts >= 0) & (pts < size), axis=1)
        fg = pts[(labs == 1) & inside]
        if not len(fg):
            return logits
        lo = np.clip(fg[0] - self.window, 0, size)
        hi = np.clip(fg[0] + self.window + 1, 0, size)
        in_win = lambda p: np.all((p >= lo) & (p < hi), axis=1)  # noqa: E731
        if not in_win(fg).all():  # an include click beyond the window: the structure is not a small one
            return logits
        ex = pts[(labs == 0) & inside]
        ex = ex[in_win(ex)] if len(ex) else ex.reshape(0, 3)
        win = image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        region = self.flood(win, fg - lo, ex - lo, self.clip)
        if region is None:
            return logits
        mask = np.zeros(image.shape, np.float32)
        mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = region > 0
        cells = logits.shape[-1]
        out = (2.0 * F.adaptive_avg_pool3d(torch.from_numpy(mask)[None, None], cells) - 1.0) * self.clip
        for p, lab in zip(pts[inside], labs[inside]):  # a click keeps its own label, as in GeodesicPrior
            if lab in (0, 1):
                cell = np.minimum(p * cells // size, cells - 1)
                out[(0, 0) + tuple(int(c) for c in cell)] = self.clip if lab == 1 else -self.clip
        return out.to(dtype=logits.dtype, device=logits.device)

    def describe(self) -> str:
        return f"window {self.window} voxels, {self.flood.describe()}"


def resolve_fine(mode: Optional[str], config: Optional[dict]) -> Optional[FineRegion]:
    """--conf prior_fine / --prior-fine `mode` for a model whose config is `config`: "auto" (or None) the
    config's prior_fine_window (0 or absent: none), "on" that window or DEFAULT_WINDOW, "off" none.
    Image-only, so "on" serves any model, the released SAM-Med3D included."""
    mode = str(mode or "auto").strip().lower()
    if mode not in FINE_SWITCH:
        raise ValueError(f"prior_fine must be one of {', '.join(FINE_SWITCH)}, got {mode!r}")
    window = int((config or {}).get("prior_fine_window") or 0)
    if mode == "off" or (mode == "auto" and window <= 0):
        return None
    return FineRegion(window if window > 0 else DEFAULT_WINDOW)
