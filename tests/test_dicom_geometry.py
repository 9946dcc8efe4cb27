"""Volumes -> DICOM series (scripts/make_dicom_series.py) -> NIfTI the way MONAI Label's DICOMweb
datastore converts them -> the same voxels at the same patient positions; and a label on that grid
-> DICOM SEG (dcmqi, the datastore's save path) -> the same voxels.

Grids are chosen to catch the classic mistakes: row/column swaps (non-square slices with unequal
in-plane spacing), a reversed slice order (left-handed grid), oblique orientation, CT rescale with a
negative intercept, and non-integer MR data (slope != 1).
"""
import glob
import os
import shutil
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

from make_dicom_series import Series, load_manifest, write_all, write_series  # noqa: E402
from monailabel.datastore.utils.convert import dicom_to_nifti  # noqa: E402
from prepare_sample_data import SYNTHETIC, prepare_synthetic  # noqa: E402


def rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    return (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
            @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))


def volume(values, spacing, direction, origin):
    img = sitk.GetImageFromArray(values)  # values: (k, j, i)
    img.SetSpacing(spacing)
    img.SetDirection(tuple(np.asarray(direction, float).ravel()))
    img.SetOrigin(origin)
    return img


def ramp(shape_kji, dtype=np.int16, scale=1.0, offset=0.0):
    """Every voxel a distinct value, so any permutation or flip of axes changes the array."""
    k, j, i = np.indices(shape_kji)
    return (offset + scale * (i + 7 * j + 131 * k)).astype(dtype)


CASES = {
    # name: (values (k, j, i), spacing (i, j, k), direction, origin, modality)
    "aniso_nonsquare_ct": (ramp((6, 14, 20), offset=-1500), (0.7, 1.3, 2.5), np.eye(3), (10.0, -20.0, 30.0), "CT"),
    "lps_flipped_ct": (ramp((5, 9, 12), offset=-900), (1.0, 0.6, 3.0), np.diag([-1.0, -1.0, 1.0]), (0.0, 0.0, 0.0), "CT"),
    "left_handed_ct": (ramp((7, 10, 11), offset=-200), (0.9, 0.9, 2.0), np.diag([1.0, 1.0, -1.0]), (5.0, 5.0, 40.0), "CT"),
    "oblique_mr": (ramp((8, 12, 16), offset=10), (1.1, 0.8, 1.7), rotation(0.35, -0.25, 0.4), (-50.0, 30.0, -120.0), "MR"),
    "float_mr": (ramp((4, 6, 9), dtype=np.float32, scale=0.37, offset=-3.2), (1.0, 1.0, 1.0), rotation(0.1, 0.2, -0.3),
                 (1.0, 2.0, 3.0), "MR"),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("dicom")
    images = {name: volume(*case[:4]) for name, case in CASES.items()}
    infos = {name: write_series(Series(name, images[name], CASES[name][4]), str(out)) for name in CASES}
    return out, images, infos


def converted(out, name) -> sitk.Image:
    """What MONAI Label's DICOMweb datastore makes of the series (its own function)."""
    return sitk.ReadImage(dicom_to_nifti(os.path.join(str(out), name)))


def tolerance(name):
    return 0.37 / 2 + 1e-3 if name == "float_mr" else 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_voxel_keeps_its_patient_position_and_value(written, name):
    out, images, _ = written
    src, dst = images[name], converted(out, name)
    assert dst.GetSize() == src.GetSize()
    a = sitk.GetArrayFromImage(src).astype(np.float64)
    b = sitk.GetArrayFromImage(dst).astype(np.float64)
    # map every source voxel to the converted grid through patient space
    k, j, i = (x.ravel() for x in np.indices(a.shape))
    d_src = np.asarray(src.GetDirection()).reshape(3, 3) @ np.diag(src.GetSpacing())
    world = (np.stack([i, j, k], 1) @ d_src.T) + np.asarray(src.GetOrigin())
    d_dst = np.asarray(dst.GetDirection()).reshape(3, 3) @ np.diag(dst.GetSpacing())
    idx = (world - np.asarray(dst.GetOrigin())) @ np.linalg.inv(d_dst).T
    assert np.abs(idx - np.rint(idx)).max() < 1e-3, "voxel centres do not land on the converted grid"
    idx = np.rint(idx).astype(int)
    assert (idx >= 0).all() and (idx < np.asarray(dst.GetSize())).all()
    np.testing.assert_allclose(b[idx[:, 2], idx[:, 1], idx[:, 0]], a.ravel(), atol=tolerance(name))


@pytest.mark.parametrize("name", ["aniso_nonsquare_ct", "oblique_mr", "lps_flipped_ct"])
def test_right_handed_grids_come_back_identical(written, name):
    """Clients index voxels as (column, row, slice) of the series: for a right-handed grid that
    must be the original (i, j, k), not a permutation or flip."""
    out, images, _ = written
    src, dst = images[name], converted(out, name)
    assert np.allclose(dst.GetSpacing(), src.GetSpacing(), atol=1e-4)
    assert np.allclose(dst.GetOrigin(), src.GetOrigin(), atol=1e-3)
    assert np.allclose(dst.GetDirection(), src.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(dst), sitk.GetArrayFromImage(src))


def test_left_handed_grid_is_written_with_ascending_slices(written):
    out, images, _ = written
    src, dst = images["left_handed_ct"], converted(out, "left_handed_ct")
    d = np.asarray(dst.GetDirection()).reshape(3, 3)
    assert np.dot(np.cross(d[:, 0], d[:, 1]), d[:, 2]) > 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(dst), sitk.GetArrayFromImage(src)[::-1])


def test_nifti_affine_matches_the_source_in_ras(written):
    """The NIfTI file itself (nibabel, RAS) puts voxel (0,0,0) and the axes where the source had them."""
    out, images, _ = written
    src = images["oblique_mr"]
    nii = nib.load(dicom_to_nifti(os.path.join(str(out), "oblique_mr")))
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    d = np.asarray(src.GetDirection()).reshape(3, 3) @ np.diag(src.GetSpacing())
    np.testing.assert_allclose(nii.affine[:3, :3], lps_to_ras @ d, atol=1e-4)
    np.testing.assert_allclose(nii.affine[:3, 3], lps_to_ras @ np.asarray(src.GetOrigin()), atol=1e-3)


def test_dicom_attributes(written):
    out, images, infos = written
    files = sorted(glob.glob(os.path.join(str(out), "aniso_nonsquare_ct", "*.dcm")))
    assert len(files) == 6
    slices = [pydicom.dcmread(f) for f in files]
    first = slices[0]
    assert first.Modality == "CT" and first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert (first.Rows, first.Columns) == (14, 20)
    assert [float(v) for v in first.PixelSpacing] == [1.3, 0.7]  # [between rows, between columns]
    assert float(first.RescaleSlope) == 1.0 and float(first.RescaleIntercept) == -1500.0  # data go below -1024
    assert first.RescaleType == "HU" and first.PixelRepresentation == 0 and first.BitsStored == 16
    iop = np.asarray(first.ImageOrientationPatient, float)
    assert np.allclose(np.linalg.norm(iop[:3]), 1) and np.allclose(np.linalg.norm(iop[3:]), 1)
    assert abs(np.dot(iop[:3], iop[3:])) < 1e-6
    normal = np.cross(iop[:3], iop[3:])
    ipp = np.asarray([[float(v) for v in s.ImagePositionPatient] for s in slices])
    np.testing.assert_allclose(np.diff(ipp, axis=0), np.tile(2.5 * normal, (5, 1)), atol=1e-4)
    assert len({s.SeriesInstanceUID for s in slices}) == 1 and len({s.SOPInstanceUID for s in slices}) == 6
    assert [int(s.InstanceNumber) for s in slices] == list(range(1, 7))
    mr = pydicom.dcmread(sorted(glob.glob(os.path.join(str(out), "oblique_mr", "*.dcm")))[0])
    assert mr.Modality == "MR" and mr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert float(mr.RescaleIntercept) == 0.0 and float(mr.RescaleSlope) == 1.0
    fl = pydicom.dcmread(sorted(glob.glob(os.path.join(str(out), "float_mr", "*.dcm")))[0])
    assert float(fl.RescaleSlope) != 1.0, "non-integer data need a real slope"
    assert infos["aniso_nonsquare_ct"]["size"] == [20, 14, 6]


def test_uids_are_stable_across_runs(tmp_path):
    img = volume(*CASES["lps_flipped_ct"][:4])
    a = write_series(Series("same", img, "CT"), str(tmp_path / "a"))
    b = write_series(Series("same", img, "CT"), str(tmp_path / "b"))
    c = write_series(Series("other", img, "CT"), str(tmp_path / "c"))
    assert a["SeriesInstanceUID"] == b["SeriesInstanceUID"] and a["StudyInstanceUID"] == b["StudyInstanceUID"]
    assert c["SeriesInstanceUID"] != a["SeriesInstanceUID"]
    sop = lambda d: [pydicom.dcmread(f).SOPInstanceUID for f in sorted(glob.glob(os.path.join(d, "same", "*.dcm")))]
    assert sop(str(tmp_path / "a")) == sop(str(tmp_path / "b"))


def test_bad_input_is_refused(tmp_path):
    img = volume(*CASES["lps_flipped_ct"][:4])
    with pytest.raises(ValueError, match="modality"):
        write_series(Series("x", img, "PT"), str(tmp_path))
    huge = volume(np.array([[[0, 70000]]], np.int32), (1, 1, 1), np.eye(3), (0, 0, 0))
    write_series(Series("wide", huge, "CT"), str(tmp_path))  # a wide range gets a slope, not an overflow
    back = sitk.GetArrayFromImage(converted(tmp_path, "wide")).astype(float).ravel()
    np.testing.assert_allclose(back, [0, 70000], atol=70000 / 65535)


def test_sample_phantoms_clicks_fall_inside_their_segments(tmp_path):
    """The manifest's click for each ground-truth segment is inside that segment on the converted grid."""
    studies, truth = tmp_path / "studies", tmp_path / "truth"
    studies.mkdir()
    truth.mkdir()
    names = prepare_synthetic(str(studies), str(truth))
    series = []
    for name, ext, *_ in SYNTHETIC:
        image = sitk.ReadImage(str(studies / (name + ext)))
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(truth / (name + ext))))
        segs = {seg: label == value for seg, value in names[name].items()}
        series.append(Series(name, image, "MR" if name.endswith("_mr") else "CT", segments=segs))
    manifest = write_all(series, str(tmp_path / "dicom"))
    assert load_manifest(str(tmp_path / "dicom")) == manifest
    for s in manifest["series"]:
        img = converted(tmp_path / "dicom", s["folder"])
        truth_img = sitk.ReadImage(str(truth / (s["name"] + next(e for n, e, *_ in SYNTHETIC if n == s["name"]))))
        on_grid = sitk.GetArrayFromImage(sitk.Resample(truth_img, img, sitk.Transform(), sitk.sitkNearestNeighbor))
        assert s["segments"], s["name"]
        for seg, info in s["segments"].items():
            i, j, k = info["click"]
            assert on_grid[k, j, i] == names[s["name"]][seg], (s["name"], seg)


@pytest.mark.skipif(shutil.which("itkimage2segimage", path=os.path.join(REPO, ".venv", "bin") + os.pathsep
                                 + os.environ.get("PATH", "")) is None, reason="dcmqi (itkimage2segimage) not installed")
def test_label_saved_as_dicom_seg_covers_the_same_voxels(written, monkeypatch):
    """The datastore's save path (nifti_to_dicom_seg with dcmqi) on an oblique, anisotropic grid."""
    from monailabel.datastore.utils.convert import nifti_to_dicom_seg
    import pydicom_seg

    monkeypatch.setenv("PATH", os.path.join(REPO, ".venv", "bin") + os.pathsep + os.environ.get("PATH", ""))
    out, _, _ = written
    grid = converted(out, "oblique_mr")
    mask = np.zeros(sitk.GetArrayFromImage(grid).shape, np.uint8)
    mask[2:6, 3:9, 4:7] = 1  # a box off-centre in every axis
    mask[5, 8, 12] = 1
    label = sitk.GetImageFromArray(mask)
    label.CopyInformation(grid)
    label_path = str(out / "label.nii.gz")
    sitk.WriteImage(label, label_path)
    seg_file = nifti_to_dicom_seg(os.path.join(str(out), "oblique_mr"), label_path, [{"name": "box", "idx": 1}])
    ds = pydicom.dcmread(seg_file)
    assert ds.Modality == "SEG" and ds.SegmentSequence[0].SegmentLabel == "box"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(
        sorted(glob.glob(os.path.join(str(out), "oblique_mr", "*.dcm")))[0]).SeriesInstanceUID
    seg = pydicom_seg.MultiClassReader().read(ds).image
    back = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(seg, sitk.sitkUInt8), grid, sitk.Transform(),
                                                sitk.sitkNearestNeighbor))
    np.testing.assert_array_equal(back > 0, mask > 0)
    os.remove(seg_file)


def test_left_handed_grid_click_follows_the_slice_order(tmp_path):
    """The manifest's click is in the index order of the series as read back, also when the source
    grid's k axis had to be reversed (a left-handed source)."""
    values, spacing, direction, origin, modality = CASES["left_handed_ct"]
    img = volume(values, spacing, direction, origin)
    seg = np.zeros(values.shape, bool)
    seg[0:3, 2:8, 3:9] = True  # near the first source slices only
    info = write_series(Series("lh", img, modality, segments={"blob": seg}), str(tmp_path))
    dst = converted(tmp_path, "lh")
    truth = sitk.GetImageFromArray(seg.astype(np.uint8))
    truth.CopyInformation(img)
    on_grid = sitk.GetArrayFromImage(sitk.Resample(truth, dst, sitk.Transform(), sitk.sitkNearestNeighbor))
    i, j, k = info["segments"]["blob"]["click"]
    assert on_grid[k, j, i] == 1
    assert k >= values.shape[0] - 3, "in the series' ascending order the blob is in the last slices"
    first = pydicom.dcmread(sorted(glob.glob(os.path.join(str(tmp_path), "lh", "*.dcm")))[0])
    normal = np.cross(np.asarray(first.ImageOrientationPatient[:3], float), np.asarray(first.ImageOrientationPatient[3:], float))
    last = pydicom.dcmread(sorted(glob.glob(os.path.join(str(tmp_path), "lh", "*.dcm")))[-1])
    step = np.asarray(last.ImagePositionPatient, float) - np.asarray(first.ImagePositionPatient, float)
    assert np.dot(step, normal) > 0, "files/InstanceNumbers ascend along row x column"
