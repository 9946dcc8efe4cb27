"""The evaluation command: simulated clicks through the real SegmentationEngine."""
from __future__ import annotations

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest

from lib.evaluation.cases import find_pairs, read_label
from lib.evaluation.clicks import next_click, next_click_from_error
from lib.evaluation.command import main
from lib.evaluation.loop import evaluate
from lib.evaluation.metrics import dice
from lib.evaluation.report import summarise
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


def test_cli_classical_rows_nsd_cpu_and_reuse(tmp_path, capsys):
    """Model and classical rows on the same targets and clicks; --reuse-rows keeps stored rows."""
    from lib.evaluation.report import read_rows

    data = _dataset(tmp_path / "d", n=1)
    with open(data / "labels" / "labels.json", "w") as f:
        json.dump({"case0": {"big ball": 1, "small ball": 2}}, f)
    tiny = {"encoder_embed_dim": 48, "encoder_depth": 2, "encoder_num_heads": 2, "encoder_global_attn_indexes": [1],
            "prompt_embed_dim": 48, "mask_in_chans": 8, "iou_head_hidden_dim": 16,
            "decoder_transformer": {"depth": 1, "mlp_dim": 32, "num_heads": 2}}
    out = tmp_path / "out"
    rc = main(["--data", str(data), "--clicks", "3", "--report-at", "1,3", "--random-weights", "--model-config",
               json.dumps(tiny), "--click-mode", "newest", "--model-name", "tiny", "--method", "model", "random_walker",
               "geodesic", "--out", str(out)])
    assert rc == 0
    rows = read_rows(str(out / "per_target.csv"))
    assert {r["mode"] for r in rows} == {"tiny:newest", "random_walker", "geodesic"}
    assert len(rows) == 3 * 2 * 3  # modes x targets x clicks
    assert {r["structure"] for r in rows} == {"big ball", "small ball"}
    for r in rows:
        assert r["cpu_s"] >= 0.0 and r["wall_s"] >= 0.0
        assert (r["nsd"] is not None) == (r["clicks"] in (1, 3))  # NSD at the report points only
    # The smooth test volume has no edge at the balls: the classical methods see only the box, so
    # their Dice is far from perfect; the numbers are checked for range, and the seeds for sanity:
    # the first click is at the target's centre, so every method's first mask covers it.
    assert all(0.0 <= r["dice"] <= 1.0 for r in rows)
    with open(out / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert [s["mode"] for s in summary] == ["tiny:newest"] * 2 + ["random_walker"] * 2 + ["geodesic"] * 2
    assert all(s["mean_nsd"] != "" and s["cpu_s"] != "" for s in summary)
    md = (out / "per_structure.md").read_text()
    assert "| case0 | big ball | random_walker |" in md and "**mean of 2**" in md
    # Re-run only the model rows, reusing the stored classical rows.
    out2 = tmp_path / "out2"
    rc = main(["--data", str(data), "--clicks", "3", "--report-at", "1,3", "--random-weights", "--model-config",
               json.dumps(tiny), "--click-mode", "newest", "--model-name", "tiny2", "--reuse-rows",
               str(out / "per_target.csv"), "--out", str(out2)])
    assert rc == 0
    rows2 = read_rows(str(out2 / "per_target.csv"))
    assert {r["mode"] for r in rows2} == {"tiny2:newest", "tiny:newest", "random_walker", "geodesic"}
    keep = lambda rs, m: [(r["case"], r["value"], r["clicks"], r["dice"]) for r in rs if r["mode"] == m]  # noqa: E731
    assert keep(rows2, "geodesic") == keep(rows, "geodesic")
    assert "random_walker" in capsys.readouterr().out


def test_simulated_annotator_is_shared_by_all_methods():
    """simulate_clicks drives any segmenter with next_click's rule; a perfect one stops after click 1."""
    from lib.evaluation.loop import simulate_clicks

    gt = np.zeros((30, 30, 10), bool)
    gt[5:20, 8:25, 2:8] = True
    seen = []

    def perfect(fg, bg):
        seen.append((list(map(tuple, fg)), list(map(tuple, bg))))
        return gt

    recs = simulate_clicks(perfect, gt, (1.0, 1.0, 3.0), 4, nsd_at=(1, 4))
    assert [r["dice"] for r in recs] == [1.0] * 4 and [r["nsd"] for r in recs] == [1.0, None, None, 1.0]
    assert len(seen) == 1 and seen[0][0] == [next_click_from_error(np.zeros_like(gt), gt, spacing=(1.0, 1.0, 3.0))[0]]
    assert recs[1]["cpu_s"] == 0.0

    def leaky(fg, bg):  # everything; the next click must be an exclude click at the largest false positive
        seen.append((list(map(tuple, fg)), list(map(tuple, bg))))
        return np.ones_like(gt) if not bg else gt

    seen.clear()
    recs = simulate_clicks(leaky, gt, (1.0, 1.0, 3.0), 2)
    assert len(seen[1][1]) == 1 and not gt[seen[1][1][0]] and recs[1]["dice"] == 1.0
    # each placed click's record says where it went and what the mask became (what --trace prints)
    assert recs[0]["include"] and recs[0]["voxels"] == gt.size and recs[0]["overlap"] == int(gt.sum())
    assert not recs[1]["include"] and tuple(recs[1]["point"]) == seen[1][1][0] and recs[1]["voxels"] == int(gt.sum())


def test_trace_logs_every_click_of_a_leak_and_its_correction():
    """--trace: one line per click with its polarity, voxel, the mask's size and its overlap with the target."""
    from lib.evaluation.loop import _log_line, simulate_clicks

    gt = np.zeros((30, 30, 10), bool)
    gt[5:20, 8:25, 2:8] = True
    recs = simulate_clicks(lambda fg, bg: np.ones_like(gt) if not bg else gt, gt, (1.0, 1.0, 3.0), 3)
    lines = []
    _log_line(lines.append, "m", "case", 1, recs, 0.1, gt)
    assert len(lines) == 3  # the summary line and two clicks: the third found nothing left to correct
    assert lines[1].startswith("    click 1: include at") and f"mask {gt.size} voxels, {int(gt.sum())} of the target's" in lines[1]
    assert lines[2].startswith("    click 2: exclude at") and "Dice 1.000" in lines[2]
    quiet = []
    _log_line(quiet.append, "m", "case", 1, recs, 0.1)
    assert len(quiet) == 1


def test_cli_merges_stored_runs_without_running(tmp_path):
    """An empty --method with --reuse-rows merges parts of a run (same mode, different cases)."""
    from lib.evaluation.report import read_rows

    header = "mode,method,case,value,structure,clicks,dice,nsd,cpu_s,wall_s\n"
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text(header + "random_walker,random_walker,c1,1,x,1,0.5,0.4,1.0,1.0\n")
    b.write_text(header + "random_walker,random_walker,c2,1,y,1,0.7,,2.0,2.0\n"
                 "random_walker,random_walker,c1,1,x,1,0.9,,2.0,2.0\n")  # duplicate of a's row: a wins
    data = _dataset(tmp_path / "d", n=1)
    assert main(["--data", str(data), "--clicks", "1", "--report-at", "1", "--method", "--reuse-rows", str(a), str(b),
                 "--out", str(tmp_path / "out")]) == 0
    rows = read_rows(str(tmp_path / "out" / "per_target.csv"))
    assert [(r["case"], r["dice"]) for r in rows] == [("c1", 0.5), ("c2", 0.7)]
    with open(tmp_path / "out" / "summary.csv") as f:
        s = list(csv.DictReader(f))
    assert float(s[0]["mean_dice"]) == pytest.approx(0.6) and float(s[0]["mean_nsd"]) == pytest.approx(0.4)


def test_the_evaluation_serves_the_models_own_refinement_as_the_server_does(tmp_path):
    """--refine auto (default) = the model config's refinement, like --conf refine auto; none and explicit
    numbers win; a bad value stops the command with the option named."""
    from lib.evaluation.command import build_engine, parse_args
    from lib.model import CLICK_UNET_CONFIG, build_model, save_checkpoint
    from lib.session.refine import GeodesicRefine

    cfg = {**CLICK_UNET_CONFIG, "image_size": 64, "encoder_widths": [4, 8, 8, 8], "embed_dim": 8,
           "decoder_widths": [8, 8, 8], "groups": 2, "refine": {"band": 6.0, "gamma": 60.0}}
    path = str(tmp_path / "m.pt")
    save_checkpoint(build_model(cfg), path, version="with-refine")
    base = ["--data", str(tmp_path), "--checkpoint", path]
    assert build_engine(parse_args(base)).refine == GeodesicRefine(6.0, 60.0, 2)
    assert build_engine(parse_args(base + ["--refine", "none"])).refine is None
    assert build_engine(parse_args(base + ["--refine-band", "3"])).refine == GeodesicRefine(3.0, 60.0, 2)
    with pytest.raises(SystemExit, match="refine factor"):
        build_engine(parse_args(base + ["--refine-factor", "3"]))
