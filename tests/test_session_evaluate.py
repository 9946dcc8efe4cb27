"""The evaluation command: simulated clicks through the real SegmentationEngine."""
from __future__ import annotations

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest

from lib.interaction.clicks import next_click_from_error
from lib.interaction.evaluate import dice, evaluate, find_pairs, main, next_click, read_label, summarise
from lib.session import SegmentationEngine
from test_session_fakes import BallModel, ras_affine, rotation, smooth_volume, write_nifti


def _ball_label(shape, affine, centre, radius_mm, value=1):
    idx = np.indices(shape).reshape(3, -1).T
    d = np.linalg.norm(nib.affines.apply_affine(affine, idx) - nib.affines.apply_affine(affine, centre), axis=1)
    return np.where(d.reshape(shape) <= radius_mm, value, 0).astype(np.uint8)


def _dataset(root, n=2):
    os.makedirs(root / "images")
    os.makedirs(root / "labels")
    shape = (70, 60, 24)
    for c in range(n):
        affine = ras_affine((0.8, 0.8, 2.5), np.diag([-1.0, -1.0, 1.0]) @ rotation([0, 0, 1], 10 * c))
        write_nifti(root / "images" / f"case{c}_0000.nii.gz", smooth_volume(shape, seed=c), affine)
        lab = _ball_label(shape, affine, (35, 30, 12), 12.0, 1) + _ball_label(shape, affine, (15, 15, 6), 6.0, 2)
        write_nifti(root / "labels" / f"case{c}.nii.gz", lab, affine)
    return root


def test_next_click_on_box_equals_whole_volume():
    rng = np.random.default_rng(3)
    for _ in range(5):
        gt = np.zeros((40, 30, 20), bool)
        pred = np.zeros_like(gt)
        a = rng.integers(0, 25, 3)
        gt[a[0]:a[0] + 12, a[1]:a[1] + 9, a[2]:a[2] + 7] = True
        b = rng.integers(0, 25, 3)
        pred[b[0]:b[0] + 10, b[1]:b[1] + 5, b[2]:b[2] + 8] = True
        assert next_click(pred, gt) == next_click_from_error(pred, gt)
        assert next_click(pred, gt, (0.7, 0.7, 5.0)) == next_click_from_error(pred, gt, spacing=(0.7, 0.7, 5.0))
    assert next_click(np.zeros((5, 5, 5)), np.zeros((5, 5, 5))) is None


def test_dice():
    a = np.zeros((4, 4, 4), bool)
    a[:2] = True
    b = np.zeros_like(a)
    b[1:3] = True
    assert dice(a, b) == pytest.approx(0.5) and dice(a, a) == 1.0 and dice(b * 0, a * 0) == 1.0


def test_evaluate_through_engine_finds_world_space_balls(tmp_path):
    pairs = find_pairs(str(_dataset(tmp_path / "d")))
    assert [p[0] for p in pairs] == ["case0", "case1"]
    engine = SegmentationEngine(BallModel(radius=8.0), "ball")  # 8 crop voxels = 12 mm
    rows = evaluate(engine, pairs, [1], 3, ["all", "newest"], log=lambda *_: None)
    assert len(rows) == 2 * 2 * 3
    first = [r["dice"] for r in rows if r["clicks"] == 1]
    # The click sits inside the 12 mm label ball but not always at its centre: the click rule's
    # distance transform counts voxels, not mm, so on 0.8 x 0.8 x 2.5 mm voxels many voxels tie.
    assert min(first) > 0.6, first
    # Geometry through the command's path: the mask is the stand-in's 12 mm world-space ball
    # around the simulated first click.
    case, image, label = pairs[1]
    gt = read_label(label) == 1
    click, include = next_click(np.zeros_like(gt), gt)
    assert include and gt[click]
    mask = engine.segment(case, image, "check", [list(click)], []).mask
    affine = nib.load(image).affine
    assert dice(mask, _ball_label(gt.shape, affine, click, 12.0)) > 0.9
    summary = summarise(rows, [1, 3])
    assert {(s["mode"], s["clicks"]) for s in summary} == {("all", 1), ("all", 3), ("newest", 1), ("newest", 3)}


def test_cli_writes_csv_and_png(tmp_path, capsys):
    data = _dataset(tmp_path / "d", n=1)
    tiny = {"encoder_embed_dim": 48, "encoder_depth": 2, "encoder_num_heads": 2, "encoder_global_attn_indexes": [1],
            "prompt_embed_dim": 48, "mask_in_chans": 8, "iou_head_hidden_dim": 16,
            "decoder_transformer": {"depth": 1, "mlp_dim": 32, "num_heads": 2}}
    out = tmp_path / "out"
    rc = main(["--data", str(data), "--labels-values", "1", "--clicks", "3", "--report-at", "1,3", "--random-weights",
               "--model-config", json.dumps(tiny), "--click-mode", "all", "newest", "--out", str(out)])
    assert rc == 0
    with open(out / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert [(s["mode"], s["clicks"]) for s in summary] == [("all", "1"), ("all", "3"), ("newest", "1"), ("newest", "3")]
    assert all(0.0 <= float(s["mean_dice"]) <= 1.0 for s in summary)
    with open(out / "per_target.csv") as f:
        assert len(list(csv.DictReader(f))) == 2 * 3
    assert (out / "dice_vs_clicks.png").stat().st_size > 1000
    assert "| mode |" in capsys.readouterr().out
