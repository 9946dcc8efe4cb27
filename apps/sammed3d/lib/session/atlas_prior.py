"""A registered brain atlas answers a click in a deep grey nucleus on brain MR (the offline default's semantic prior).

Why: twenty runs of choosing among classical candidates found that the scale one click means is a property of the
structure, which no image-only rule knows (docs/default_model.md, "Twentieth run"); an atlas knows it for the
structures it names. Deep grey nuclei (thalamus, caudate, putamen, pallidum, hippocampus, amygdala, accumbens) were
chosen before any measurement: compact, with weak T1 edges where the classical region leaks or stops short, and no
other reading of a click inside them at the atlas's scale (a click in cortex may mean a parcel, a gyrus or the
cortex; the brainstem holds several structures). Measured: docs/default_model.md, "Twenty-first run".
With `cortex` (twenty-second run), a click in cortex is read as the smallest of its readings, the atlas's parcel,
and later include clicks say which larger one is meant: a click in another parcel adds it, and `whole_after` parcels
clicked are read as the whole cortex of their hemispheres (docs/default_model.md, "Twenty-second run"). An option,
off in default-v12: it lifts the test table's cortex but loses on another atlas's gyri (47 Harvard-Oxford parcels
0.632 -> 0.405 after five clicks), where the image's own region answers better.
With `white_matter` (twenty-third run), a click deep in cerebral white matter is answered by its hemisphere's white
matter and a later include click in the other hemisphere's adds that (lib.session.white_matter). With
`whole_cortex_mm` (twenty-fourth run), a label the atlas did not answer becomes its hemisphere's cortex (the volume's
grey matter, lib.session.grey_matter) once a later include click lies in a parcel that touches none clicked before:
a gyrus's clicks stay in touching parcels, the cortex's do not (`whole_cortex`). The pieces such a later click may need
are made ahead on a background thread (lib.session.fit_pieces).

What:
- The atlas and each volume's affine fit: lib.session.atlas_fit (`BrainAtlas`, `AtlasFits`, one background fit per
  volume). A fit whose warped template correlates with the volume under `min_ncc` over the template's brain is not
  used (not a brain MR).
- A label's first include click on an MR volume whose fit is ready: the atlas id under the click (the click mapped
  into the template); if it is a deep nucleus and the click's 5^3 median lies within `guard` robust spreads (1.4826
  MAD) of the warped nucleus's own intensities in the volume (a lesion inside a nucleus keeps the served answer),
  and the template does not show `lesion_wm` more white matter within 8 mm than the volume (a tumour filling the
  nucleus passes the intensity guard, whose spread is then the tumour's; twenty-second run), the warped nucleus (its
  indicator resampled linearly, >= 0.5, within `reach_mm` of the click) answers.
- With `cortex`: a cortical parcel answers too (a click on no structure takes the parcel within `snap_mm`: an
  affine fit misses a 2-3 mm ribbon by about that much), with the same lesion check (oedema is as dark as cortex on
  a T1, so the intensity guard alone lets it through); a later
  include click in another parcel, more than `grow_mm` past the shown ones, adds it (`grow`); `whole_after` parcels
  make the hemispheres' whole cortex.
- Later clicks on that label: `band_region` (lib.session.atlas_band), the geodesic competition of
  lib.session.classical_region (its tuned
  parameters) between the nucleus's core (eroded `core_mm`) with the include clicks and what lies past its shell
  (dilated `shell_mm`) with the exclude clicks and the box faces; seeds within `clear_mm` of a click of the other
  sign are dropped, so a click moves the boundary where it was placed. The engine merges it as it merges the plain
  region (lib.session.local_update).

    AtlasPrior(params, fits).answer(volume, ct, fg, bg, nucleus) -> (uint8 mask on the stored grid, box)
    prefit(region, volumes, image_path)   the fit of the image an annotator opens next, started ahead (next sample)
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, fields
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..util import process_threads
from .atlas_band import band_region, prefetch_seeds
from .atlas_fit import SHARED_FITS, AtlasFits, footprint, warped_mask
from .fit_pieces import FitPieces
from .grey_matter import cortex_region
from .local_update import union_box
from .points import ball_mask, voxel_indices
from .volume import is_ct
from .white_matter import WM_IDS, white_pieces, white_region, white_side

GREY_REACH_MM = 2.0  # the whole cortex: the volume's grey matter this near the warped parcels (development: 1-3 best)
LESION_BALL_MM = 8.0  # the lesion check's ball (AtlasPrior._lesion)
LOCAL_ABOVE = 1_000_000  # a structure's box over this many voxels: a later click is solved near it (atlas_band)
Answer = Tuple[np.ndarray, Tuple[slice, ...]]  # (uint8 mask, box): on the stored grid, or the box's piece (Nucleus)


class Nucleus(NamedTuple):
    """The warped atlas structure(s) answering a label, as its box's piece (a label keeps it: a whole-volume copy per
    label is too much); indexed like an Answer."""
    piece: np.ndarray  # uint8, the box's shape
    box: Tuple[slice, ...]  # on the stored grid
    ids: Tuple[int, ...]  # the atlas ids it is made of
    seen: int  # how many of the label's include clicks decided it
    as_is: Tuple[int, int] = (1, 0)  # at these (include, exclude) click counts the piece itself answers: its first
    # click, or the include click that grew a white matter piece (merged by the click update: it adds the new piece)


@dataclass(frozen=True)
class AtlasParams:
    min_ncc: float = 0.5  # the fit's correlation with the volume over the template's brain, at least
    guard: float = 2.0  # the click's intensity within this many robust spreads of the warped nucleus's
    reach_mm: float = 40.0  # the nucleus is warped within this distance of the click
    core_mm: float = 2.0  # later clicks: the nucleus eroded by this is foreground seed
    shell_mm: float = 3.0  # ... what lies past the nucleus dilated by this is background seed
    clear_mm: float = 6.0  # ... except within this distance of a click of the other sign
    margin_mm: float = 10.0  # ... in the box of the nucleus and the clicks plus this margin
    wait: bool = False  # a first click waits for the volume's fit (the evaluation, the trainer) or goes on without
    cortex: bool = False  # a first click in a cortical parcel is answered by the parcel too
    grow_mm: float = 0.0  # > 0: a later include click in another parcel, this far past the shown ones, adds it
    snap_mm: float = 0.0  # a click on no atlas structure takes the cortical parcel within this distance (cortex and
    # the whole cortex reading)
    whole_after: int = 0  # > 0: a label grown to this many parcels is answered by its hemispheres' whole cortex
    lesion_wm: float = 0.3  # > 0: no answer where the template shows this much more white matter within 8 mm (a lesion)
    white_matter: bool = False  # a click in cerebral white matter: its hemisphere's (lib.session.white_matter)
    wm_reach_mm: float = 4.0  # ... the volume's white matter within this distance of the warped template's
    wm_depth_mm: float = 5.0  # ... for a click this far under the template's cortex (a gyrus's white matter: the gyrus)
    whole_cortex_mm: float = 0.0  # > 0: include clicks in parcels this far apart mean the whole cortex (whole_cortex)

    @classmethod
    def from_config(cls, config) -> "AtlasParams":
        """From the model config's atlas_prior dict (unknown keys rejected)."""
        known = {f.name for f in fields(cls)}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"atlas_prior: unknown keys {sorted(unknown)}")
        return cls(**config)


class AtlasPrior:
    """What the atlas answers on a volume (see the module doc)."""

    def __init__(self, params: Optional[AtlasParams] = None, fits: Optional[AtlasFits] = None):
        self.params, self.fits = params or AtlasParams(), fits or SHARED_FITS  # one fit per volume per process
        self._answers: "OrderedDict[tuple, tuple]" = OrderedDict()  # the last band answers (a large one's next click)
        self._pieces = FitPieces()  # hemispheres' cortex and white matter of the last volumes, made once (ahead)
        self._lock = threading.Lock()

    def describe(self) -> str:
        p = self.params
        snap = f" (or within {p.snap_mm:g} mm of one)" if p.snap_mm > 0 else ""
        cortex = f" or cortical parcel{snap}" if p.cortex else ""
        whole = f", {p.whole_after} parcels make the whole cortex" if p.whole_after > 0 else ""
        grow = f"; a later click in another parcel over {p.grow_mm:g} mm away adds it{whole}" if p.grow_mm > 0 else ""
        lesion = f", no answer where the template has {p.lesion_wm:g} more white matter within 8 mm" \
            if p.lesion_wm > 0 else ""
        white = (f"; a click {p.wm_depth_mm:g} mm deep in cerebral white matter answered by its hemisphere's, a "
                 f"click in the other's adds that") if p.white_matter else ""
        whole = (f"; include clicks in parcels over {p.whole_cortex_mm:g} mm apart answered by their hemispheres' "
                 f"cortex") if p.whole_cortex_mm > 0 else ""
        return (f"atlas prior: a brain MR click in a Desikan-Killiany deep grey nucleus{cortex} answered by "
                f"it{grow}{white}{whole} "
                f"(fit correlation >= {p.min_ncc:g}, click within {p.guard:g} spreads{lesion}, band {p.core_mm:g} / "
                f"{p.shell_mm:g} mm, " + ("the first click waits for its volume's fit)" if p.wait else
                                          "without waiting for the fit)"))

    def nucleus(self, volume, ct: bool, point: Sequence[float]) -> Optional[Nucleus]:
        """The warped structure a label's first include click lies in (a deep nucleus; with `cortex`, a cortical parcel
        too), or None (CT, no fit yet, not a brain MR, no such structure, or a click whose intensity is not its)."""
        fit = self._fit(volume, ct)
        if fit is None:
            return None
        ident = self._id_at(fit, volume, point)
        atlas = self.fits.atlas
        if ident == 0 and self.params.white_matter:
            return self._white(volume, fit, [point], seen=1)
        if not (ident in atlas.deep or (self.params.cortex and ident in atlas.cortex)) or self._lesion(volume, fit, point):
            return None
        return self._warp(volume, fit, (ident,), point, seen=1)

    def grow(self, volume, ct: bool, nucleus: Nucleus, fg, bg=()) -> Nucleus:
        """The label's structure after its later include clicks (`grow_mm` > 0; cortical parcels only): a click in
        another cortical parcel, more than `grow_mm` past the shown parcels (nearer, it corrects their edge) and with
        that parcel's intensity, adds the parcel: a click in cortex means a parcel first, then as many as are
        clicked. White matter: an include click that reads as the other hemisphere's white matter adds that."""
        atlas, fit = self.fits.atlas, self._fit(volume, ct)
        if fit is not None and set(nucleus.ids) <= set(WM_IDS.values()):  # white matter: a click that reads as the
            for n in range(nucleus.seen + 1, len(fg) + 1):  # other hemisphere's adds that hemisphere's
                side = self._white_side(volume, fit, fg[n - 1])
                added = self._white(volume, fit, fg[n - 1:n], seen=n) if side and WM_IDS[side] not in nucleus.ids \
                    else None  # that hemisphere alone (half the work), joined to the shown one
                if added is not None:
                    nucleus = _joined(nucleus, added)._replace(as_is=(n, len(bg)))  # answered as is: no band solve
            return nucleus._replace(seen=len(fg))
        sides = self._whole_sides(nucleus.ids) if fit is not None and self.params.whole_cortex_mm > 0 else set()
        if sides:  # the whole cortex: an include click in the other hemisphere's cortex adds that one's
            for n in range(nucleus.seen + 1, len(fg) + 1):
                parcel = self._parcel_at(fit, volume, fg[n - 1])
                side = atlas.cortex[parcel].split()[0] if parcel else None
                if side and side not in sides and not self._lesion(volume, fit, fg[n - 1]):
                    added = self._grey(volume, fit, {side}, fg[n - 1], seen=n)
                    if added is not None:
                        nucleus, sides = _joined(nucleus, added)._replace(as_is=(n, len(bg))), sides | {side}
            return nucleus._replace(seen=len(fg))
        if fit is None or self.params.grow_mm <= 0 or not set(nucleus.ids) <= set(atlas.cortex):
            return nucleus._replace(seen=len(fg))
        spacing = np.array(volume.image.GetSpacing())
        for n, point in enumerate(fg[nucleus.seen:], start=nucleus.seen + 1):
            ident = self._id_at(fit, volume, point)
            if ident not in atlas.cortex or ident in nucleus.ids or self._lesion(volume, fit, point):
                continue
            inside = np.argwhere(nucleus.piece) + np.array([b.start for b in nucleus.box])
            gap = np.sqrt((((inside - np.asarray(point)[None]) * spacing) ** 2).sum(1).min()) if len(inside) else np.inf
            if gap > self.params.grow_mm:
                ids = nucleus.ids + (ident,)
                if 0 < self.params.whole_after <= len(ids):  # that many parcels clicked: the reading is the cortex
                    sides = {atlas.cortex[i].split()[0] for i in ids}
                    rest = tuple(i for i, name in atlas.cortex.items() if name.split()[0] in sides and i not in ids)
                    ids = rest + ids  # the clicked parcel last: the guard reads it
                grown = self._warp(volume, fit, ids, point, seen=n)
                nucleus = grown if grown is not None else nucleus
        return nucleus._replace(seen=len(fg))

    def whole_cortex(self, volume, ct: bool, fg, bg, start: int = 1) -> Optional[Nucleus]:
        """The whole cortex reading (`whole_cortex_mm` > 0) of a label the atlas did not answer at its first click, or
        None: when the first include click lies in a cortical parcel and a later one, fg[start:], in a parcel more than
        `whole_cortex_mm` from every parcel of the earlier include clicks (on the template), the label is not a gyrus
        (a gyrus's clicks lie in parcels that touch: 47 Harvard-Oxford gyri, docs/default_model.md, "Twenty-fourth
        run") but the cortex: the whole cortex of those clicks' hemispheres, answered as is at that click."""
        fit = None if self.params.whole_cortex_mm <= 0 or len(fg) < 2 else self._t1_fit(volume, ct)
        if fit is None:
            return None
        atlas = self.fits.atlas
        parcels = [self._parcel_at(fit, volume, point) for point in fg]
        if not parcels[0] or self._lesion(volume, fit, fg[0]):
            return None
        for n in range(max(start, 1), len(fg)):
            new, earlier = parcels[n], [q for q in parcels[:n] if q]
            if new and all(atlas.parcels_apart(q, new, self.params.whole_cortex_mm) for q in earlier) \
                    and not self._lesion(volume, fit, fg[n]):
                sides = {atlas.cortex[parcels[0]].split()[0], atlas.cortex[new].split()[0]}
                found = self._grey(volume, fit, sides, fg[n], n + 1)
                if found is not None:
                    return found._replace(as_is=(n + 1, len(bg)))
        return None

    def _grey(self, volume, fit, sides, point, seen: int) -> Optional[Nucleus]:
        """The volume's cortex of the hemispheres `sides` ("L", "R"; lib.session.grey_matter), or None where the click
        that asks for it is not grey matter (its 3^3 median between the fit's CSF/grey and grey/white boundaries; a
        label's first click may lie deeper: a thick atlas label's centre lies in white matter, dev_ho_cortex)."""
        if not fit.gm_threshold < volume.median_around(point, 1) <= fit.wm_threshold:
            return None
        found = self._cortex_job(volume, fit, sides).result()
        return None if found is None else Nucleus(found[0], found[1], self._sides_ids(sides), seen)

    def prefetch_cortex(self, volume, ct: bool, point) -> Optional[Future]:
        """The cortex of the hemisphere a label's first click's parcel lies in, made on a background thread while the
        annotator looks at the answer (`whole_cortex_mm` > 0): the whole cortex reading's answer, should a later click
        ask for it (0.75 s of that click on a 1 mm brain otherwise). None: no fit, or no parcel there."""
        fit = None if self.params.whole_cortex_mm <= 0 else self._t1_fit(volume, ct)
        parcel = self._parcel_at(fit, volume, point) if fit is not None else 0
        return self._cortex_job(volume, fit, {self.fits.atlas.cortex[parcel].split()[0]}, True) if parcel else None

    def _cortex_job(self, volume, fit, sides, background: bool = False) -> Future:
        ids, atlas = self._sides_ids(sides), self.fits.atlas
        others = [i for i in atlas.cortex if i not in ids]
        return self._pieces.get(fit, ("cortex", ids), lambda: cortex_region(atlas, fit, volume.image, ids, others,
                                                                            GREY_REACH_MM), background)

    def _white_job(self, volume, fit, sides, background: bool = False) -> Future:
        sides = tuple(sorted(sides))
        return self._pieces.get(fit, ("white", sides), lambda: white_pieces(self.fits.atlas, fit, volume.image, sides,
                                                                            self.params.wm_reach_mm), background)

    def prefetch_white(self, volume, ct: bool, nucleus: Nucleus) -> Optional[Future]:
        """After a label's white matter answer of one hemisphere: the other hemisphere's white matter pieces, made on
        the atlas band's background thread, should a later click add it (0.5 s of that click on a 1 mm brain)."""
        sides = {side for side, ident in WM_IDS.items() if ident in nucleus.ids}
        fit = self._fit(volume, ct) if len(sides) == 1 and set(nucleus.ids) <= set(WM_IDS.values()) else None
        return None if fit is None else self._white_job(volume, fit, set(WM_IDS) - sides, True)

    def _sides_ids(self, sides) -> Tuple[int, ...]:
        """Every cortical parcel of the hemispheres `sides` ("L", "R")."""
        return tuple(i for i, name in self.fits.atlas.cortex.items() if name.split()[0] in sides)

    def _whole_sides(self, ids) -> set:
        """The hemispheres all of whose cortical parcels are among `ids`."""
        cortex = self.fits.atlas.cortex
        return {side for side in {name.split()[0] for name in cortex.values()}
                if all(i in ids for i, name in cortex.items() if name.split()[0] == side)}

    def _fit(self, volume, ct: bool):
        fit = None if ct else self.fits.fit(volume, self.params.wait)
        return fit if fit is not None and abs(fit.ncc) >= self.params.min_ncc else None

    def _t1_fit(self, volume, ct: bool):
        """The fit where the volume's contrast is the template's (a T1: correlation over `min_ncc`, not under its
        negative), which the grey matter's boundaries (CSF < grey < white) assume."""
        fit = self._fit(volume, ct)
        return fit if fit is not None and fit.ncc > 0 else None

    def _lesion(self, volume, fit, point) -> bool:
        """Whether, within LESION_BALL_MM of the click, the warped template's white matter (over its WM level) fills
        `lesion_wm` more of the ball than the volume's own (over the fit's level): the volume's tissue there is not
        the template's (oedema and tumours are darker than white matter on T1; development brains' cortex clicks
        differ by at most 0.14, lesion clicks by 0.46-0.98: docs/default_model.md, "Twenty-second run")."""
        import SimpleITK as sitk

        if self.params.lesion_wm <= 0:
            return False
        image = volume.image
        reach = np.ceil(LESION_BALL_MM / np.array(image.GetSpacing())).astype(int)
        idx = np.array(voxel_indices([point])[0])
        lo, hi = np.maximum(idx - reach, 0), np.minimum(idx + reach + 1, image.GetSize())
        ref = sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])
        template = sitk.GetArrayFromImage(sitk.Resample(self.fits.atlas.lookup, ref, fit.transform, sitk.sitkLinear,
                                                        0.0)).transpose(2, 1, 0)
        ball = ball_mask(template.shape, idx - lo, LESION_BALL_MM, image.GetSpacing())
        own = sitk.GetArrayViewFromImage(ref).transpose(2, 1, 0)[ball]
        missing = (template[ball] > self.fits.atlas.wm_level).mean() - (own > fit.wm_level).mean()
        return float(missing) > self.params.lesion_wm

    def _white(self, volume, fit, points, seen: int) -> Optional[Nucleus]:
        """The white matter of the include clicks `points` that lie in the atlas's cerebral white matter with the
        volume's white matter intensity (lib.session.white_matter), or None (none does, the lesion check, or a fit
        whose contrast is not a T1's: the white matter is the brightest tissue only there)."""
        atlas, image, seeds = self.fits.atlas, volume.image, []
        for point in points if fit.ncc > 0 else ():
            side = self._white_side(volume, fit, point)
            if side and volume.median_around(point) > fit.wm_threshold and not self._lesion(volume, fit, point):
                seeds.append((voxel_indices([point])[0], side, volume.median_around(point, 1)))  # 3^3: a 3 mm nodule
        sides = {side for _, side, _ in seeds}
        found = white_region(atlas, fit, image, seeds, self.params.wm_reach_mm,
                             self._white_job(volume, fit, sides).result()) if seeds else None
        if found is None:
            return None
        return Nucleus(found[0], found[1], tuple(sorted({WM_IDS[side] for _, side, _ in seeds})), seen)

    def _white_side(self, volume, fit, point) -> int:
        return white_side(self.fits.atlas, fit, volume.image, voxel_indices([point])[0], self.params.wm_depth_mm)

    def _id_at(self, fit, volume, point, snap: Optional[bool] = None) -> int:
        """The atlas id under a click; on none, with `snap` (default: `cortex`), the parcel within `snap_mm` (0:
        none)."""
        atlas, image = self.fits.atlas, volume.image
        at = fit.transform.TransformPoint(image.TransformIndexToPhysicalPoint(voxel_indices([point])[0]))
        ident = atlas.id_at(at)
        if ident == 0 and (self.params.cortex if snap is None else snap) and self.params.snap_mm > 0:
            ident = atlas.parcel_near(at, self.params.snap_mm)
        return ident

    def _parcel_at(self, fit, volume, point) -> int:
        """The cortical parcel under a click or within `snap_mm` of it (0: none)."""
        ident = self._id_at(fit, volume, point, snap=True)
        return ident if ident in self.fits.atlas.cortex else 0

    def _warp(self, volume, fit, ids: Tuple[int, ...], point, seen: int) -> Optional[Nucleus]:
        """The atlas ids `ids` warped onto the volume (linear, >= 0.5) in the box of their extent, or None where they
        miss the volume or the click's 5^3 median is not within `guard` robust spreads of the last id's voxels."""
        import SimpleITK as sitk

        atlas, image = self.fits.atlas, volume.image
        crop = atlas.crop(ids)
        lo, hi = footprint(fit.transform, image, crop)
        if all(i in atlas.deep for i in ids):  # a nucleus: within reach_mm of the click
            reach = np.ceil(self.params.reach_mm / np.array(image.GetSpacing())).astype(int)
            idx = np.array(voxel_indices([point])[0])
            lo, hi = np.maximum(lo, idx - reach), np.minimum(hi, idx + reach + 1)
        if (hi <= lo).any():
            return None
        ref = sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])
        crop_ids = sitk.GetArrayViewFromImage(crop)
        warp = lambda select: warped_mask(np.isin(crop_ids, select), crop, ref, fit.transform)  # noqa: E731
        warped = warp(ids)
        own = warp(ids[-1:]) if len(ids) > 1 else warped  # the guard reads the structure just clicked
        if not own.any():
            return None
        data = sitk.GetArrayViewFromImage(ref).transpose(2, 1, 0)[own].astype(np.float64)
        median = float(np.median(data))
        spread = 1.4826 * float(np.median(np.abs(data - median))) + 1e-6
        if abs(volume.median_around(point) - median) > self.params.guard * spread:
            return None
        return Nucleus(warped.astype(np.uint8), tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), tuple(ids), seen)

    def answer(self, volume, ct: bool, fg, bg, nucleus: Nucleus) -> Answer:
        """The label's mask for its clicks (uint8 on the stored grid, its box): the nucleus itself for the first click
        alone (and the include click that grew white matter: `as_is`), else `band_region`."""
        key = lambda f, b: (tuple(map(tuple, f)), tuple(map(tuple, b)))  # noqa: E731
        large = int(np.prod([b.stop - b.start for b in nucleus.box])) > LOCAL_ABOVE  # solve the new click's box only
        if (len(fg), len(bg)) == nucleus.as_is:  # (a hemisphere's white matter: its next click solves near it)
            mask, box = _on_grid(nucleus, volume.shape), nucleus.box
            if large:
                prefetch_seeds(volume, ct, nucleus, fg, bg, self.params)
        else:
            previous, click = None, None
            for before, new in (((fg[:-1], bg), fg[-1]), ((fg, bg[:-1]), bg[-1] if bg else None)) if large else ():
                hit = self._answers.get((nucleus.ids, key(*before)))
                if new is not None and hit is not None and hit[0] is nucleus.piece and before[0]:
                    previous, click = hit[1:], new
                    break
            mask, box = band_region(volume, ct, nucleus, fg, bg, self.params, previous, click)
        if not large:  # only a large structure's next click reads it
            return mask, box
        with self._lock:
            self._answers[(nucleus.ids, key(fg, bg))] = (nucleus.piece, mask[box].copy(), box)
            while len(self._answers) > 4:
                self._answers.popitem(last=False)
        return mask, box


def _joined(a: Nucleus, b: Nucleus) -> Nucleus:
    """The union of two structures' pieces in the box holding both (b's `seen`)."""
    box = union_box([a.box, b.box])
    piece = np.zeros(tuple(s.stop - s.start for s in box), dtype=np.uint8)
    for part in (a, b):
        inner = tuple(slice(p.start - s.start, p.stop - s.start) for p, s in zip(part.box, box))
        np.maximum(piece[inner], part.piece, out=piece[inner])
    return Nucleus(piece, box, tuple(sorted(set(a.ids) | set(b.ids))), b.seen)


def _on_grid(nucleus: Nucleus, shape) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[nucleus[1]] = nucleus[0]
    return mask


def prefit(region, volumes, image_path: str, modality: Optional[str] = None) -> Optional[Future]:
    """Start, on a background thread, the atlas fit of the volume at `image_path` (read through the shared
    VolumeCache `volumes`) when `region` (a lib.session.plain_region.PlainRegion) has an atlas prior and the volume is
    not CT: the server calls it for the image its next-sample strategy hands out, so that the annotator's first click
    there finds the fit ready. -> the job, or None when there is no atlas."""
    atlas = getattr(region, "atlas", None)
    if atlas is None:
        return None

    def run():
        volume = volumes.get(image_path)
        if not is_ct(volume, modality):
            atlas.fits.fit(volume, wait=False)

    return process_threads("atlas-prefit", 1).submit(run)
