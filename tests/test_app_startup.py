"""Start-up: which weights go live, and a clear failure (never random weights) when none can.

The app class is built in-process where that is enough (fast); the real server is started where
what matters is what a user sees: the process exits with a clear message, or /info names the
default model.
"""
import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP_DIR = os.path.join(REPO, "apps", "sammed3d")
sys.path.insert(0, os.path.join(REPO, "scripts"))

from local_server import LocalServer, free_port  # noqa: E402
from prepare_sample_data import prepare_synthetic  # noqa: E402
from test_app_server import SMALL_CONFIG, small_checkpoint  # noqa: E402

from lib.model import build_sam_med3d  # noqa: E402
from lib.weights import find_default_checkpoint  # noqa: E402


@pytest.fixture
def closed_url():
    """Nothing listens on a port just released: connection refused, as when offline."""
    return f"http://127.0.0.1:{free_port()}/sam_med3d_turbo.pth"


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("startup")
    for sub in ("studies", "truth"):
        (root / sub).mkdir()
    prepare_synthetic(str(root / "studies"), str(root / "truth"))
    return str(root / "studies")


def make_app(app_dir, studies, conf):
    from main import SAMMed3DApp  # imports MONAI Label: only where needed

    return SAMMed3DApp(str(app_dir), studies, conf)


def test_no_weights_fails_with_what_was_tried(tmp_path, studies, closed_url):
    with pytest.raises(RuntimeError) as e:
        make_app(tmp_path, studies, {"weights_url": closed_url})
    msg = str(e.value)
    assert "SAM-Med3D app cannot start" in msg and "no SAM-Med3D weights" in msg
    assert closed_url in msg and "allow_random_weights" in msg


def test_random_weights_are_loudly_marked(tmp_path, studies, closed_url):
    app = make_app(tmp_path, studies, {"weights_url": closed_url, "allow_random_weights": "true"})
    info = app.info()
    assert info["weights"]["source"] == "random"
    assert "RANDOM WEIGHTS" in info["models"]["sammed3d"]["description"]
    assert info["models"]["sammed3d"]["model_version"] == "random-seed0"


def test_released_file_in_model_dir_is_picked_up(tmp_path, studies):
    torch.manual_seed(1)
    model = build_sam_med3d(SMALL_CONFIG)
    # released format: just the state dict under model_state_dict (config inferred from shapes)
    os.makedirs(tmp_path / "model")
    torch.save({"model_state_dict": model.state_dict()}, tmp_path / "model" / "sam_med3d_turbo.pth")
    app = make_app(tmp_path, studies, {"download": "false"})
    w = app.info()["weights"]
    assert w["source"] == "released" and w["path"].endswith("sam_med3d_turbo.pth")
    assert w["model_version"].startswith("released@")


@pytest.mark.parametrize("conf,words", [
    ({"device": "tpu"}, "device"),
    ({"click_mode": "sometimes"}, "click_mode"),
    ({"cache_mb": "lots"}, "cache_mb"),
    ({"precision": "fp8"}, "precision"),
    ({"al_combine": "bogus"}, "al_combine"),
])
def test_bad_conf_values_stop_startup(tmp_path, studies, conf, words):
    ckpt = small_checkpoint(str(tmp_path / "s.pt"))
    with pytest.raises(RuntimeError, match="cannot start") as e:
        make_app(tmp_path, studies, {"checkpoint": ckpt, **conf})
    assert words in str(e.value)


def test_server_with_corrupt_checkpoint_exits_with_a_clear_message(tmp_path, studies):
    good = small_checkpoint(str(tmp_path / "good.pt"))
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(open(good, "rb").read()[:4096])
    server = LocalServer(studies, {"checkpoint": str(bad)})
    proc = server.launch()
    try:
        rc = proc.wait(timeout=180)
    finally:
        server.stop()
    assert rc != 0
    log = server.log()
    assert "SAM-Med3D app cannot start" in log and str(bad) in log and "cannot read checkpoint" in log


@pytest.mark.skipif(find_default_checkpoint(os.path.join(APP_DIR, "model")) is None,
                    reason="embedded default model not in apps/sammed3d/model/default/ yet")
def test_server_without_conf_serves_the_default_model(studies, closed_url):
    from monailabel.client import MONAILabelClient

    # The only conf points the download at a closed port, as on an offline machine; everything
    # else is the no-conf path (a released file in model/ would win: the test then checks that).
    with LocalServer(studies, {"weights_url": closed_url}) as server:
        info = MONAILabelClient(server.url).info()
        released = os.path.exists(os.path.join(APP_DIR, "model", "sam_med3d_turbo.pth"))
        assert info["weights"]["source"] == ("released" if released else "default")
        assert "RANDOM" not in info["models"]["sammed3d"]["description"]
        label_file, res = MONAILabelClient(server.url).infer(
            "sammed3d", "synth_small_ct", {"label": "nodule", "foreground": [[20, 18, 10]]})
        assert res["voxels"] > 0 and os.path.exists(label_file)


def test_click_mode_defaults_to_the_one_the_model_was_trained_with(tmp_path, studies):
    """A ClickUNet3D trained on its click history (geodesic maps) says click_mode "all" in its config;
    without --conf click_mode the server uses it, and --conf still wins."""
    from lib.model import CLICK_UNET_CONFIG, build_model, save_checkpoint

    torch.manual_seed(0)
    small = {**CLICK_UNET_CONFIG, "encoder_widths": [4, 8, 8, 8], "embed_dim": 8, "decoder_widths": [8, 8, 8]}
    path = str(tmp_path / "geo.pt")
    save_checkpoint(build_model({**small, "geodesic_taus": [3.0], "click_mode": "all"}), path, version="geo")
    assert make_app(tmp_path / "a", studies, {"checkpoint": path}).info()["weights"]["click_mode"] == "all"
    conf = {"checkpoint": path, "click_mode": "newest"}
    assert make_app(tmp_path / "b", studies, conf).info()["weights"]["click_mode"] == "newest"
    plain = str(tmp_path / "plain.pt")
    save_checkpoint(build_model(small), plain, version="plain")
    assert make_app(tmp_path / "c", studies, {"checkpoint": plain}).info()["weights"]["click_mode"] == "newest"


def test_refine_defaults_to_the_models_config_and_conf_wins_or_stops_start_up(tmp_path, studies):
    """The mask post-processing (lib.session.refine) follows the model's config unless --conf refine
    says otherwise; a bad value stops start-up with a clear message."""
    from lib.model import CLICK_UNET_CONFIG, build_model, save_checkpoint

    torch.manual_seed(0)
    small = {**CLICK_UNET_CONFIG, "encoder_widths": [4, 8, 8, 8], "embed_dim": 8, "decoder_widths": [8, 8, 8],
             "geodesic_taus": [3.0], "click_mode": "all", "prior_margin_cells": 7}
    path = str(tmp_path / "ref.pt")
    save_checkpoint(build_model({**small, "refine": {"band": 6.0, "gamma": 60.0}}), path, version="ref")
    info = make_app(tmp_path / "a", studies, {"checkpoint": path}).info()["weights"]
    assert info["refine"] == "geodesic band 6 gamma 60 factor 2"
    assert make_app(tmp_path / "b", studies, {"checkpoint": path, "refine": "none"}).info()["weights"]["refine"] == "none"
    conf = {"checkpoint": path, "refine_band": "3"}
    assert make_app(tmp_path / "c", studies, conf).info()["weights"]["refine"] == "geodesic band 3 gamma 60 factor 2"
    conf = {"checkpoint": path, "refine_fine_band": "3"}  # the second, full-resolution stage
    assert make_app(tmp_path / "g", studies, conf).info()["weights"]["refine"] == \
        "geodesic band 6 gamma 60 factor 2 fine band 3"
    conf = {"checkpoint": path, "refine_full_res_max_voxels": "150000"}  # the size-adaptive grid (default-v5)
    assert make_app(tmp_path / "h", studies, conf).info()["weights"]["refine"] == \
        "geodesic band 6 gamma 60 factor 2 full resolution up to 150000 voxels"
    plain = str(tmp_path / "plain.pt")
    save_checkpoint(build_model(small), plain, version="plain")
    assert make_app(tmp_path / "d", studies, {"checkpoint": plain}).info()["weights"]["refine"] == "none"
    conf = {"checkpoint": plain, "refine": "geodesic"}
    assert make_app(tmp_path / "e", studies, conf).info()["weights"]["refine"] == "geodesic band 2 gamma 20 factor 2"
    for bad in ({"refine": "snap"}, {"refine": "geodesic", "refine_factor": "3"},
                {"refine": "geodesic", "refine_factor": "2.5"}, {"refine": "geodesic", "refine_band": "-1"},
                {"refine": "geodesic", "refine_fine_band": "-2"},
                {"refine": "geodesic", "refine_full_res_max_voxels": "1.5"}):
        with pytest.raises(RuntimeError, match="cannot start.*refine"):
            make_app(tmp_path / "f", studies, {"checkpoint": plain, **bad})


def test_prior_flood_follows_the_models_config_unless_conf_says_and_needs_a_prior(tmp_path, studies):
    """--conf prior_flood auto|on|off (lib.model.flood_region.switch_flood): /info says which flood serves;
    "on" for a model without a geodesic prior, or a bad value, stops start-up with a clear message."""
    from lib.model import CLICK_UNET_CONFIG, build_model, save_checkpoint

    torch.manual_seed(0)
    small = {**CLICK_UNET_CONFIG, "encoder_widths": [4, 8, 8, 8], "embed_dim": 8, "decoder_widths": [8, 8, 8],
             "geodesic_taus": [3.0], "click_mode": "all", "prior_margin_cells": 7}
    path, flooded, plain = str(tmp_path / "p.pt"), str(tmp_path / "f.pt"), str(tmp_path / "plain.pt")
    save_checkpoint(build_model(small), path, version="p")
    save_checkpoint(build_model({**small, "prior_flood_beta": 4.0, "prior_flood_exclude": "compete"}), flooded, version="f")
    save_checkpoint(build_model({k: v for k, v in small.items() if k != "prior_margin_cells"}), plain, version="n")
    flood = lambda sub, conf: make_app(tmp_path / sub, studies, conf).info()["weights"]["prior_flood"]  # noqa: E731
    assert flood("a", {"checkpoint": path}) == "none"
    assert flood("b", {"checkpoint": path, "prior_flood": "on"}) == "flood beta 2 tolerance 1 max sigma 0.25 exclude level"
    assert flood("c", {"checkpoint": flooded}) == "flood beta 4 tolerance 1 max sigma 0.25 exclude compete"
    assert flood("d", {"checkpoint": flooded, "prior_flood": "on"}).startswith("flood beta 4")
    assert flood("e", {"checkpoint": flooded, "prior_flood": "off"}) == "none"
    assert flood("g", {"checkpoint": plain, "prior_flood": "off"}) == "none"
    for sub, conf in (("h", {"checkpoint": plain, "prior_flood": "on"}), ("i", {"checkpoint": path, "prior_flood": "yes"})):
        with pytest.raises(RuntimeError, match="cannot start.*prior_flood"):
            make_app(tmp_path / sub, studies, conf)
    # per click: Slicer sees the option in the task's config; OHIF's segments named in prior_flood_labels get it
    app = make_app(tmp_path / "j", studies, {"checkpoint": path, "prior_flood_labels": "organ, Lung"})
    assert app.info()["models"]["sammed3d"]["config"]["prior_flood"] == "auto"
    assert app._infers["sammed3d"].flood_labels == ("organ", " Lung")


def test_the_train_options_listed_in_info_are_the_live_models(tmp_path, studies):
    """/info -> trainers -> sammed3d -> config is what Slicer's train dialog shows and sends back: the
    task's defaults under the served checkpoint's own `finetune` options (the embedded default's larger
    steps), so a client that echoes them trains as the model asks."""
    from lib.model import CLICK_UNET_CONFIG, build_model, save_checkpoint
    from lib.trainers import FineTuneOptions

    small = {**CLICK_UNET_CONFIG, "encoder_widths": [4, 8, 8, 8], "embed_dim": 8, "decoder_widths": [8, 8, 8]}
    tuned, plain = str(tmp_path / "tuned.pt"), str(tmp_path / "plain.pt")
    save_checkpoint(build_model({**small, "finetune": {"lr": 0.05, "steps_per_epoch": 16}}), tuned, version="t")
    save_checkpoint(build_model(small), plain, version="p")
    cfg = make_app(tmp_path / "a", studies, {"checkpoint": tuned}).info()["trainers"]["sammed3d"]["config"]
    assert cfg["lr"] == 0.05 and cfg["steps_per_epoch"] == 16 and cfg["max_epochs"] == FineTuneOptions().max_epochs
    cfg = make_app(tmp_path / "b", studies, {"checkpoint": plain}).info()["trainers"]["sammed3d"]["config"]
    assert cfg["lr"] == FineTuneOptions().lr and cfg["steps_per_epoch"] == FineTuneOptions().steps_per_epoch


def test_prior_fine_follows_the_models_config_unless_conf_says(tmp_path, studies):
    """--conf prior_fine auto|on|off (lib.session.fine_region.resolve_fine): /info says whether a small walled
    structure's 1.5 mm region serves; image-only, so "on" serves any model; a bad value stops start-up."""
    from lib.model import CLICK_UNET_CONFIG, build_model, save_checkpoint

    torch.manual_seed(0)
    small = {**CLICK_UNET_CONFIG, "encoder_widths": [4, 8, 8, 8], "embed_dim": 8, "decoder_widths": [8, 8, 8],
             "geodesic_taus": [3.0], "click_mode": "all", "prior_margin_cells": 7}
    plain, fine = str(tmp_path / "p.pt"), str(tmp_path / "f.pt")
    save_checkpoint(build_model(small), plain, version="p")
    save_checkpoint(build_model({**small, "prior_fine_window": 16}), fine, version="f")
    info = lambda sub, conf: make_app(tmp_path / sub, studies, conf).info()["weights"]["prior_fine"]  # noqa: E731
    assert info("a", {"checkpoint": plain}) == "none"
    assert info("b", {"checkpoint": plain, "prior_fine": "on"}).startswith("window 24 voxels, flood beta 2 tolerance 2")
    assert info("c", {"checkpoint": fine}).startswith("window 16 voxels")
    assert info("d", {"checkpoint": fine, "prior_fine": "off"}) == "none"
    with pytest.raises(RuntimeError, match="cannot start.*prior_fine"):
        make_app(tmp_path / "e", studies, {"checkpoint": plain, "prior_fine": "maybe"})


def test_air_flood_and_local_update_follow_the_models_config_unless_conf_says(tmp_path, studies):
    """The model config's prior_flood_air_hu shows in /info's prior_flood while --conf prior_flood is auto (on /
    off decide every click); its local_update is /info's local_update unless --conf local_update says."""
    from lib.model import CLICK_UNET_CONFIG, build_model, save_checkpoint

    torch.manual_seed(0)
    small = {**CLICK_UNET_CONFIG, "encoder_widths": [4, 8, 8, 8], "embed_dim": 8, "decoder_widths": [8, 8, 8],
             "geodesic_taus": [3.0], "click_mode": "all", "prior_margin_cells": 7}
    plain, both = str(tmp_path / "p.pt"), str(tmp_path / "b.pt")
    save_checkpoint(build_model(small), plain, version="p")
    save_checkpoint(build_model({**small, "prior_flood_air_hu": -500, "local_update": "piece"}), both, version="b")
    info = lambda sub, conf: make_app(tmp_path / sub, studies, conf).info()["weights"]  # noqa: E731
    w = info("a", {"checkpoint": both})
    assert w["prior_flood"] == "CT clicks below -500 HU: flood beta 2 tolerance 1 max sigma 0.25 exclude level"
    assert w["local_update"].startswith("piece")
    assert info("b", {"checkpoint": both, "prior_flood": "off"})["prior_flood"] == "none"
    assert info("c", {"checkpoint": both, "prior_flood": "on"})["prior_flood"].startswith("flood beta 2")
    assert info("d", {"checkpoint": both, "local_update": "off"})["local_update"] == "none"
    w = info("e", {"checkpoint": plain})
    assert w["prior_flood"] == "none" and w["local_update"] == "none"
    assert info("f", {"checkpoint": plain, "local_update": "monotone"})["local_update"].startswith("monotone")
    with pytest.raises(RuntimeError, match="cannot start.*local_update"):
        make_app(tmp_path / "g", studies, {"checkpoint": plain, "local_update": "maybe"})
    with pytest.raises(ValueError, match="prior_flood_air_hu"):
        build_model({**small, "prior_flood_air_hu": "lungs"})


def test_plain_region_follows_the_models_config_unless_conf_says(tmp_path, studies):
    """--conf plain_region auto|on|off (lib.session.plain_region.resolve_region): /info says whether plain box
    answers get the stored-grid region; "on" needs a model with a geodesic prior; a bad value stops start-up."""
    from lib.model import CLICK_UNET_CONFIG, build_model, save_checkpoint

    torch.manual_seed(0)
    small = {**CLICK_UNET_CONFIG, "encoder_widths": [4, 8, 8, 8], "embed_dim": 8, "decoder_widths": [8, 8, 8],
             "geodesic_taus": [3.0], "click_mode": "all", "prior_margin_cells": 7}
    plain, region = str(tmp_path / "p.pt"), str(tmp_path / "r.pt")
    save_checkpoint(build_model(small), plain, version="p")
    save_checkpoint(build_model({**small, "plain_region": "geodesic"}), region, version="r")
    info = lambda sub, conf: make_app(tmp_path / sub, studies, conf).info()["weights"]["plain_region"]  # noqa: E731
    assert info("a", {"checkpoint": plain}) == "none"
    assert info("b", {"checkpoint": region}).startswith("geodesic region on the stored grid")
    assert info("c", {"checkpoint": region, "plain_region": "off"}) == "none"
    assert info("d", {"checkpoint": plain, "plain_region": "on"}).startswith("geodesic region")
    with pytest.raises(RuntimeError, match="cannot start.*plain_region"):
        make_app(tmp_path / "e", studies, {"checkpoint": plain, "plain_region": "maybe"})
    no_prior = str(tmp_path / "n.pt")
    save_checkpoint(build_model({**small, "prior_margin_cells": 0}), no_prior, version="n")
    with pytest.raises(RuntimeError, match="cannot start.*geodesic prior"):
        make_app(tmp_path / "f", studies, {"checkpoint": no_prior, "plain_region": "on"})
    # --conf plain_region_merge auto|on|off: the config's (default-v10: merged) unless the server says
    merged = str(tmp_path / "m.pt")
    save_checkpoint(build_model({**small, "plain_region": "geodesic", "plain_region_merge": True}), merged, version="m")
    assert info("g", {"checkpoint": merged}).endswith("merged into the shown mask)")
    assert not info("h", {"checkpoint": merged, "plain_region_merge": "off"}).endswith("merged into the shown mask)")
    assert info("i", {"checkpoint": region, "plain_region_merge": "on"}).endswith("merged into the shown mask)")
    assert not info("j", {"checkpoint": region}).endswith("merged into the shown mask)")
    with pytest.raises(RuntimeError, match="cannot start.*plain_region_merge"):
        make_app(tmp_path / "k", studies, {"checkpoint": merged, "plain_region_merge": "maybe"})
