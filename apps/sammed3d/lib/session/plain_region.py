"""Where the model answers a click with its plain box competition, the same competition on the volume's own grid.

Why: the offline default's prior is the classical geodesic region (box faces around the clicks against the
include clicks) solved on 6 mm cells and refined in a band at 3 or 1.5 mm. Where it recognises nothing more
(no flood of a walled tissue, no growth of its box to a plateau, no small walled structure's fine region), its
answer is that coarse competition, and the classical row of the evaluation (the same competition at the
volume's stored resolution, in mm: lib.session.classical_region) measured better on the development cases:
Dice@1/3/5 0.505/0.617/0.717 -> 0.519/0.643/0.730 over the 40 development targets (docs/default_model.md,
"Thirteenth run"). The compiled shortest paths (lib.model.dijkstra_kernel) made it cheap enough to serve.

What: per click (a request's last click decides; an undo replays the clicks, so it answers as that click did),
the engine records whether any crop it decoded was answered by something beyond the box competition
(`answered_plainly`: a learned residual, as after fine-tuning, counts too); when none was, the label's mask is
`PlainRegion(volume, ct, fg, bg)`: the classical geodesic region of all the label's clicks
(lib.session.classical_region.segment_array with its tuned parameters) instead of the model's. A request that
decodes nothing (the same clicks again) keeps the label's last choice. The model's own state (crops, the mask a
click update merges into) is kept as before, so a later click the model recognises (a lung's flood at the
second click) answers as the model would have.

    PlainRegion()(volume LoadedVolume, ct bool, fg [(i, j, k)], bg [(i, j, k)]) -> (ni, nj, nk) uint8 mask
        or None (nothing bounds the region: the model's answer stands)
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import replace
from typing import Optional, Sequence, Tuple

import numpy as np

from ..util import process_threads
from .atlas_prior import AtlasParams, AtlasPrior, Nucleus
from .classical_region import TUNED, roi_box, segment_box
from .margin_choice import FEATURES, MarginScorer, candidate_features, own_features, with_flood_columns
from .points import voxel_indices

REGION_SWITCH = ("auto", "on", "off")  # --conf plain_region / --plain-region
METHOD = "geodesic"  # the only one measured to help (the random walker row is below the model's)


def answered_plainly(prior_only: bool, flooded: bool, grown: bool, fine: bool) -> bool:
    """Whether one decode was the model's plain box competition: its prior alone (no learned residual:
    ClickUNet3D.serves_prior_only, so a fine-tuned default answers with what it learnt), not flooded
    (lib.model.flood_region), its box not grown to a plateau (lib.model.geodesic_maps.PriorGrowth) and no
    fine region (lib.session.fine_region)."""
    return prior_only and not (flooded or grown or fine)


class PlainRegion:
    """The classical geodesic region on the stored grid (see the module doc). `margins` (mm): the first click's
    box margin is chosen among them by the region's contrast (`first_click_region`); `scorer` (a
    lib.session.margin_choice.MarginScorer): among its margins by its learned score; neither: params.margin_mm.
    `merge`: the engine merges the region into the mask the label showed, as its click update does the model's
    (an include click only adds, an exclude only removes); False (default-v9): the region replaces it."""

    def __init__(self, params=None, margins: Optional[Sequence[float]] = None, merge: bool = False,
                 scorer: Optional[MarginScorer] = None, atlas: Optional[AtlasPrior] = None):
        if margins and scorer:
            raise ValueError("give the first click's margins by contrast or a margin scorer, not both")
        self.params = params or TUNED[METHOD]
        self.scorer, self.atlas = scorer, atlas
        self.margins = scorer.margins if scorer else (tuple(float(m) for m in margins) if margins else None)
        self.merge = bool(merge)

    def __call__(self, volume, ct: bool, fg: Sequence[Sequence[float]],
                 bg: Sequence[Sequence[float]]) -> Optional[np.ndarray]:
        """The region as a uint8 mask on the stored grid, or None where nothing would bound it: no exclude click
        and a box (clicks + margin) that fills the volume on every side, where the classical rule makes the whole
        box foreground (a click in a volume under 80 mm): the model's answer stands there."""
        answer = self.answer(volume, ct, fg, bg)
        return None if answer is None else answer[0]

    def answer(self, volume, ct: bool, fg: Sequence[Sequence[float]],
               bg: Sequence[Sequence[float]]) -> Optional[Tuple[np.ndarray, Tuple[slice, ...]]]:
        """(the region as __call__ gives it, the box outside which it is empty) or None."""
        import SimpleITK as sitk

        image = sitk.GetArrayViewFromImage(volume.image).transpose(2, 1, 0)  # stored (i, j, k), no copy
        spacing = tuple(float(s) for s in volume.image.GetSpacing())
        fg, bg = voxel_indices(fg), voxel_indices(bg)
        params, chosen = self.params, None
        if self.margins and len(fg) == 1 and not bg:
            chosen = first_click_region(image, ct, spacing, fg, params, self.margins, self.scorer)
        if chosen is not None and chosen[0] is None:  # a flood level: bounded by the image, in its own box
            box = chosen[1]
        else:
            if chosen is not None:
                params = replace(params, margin_mm=chosen[0])
            box, faces = roi_box(fg + bg, image.shape, spacing, params.margin_mm)
            if not bg and not any(lo or hi for lo, hi in faces):
                return None
        mask = np.zeros(image.shape, dtype=np.uint8)
        if fg:
            mask[box] = chosen[2] if chosen else segment_box(METHOD, image, ct, spacing, fg, bg, params)[1]
        return mask, box

    def start(self, volume, ct: bool, fg: Sequence[Sequence[float]], bg: Sequence[Sequence[float]],
              nucleus=None) -> Future:
        """`answer` on its own thread (one per process; a forked child makes its own), so the caller is not held
        by the region's solve while it does other work; with the label's atlas `nucleus` (atlas_for), the atlas's."""
        solve = self.answer if nucleus is None else lambda *a: self.atlas.answer(*a, nucleus)
        return process_threads("plain-region", 1).submit(solve, volume, ct, [list(p) for p in fg], [list(p) for p in bg])

    def atlas_for(self, volume, ct: bool, state) -> Optional[Nucleus]:
        """The warped atlas structure that answers the label (lib.session.atlas_prior), decided once per first include
        click (a label whose first click came before its volume's atlas fit keeps the served answers) and grown by
        its later include clicks, or None."""
        if self.atlas is None or not state.fg:
            return None
        if state.atlas_click != state.fg[0] or state.atlas_seen > len(state.fg):  # a new first click, or an undo
            state.atlas_click, state.atlas = state.fg[0], self.atlas.nucleus(volume, ct, state.fg[0])
            state.atlas_seen = 1
        if state.atlas is None and state.atlas_seen < len(state.fg):  # later include clicks may say "the cortex"
            state.atlas = self.atlas.whole_cortex(volume, ct, state.fg, state.bg, state.atlas_seen)
        if state.atlas is not None and state.atlas.seen < len(state.fg):
            state.atlas = self.atlas.grow(volume, ct, state.atlas, state.fg, state.bg)
        state.atlas_seen = len(state.fg)
        return state.atlas

    def ahead(self, volume, ct: bool, state) -> None:
        """Once a label's answer is out, what its next click may need, made on a background thread: after a first click
        the atlas did not answer, its hemisphere's cortex (AtlasPrior.prefetch_cortex); after one hemisphere's white
        matter, the other's (AtlasPrior.prefetch_white)."""
        if self.atlas is not None and len(state.fg) == 1 and state.atlas is None:
            self.atlas.prefetch_cortex(volume, ct, state.fg[0])
        elif self.atlas is not None and state.atlas is not None:
            self.atlas.prefetch_white(volume, ct, state.atlas)

    def describe(self) -> str:
        p = self.params
        rule = "a learned score" if self.scorer else "contrast"
        floods = self.scorer.flood_levels if self.scorer else ()
        margin = f"{p.margin_mm:g} mm" + (f", the first click's chosen among {'/'.join(f'{m:g}' for m in self.margins)} "
                                          f"mm" + (f" and its flood at {'/'.join(f'{v:g}' for v in floods)} cells of "
                                                   f"2 mm" if floods else "") + f" by {rule}" if self.margins else "")
        return (f"{METHOD} region on the stored grid where the model answers with its plain box (margin "
                f"{margin}, gamma {p.gamma:g}, seeds {p.seed_radius_mm:g} mm, smoothing {p.sigma_mm:g} mm"
                + (", merged into the shown mask)" if self.merge else ")")
                + (f"; {self.atlas.describe()}" if self.atlas is not None else ""))


def first_click_region(image: np.ndarray, ct: bool, spacing, fg, params, margins: Sequence[float],
                       scorer: Optional[MarginScorer] = None) -> Tuple[Optional[float], Tuple[slice, ...], np.ndarray]:
    """(the box margin (mm) chosen for the first click, or None where a flood level was chosen; the region's box;
    the region in it): by `scorer` (lib.session.margin_choice: a learned weighing of each candidate region's
    features, among `margins` and, where the scorer has flood levels, the first click's flood at those levels:
    lib.session.flood_candidates) or, without one, the margin whose region stands out most from what surrounds
    it: contrast = |mean inside - mean of the one-voxel shell outside| / std inside, on the box's normalised
    intensities (the first of equals).

    Why: with one click only the box bounds the region (in homogeneous tissue it fills about half the margin), so
    one fixed margin is too tight for an organ and too loose for a small lesion; a region bounded by an edge
    contrasts with its shell, one cut off by the box inside a tissue or leaked into the next tissue does not.
    Development cases: the per-target best margin averages 0.59 Dice at one click against 0.33 for 40 mm
    (docs/default_model.md, "Fourteenth run" to "Sixteenth run"). The candidates are solved, and their own
    features measured, two at a time (the compiled kernel and numpy's large-array loops run without the GIL);
    the flood (when asked for) on the same threads."""
    flood = None
    if scorer is not None and scorer.flood_levels:
        from .flood_candidates import FloodField

        flood = process_threads("plain-margins", 2).submit(FloodField.solve, image, ct, spacing, fg[0])
    candidates, features = margin_candidates(image, ct, spacing, fg, params, margins)
    if flood is not None:
        field = flood.result()
        features = with_flood_columns(features)
        if min(field.data.shape) >= 3:  # a slab under 3 cells of 2 mm has no 3-D flood to weigh: margins only
            features = np.concatenate([features, field.features(scorer.flood_levels)])
    best = scorer.choose(features) if scorer else int(np.argmax(features[:, FEATURES.index("contrast")]))
    if best >= len(candidates):
        return (None,) + field.region(scorer.flood_levels[best - len(candidates)])
    return candidates[best][0], candidates[best][1], candidates[best][2]


def margin_candidates(image: np.ndarray, ct: bool, spacing, fg, params, margins: Sequence[float]):
    """([(margin, box, region, data)] for the include clicks `fg` alone, one per margin ascending, as segment_box
    gives them; their (n, len(FEATURES)) features): the candidates solved, and their own features measured, two at a
    time (what first_click_region chooses among and scripts/fit_margin_choice.py fits on)."""
    def solve(margin):
        box, region, data = segment_box(METHOD, image, ct, spacing, fg, [], replace(params, margin_mm=margin))
        return (margin, box, region, data), own_features(box, region, data, spacing, image.shape)

    solved = list(process_threads("plain-margins", 2).map(solve, sorted(float(m) for m in margins)))
    candidates = [c for c, _ in solved]
    return candidates, candidate_features(candidates, ct, spacing, image.shape, own=[f for _, f in solved])


def resolve_region(mode: Optional[str], config: Optional[dict], has_prior: bool = True,
                   merge: Optional[str] = "auto", atlas: Optional[str] = "auto",
                   atlas_wait: bool = True) -> Optional[PlainRegion]:
    """--conf plain_region / --plain-region `mode` for a model whose config is `config`: "auto" (or None) what the
    config's plain_region asks for (absent or None: none, so the released SAM-Med3D answers as its public code),
    "on" the geodesic region, "off" none. "on" needs a model with a geodesic prior (`has_prior`): without one no
    decode says whether it was the plain box competition. `merge` (--conf plain_region_merge): "auto" (or None) the
    config's plain_region_merge, "on" / "off" whether the region is merged into the shown mask (default-v9: off).
    `atlas` (--conf atlas_prior): "auto" the config's atlas_prior (lib.session.atlas_prior), "off" none; `atlas_wait`:
    a first click waits for its volume's atlas fit (True: the evaluation's and trainer's determinism) or goes on."""
    mode, merge, atlas = (str(v or "auto").strip().lower() for v in (mode, merge, atlas))
    allowed = {"plain_region": REGION_SWITCH, "plain_region_merge": REGION_SWITCH, "atlas_prior": ("auto", "off")}
    for name, value in zip(allowed, (mode, merge, atlas)):
        if value not in allowed[name]:
            raise ValueError(f"{name} must be one of {', '.join(allowed[name])}, got {value!r}")
    config = config or {}
    if mode == "auto":
        mode = "on" if config.get("plain_region") == METHOD else "off"
    if mode == "on" and not has_prior:
        raise ValueError("plain_region on needs a model with a geodesic prior (the offline default)")
    merged = bool(config.get("plain_region_merge")) if merge == "auto" else merge == "on"
    if mode != "on":
        return None
    scorer, margin = config.get("plain_region_margin_scorer"), config.get("plain_region_margin")
    params = replace(TUNED[METHOD], margin_mm=float(margin)) if margin else None
    prior = config.get("atlas_prior") if atlas == "auto" else None
    return PlainRegion(params, margins=config.get("plain_region_margins"), merge=merged,
                       scorer=MarginScorer.from_config(scorer) if scorer else None,
                       atlas=AtlasPrior(AtlasParams.from_config(dict(prior, wait=atlas_wait))) if prior is not None else None)
