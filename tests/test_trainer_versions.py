"""Published versions: publish only on improvement, atomic publish, rollback by --conf, and the
server-side hot swap (LiveModelWatcher) keeping embeddings when only the decoder changed."""
import json
import os

import pytest
import torch

from trainer_utils import make_samples, tiny_checkpoint, tiny_model

import lib.versions as versions
from lib.model import load_checkpoint
from lib.session import SegmentationEngine
from lib.trainers import Publisher, publish_version
from lib.versions import LiveModelWatcher, VersionStore, encoder_fingerprint, resolve_served_weights
from lib.weights import SAMMed3DWeights, WeightsError, sha256_file


@pytest.fixture
def setup(tmp_path):
    model_dir = tmp_path / "model"
    base = tiny_checkpoint(tmp_path / "base.pt")
    conf = {"checkpoint": base, "versions_dir": str(tmp_path / "versions"), "download": "false"}
    return {"conf": conf, "model_dir": str(model_dir), "base": base, "base_sha": sha256_file(base),
            "store": VersionStore(conf["versions_dir"])}


def _decoder_changed(model, delta=0.05):
    with torch.no_grad():
        for p in model.mask_decoder.parameters():
            p.add_(delta)
    return model


def test_publisher_publishes_only_on_improvement(setup):
    store = setup["store"]
    pub = Publisher(store.folder, "improved", setup["base_sha"], None, "dice_mean")
    model = tiny_model()
    assert pub.on_epoch_end(1, model, {"val": {"dice_mean": 0.1}}, improved=False) == {}
    assert store.list_versions() == [] and store.read_live() is None
    assert pub.on_epoch_end(2, model, {"val": {"dice_mean": 0.3}}, improved=True)["published"] == "v0001"
    assert pub.on_epoch_end(3, model, {"val": {"dice_mean": 0.4}}, improved=True)["published"] == "v0002"
    assert store.list_versions() == ["v0001", "v0002"]  # every version kept
    live = store.read_live()
    assert live["version"] == "v0002" and live["sha256"] == sha256_file(store.checkpoint_path("v0002"))
    meta = store.metrics("v0002")
    assert meta["parent"] == "v0001" and meta["metrics"]["val"]["dice_mean"] == 0.4 and meta["base_sha256"] == setup["base_sha"]
    m, info = load_checkpoint(store.checkpoint_path("v0002"))
    assert info["version"] == "v0002" and info["encoder_sha256"] == encoder_fingerprint(m)
    assert Publisher(store.folder, "never", None, None, "dice_mean").on_epoch_end(4, model, {}, True) == {}
    assert Publisher(store.folder, "always", None, None, "dice_mean").on_epoch_end(5, model, {}, False)["published"] == "v0003"


def test_crash_mid_publish_leaves_the_live_model_loadable(setup, monkeypatch):
    store = setup["store"]
    publish_version(store, tiny_model(), {"val": 0.2}, setup["base_sha"], None)
    good = store.read_live()

    real_save = torch.save

    def crash_in_the_middle(obj, f, *a, **kw):  # half a file, then the process "dies"
        real_save(obj, f, *a, **kw)
        f.seek(0)
        f.truncate(1000)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(torch, "save", crash_in_the_middle)
    with pytest.raises(KeyboardInterrupt):
        publish_version(store, _decoder_changed(tiny_model()), {"val": 0.3}, setup["base_sha"], "v0001")
    monkeypatch.setattr(torch, "save", real_save)
    assert store.list_versions() == ["v0001"] and store.read_live() == good
    assert not [f for f in os.listdir(store.folder) if f.startswith(".tmp-")]
    load_checkpoint(store.checkpoint_path(store.read_live()["version"]))  # loads
    choice, _, _ = resolve_served_weights(setup["conf"], setup["model_dir"], write_pointer=False)
    assert choice.source == "version" and choice.path == store.checkpoint_path("v0001")

    # crash after the checkpoint, before the pointer: the new file exists, the live one is unchanged
    def no_pointer(*a, **kw):
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(store, "set_live", no_pointer)
    with pytest.raises(KeyboardInterrupt):
        publish_version(store, _decoder_changed(tiny_model()), {"val": 0.3}, setup["base_sha"], "v0001")
    assert store.list_versions() == ["v0001", "v0002"] and store.read_live() == good


def test_rollback_by_conf(setup):
    store, conf, md = setup["store"], setup["conf"], setup["model_dir"]
    for i in range(3):
        publish_version(store, _decoder_changed(tiny_model(), 0.01 * (i + 1)), {"i": i}, setup["base_sha"], None)
    choice, base, _ = resolve_served_weights(conf, md)
    assert choice.path == store.checkpoint_path("v0003") and base.path == setup["base"]
    # roll back: served and LIVE.json points at it (the server's process)
    choice, _, _ = resolve_served_weights({**conf, "model_version": "v0001"}, md)
    assert choice.path == store.checkpoint_path("v0001") and store.read_live()["version"] == "v0001"
    assert resolve_served_weights(conf, md)[0].path == store.checkpoint_path("v0001")
    # a task subprocess honours nothing it would write: LIVE.json is not touched
    store.set_live("v0003")
    choice, _, _ = resolve_served_weights({**conf, "model_version": "v0002"}, md, write_pointer=False)
    assert choice.path == store.checkpoint_path("v0002") and store.read_live()["version"] == "v0003"
    # back to the base
    choice, _, _ = resolve_served_weights({**conf, "model_version": "base"}, md)
    assert choice.source == "conf" and store.read_live()["version"] is None
    with pytest.raises(WeightsError, match="v0009"):
        resolve_served_weights({**conf, "model_version": "v0009"}, md)
    # versions fine-tuned from another base are not served on this one
    store.set_live("v0002")
    other = tiny_checkpoint(os.path.join(os.path.dirname(setup["base"]), "other.pt"), seed=5)
    assert resolve_served_weights({**conf, "checkpoint": other}, md)[0].path == other


def test_in_task_subprocess_detection(monkeypatch):
    assert not versions.in_task_subprocess()

    class Spec:
        name = "monailabel.interfaces.utils.app"

    class Main:
        __spec__ = Spec()

    monkeypatch.setitem(__import__("sys").modules, "__main__", Main())
    assert versions.in_task_subprocess()


def test_watcher_hot_swaps_and_keeps_embeddings_when_the_encoder_is_unchanged(setup, tmp_path):
    store, conf, md = setup["store"], setup["conf"], setup["model_dir"]
    samples = make_samples(str(tmp_path / "vols"), 1)
    served, base, _ = resolve_served_weights(conf, md)
    model, _ = load_checkpoint(served.path)
    engine = SegmentationEngine(model, "base@x", max_crops=1)
    first = SAMMed3DWeights(source="conf", path=served.path, sha256=served.sha256, model_version="base@x")
    prepared = []  # the server passes switch_flood with its --conf prior_flood (a version keeps the flood)
    watcher = LiveModelWatcher(store, engine, first, base, served, prepare=prepared.append)
    img = samples[0]["image"]
    engine.segment("img", img, "a", [[22, 26, 20]], [])
    n_emb = sum(1 for k in engine.cache._data if k[0] == "emb")
    assert n_emb >= 1 and not watcher.poll()

    name = publish_version(store, _decoder_changed(load_checkpoint(base.path)[0]), {}, base.sha256, None)
    assert watcher.poll() and not watcher.poll()
    assert prepared == [engine.runner.model]  # prepared once, before it served
    assert engine.model_version.startswith(f"{name}@") and watcher.weights.version_name == name and watcher.weights.source == "version"
    assert watcher.weights.model_version == engine.model_version and first.source == "conf"  # frozen: a new one
    assert sum(1 for k in engine.cache._data if k[0] == "emb") == n_emb  # embeddings kept
    res = engine.segment("img", img, "a", [[22, 26, 20]], [])
    assert res.cache_hit and res.model_version == engine.model_version

    changed = load_checkpoint(base.path)[0]
    with torch.no_grad():
        changed.image_encoder.patch_embed.proj.weight.mul_(1.1)
    name2 = publish_version(store, changed, {}, base.sha256, name)
    assert watcher.poll() and engine.model_version.startswith(f"{name2}@")
    assert sum(1 for k in engine.cache._data if k[0] == "emb") == 0  # encoder changed: dropped
    assert not engine.segment("img", img, "a", [[22, 26, 20]], []).cache_hit

    store.set_live(name)  # rollback while running
    assert watcher.poll() and engine.model_version.startswith(f"{name}@")
    store.set_live(None)  # back to the base
    assert watcher.poll() and watcher.weights.source == "conf" and watcher.weights.version_name is None

    # a broken pointer target never takes the engine down
    with open(store.checkpoint_path(name), "r+b") as f:
        f.truncate(100)
    before = engine.model_version
    with open(store.live_path, "w") as f:
        json.dump({"version": name, "base_sha256": base.sha256, "sha256": "0" * 64}, f)
    assert not watcher.poll() and engine.model_version == before


def test_concurrent_publishers_never_share_a_version(setup):
    """Two processes (a server and a command-line training) may publish into one folder: each
    version name is claimed exclusively, so no checkpoint overwrites another."""
    import threading

    store, names, errors = setup["store"], [], []
    models = [_decoder_changed(tiny_model(), 0.01 * (i + 1)) for i in range(4)]
    barrier = threading.Barrier(len(models))

    def publish(m, i):
        try:
            barrier.wait()
            names.append(publish_version(store, m, {"i": i}, setup["base_sha"], None, make_live=False))
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=publish, args=(m, i)) for i, m in enumerate(models)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(names) == ["v0001", "v0002", "v0003", "v0004"]
    assert store.list_versions() == sorted(names)
    assert sorted(store.metrics(n)["metrics"]["i"] for n in names) == [0, 1, 2, 3]  # none overwritten
