"""A walled region of the clicked intensity, for GeodesicPrior when a click lands in a large structure.

Why: GeodesicPrior's region is the set of cells geodesically nearer to the include clicks than to the
faces of a box around them, over a gradient cost. Inside a large structure with texture (a lung's
vessels, white matter's folding seen through 6 mm cells) that cost is 3-5 per cell, so one click gives
a pocket a few cells wide (default-v5 after one click: lungs 0.04, white matter 0.04, liver 0.003),
and PriorGrowth never sees a plateau. What a user means by one click in a lung is "this kind of tissue,
as far as it goes": the flood fill with a tolerance that annotation tools offer.

Here the cost of a step is low for cells whose intensity is like the clicks' and rises with how unlike
they are (no gradient term):

    mu, sigma = median / 1.4826 MAD of the first include click's 3^3 cells (sigma >= SIGMA_FLOOR)
    z = max(0, |I - mu| / sigma - tolerance)             # a dead zone of `tolerance` sigmas
    cost = sqrt(1 + (beta z)^2)                          # per cell (cells are isotropic)

and the region {d < T} is watched for a plateau as PriorGrowth does (slope of log V over log T below
`slope`, V at most half the crop, MIN_LEVEL <= T <= MAX_LEVEL). Only when there is one - the clicked
tissue is walled - does it decide the prior: logit = clip(T* - d, +-clip). Without a plateau (tissue
that continues into its neighbours, e.g. a hippocampus in grey matter) or when the first include
click's surroundings are not one tissue (sigma > max_sigma: a small structure, an edge) it returns
None and GeodesicPrior's own region stands, unchanged.

An exclude click says the region went too far. `exclude_mode` "level" (chosen, docs/default_model.md
"Seventh run"): nothing farther from the include clicks than the nearest exclude click stays in (logit
<= d(exclude) - d), and the exclude clicks compete over the same cost (logit <= d_exclude - d);
"compete": the competition alone (a leak shrinks a little per click); "off": the flood ends with the
first exclude click and the box prior takes over.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import numpy as np

from .geodesic_graph import geodesic_from
from .geodesic_maps import PriorGrowth

# sigma's lower bound in normalised intensity units (the model's normalisation gives tissue unit
# spread): a flat phantom region would otherwise make the smallest noise an impassable wall
SIGMA_FLOOR = 0.1
# a plateau reached only past this distance (cells at cost 1: about the crop's half width) went through
# unlike tissue on the way - a slow leak, not a wall
MAX_LEVEL = 32.0
# below this the volume curve counts the 26-neighbourhood's shells, not a structure (a chest phantom's
# lung "plateaued" at 2.5 cells: 27 -> 31 cells)
MIN_LEVEL = 4.0
# --conf prior_flood / --prior-flood: "auto" serves what the model's config asks for (default-v5: none)
FLOOD_SWITCH = ("auto", "on", "off")
DEFAULT_BETA = 2.0  # "on" for a model whose config has no flood (chosen on the development cases)


def click_statistics(intensity: np.ndarray, cells: np.ndarray, floor: float = SIGMA_FLOOR) -> tuple:
    """Median and robust spread (1.4826 MAD, >= floor) of the 3^3 cell neighbourhoods of `cells`."""
    g = intensity.shape
    values = []
    for c in cells:
        lo, hi = np.maximum(c - 1, 0), np.minimum(c + 2, g)
        values.append(intensity[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].ravel())
    v = np.concatenate(values)
    mu = float(np.median(v))
    return mu, max(1.4826 * float(np.median(np.abs(v - mu))), floor)


class FloodRegion:
    """The walled region of the clicked intensity as prior logits, or None where it is not walled.

    region(intensity (g, g, g) cell means, include cells (K, 3), exclude cells (J, 3), clip)
        -> (g, g, g) float32 logits, or None
    """

    EXCLUDE_MODES = ("level", "compete", "off")

    def __init__(self, beta: float, tolerance: float, slope: float = 1.0, max_sigma: float = 0.25,
                 exclude_mode: str = "level", sigma_floor: float = SIGMA_FLOOR, enclosed: bool = False):
        if exclude_mode not in self.EXCLUDE_MODES:
            raise ValueError(f"exclude_mode must be one of {self.EXCLUDE_MODES}, got {exclude_mode!r}")
        self.beta, self.tolerance, self.max_sigma = float(beta), float(tolerance), float(max_sigma)
        self.exclude_mode, self.sigma_floor = exclude_mode, float(sigma_floor)
        # enclosed: the walled region must not reach the grid's faces (lib.session.fine_region's window:
        # a structure that continues past the window is not a small one)
        self.enclosed = bool(enclosed)
        self.plateau = PriorGrowth(max_margin=0, slope=slope)  # its thresholds, fill cap and slope rule

    def cost(self, intensity: np.ndarray, mu: float, sigma: float) -> np.ndarray:
        """Per-cell step cost: 1 within `tolerance` sigmas of mu, rising by beta per sigma beyond."""
        z = np.maximum(np.abs(intensity.astype(np.float64) - mu) / sigma - self.tolerance, 0.0)
        return np.sqrt(1.0 + (self.beta * z) ** 2)

    def __call__(self, intensity: np.ndarray, include: np.ndarray, exclude: np.ndarray,
                 clip: float) -> Optional[np.ndarray]:
        # the tissue is the first include click's: the user's first click goes into the structure, later
        # ones correct its edges (their surroundings mix both sides)
        if len(exclude) and self.exclude_mode == "off":
            return None
        mu, sigma = click_statistics(intensity, include[:1], self.sigma_floor)
        if sigma > self.max_sigma:  # the click's surroundings are not one tissue (a small structure, an edge)
            return None
        cost = self.cost(intensity, mu, sigma)
        d = geodesic_from(cost, include)
        level = self.plateau.plateau_threshold(d, MIN_LEVEL)
        if level is None or level > MAX_LEVEL + 1e-6:  # THRESHOLDS hold 32 as 32.000000000000014
            return None
        if self.enclosed and _touches_faces(d < level):
            return None
        logit = level - d
        if len(exclude):
            logit = np.minimum(logit, geodesic_from(cost, exclude) - d)
            if self.exclude_mode == "level":
                logit = np.minimum(logit, d[tuple(exclude.T)].min() - d)
        return np.clip(logit, -clip, clip).astype(np.float32)

    @classmethod
    def from_config(cls, config: dict, beta: Optional[float] = None) -> Optional["FloodRegion"]:
        """The flood a ClickUNet3D config asks for (None when prior_flood_beta is 0), or with `beta` given
        one with that beta and the config's other flood parameters (their defaults when absent)."""
        beta = float(config.get("prior_flood_beta") or 0.0) if beta is None else float(beta)
        if beta <= 0:
            return None
        return cls(beta, config.get("prior_flood_tolerance", 1.0), config.get("prior_grow_slope", 1.0),
                   config.get("prior_flood_max_sigma", 0.25), config.get("prior_flood_exclude", "level"))

    def describe(self) -> str:
        return (f"flood beta {self.beta:g} tolerance {self.tolerance:g} max sigma {self.max_sigma:g} "
                f"exclude {self.exclude_mode}")


def _touches_faces(region: np.ndarray) -> bool:
    return any(np.take(region, i, axis=a).any() for a in range(region.ndim) for i in (0, -1))


def flood_when_on(config: dict) -> FloodRegion:
    """The flood a click gets when it is on: the config's, or its parameters with beta DEFAULT_BETA."""
    return FloodRegion.from_config(config) or FloodRegion.from_config(config, DEFAULT_BETA)


def switch_flood(model, mode: str) -> Optional[FloodRegion]:
    """Apply --conf prior_flood / --prior-flood `mode` to `model` in place and return the flood it now
    serves: "auto" leaves the model's own (its config's), "off" removes it, "on" adds one (the config's
    parameters, beta DEFAULT_BETA unless the config sets one). One rule for the server and the evaluation,
    so both measure what users get. "on" needs a model with a geodesic prior (the embedded default)."""
    mode = str(mode or "auto").strip().lower()
    if mode not in FLOOD_SWITCH:
        raise ValueError(f"prior_flood must be one of {', '.join(FLOOD_SWITCH)}, got {mode!r}")
    prior = getattr(model, "prior", None)
    if prior is None:
        if mode == "on":
            raise ValueError("prior_flood on needs a model with a geodesic prior (the embedded default); "
                             "the model being served has none")
        return None
    if mode != "auto":
        prior.flood = None if mode == "off" else flood_when_on(model.config)
    model.flood_switch = mode  # what air_threshold_of reads: the server, a hot swap, a fine-tuning run
    return prior.flood


@contextmanager
def flood_for_request(model, mode: Optional[str]) -> Iterator[None]:
    """Serve one request with `mode` ("on" / "off"; None or "auto": as the server is configured): the
    model's flood is switched for the call and put back after it. The caller holds the engine's lock, so
    no other decode sees the switch. Why per request: the flood is right for a lung, a liver or a brain and
    wrong for a nucleus or a lesion inside a tissue of the same intensity (docs/default_model.md, "Seventh
    run"), and the annotator knows which they are drawing."""
    mode = str(mode or "auto").strip().lower()
    prior = getattr(model, "prior", None)
    if mode == "auto" or (prior is None and mode == "off"):
        yield
        return
    saved = (prior.flood if prior is not None else None, getattr(model, "flood_switch", "auto"))
    switch_flood(model, mode)  # raises ValueError for a bad mode or "on" without a prior
    try:
        yield
    finally:
        prior.flood, model.flood_switch = saved  # the server's switch, not this request's


def air_flood_threshold(mode: Optional[str], config: Optional[dict]) -> Optional[float]:
    """The Hounsfield value below which a CT click's tissue gets the flood per request (the model config's
    prior_flood_air_hu, absent or None: never), while --conf prior_flood is "auto" (on / off say it for
    every click). For a model the server prepared, `mode` is its `flood_switch` (switch_flood sets it)."""
    hu = (config or {}).get("prior_flood_air_hu")
    if str(mode or "auto").strip().lower() != "auto" or hu is None:
        return None
    return float(hu)


def air_threshold_of(model) -> Optional[float]:
    """air_flood_threshold for the model being served: its config's threshold under the switch that
    switch_flood last applied to it ("auto" when none was); None for a model without the prior."""
    if getattr(model, "prior", None) is None:
        return None
    return air_flood_threshold(getattr(model, "flood_switch", "auto"), getattr(model, "config", None))


def flood_mode_for_tissue(requested: Optional[str], ct: bool, tissue_hu, threshold: Optional[float]) -> Optional[str]:
    """The request's own prior_flood, else "on" for a CT click in air-density tissue (median HU around the
    first include click below `threshold`), else None. Why: a lung's parenchyma (-700 to -900 HU) is walled
    by soft tissue 800 HU denser, so "this tissue, as far as it goes" is what a click there means (the
    flood: lungs 0.04 -> 0.91 after one click); what the flood wrongly fills, a small structure in a tissue
    of its own intensity (a nucleus, a tumour), is not air. `tissue_hu` is called only when it can matter."""
    if requested not in (None, "", "auto") or threshold is None or not ct:
        return requested
    return "on" if tissue_hu() < threshold else requested


def describe_flood(model, flood: Optional[FloodRegion], air_hu: Optional[float]) -> str:
    """/info's prior_flood: the flood every click gets, else the one air-density CT clicks get, else none."""
    if flood is not None:
        return flood.describe()
    if air_hu is None:
        return "none"
    return f"CT clicks below {air_hu:g} HU: {flood_when_on(model.config).describe()}"


def flood_mode_for_label(label: str, requested: Optional[str], flood_labels: Sequence[str]) -> Optional[str]:
    """The request's own prior_flood, else "on" for a segment whose name is one of `flood_labels` (--conf
    prior_flood_labels, e.g. "organ,lung,liver": OHIF sends no options, only the segment name), else None."""
    if requested not in (None, "", "auto"):
        return requested
    return "on" if str(label).strip().lower() in {n.strip().lower() for n in flood_labels if n.strip()} else None
