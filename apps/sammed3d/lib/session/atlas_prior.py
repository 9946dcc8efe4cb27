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
matter and a later include click in the other hemisphere's adds that (lib.session.white_matter).

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
- Later clicks on that label: `band_region`, the geodesic competition of lib.session.classical_region (its tuned
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
from scipy import ndimage

from ..util import process_threads
from .atlas_fit import SHARED_FITS, AtlasFits, footprint
from .classical_region import TUNED, _ball_offsets, normalise_roi, region_score, roi_box, seed_labels
from .points import voxel_indices
from .volume import is_ct
from .white_matter import WM_IDS, white_region, white_side

LESION_BALL_MM = 8.0  # the lesion check's ball (AtlasPrior._lesion)
LOCAL_ABOVE, LOCAL_MM = 1_000_000, 20.0  # a structure's box over this many voxels: a later click solves within 20 mm
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
    snap_mm: float = 0.0  # a click on no atlas structure takes the cortical parcel within this distance (cortex only)
    whole_after: int = 0  # > 0: a label grown to this many parcels is answered by its hemispheres' whole cortex
    lesion_wm: float = 0.3  # > 0: no answer where the template shows this much more white matter within 8 mm (a lesion)
    white_matter: bool = False  # a click in cerebral white matter: its hemisphere's (lib.session.white_matter)
    wm_reach_mm: float = 4.0  # ... the volume's white matter within this distance of the warped template's
    wm_depth_mm: float = 5.0  # ... for a click this far under the template's cortex (a gyrus's white matter: the gyrus)

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
        return (f"atlas prior: a brain MR click in a Desikan-Killiany deep grey nucleus{cortex} answered by it{grow}{white} "
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
                grown = self._white(volume, fit, fg[:n], seen=n) if side and WM_IDS[side] not in nucleus.ids else None
                if grown is not None and grown.piece.sum() > nucleus.piece.sum():
                    nucleus = grown._replace(as_is=(n, len(bg)))  # the whole band again: 1.7 s on a hemisphere
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

    def _fit(self, volume, ct: bool):
        fit = None if ct else self.fits.fit(volume, self.params.wait)
        return fit if fit is not None and abs(fit.ncc) >= self.params.min_ncc else None

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
        offsets = (np.indices(template.shape).reshape(3, -1).T + lo - idx) * np.array(image.GetSpacing())
        ball = ((offsets ** 2).sum(1) <= LESION_BALL_MM ** 2).reshape(template.shape)
        own = sitk.GetArrayViewFromImage(ref).transpose(2, 1, 0)[ball]
        missing = (template[ball] > self.fits.atlas.wm_level).mean() - (own > fit.wm_level).mean()
        return float(missing) > self.params.lesion_wm

    def _white(self, volume, fit, points, seen: int) -> Optional[Nucleus]:
        """The white matter of the include clicks `points` that lie in the atlas's cerebral white matter with the
        volume's white matter intensity (lib.session.white_matter), or None (none does, or the lesion check)."""
        atlas, image, seeds = self.fits.atlas, volume.image, []
        for point in points:
            side = self._white_side(volume, fit, point)
            if side and volume.median_around(point) > fit.wm_threshold and not self._lesion(volume, fit, point):
                seeds.append((voxel_indices([point])[0], side, volume.median_around(point, 1)))  # 3^3: a 3 mm nodule
        found = white_region(atlas, fit, image, seeds, self.params.wm_reach_mm, self.params.guard) if seeds else None
        if found is None:
            return None
        return Nucleus(found[0], found[1], tuple(sorted({WM_IDS[side] for _, side, _ in seeds})), seen)

    def _white_side(self, volume, fit, point) -> int:
        return white_side(self.fits.atlas, fit, volume.image, voxel_indices([point])[0], self.params.wm_depth_mm)

    def _id_at(self, fit, volume, point) -> int:
        """The atlas id under a click; on none, with `cortex`, the parcel within `snap_mm` (0: none)."""
        atlas, image = self.fits.atlas, volume.image
        at = fit.transform.TransformPoint(image.TransformIndexToPhysicalPoint(voxel_indices([point])[0]))
        ident = atlas.id_at(at)
        if ident == 0 and self.params.cortex and self.params.snap_mm > 0:
            ident = atlas.parcel_near(at, self.params.snap_mm)
        return ident

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

        def warp(select) -> np.ndarray:
            indicator = sitk.GetImageFromArray(np.isin(crop_ids, select).astype(np.float32))
            indicator.CopyInformation(crop)
            return sitk.GetArrayFromImage(sitk.Resample(indicator, ref, fit.transform, sitk.sitkLinear,
                                                        0.0)).transpose(2, 1, 0) >= 0.5

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
                _prefetch_seeds(volume, ct, nucleus, fg, bg, self.params)
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


def _on_grid(nucleus: Nucleus, shape) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[nucleus[1]] = nucleus[0]
    return mask


_SEEDS: "OrderedDict[tuple, tuple]" = OrderedDict()  # the last bands' seeds: a label's later clicks reuse them
_SEEDS_LOCK = threading.Lock()


def _band_seeds(nucleus: Nucleus, box, spacing, params: AtlasParams, image, ct: bool, sigma_mm: float):
    """(prior, core, shell, data) on `box`: the nucleus there, eroded by core_mm, the outside of it dilated by
    shell_mm (bool), and the box's intensities normalised as the geodesic reads them. Two distance transforms of the
    box: 1.1 s of a whole cortex's 1.5 s click (dev_atlas_cortex), the same for every click whose box is the same, so
    the newest two are kept (copies of core and shell handed out: callers edit them), as futures: a caller finds
    them made, or being made (by AtlasPrior.answer's prefetch after a large piece's first answer), or makes them."""
    key = (nucleus.ids, tuple((b.start, b.stop) for b in nucleus.box), tuple((b.start, b.stop) for b in box),
           spacing, params.core_mm, params.shell_mm)
    with _SEEDS_LOCK:
        hit = _SEEDS.get(key)
        mine = hit is None or hit[0] is not nucleus.piece  # a refit of the volume warps a new piece
        if mine:
            hit = _SEEDS[key] = (nucleus.piece, Future())
            while len(_SEEDS) > 2:
                _SEEDS.popitem(last=False)
    if mine:
        try:
            prior = np.zeros(tuple(b.stop - b.start for b in box), dtype=bool)
            inner = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(nucleus.box, box))
            if all(s.stop > s.start for s in inner):
                prior[tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(inner, box))] = \
                    nucleus.piece[tuple(slice(s.start - a.start, s.stop - a.start) for s, a in zip(inner, nucleus.box))]
            core = ndimage.distance_transform_edt(prior, sampling=spacing) > params.core_mm
            shell = ndimage.distance_transform_edt(~prior, sampling=spacing) > params.shell_mm
            hit[1].set_result((prior, core, shell, normalise_roi(image[box], ct, spacing, sigma_mm)))
        except BaseException as e:
            hit[1].set_exception(e)
            with _SEEDS_LOCK:
                if _SEEDS.get(key) is hit:
                    del _SEEDS[key]
            raise
    prior, core, shell, data = hit[1].result()
    return prior, core.copy(), shell.copy(), data


def _band_box(volume, nucleus: Nucleus, fg, bg, params: AtlasParams):
    """(box, faces) of the band for these clicks: the clicks and the nucleus's extent plus margin_mm."""
    spacing = tuple(float(s) for s in volume.image.GetSpacing())
    inside = np.argwhere(nucleus[0]) + np.array([b.start for b in nucleus[1]])
    return roi_box(voxel_indices(fg) + voxel_indices(bg) + [inside.min(0).tolist(), inside.max(0).tolist()],
                   volume.shape, spacing, params.margin_mm)


def _prefetch_seeds(volume, ct: bool, nucleus: Nucleus, fg, bg, params: AtlasParams) -> Future:
    """The band seeds a large piece's next click (inside its extent) needs, made on a background thread while the
    annotator looks at the piece (a hemisphere's white matter: 1.1 s, the next click then 0.06 s)."""
    import SimpleITK as sitk

    image = sitk.GetArrayViewFromImage(volume.image).transpose(2, 1, 0)
    spacing = tuple(float(s) for s in volume.image.GetSpacing())
    box = _band_box(volume, nucleus, fg, bg, params)[0]
    return process_threads("atlas-band", 1).submit(_band_seeds, nucleus, box, spacing, params, image, ct,
                                                   TUNED["geodesic"].sigma_mm)


def band_region(volume, ct: bool, nucleus: Nucleus, fg, bg, params: AtlasParams, previous=None, click=None) -> Answer:
    """The geodesic competition in a band around the nucleus (see the module doc) -> (uint8 mask, box). With
    `previous` (the (piece, box) answered to the clicks before `click`), only the box of `click` + LOCAL_MM is solved,
    its faces held at the previous answer, and pasted into it: a click moves a large structure's edge near it
    (geodesic seeds lie within a few mm of every band voxel), so the rest need not be solved again (a whole cortex:
    0.6 s a click; docs/default_model.md, "Twenty-second run")."""
    import SimpleITK as sitk

    solver = TUNED["geodesic"]
    image = sitk.GetArrayViewFromImage(volume.image).transpose(2, 1, 0)  # stored (i, j, k), no copy
    spacing = tuple(float(s) for s in volume.image.GetSpacing())
    box, faces = _band_box(volume, nucleus, fg, bg, params)
    lo = np.array([b.start for b in box])
    local = lambda pts: [tuple(int(v) for v in np.asarray(p) - lo) for p in voxel_indices(pts)]  # noqa: E731
    prior, core, shell, data = _band_seeds(nucleus, box, spacing, params, image, ct, solver.sigma_mm)
    offsets = _ball_offsets(params.clear_mm, spacing)
    for points, seeds in ((bg, core), (fg, shell)):  # a click's own neighbourhood is the click's to decide
        for p in local(points):
            q = offsets + np.asarray(p)[None]
            q = q[((q >= 0) & (q < np.asarray(prior.shape))).all(1)]
            seeds[q[:, 0], q[:, 1], q[:, 2]] = False
    part = tuple(slice(0, n) for n in prior.shape)  # the solved part of the box, box-local
    if previous is not None:
        part, part_faces = roi_box(local([click]), prior.shape, spacing, LOCAL_MM)
    shift = np.array([b.start for b in part])
    inner = [tuple(int(v) for v in np.asarray(p) - shift) for p in local(fg) + local(bg)]
    keep = [all(0 <= v < b.stop - b.start for v, b in zip(p, part)) for p in inner]
    labels = seed_labels(tuple(b.stop - b.start for b in part), [p for p, k in zip(inner[:len(fg)], keep) if k],
                         [p for p, k in zip(inner[len(fg):], keep[len(fg):]) if k],
                         faces if previous is None else None, spacing, solver.seed_radius_mm)
    labels[(labels == 0) & core[part]] = 1
    labels[(labels == 0) & shell[part]] = 2
    mask = np.zeros(image.shape, dtype=np.uint8)
    if previous is not None:  # the faces inside the box keep the previous answer
        mask[previous[1]] = previous[0]
        before = mask[box][part]
        for a, (low, high) in enumerate(part_faces):
            for side, inner_face in ((0, low), (-1, high)):
                if inner_face:
                    face = tuple(side if d == a else slice(None) for d in range(3))
                    free = labels[face] == 0
                    labels[face][free] = np.where(before[face][free] > 0, 1, 2)
    region = region_score("geodesic", data[part], labels, spacing, solver) > 0
    region[labels == 1], region[labels == 2] = True, False
    mask[tuple(slice(b.start + p.start, b.start + p.stop) for b, p in zip(box, part))] = region
    return mask, box if previous is None else _union(box, previous[1])


def _union(a, b) -> Tuple[slice, ...]:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


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
