"""Checks of the atlas prior's fit (docs/default_model.md, "Twenty-first run"), run from apps/sammed3d:

    OMP_NUM_THREADS=1 ../../.venv/bin/python ../../docs/eval/click_unet/atlas_fit_checks_prototype.py bspline 20
        the atlas's nuclei against the development labels with no click: the served affine fit, and the same refined
        by a B-spline (control grid in mm) on a crop around the warped deep nuclei (measured, not built)
    OMP_NUM_THREADS=1 ../../.venv/bin/python ../../docs/eval/click_unet/atlas_fit_checks_prototype.py fits
        the served fit (lib.session.atlas_fit.register) of every development MR and of the pydeface T1 (a real head
        with its neck, from the sdist in work_data/downloads): its correlation and seconds
    OMP_NUM_THREADS=1 ../../.venv/bin/python ../../docs/eval/click_unet/atlas_fit_checks_prototype.py contrast
        a development subject with its intensities inverted inside the brain (a crude T2-like contrast): the fit's
        correlation and the nuclei's Dice, against the T1 itself
    OMP_NUM_THREADS=1 ../../.venv/bin/python ../../docs/eval/click_unet/atlas_fit_checks_prototype.py white OUT.png
        the white matter reading (lib.session.white_matter, twenty-third run) on the pydeface T1: a click at each
        hemisphere's deepest template white matter, mapped through the served fit; the answer's ml and seconds, and
        three slices through the left click with the answer over them
    OMP_NUM_THREADS=1 ../../.venv/bin/python ../../docs/eval/click_unet/atlas_fit_checks_prototype.py cortex OUT.png
        the whole cortex reading (lib.session.grey_matter, twenty-fourth run) on the pydeface T1: a label's clicks at
        the deepest voxels of two left parcels that do not touch (superior temporal, then superior frontal), mapped
        through the served fit; the answer's ml, seconds, its share outside the warped template's brain, and three
        slices through the second click
"""
import sys
import time

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, ".")
from lib.session import atlas_fit as ap  # noqa: E402

A = ap.BrainAtlas()
DEV = {1: 35, 2: 37, 3: 40, 4: 41}  # dev_atlas label value -> the atlas's id (left thalamus, putamen, hippocampus, amygdala)


def dice(a, b):
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


def bspline(fixed, fit, mesh_mm=20.0, margin=20.0, iters=50):
    """The affine fit refined by a B-spline on a crop of the volume around the warped deep nuclei."""
    ids_w = sitk.GetArrayFromImage(sitk.Resample(A.ids, fixed, fit.transform, sitk.sitkNearestNeighbor, 0))
    nz = np.argwhere(np.isin(ids_w, list(A.deep)))  # k, j, i
    sp = np.array(fixed.GetSpacing())[::-1]
    lo = np.maximum(nz.min(0) - np.ceil(margin / sp).astype(int), 0)
    hi = np.minimum(nz.max(0) + np.ceil(margin / sp).astype(int) + 1, ids_w.shape)
    crop = sitk.RegionOfInterest(sitk.Cast(fixed, sitk.sitkFloat32), [int(v) for v in (hi - lo)[::-1]],
                                 [int(v) for v in lo[::-1]])
    mesh = [max(1, int(round(p / mesh_mm))) for p in np.array(crop.GetSize()) * np.array(crop.GetSpacing())]
    b = sitk.BSplineTransformInitializer(crop, mesh)
    r = sitk.ImageRegistrationMethod()
    r.SetNumberOfThreads(1)
    r.SetMetricAsMattesMutualInformation(32)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(0.1, seed=14)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=iters)
    r.SetShrinkFactorsPerLevel([2, 1])
    r.SetSmoothingSigmasPerLevel([1.0, 0.0])
    r.SetMovingInitialTransform(fit.transform)
    r.SetInitialTransform(b, inPlace=True)
    r.Execute(crop, A.template)
    return sitk.CompositeTransform([fit.transform, b])


def nuclei_dice(img, gt, transform, mapping):
    ids = sitk.GetArrayFromImage(sitk.Resample(A.ids, img, transform, sitk.sitkNearestNeighbor, 0))
    out = []
    for v, ident in mapping.items():
        if ident is None:  # the nimare amygdala ROI: the atlas amygdala that overlaps it most
            cand = [i for i, n in A.deep.items() if "amygdala" in n]
            ident = max(cand, key=lambda i: ((ids == i) & (gt == v)).sum())
        out.append(round(dice(ids == ident, gt == v), 3))
    return out


def pydeface_t1(root: str) -> str:
    """The pydeface sdist's real T1 (a head with its neck), extracted to a temporary folder."""
    import tarfile
    import tempfile

    tmp = tempfile.mkdtemp()
    with tarfile.open(f"{root}/downloads/pydeface-2.1.0.tar.gz") as tar:
        member = [m for m in tar.getmembers() if m.name.endswith("_T1w.nii.gz")][0]
        tar.extract(member, tmp)
    return f"{tmp}/{member.name}"


def white_check(root: str, out: str) -> None:
    from lib.session.atlas_fit import AtlasFits
    from lib.session.atlas_prior import AtlasParams, AtlasPrior
    from lib.session.volume import load_volume

    volume, fits = load_volume(pydeface_t1(root)), AtlasFits()
    fit = fits.fit(volume, wait=True)
    prior, atlas = AtlasPrior(AtlasParams(wait=True, white_matter=True), fits), fits.atlas
    data = sitk.GetArrayFromImage(volume.image).transpose(2, 1, 0)
    print("fit correlation", round(fit.ncc, 3))
    shown, first = np.zeros(data.shape, np.uint8), None
    for side in (1, 2):
        deepest = np.unravel_index(np.argmax(np.where(atlas.white == side, atlas.white_depth, 0)), atlas.white.shape)
        at = fit.transform.GetInverse().TransformPoint(atlas.ids.TransformIndexToPhysicalPoint(
            [int(v) for v in deepest[::-1]]))
        click = list(volume.image.TransformPhysicalPointToIndex(at))
        t = time.time()
        answer = prior.nucleus(volume, False, click)
        ml = 0.0 if answer is None else float(answer.piece.sum()) * float(np.prod(volume.image.GetSpacing())) / 1000
        print("side", side, "click", click, "answered" if answer is not None else "not answered",
              f"{ml:.0f} ml", f"{time.time() - t:.2f} s")
        if side == 1:
            first = click
            if answer is not None:
                shown[answer.box] = answer.piece
    slices(out, data, shown, first)


def slices(out, data, shown, click):
    """Three slices through `click` with the mask `shown` over the image, written to `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 5))
    i, j, k = click
    for x, (img, mask) in enumerate([(data[i], shown[i]), (data[:, j], shown[:, j]), (data[:, :, k], shown[:, :, k])]):
        ax[x].imshow(img.T, cmap="gray", origin="lower")
        ax[x].imshow(np.ma.masked_equal(mask.T, 0), alpha=0.35, origin="lower", cmap="autumn")
    plt.tight_layout()
    plt.savefig(out, dpi=50)
    print("wrote", out)


def cortex_check(root: str, out: str) -> None:
    from lib.session.atlas_fit import AtlasFits
    from lib.session.atlas_prior import AtlasParams, AtlasPrior
    from lib.session.plain_region import PlainRegion
    from lib.session.state import LabelState
    from lib.session.volume import load_volume
    from scipy import ndimage

    path = pydeface_t1(root)
    volume, fits = load_volume(path), AtlasFits()
    fit = fits.fit(volume, wait=True)
    atlas = fits.atlas
    region = PlainRegion(atlas=AtlasPrior(AtlasParams(wait=True, whole_cortex_mm=2.0, snap_mm=3.0), fits))
    names = {name: i for i, name in atlas.cortex.items()}
    clicks = []
    for name in ("L superiortemporal", "L superiorfrontal"):
        inside = np.pad(atlas.id_array == names[name], 1)
        deepest = np.array(np.unravel_index(np.argmax(ndimage.distance_transform_edt(inside)), inside.shape)) - 1
        at = fit.transform.GetInverse().TransformPoint(atlas.ids.TransformIndexToPhysicalPoint(
            [int(v) for v in deepest[::-1]]))
        clicks.append(list(volume.image.TransformPhysicalPointToIndex(at)))
    print("fit correlation", round(fit.ncc, 3), "clicks", clicks, "parcels apart",
          atlas.parcels_apart(names["L superiortemporal"], names["L superiorfrontal"], 2.0))
    t = time.time()
    answer = region.atlas_for(volume, False, LabelState((), "v", path, fg=clicks))
    seconds = time.time() - t
    data = sitk.GetArrayFromImage(volume.image).transpose(2, 1, 0)
    shown = np.zeros(data.shape, np.uint8)
    if answer is None:
        print("not answered", f"{seconds:.2f} s")
        return
    shown[answer.box] = answer.piece
    brain = sitk.GetArrayFromImage(sitk.Resample(atlas.lookup, volume.image, fit.transform, sitk.sitkLinear,
                                                 0.0)).transpose(2, 1, 0) > 0
    ml = float(shown.sum()) * float(np.prod(volume.image.GetSpacing())) / 1000
    print(f"answered {ml:.0f} ml in {seconds:.2f} s; outside the warped template's brain "
          f"{(shown.astype(bool) & ~brain).sum() / max(1, shown.sum()):.3f}")
    slices(out, data, shown, clicks[1])


def main(mode, *rest):
    root = "../../work_data"
    if mode == "bspline":
        cases = [(f"{root}/dev_atlas/images/dev_atlas_subject_{i}.nii.gz",
                  f"{root}/dev_atlas/labels/dev_atlas_subject_{i}.nii.gz", DEV) for i in (0, 1)]
        cases.append((f"{root}/dev_brain/images/dev_mni6_brain.nii.gz", f"{root}/dev_brain/labels/dev_mni6_brain.nii.gz",
                       {1: None}))
        for img_path, lab_path, mapping in cases:
            img, gt = sitk.ReadImage(img_path), sitk.GetArrayFromImage(sitk.ReadImage(lab_path))
            fit = ap.register(A, img)
            t = time.time()
            refined = bspline(img, fit, float(rest[0]) if rest else 20.0)
            secs = time.time() - t
            for name, tx in (("affine", fit.transform), ("bspline", refined)):
                d = nuclei_dice(img, gt, tx, mapping)
                print(img_path.split("/")[-1], name, d, "mean", round(float(np.mean(d)), 3),
                      f"bspline {secs:.1f} s" if name == "bspline" else "")
    elif mode == "contrast":
        img = sitk.ReadImage(f"{root}/dev_atlas/images/dev_atlas_subject_0.nii.gz")
        gt = sitk.GetArrayFromImage(sitk.ReadImage(f"{root}/dev_atlas/labels/dev_atlas_subject_0.nii.gz"))
        a = sitk.GetArrayFromImage(img).astype(float)
        inv = sitk.GetImageFromArray(np.where(a > 0, a.max() - a + 50, 0).astype(np.int16))
        inv.CopyInformation(img)
        for name, volume in (("T1", img), ("inverted", inv)):
            fit = ap.register(A, volume)
            print(name, "correlation", round(fit.ncc, 3), "nuclei dice", nuclei_dice(volume, gt, fit.transform, DEV),
                  f"{fit.seconds:.1f} s")
    elif mode == "fits":
        import glob

        paths = sorted(glob.glob(f"{root}/dev_atlas/images/*.nii.gz") + glob.glob(f"{root}/dev_brain/images/*.nii.gz")
                       + glob.glob(f"{root}/dev_table/images/*mni*.nii.gz") + glob.glob(f"{root}/dev_table/images/*_mr.nii.gz"))
        paths.append(pydeface_t1(root))
        for path in paths:
            fit = ap.register(A, sitk.ReadImage(path))
            print(path.split("/")[-1], "correlation", round(fit.ncc, 3), f"{fit.seconds:.1f} s")
    elif mode == "white":
        white_check(root, rest[0] if rest else "white_matter_real_head.png")
    elif mode == "cortex":
        cortex_check(root, rest[0] if rest else "cortex_real_head.png")
    else:
        raise SystemExit("mode: bspline [mesh mm] | contrast | fits | white [OUT.png] | cortex [OUT.png]")


if __name__ == "__main__":
    main(*sys.argv[1:])
