"""Active learning (lib/activelearning): scores, selection, storage with model versions, strategies.

A stand-in model with SAM-Med3D's encode/decode interface makes the uncertainty case exact: its
"embedding" is the crop at 1/4 resolution and its mask is every bright voxel within a fixed
radius of the click. A small bright ball is segmented the same way whatever the click jitter
(clean); a bright slab much larger than the radius is cut where the click lands (ambiguous).
"""
import os
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from lib.activelearning import store
from lib.activelearning.diversity import decode_feature, encode_feature, kcenter_greedy, pool_features
from lib.activelearning.prompts import LocationPrior, choose_prompts
from lib.activelearning.scoring import ActiveLearningScorer, SAMMed3DScoring
from lib.activelearning.select import (STRATEGIES, combine, combine_product, minmax_normalise, rank_normalise,
                                      select_batch)
from lib.activelearning.strategies import ScoreStrategy
from lib.activelearning.uncertainty import disagreement
from lib.session import SegmentationEngine


class SlabModel(nn.Module):
    """embedding = crop avg-pooled by 4 (1, 1, 32, 32, 32); logits = bright AND within `radius`
    crop voxels of the (last) include click."""

    image_size = 128

    def __init__(self, radius=30.0):
        super().__init__()
        self.radius = radius
        self.dummy = nn.Parameter(torch.zeros(()))
        self.encode_calls = 0

    def encode(self, image):
        self.encode_calls += 1
        return torch.nn.functional.avg_pool3d(image, 4)

    def decode(self, emb, coords, labels, mask_input):
        n = emb.shape[-1]
        c = torch.arange(n, dtype=torch.float32) * 4 + 1.5
        g = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), dim=-1)  # (n, n, n, 3)
        out = []
        for b in range(emb.shape[0]):
            d = (g - coords[b, -1]).norm(dim=-1)
            bright = emb[b, 0] > 0.0
            out.append(torch.where(bright & (d < self.radius), 8.0, -8.0))
        return torch.stack(out)[:, None]


def write_nifti(path, arr, spacing=1.5):
    nib.save(nib.Nifti1Image(arr.astype(np.float32), np.diag([spacing] * 3 + [1.0])), str(path))
    return str(path)


def clean_volume(n=64):
    x = np.full((n, n, n), 10.0, np.float32)
    g = np.indices((n, n, n)) - (n - 1) / 2
    x[(g ** 2).sum(0) < 8 ** 2] = 100.0
    return x


def ambiguous_volume(n=64):
    x = np.full((n, n, n), 10.0, np.float32)
    x[: int(n * 0.75)] = 100.0  # a slab far larger than what one click segments
    return x


def engine(model=None, version="v1"):
    return SegmentationEngine(model or SlabModel(), version, cache_bytes=256 << 20, modality="MR")


# ------------------------------------------------------------------------------------------ pure parts


def test_disagreement_zero_when_identical_and_grows_with_shift():
    a = torch.zeros(4, 8, 8, 8)
    a[:, 2:6, 2:6, 2:6] = 1
    assert disagreement(a) == pytest.approx(0.0)
    b = a.clone()
    b[1] = torch.roll(b[1], 2, 0)
    assert disagreement(b) > 0.1
    assert disagreement(torch.zeros(3, 4, 4, 4)) == 0.0  # all empty: agree


def test_uncertainty_higher_for_ambiguous_volume(tmp_path):
    eng = engine()
    scorer = ActiveLearningScorer(eng, lambda: "v1")
    o = scorer._opts({})
    clean = write_nifti(tmp_path / "clean.nii.gz", clean_volume())
    amb = write_nifti(tmp_path / "amb.nii.gz", ambiguous_volume())
    s_clean, src, _ = scorer.uncertainty_of("clean", clean, {}, None, o)
    s_amb, _, _ = scorer.uncertainty_of("amb", amb, {}, None, o)
    assert src == "centre"
    assert s_clean < 0.02 and s_amb > 0.05 and s_amb > 5 * s_clean, (s_clean, s_amb)
    # one encoder run per volume: every perturbation decodes the same cached embedding
    assert eng.runner.model.encode_calls == 2


def test_kcenter_picks_the_far_away_point():
    feats = {"a": np.array([0.0, 0.0]), "b": np.array([0.1, 0.0]), "far": np.array([5.0, 5.0]),
             "c": np.array([0.0, 0.2])}
    labelled = [np.array([0.0, 0.1])]
    assert kcenter_greedy(feats, labelled, 1) == ["far"]
    assert select_batch("diversity", list(feats), 1, features=feats, centres=labelled) == ["far"]
    # a batch does not take two near-duplicates: after "far", the next is the farthest of the rest
    two = select_batch("diversity", list(feats), 2, features=feats, centres=labelled)
    assert two[0] == "far" and two[1] in ("b", "c")


def test_rank_mix_and_feature_roundtrip():
    r = rank_normalise({"a": 1.0, "b": 5.0, "c": 3.0})
    assert r == {"a": 0.0, "b": 1.0, "c": 0.5}
    mix = combine({"a": 0.9, "b": 0.1}, {"a": 0.0, "b": 10.0}, weight=0.75)
    assert mix["a"] > mix["b"]
    f = pool_features([torch.randn(1, 6, 2, 2, 2), torch.randn(1, 6, 2, 2, 2)])
    assert f.shape == (12,) and np.linalg.norm(f) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(decode_feature(encode_feature(f)), f, atol=1e-3)


# the rank mix dilutes: "c" is barely more uncertain than the rest but ranks high on both, while
# "a" is by far the most uncertain and nearly as far from the labelled volumes as "c"
UNC = {"a": 1.0, "b": 0.0, "c": 0.2, "e": 0.1, "g": 0.15}
DIV = {"a": 0.9, "b": 0.1, "c": 1.0, "e": 0.2, "g": 0.95}


def test_product_rule_and_rank_mix_pick_differently():
    assert select_batch("combined", list(UNC), 1, uncertainty=UNC, diversity=DIV, combine_rule="rank") == ["c"]
    assert select_batch("combined", list(UNC), 1, uncertainty=UNC, diversity=DIV, combine_rule="product") == ["a"]
    assert select_batch("combined", list(UNC), 1, uncertainty=UNC, diversity=DIV) == ["a"]  # product is the default
    un = minmax_normalise(UNC, floor=0.05)
    assert un["a"] == 1.0 and un["b"] == pytest.approx(0.05) and un["c"] == pytest.approx(0.05 + 0.95 * 0.2)
    p = combine_product(UNC, DIV)
    assert p["a"] == pytest.approx(0.9) and p["c"] == pytest.approx(0.24)
    assert min(p.values()) > 0  # the floor: no volume gets exactly 0
    assert minmax_normalise({"x": 3.0, "y": 3.0}) == {"x": 1.0, "y": 1.0}
    with pytest.raises(ValueError):
        select_batch("combined", list(UNC), 1, uncertainty=UNC, diversity=DIV, combine_rule="nope")
    assert STRATEGIES["combined_product"] == ("combined", "product")


def test_product_rule_batch_is_diverse_and_falls_back_without_centres():
    feats = {"a1": np.array([5.0, 0.0]), "a2": np.array([5.01, 0.0]), "b": np.array([0.0, 5.0]),
             "c": np.array([0.1, 0.0])}
    unc = {"a1": 1.0, "a2": 0.99, "b": 0.5, "c": 0.0}
    centres = [np.array([0.0, 0.0])]
    # uncertainty alone takes both near-duplicates; the product rule takes one, then the far "b"
    assert select_batch("uncertainty", list(feats), 2, uncertainty=unc) == ["a1", "a2"]
    assert select_batch("combined", list(feats), 2, uncertainty=unc, features=feats, centres=centres,
                        combine_rule="product") == ["a1", "b"]
    # nothing labelled: the first pick is the rank mix's (k-center has no distance to use yet)
    for k in (1, 3):
        assert select_batch("combined", list(feats), k, uncertainty=unc, features=feats, combine_rule="product")[0] == \
            select_batch("combined", list(feats), k, uncertainty=unc, features=feats, combine_rule="rank")[0]


def test_location_prior_transfers_across_orientation():
    lab = np.zeros((20, 30, 40), np.uint8)
    lab[2:6, 20:28, 30:38] = 1  # low R, high A, high S
    ras = np.diag([2.0, 1.0, 1.0, 1.0])
    prior = LocationPrior.fit([(lab, ras)])
    # the same anatomy stored LPS-flipped along i and j, other grid size
    lps = np.diag([-1.0, -2.0, 1.0, 1.0])
    lps[:3, 3] = [49.5, 119.0, 0.0]
    src, pts = choose_prompts({}, (50, 60, 40), lps, None, prior)
    assert src == "prior"
    i, j, k = pts[0]
    assert 38 <= i <= 41 and 10 <= j <= 13 and 33 <= k <= 35  # R 20 %: high i; A 80 %: low j


# ------------------------------------------------------------------------------------------ datastore


@pytest.fixture
def datastore(tmp_path):
    from monailabel.datastore.local import LocalDatastore

    root = tmp_path / "studies"
    root.mkdir()
    write_nifti(root / "amb.nii.gz", ambiguous_volume())
    write_nifti(root / "clean.nii.gz", clean_volume())
    write_nifti(root / "other.nii.gz", clean_volume())  # the labelled twin of "clean"
    ds = LocalDatastore(str(root), extensions=("*.nii.gz",))
    lab = (clean_volume() > 50).astype(np.uint8)
    lab_path = write_nifti(tmp_path / "lab.nii.gz", lab)
    ds.save_label("other", lab_path, "final", {})
    return ds


def test_scores_stored_with_version_and_recomputed_only_when_it_changes(datastore, monkeypatch):
    version = {"v": "v1"}
    scorer = ActiveLearningScorer(engine(), lambda: version["v"])
    calls = []
    orig = scorer.uncertainty_of
    monkeypatch.setattr(scorer, "uncertainty_of", lambda *a, **k: calls.append(a[0]) or orig(*a, **k))
    method = SAMMed3DScoring(scorer, "uncertainty")

    res = method({}, datastore)
    assert res["scored"] == 2 and sorted(calls) == ["amb", "clean"]
    info = datastore.get_image_info("amb")[store.KEY_UNCERTAINTY]
    assert info["model_version"] == "v1" and info["prompts"] == "prior"  # learned from the final label
    assert datastore.get_image_info("amb")[store.KEY_UNCERTAINTY]["score"] > datastore.get_image_info("clean")[store.KEY_UNCERTAINTY]["score"]
    assert store.KEY_UNCERTAINTY not in datastore.get_image_info("other")  # labelled: not scored

    calls.clear()
    assert method({}, datastore)["scored"] == 0 and calls == []  # same version: nothing recomputed

    version["v"] = "v2"  # a newly published model
    assert method({}, datastore)["scored"] == 2 and sorted(calls) == ["amb", "clean"]
    assert datastore.get_image_info("clean")[store.KEY_UNCERTAINTY]["model_version"] == "v2"


def test_diversity_and_combined_scores(datastore):
    eng = engine()
    scorer = ActiveLearningScorer(eng, lambda: "v1")
    res = SAMMed3DScoring(scorer, "combined")({}, datastore)
    assert res["scored"] == 2
    for i in ("amb", "clean"):
        info = datastore.get_image_info(i)
        assert info[store.KEY_DIVERSITY]["labelled"] == 1 and info[store.KEY_COMBINED]["model_version"] == "v1"
    assert store.KEY_FEATURES in datastore.get_image_info("other")  # labelled volumes are centres
    # "clean" is the labelled volume's twin (features close), "amb" is far: more diverse
    d = {i: datastore.get_image_info(i)[store.KEY_DIVERSITY]["score"] for i in ("amb", "clean")}
    assert d["amb"] > d["clean"]
    n = eng.runner.model.encode_calls
    SAMMed3DScoring(scorer, "diversity")({}, datastore)
    assert eng.runner.model.encode_calls == n  # features current: no encoder run


def test_combined_product_rule_in_scoring_and_strategy(datastore):
    scorer = ActiveLearningScorer(engine(), lambda: "v1", {"combine": "product"})
    SAMMed3DScoring(scorer, "combined")({}, datastore)
    infos = {i: datastore.get_image_info(i) for i in ("amb", "clean")}
    for i, info in infos.items():
        assert info[store.KEY_COMBINED]["rule"] == "product"
    c = {i: infos[i][store.KEY_COMBINED]["score"] for i in infos}
    d = {i: infos[i][store.KEY_DIVERSITY]["score"] for i in infos}
    u = {i: infos[i][store.KEY_UNCERTAINTY]["score"] for i in infos}
    expect = combine_product(u, d)
    assert c == pytest.approx({i: round(v, 6) for i, v in expect.items()}, abs=1e-5)
    # "amb": more uncertain and farther from the labelled twin of "clean" -> picked by both rules
    for rule in ("product", "rank", None):
        assert ScoreStrategy("combined", lambda: "v1", None, combine=rule)({"strategy": "combined"}, datastore)["id"] == "amb"
    entries = {i: infos[i][store.KEY_COMBINED] for i in infos}
    assert ScoreStrategy("combined", lambda: "v1", None)._rule(entries) == "product"  # the stored scores' rule
    assert ScoreStrategy("combined", lambda: "v1", None, combine="rank")._rule(entries) == "rank"
    assert ScoreStrategy("combined", lambda: "v1", None)._rule({"x": None}) == "product"  # the default
    with pytest.raises(ValueError):
        ScoreStrategy("combined", lambda: "v1", None, combine="nope")


# ------------------------------------------------------------------------------------------ strategies


def _scores(ds, version, values, key=store.KEY_UNCERTAINTY):
    for i, s in values.items():
        ds.update_image_info(i, {key: {"score": s, "model_version": version}})


def test_strategy_picks_best_and_skips_volumes_handed_to_another_annotator(datastore):
    _scores(datastore, "v1", {"amb": 0.9, "clean": 0.1})
    triggered = []
    strat = ScoreStrategy("uncertainty", lambda: "v1", triggered.append, timeout=600)
    req = {"strategy": "uncertainty", "client_id": "alice"}
    assert strat(req, datastore)["id"] == "amb"
    assert triggered == []  # scores current: no refresh
    # the endpoint records the hand-out; bob must get the other volume, alice may get hers again
    datastore.update_image_info("amb", {"strategy": {"uncertainty": {"ts": int(time.time()), "client_id": "alice"}}})
    assert strat({"strategy": "uncertainty", "client_id": "bob"}, datastore)["id"] == "clean"
    assert strat(req, datastore)["id"] == "amb"
    # after the timeout the hand-out no longer blocks
    datastore.update_image_info("amb", {"strategy": {"random": {"ts": int(time.time()) - 601, "client_id": "alice"}}})
    assert strat({"strategy": "uncertainty", "client_id": "bob"}, datastore)["id"] == "amb"
    # everything handed out: least recently served instead of nothing
    now = int(time.time())
    datastore.update_image_info("amb", {"strategy": {"x": {"ts": now, "client_id": "c"}}})
    datastore.update_image_info("clean", {"strategy": {"x": {"ts": now - 5, "client_id": "c"}}})
    assert strat({"strategy": "uncertainty", "client_id": "bob"}, datastore)["id"] == "clean"


def test_strategy_refreshes_scores_of_an_older_model(datastore):
    _scores(datastore, "v1", {"amb": 0.9, "clean": 0.1})
    triggered = []
    strat = ScoreStrategy("uncertainty", lambda: "v2", triggered.append)
    res = strat({"strategy": "uncertainty"}, datastore)
    assert triggered == ["uncertainty"] and res["id"] == "amb" and res["stale"] is True


def test_diversity_strategy_counts_handed_out_volumes_as_centres(datastore):
    eng = engine()
    scorer = ActiveLearningScorer(eng, lambda: "v1")
    SAMMed3DScoring(scorer, "diversity")({}, datastore)
    strat = ScoreStrategy("diversity", lambda: "v1", None)
    first = strat({"strategy": "diversity", "client_id": "a"}, datastore)
    assert first["id"] == "amb" and not first["stale"]
    datastore.update_image_info("amb", {"strategy": {"diversity": {"ts": int(time.time()), "client_id": "a"}}})
    assert strat({"strategy": "diversity", "client_id": "b"}, datastore)["id"] == "clean"
