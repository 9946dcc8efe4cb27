"""lib.session.margin_choice: the first click's box margin chosen by a learned score of each candidate region."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from lib.session.margin_choice import FEATURES, MarginScorer, candidate_features, own_features


def _ball_image(radius=10, n=96):
    rng = np.random.default_rng(1)
    img = (100.0 + rng.normal(0, 3.0, (n, n, n))).astype(np.float32)
    z, y, x = np.ogrid[:n, :n, :n]
    img[(z - n // 2) ** 2 + (y - n // 2) ** 2 + (x - n // 2) ** 2 <= radius ** 2] = 160.0
    return img


def _candidates(image, margins, ct=False, spacing=(1.5, 1.5, 1.5), click=(48, 48, 48)):
    from lib.session.classical_region import TUNED, segment_box

    out = []
    for m in margins:
        box, region, data = segment_box("geodesic", image, ct, spacing, [list(click)], [],
                                        replace(TUNED["geodesic"], margin_mm=m))
        out.append((m, box, region, data))
    return out


def _col(name):
    return FEATURES.index(name)


def test_a_region_bounded_by_an_edge_and_one_cut_by_its_box():
    """A 30 mm ball clicked at its centre: the 10 mm box cuts it (its region ends in the ball's own tissue: low
    contrast, and it grows with the box), the 40 mm box holds it (high contrast, a strong edge, the shell off the
    box faces); between 40 and 60 mm the region no longer grows and the larger box keeps it."""
    image = _ball_image()
    cands = _candidates(image, (10.0, 40.0, 60.0))
    f = candidate_features(cands, False, (1.5, 1.5, 1.5), image.shape)
    assert f.shape == (3, len(FEATURES))
    cut, whole, larger = f
    assert whole[_col("touch")] == 0.0
    assert whole[_col("contrast")] > 3 * cut[_col("contrast")] and whole[_col("contrast_rel")] == pytest.approx(
        max(whole[_col("contrast")], larger[_col("contrast")]) and 1.0, abs=0.05)
    assert whole[_col("edge")] > cut[_col("edge")]
    assert cut[_col("grow_next")] > 1.0 and abs(whole[_col("grow_next")]) < 0.05  # log of the volume ratio
    assert whole[_col("overlap_next")] > 0.98
    assert larger[_col("grow_next")] == 0.0 and larger[_col("overlap_next")] == 1.0  # nothing larger tried
    assert whole[_col("log_volume")] == pytest.approx(np.log(4189 * 1.5 ** 3 / 1000.0), abs=0.15)
    assert whole[_col("log_margin")] == pytest.approx(0.0) and cut[_col("ct")] == 0.0
    # the features a thread measured are the same as those measured here
    own = [own_features(b, r, d, (1.5, 1.5, 1.5), image.shape) for _, b, r, d in cands]
    np.testing.assert_array_equal(candidate_features(cands, False, (1.5, 1.5, 1.5), image.shape, own=own), f)


def test_a_region_that_runs_into_its_box_faces_touches_them():
    """A bright tube through the click that ends just inside the 20 mm box (13 voxels: faces at 35 and 61): its
    region fills it to its ends, so part of the region's shell lies next to the box faces; the ball does not."""
    image = _ball_image(radius=0)
    z, y = np.ogrid[:96, :96, :1][:2]
    tube = ((z - 48) ** 2 + (y - 48) ** 2 <= 16)[:, :, 0]  # along the third axis, radius 4 voxels
    image[tube, 36:61] = 160.0
    f = candidate_features(_candidates(image, (20.0,)), False, (1.5, 1.5, 1.5), image.shape)
    assert f[0, _col("touch")] > 0.1


def test_a_box_face_on_the_volumes_border_does_not_count_as_a_bound():
    """A click near the volume's edge: the box's face there is the volume's own border, not a seed face."""
    image = _ball_image(radius=6, n=64)
    cands = _candidates(image, (60.0,), click=(32, 32, 32))  # 40 voxels: the box is the whole volume
    assert candidate_features(cands, False, (1.5, 1.5, 1.5), image.shape)[0, _col("touch")] == 0.0


def _scorer(weights, margins=(10.0, 40.0, 60.0)):
    return MarginScorer(margins, np.zeros(len(FEATURES)), np.ones(len(FEATURES)), weights)


def test_the_scorer_chooses_its_best_scored_candidate():
    f = np.zeros((3, len(FEATURES)))
    f[:, _col("log_margin")] = np.log(np.array([10.0, 40.0, 60.0]) / 40.0)
    w = np.zeros(len(FEATURES))
    w[_col("log_margin")] = -1.0
    assert _scorer(w).choose(f) == 0
    assert _scorer(-w).choose(f) == 2
    assert _scorer(np.zeros(len(FEATURES))).choose(f) == 0  # the first of equals


def test_the_scorers_config_round_trips_and_is_checked():
    w = np.arange(len(FEATURES), dtype=float) / 10
    scorer = _scorer(w)
    again = MarginScorer.from_config(scorer.to_config())
    assert again.margins == (10.0, 40.0, 60.0)
    np.testing.assert_allclose(again.weights, w)
    cfg = scorer.to_config()
    for bad in ({**cfg, "features": list(FEATURES)[::-1]}, {**cfg, "margins": [40, 10]}, {**cfg, "margins": [40]},
                {**cfg, "std": [0.0] * len(FEATURES)}, {**cfg, "weights": [1.0]}, {**cfg, "mean": None},
                {k: v for k, v in cfg.items() if k != "weights"}, [1, 2]):
        with pytest.raises(ValueError):
            MarginScorer.from_config(bad)


def test_the_plain_region_chooses_by_the_scorer(tmp_path):
    """With a scorer the first click's margin is the scorer's choice (here: the largest, then the smallest), and
    the config gives the scorer; the contrast rule and a scorer exclude each other."""
    from lib.session.classical_region import TUNED
    from lib.session.plain_region import PlainRegion, first_click_region, resolve_region

    image = _ball_image()
    params, spacing, click = TUNED["geodesic"], (1.5, 1.5, 1.5), [[48, 48, 48]]
    w = np.zeros(len(FEATURES))
    w[_col("log_margin")] = 1.0
    margin, _, region = first_click_region(image, False, spacing, click, params, (10.0, 40.0, 60.0), _scorer(w))
    assert margin == 60.0 and region.shape == (81, 81, 81)
    assert first_click_region(image, False, spacing, click, params, (10.0, 40.0, 60.0), _scorer(-w))[0] == 10.0
    assert first_click_region(image, False, spacing, click, params, (10.0, 40.0, 60.0))[0] == 40.0  # contrast
    cfg = {"plain_region": "geodesic", "plain_region_margin_scorer": _scorer(w).to_config()}
    region = resolve_region("auto", cfg)
    assert region.scorer is not None and region.margins == (10.0, 40.0, 60.0) and "learned" in region.describe()
    with pytest.raises(ValueError, match="not both"):
        PlainRegion(margins=(20.0, 40.0), scorer=_scorer(w))
    from lib.model import CLICK_UNET_CONFIG, build_model

    with pytest.raises(ValueError, match="exclude each other"):
        build_model({**CLICK_UNET_CONFIG, **cfg, "plain_region_margins": [20, 40]})
    for bad in ({"margins": [20, 40]}, "scorer", [1]):
        with pytest.raises(ValueError, match="plain_region_margin_scorer"):
            build_model({**CLICK_UNET_CONFIG, "plain_region_margin_scorer": bad})
    build_model({**CLICK_UNET_CONFIG, **cfg})  # a valid scorer is accepted


def test_the_fitted_scorer_learns_which_feature_tells_the_better_candidate():
    """scripts/fit_margin_choice.py's conditional logit on a table where the candidate with the higher contrast has
    the higher Dice (and the margin says nothing): the fitted scorer picks by contrast on new targets, and its
    config round-trips."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    from fit_margin_choice import fit_scorer

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(300, 3, len(FEATURES)))
    dices = 1 / (1 + np.exp(-2 * feats[:, :, _col("contrast")]))
    scorer = fit_scorer((20.0, 40.0, 80.0), feats, dices)
    test = rng.normal(size=(40, 3, len(FEATURES)))
    picked = [scorer.choose(f) for f in test]
    assert np.mean(np.array(picked) == test[:, :, _col("contrast")].argmax(1)) > 0.9
    assert np.argmax(np.abs(scorer.weights)) == _col("contrast")
    assert MarginScorer.from_config(scorer.to_config()).margins == (20.0, 40.0, 80.0)


def test_the_served_prediction_replaces_only_what_the_plain_region_answered(tmp_path):
    """scripts/fit_margin_choice.served_prediction: a target whose served Dice@1 is the default scorer's chosen
    margin's Dice was answered by the plain region, so a new scorer's choice replaces it; another target was answered
    by the model (its flood, a grown box) and keeps its served Dice whatever the scorer chooses."""
    import json
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    from fit_margin_choice import MARGINS, served_prediction

    n = len(MARGINS)
    feats = np.zeros((2, n, len(FEATURES)))
    feats[:, :, _col("log_margin")] = np.log(np.array(MARGINS) / 40.0)
    dices = np.tile(np.linspace(0.1, 0.7, n), (2, 1))
    np.savez(tmp_path / "dev_x.npz", names=np.array(["case_a_1", "case_b_2"]), groups=np.array(["x", "x"]),
             features=feats, dices=dices, margins=np.array(MARGINS))
    w = np.zeros(len(FEATURES))
    w[_col("log_margin")] = -1.0  # the default takes its smallest margin (30 mm: candidate 2 of MARGINS)
    default = MarginScorer((30.0, 40.0), np.zeros(len(FEATURES)), np.ones(len(FEATURES)), w)
    (tmp_path / "default.json").write_text(json.dumps(default.to_config()))
    served = tmp_path / "served" / "dev_x"
    served.mkdir(parents=True)
    plain_dice = dices[0, MARGINS.index(30.0)]
    served.joinpath("per_target.csv").write_text(
        "mode,method,case,value,structure,clicks,dice\n"
        f"m,model,case_a,1,a,1,{plain_dice}\nm,model,case_a,1,a,2,0.99\nm,model,case_b,2,b,1,0.95\n")
    new = MarginScorer((30.0, 40.0), np.zeros(len(FEATURES)), np.ones(len(FEATURES)), -w)  # the larger margin
    cand_feats = feats[:, [MARGINS.index(30.0), MARGINS.index(40.0)]]
    cand_dices = dices[:, [MARGINS.index(30.0), MARGINS.index(40.0)]]
    got = served_prediction(str(tmp_path / "dev_x.npz"), (cand_feats, cand_dices), new, str(tmp_path / "served"),
                            str(tmp_path / "default.json"))
    np.testing.assert_allclose(got, [cand_dices[0, 1], 0.95])
