"""LiteMedSAM as a teacher (lib.medsam.teacher): boxes, pseudo-label files, errors.

Most tests drive the Teacher with a stand-in engine that fills each box (no learned weights), so
they check plumbing and geometry: the pseudo-label lies on the image's exact grid and affine, label
values are kept, boxes from a label file are the structures' extents, a JSON box list works, bad
input gives clear errors. One test runs the real LiteMedSAM on a small volume (a few slices).
"""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from lib.medsam.engine import MedSAMResult
from lib.medsam.propagate import BoxError, clamp_roi
from lib.medsam.teacher import (StructureBox, Teacher, TeacherError, boxes_from_label, parse_boxes, parser,
                                read_box_json, run)
from lib.session.volume import load_volume

SHAPE = (24, 20, 8)  # stored (ni, nj, nk)


def _write(arr, path, dtype=np.int16, spacing=(0.8, 0.9, 2.5), direction=None, origin=(-10.0, 12.5, 3.0)):
    """(ni, nj, nk) array -> file with an oblique, non-RAS geometry (so a grid mix-up shows)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.astype(dtype).transpose(2, 1, 0)))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is None:
        c, s = np.cos(0.3), np.sin(0.3)
        direction = (c, -s, 0, s, c, 0, 0, 0, -1)  # rotated in-plane, k flipped
    img.SetDirection(direction)
    sitk.WriteImage(img, str(path))
    return str(path)


def _label():
    lab = np.zeros(SHAPE, np.uint8)
    lab[3:9, 4:10, 2:6] = 7  # structure 7
    lab[14:20, 10:17, 1:4] = 200  # structure 200 (a value above 127: no signed overflow)
    lab[15, 12, 1] = 0  # a hole: boxes must still be the full extent
    return lab


@pytest.fixture()
def files(tmp_path):
    img = np.random.default_rng(0).normal(100, 20, SHAPE)
    img[_label() > 0] += 300
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    return {"image": _write(img, tmp_path / "images" / "case1.nii.gz"),
            "label": _write(_label(), tmp_path / "labels" / "case1.nii.gz", np.uint8), "tmp": tmp_path}


class BoxFillEngine:
    """Stand-in for MedSAMEngine: the 'segmentation' of a box is the box itself (minus one corner)."""

    model_version = "box-fill"

    def volume(self, path):
        return load_volume(path)

    def segment_box(self, path, roi, modality=None, window=None, slice_axis=None, clip_to_roi=True):
        vol = load_volume(path)
        r = clamp_roi(roi, vol.shape)
        mask = np.zeros(vol.shape, np.uint8)
        mask[r[0]:r[1] + 1, r[2]:r[3] + 1, r[4]:r[5] + 1] = 1
        mask[r[0], r[2], r[4]] = 0
        return MedSAMResult(mask=mask, affine=vol.affine, roi=r, window="percentile", slice_axis=2,
                            slices=list(range(r[4], r[5] + 1)), encoded=r[5] - r[4] + 1,
                            timings={"total": 0.0, "encode": 0.0, "decode": 0.0})


def _args(files, **kw):
    argv = ["--images", files["image"], "--out", str(files["tmp"] / "out")]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}"] + (v if isinstance(v, list) else [v])
    return parser().parse_args(argv)


def test_boxes_from_label_are_the_structures_extents():
    boxes = boxes_from_label(_label())
    assert [b.value for b in boxes] == [7, 200]
    assert boxes[0].roi == (3, 8, 4, 9, 2, 5) and boxes[1].roi == (14, 19, 10, 16, 1, 3)
    assert boxes_from_label(_label(), [200], margin=2)[0].roi == (12, 21, 8, 18, 0, 5)  # clamped at k = 0
    assert boxes_from_label(_label(), [7], margin=30)[0].roi == (0, 23, 0, 19, 0, 7)


def test_pseudo_label_on_the_image_grid_with_values_kept(files):
    report = run(_args(files, box_labels=files["label"], gt="box-labels"), engine=BoxFillEngine())
    out = report["volumes"][0]["pseudo_label"]
    assert os.path.basename(out) == "case1.nii.gz" and os.path.exists(report["report_path"])
    src, res = sitk.ReadImage(files["image"]), sitk.ReadImage(out)
    assert res.GetSize() == src.GetSize()
    np.testing.assert_allclose(res.GetSpacing(), src.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(res.GetOrigin(), src.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(res.GetDirection(), src.GetDirection(), atol=1e-6)
    import nibabel as nib

    np.testing.assert_allclose(nib.load(out).affine, nib.load(files["image"]).affine, atol=1e-5)
    lab = sitk.GetArrayFromImage(res).transpose(2, 1, 0)
    assert set(np.unique(lab)) == {0, 7, 200}
    # the box fill covers each extent exactly (minus the stand-in's corner), stored (i, j, k) order kept
    assert (lab == 7).sum() == 6 * 6 * 4 - 1 and lab[8, 9, 5] == 7 and lab[3, 4, 2] == 0
    rows = {r["value"]: r for r in report["volumes"][0]["structures"]}
    assert rows[7]["roi"] == [3, 8, 4, 9, 2, 5]
    # Dice against the label the boxes came from: box fill vs structure
    g7 = (_label() == 7).sum()
    assert rows[7]["dice_vs_gt"] == pytest.approx(2 * (g7 - 1) / (g7 + 6 * 6 * 4 - 1), abs=1e-4)
    assert "mean_dice_vs_gt" in report


def test_smaller_structure_wins_overlaps(files, tmp_path):
    boxes = [StructureBox(1, (0, 23, 0, 19, 0, 7), "big"), StructureBox(2, (5, 8, 5, 8, 3, 4), "small")]
    rep = Teacher(BoxFillEngine()).label_volume(files["image"], boxes, str(tmp_path / "o.nii.gz"))
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o.nii.gz"))).transpose(2, 1, 0)
    assert lab[6, 6, 3] == 2 and lab[10, 10, 3] == 1
    assert {r["value"]: r["voxels_written"] for r in rep["structures"]}[2] == 4 * 4 * 2 - 1


def test_json_boxes(files):
    path = files["tmp"] / "boxes.json"
    path.write_text(json.dumps({"case1": [{"value": 300, "roi": [3, 8, 4, 9, 2, 5], "name": "a"},
                                          {"value": 5, "roi": [14.0, 19, 10, 16, 1, 30]}]}))  # k clamped to 7
    report = run(_args(files, boxes=str(path), gt=files["label"]), engine=BoxFillEngine())
    res = sitk.ReadImage(report["volumes"][0]["pseudo_label"])
    assert res.GetPixelID() == sitk.sitkUInt16  # 300 does not fit in uint8
    lab = sitk.GetArrayFromImage(res).transpose(2, 1, 0)
    assert set(np.unique(lab)) == {0, 5, 300} and lab[19, 16, 7] == 5
    rows = report["volumes"][0]["structures"]
    assert rows[0]["name"] == "a" and rows[1]["roi"] == [14, 19, 10, 16, 1, 7]
    assert rows[0]["dice_vs_gt"] == 0.0  # value 300 is not in the ground truth
    # a plain list applies to any image; values are numbered when missing
    assert [b.value for b in parse_boxes([{"roi": [0, 1, 0, 1, 0, 1]}, {"roi": [2, 3, 2, 3, 2, 3]}], SHAPE)] == [1, 2]
    path.write_text(json.dumps([{"roi": [0, 1, 0, 1, 0, 1]}]))
    assert read_box_json(str(path)) == {"*": [{"roi": [0, 1, 0, 1, 0, 1]}]}


def test_bad_input_gives_clear_errors(files):
    with pytest.raises(BoxError, match=r"does not overlap the volume of size \[24, 20, 8\]"):
        parse_boxes([{"value": 1, "roi": [30, 40, 0, 5, 0, 5]}], SHAPE)
    with pytest.raises(BoxError, match="min > max"):
        parse_boxes([{"value": 1, "roi": [5, 2, 0, 5, 0, 5]}], SHAPE)
    with pytest.raises(BoxError, match="must be"):
        parse_boxes([{"value": 1, "roi": [5, 2, 0]}], SHAPE)
    with pytest.raises(TeacherError, match="given twice"):
        parse_boxes([{"value": 1, "roi": [0, 1, 0, 1, 0, 1]}, {"value": 1, "roi": [0, 1, 0, 1, 0, 1]}], SHAPE)
    with pytest.raises(TeacherError, match="1..65535"):
        parse_boxes([{"value": 0, "roi": [0, 1, 0, 1, 0, 1]}], SHAPE)
    with pytest.raises(TeacherError, match="all voxels are 0"):
        boxes_from_label(np.zeros(SHAPE, np.uint8))
    with pytest.raises(TeacherError, match=r"\[9\] are absent"):
        boxes_from_label(_label(), [7, 9])
    empty = _write(np.zeros(SHAPE), files["tmp"] / "empty.nii.gz", np.uint8)
    with pytest.raises(TeacherError, match="all voxels are 0"):
        run(_args(files, box_labels=empty), engine=BoxFillEngine())
    bad = files["tmp"] / "bad.json"
    bad.write_text(json.dumps({"case1": [{"value": 2, "roi": [0, 5, 0, 5, 50, 60]}]}))
    with pytest.raises(BoxError, match=r"case1\[0\] \(value 2\).*does not overlap"):
        run(_args(files, boxes=str(bad)), engine=BoxFillEngine())
    bad.write_text(json.dumps({"other": [{"roi": [0, 1, 0, 1, 0, 1]}]}))
    with pytest.raises(TeacherError, match="no boxes for case1"):
        run(_args(files, boxes=str(bad)), engine=BoxFillEngine())
    with pytest.raises(TeacherError, match="exactly one of"):
        run(_args(files), engine=BoxFillEngine())
    good = files["tmp"] / "good.json"
    good.write_text(json.dumps([{"value": 2, "roi": [0, 5, 0, 5, 0, 5]}]))
    with pytest.raises(TeacherError, match=r"no box with value \[9\]"):
        run(_args(files, boxes=str(good), values="2,9"), engine=BoxFillEngine())
    with pytest.raises(TeacherError, match="--gt box-labels scores against"):
        run(_args(files, boxes=str(bad), gt="box-labels"), engine=BoxFillEngine())
    with pytest.raises(TeacherError, match=r"expected \[level, width\]"):
        run(_args(files, box_labels=files["label"], window="[40]"), engine=BoxFillEngine())
    small = _write(np.ones((5, 5, 5)), files["tmp"] / "s.nii.gz", np.uint8)
    with pytest.raises(TeacherError, match="shape"):
        run(_args(files, box_labels=small), engine=BoxFillEngine())


def test_cli_reports_errors_without_traceback(files, capsys):
    from lib.medsam.teacher import main

    bad = files["tmp"] / "bad.json"
    bad.write_text("{not json")
    assert main(["--images", files["image"], "--boxes", str(bad), "--out", str(files["tmp"] / "o")]) == 2
    assert "cannot read box JSON" in capsys.readouterr().out


def test_real_medsam_teacher_shares_slice_encodings(files, medsam_weights):
    """The real engine on 3 slices: two structures crossing the same slices encode them once."""
    import torch

    from lib.model.medsam import load_lite_medsam
    from lib.medsam.engine import MedSAMEngine

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    engine = MedSAMEngine(load_lite_medsam(medsam_weights), "lite_medsam")
    lab = np.zeros(SHAPE, np.uint8)
    lab[3:9, 4:10, 2:5] = 7
    lab[14:20, 10:17, 2:5] = 200
    img = np.full(SHAPE, 50.0)
    img[lab > 0] = 900.0
    image = _write(img, files["tmp"] / "images" / "case1.nii.gz")
    label = _write(lab, files["tmp"] / "labels" / "case1.nii.gz", np.uint8)
    report = run(_args(files, images=image, box_labels=label, gt="box-labels"), engine=engine)
    vol = report["volumes"][0]
    res = sitk.ReadImage(vol["pseudo_label"])
    assert res.GetSize() == sitk.ReadImage(image).GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(res))) <= {0, 7, 200}
    # both boxes span slices 2..4: each slice is encoded once and serves both structures
    assert vol["slices_encoded"] <= 3 < sum(r["slices_segmented"] for r in vol["structures"])
    assert vol["structures"][1]["slices_encoded"] == 0
    # quality is tested elsewhere (tests/test_medsam_model.py); here: the right place, not nothing
    out = sitk.GetArrayFromImage(res).transpose(2, 1, 0)
    for v, sl in ((7, np.s_[3:9, 4:10, 2:5]), (200, np.s_[14:20, 10:17, 2:5])):
        inside = np.zeros(SHAPE, bool)
        inside[sl] = True
        assert (out == v).any() and not ((out == v) & ~inside).any()  # clipped to its box
    assert report["mean_dice_vs_gt"] > 0.2
