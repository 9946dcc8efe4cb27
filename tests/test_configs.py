"""lib/configs (one config per model) and what they share: the volume cache, the result type, the
frozen weights descriptions, scoring through the engine, the hot-swap watcher passed in."""
import dataclasses
import os
import sys

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_session_fakes import BallModel, ras_affine, write_nifti  # noqa: E402

from lib.session import SegmentationEngine, SegmentationResult  # noqa: E402
from lib.session.cache import LRUCache  # noqa: E402
from lib.session.volume_cache import VolumeCache  # noqa: E402
from lib.weights import MedSAMWeights, SAMMed3DWeights  # noqa: E402


@pytest.fixture
def volume(tmp_path):
    rs = np.random.default_rng(0)
    data = rs.normal(0.0, 10.0, (48, 44, 12)).astype(np.int16)
    data[14:34, 12:32, 3:9] += 300
    return write_nifti(tmp_path / "v.nii.gz", data, ras_affine((1.0, 1.0, 3.0)))


@pytest.fixture(scope="module")
def lite_medsam(medsam_weights):
    from lib.medsam import load_lite_medsam

    return load_lite_medsam(medsam_weights)


def _count_reads(monkeypatch):
    import lib.session.volume_cache as vc

    reads = []
    real = vc.load_volume
    monkeypatch.setattr(vc, "load_volume", lambda p: reads.append(p) or real(p))
    return reads


@pytest.mark.parametrize("medsam_first", [False, True])
def test_one_volume_cache_reads_a_file_once_for_both_engines(volume, lite_medsam, monkeypatch, medsam_first):
    from lib.medsam import MedSAMEngine

    reads = _count_reads(monkeypatch)
    shared = VolumeCache(LRUCache(64 << 20))
    sam = SegmentationEngine(BallModel(), "v1", volumes=shared, max_crops=1)
    box = MedSAMEngine(lite_medsam, "lite", volumes=shared, cache_bytes=64 << 20)
    assert sam.cache is shared.lru  # embeddings share the bound
    calls = [lambda: sam.segment("img", volume, "a", [[24, 22, 6]], []),
             lambda: box.segment_box(volume, [18, 28, 16, 26, 5, 6], window="soft_tissue")]
    results = [c() for c in (calls[::-1] if medsam_first else calls)]
    assert len(reads) == 1 and shared.loads == 1
    assert sam.volume(volume) is box.volume(volume) and len(reads) == 1
    # one result type, each engine filling its own fields
    for r in results:
        assert isinstance(r, SegmentationResult) and r.grid is not None and r.mask.shape == (48, 44, 12)
    clicks, boxes = (results[::-1] if medsam_first else results)
    assert clicks.num_crops == 1 and clicks.encoded == 1 and not clicks.cache_hit and clicks.roi is None
    assert boxes.roi == (18, 28, 16, 26, 5, 6) and boxes.encoded == len(boxes.slices) == 2 and boxes.window


def test_a_rewritten_file_is_read_again_and_a_dropped_one_still_held_is_not(volume, monkeypatch):
    reads = _count_reads(monkeypatch)
    shared = VolumeCache(LRUCache(1000))  # smaller than the volume: the LRU never keeps it
    held = shared.get(volume)
    assert shared.get(volume) is held and len(reads) == 1  # still held by someone: no second read
    del held
    shared.get(volume)
    assert len(reads) == 2
    os.utime(volume, ns=(1, 1))
    shared.get(volume)
    assert len(reads) == 3


def test_weights_descriptions_are_frozen_and_show_what_info_always_showed():
    w = SAMMed3DWeights(source="conf", path="/m/a.pt", sha256="ab" * 32, model_version="a@abab", device="cpu",
                        precision="fp32", click_mode="newest", tried=("conf: /m/a.pt",), version_name=None,
                        versions_dir="/m/versions")
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.model_version = "b"
    assert list(w.info()) == ["source", "path", "sha256", "model_version", "device", "precision", "click_mode",
                              "tried", "version_name", "versions_dir", "refine", "prior_flood", "prior_fine", "local_update",
                              "plain_region"]  # new fields append
    assert w.info()["tried"] == ["conf: /m/a.pt"] and not w.is_random
    swapped = dataclasses.replace(w, source="version", model_version="v0001@cd", version_name="v0001")
    assert w.model_version == "a@abab" and swapped.info()["version_name"] == "v0001"
    m = MedSAMWeights(source="package", path="/m/lite.pth", sha256="cd" * 32, model_version="lite@cd", device="cuda")
    assert m.info() == {"source": "package", "path": "/m/lite.pth", "sha256": "cd" * 32,
                        "model_version": "lite@cd", "encoder": "fp32"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.encoder = "int8"


def test_scoring_decodes_through_the_engine_with_the_same_numbers(tmp_path):
    from lib.activelearning.scoring import ActiveLearningScorer
    from lib.activelearning.uncertainty import make_perturbations, model_decoder, point_uncertainty
    from test_activelearning_units import SlabModel, ambiguous_volume, write_nifti as write_float

    eng = SegmentationEngine(SlabModel(), "v1", cache_bytes=256 << 20, modality="MR")
    path = write_float(tmp_path / "amb.nii.gz", ambiguous_volume())
    seen = []
    real = eng.runner.decode_batch

    def spy(*args):
        seen.append(eng._lock._is_owned())  # called under the engine's lock
        return real(*args)

    eng.runner.decode_batch = spy
    scorer = ActiveLearningScorer(eng, lambda: "v1")
    o = scorer._opts({})
    score, source, n = scorer.uncertainty_of("amb", path, {}, None, o)
    assert seen == [True] * n and n >= 1
    # the number the bare model gives for the same embedding and click (the previous code path)
    vol = eng.volume(path)
    p = [(s - 1) / 2 for s in vol.shape]
    ce = eng.point_embedding("amb", path, p)
    perts = make_perturbations(int(o["n_jitter"]), float(o["sigma"]), tuple(o["flips"]))
    bare = point_uncertainty(model_decoder(eng.runner.model), ce.embedding, ce.to_crop([p])[0], ce.crop, perts)
    assert source == "centre" and n == 1 and score == pytest.approx(bare, abs=0.0)


@pytest.fixture(scope="module")
def app(tmp_path_factory, medsam_weights):
    from prepare_sample_data import prepare_synthetic
    from test_app_server import small_checkpoint

    root = tmp_path_factory.mktemp("configs")
    for sub in ("studies", "truth", "app"):
        (root / sub).mkdir()
    prepare_synthetic(str(root / "studies"), str(root / "truth"))
    from main import SAMMed3DApp

    conf = {"checkpoint": small_checkpoint(str(root / "small.pt")), "max_crops": "1", "medsam": "true",
            "medsam_checkpoint": medsam_weights}
    return SAMMed3DApp(str(root / "app"), str(root / "studies"), conf)


def test_app_builds_both_models_from_their_configs_on_one_cache(app, monkeypatch):
    from lib.configs import MedSAMConfig, SAMMed3DConfig

    assert list(app.models) == ["sammed3d", "medsam_box"]
    assert isinstance(app.models["sammed3d"], SAMMed3DConfig) and isinstance(app.models["medsam_box"], MedSAMConfig)
    sam, sam_w = app.models["sammed3d"].served()
    box, box_w = app.models["medsam_box"].served()
    assert sam is app._infers["sammed3d"].engine and box is app._infers["medsam_box"].engine
    assert sam.volumes is box.volumes is app.volumes
    assert isinstance(sam_w, SAMMed3DWeights) and isinstance(box_w, MedSAMWeights)
    info = app.info()
    assert info["weights"] == sam_w.info() == info["models"]["sammed3d"]["weights"]
    assert info["models"]["medsam_box"]["weights"] == box_w.info()
    # a volume opened by both infer tasks is read once
    reads = _count_reads(monkeypatch)
    image = app.datastore().get_image_uri("synth_small_ct")
    app._infers["sammed3d"]({"image": image, "label": "a", "foreground": [[20, 18, 10]], "background": []})
    app._infers["medsam_box"]({"image": image, "label": "b", "roi": [14, 26, 12, 24, 9, 11]})
    assert len(reads) == 1


def test_hot_swap_watching_is_passed_in(app):
    watcher = app.models["sammed3d"].watcher
    assert app.watcher is watcher
    scorer = app._scoring_methods["uncertainty"].scorer
    assert scorer.version_fn == watcher.live_version and scorer.engine is watcher.engine
    assert all(app._strategies[m].version_fn == watcher.live_version for m in ("uncertainty", "diversity", "combined"))
    assert watcher.live_version() == app.engine.model_version
