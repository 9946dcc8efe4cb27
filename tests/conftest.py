"""Shared pytest setup: the app's `lib` package is importable as MONAI Label imports it."""
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP_DIR = os.path.join(REPO, "apps", "sammed3d")
SHARED = os.environ.get("SAMMED3D_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
if APP_DIR not in sys.path:
    sys.path.insert(0, APP_DIR)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    import torch

    skip_slow = pytest.mark.skip(reason="slow: pass --run-slow")
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_dir():
    return SHARED


@pytest.fixture(scope="session")
def parity_fixture_path():
    path = os.path.join(SHARED, "fixtures", "sammed3d_parity_v1.pt")
    if not os.path.exists(path):
        pytest.fail(f"parity fixture missing: {path} (../shared must sit beside the repo)")
    return path


@pytest.fixture(scope="session")
def medsam_weights():
    """Path of lite_medsam.pth (setup fetches it); a failure, not a skip, when it is missing."""
    from lib.medsam.weights import MedSAMWeightsError, locate

    try:
        return locate(None).path
    except MedSAMWeightsError as e:
        pytest.fail(f"lite_medsam.pth not found ({e}); scripts/setup.sh fetches it")


# --------------------------------------------- reliability suite (tests/test_reliability_*.py)


def _reliability_root(tmp_path_factory, copies: int = 2):
    """Synthetic studies (each image also as `copyN_<id>`, for 8 annotators on 8 images), a canary
    folder beside them that no request may touch, and the small seeded checkpoint of test_app_server."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from prepare_sample_data import prepare_synthetic
    from test_app_server import small_checkpoint

    root = tmp_path_factory.mktemp("reliability")
    studies, truth, canary = root / "studies", root / "truth", root / "canary"
    for d in (studies, truth, canary):
        d.mkdir()
    prepare_synthetic(str(studies), str(truth))
    import shutil

    originals = sorted(p.name for p in studies.iterdir() if p.is_file())
    for n in range(1, copies):
        for name in originals:
            shutil.copy(studies / name, studies / f"copy{n}_{name}")
    (canary / "secret.txt").write_text("must never be read or replaced through the server\n")
    shutil.copy(studies / originals[0], canary / "outside.nii.gz")  # a readable image outside the studies
    return {"root": root, "studies": str(studies), "truth": str(truth), "canary": str(canary),
            "checkpoint": small_checkpoint(str(root / "small.pt"))}


def tree_snapshot(folder: str):
    """{relative path: (size, mtime_ns)} of every file and link under `folder` (links not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns) if not os.path.isdir(path) else "dir"
    return out


@pytest.fixture(scope="session")
def reliability_data(tmp_path_factory):
    return _reliability_root(tmp_path_factory)


@pytest.fixture(scope="session")
def reliability_server(reliability_data):
    """One real `monailabel start_server` (scripts/local_server.LocalServer, as test_app_server uses)
    for the hostile-input and load tests: small checkpoint, `max_upload_mb 2` so that an oversize
    upload is a few MB, and a tag folder `labels/linked` that is a symlink to the canary folder."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from local_server import LocalServer

    d = reliability_data
    os.makedirs(os.path.join(d["studies"], "labels"), exist_ok=True)
    os.symlink(d["canary"], os.path.join(d["studies"], "labels", "linked"))
    os.symlink(os.path.join(d["canary"], "outside.nii.gz"), os.path.join(d["studies"], "escape_link.nii.gz"))
    srv = LocalServer(d["studies"], {"checkpoint": d["checkpoint"], "max_crops": "1", "cache_mb": "512",
                                     "max_upload_mb": "2"})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def server_factory():
    """Start LocalServers for fault tests (each is stopped, or SIGKILLed, by the test; any left is stopped here)."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from local_server import LocalServer

    started = []

    def start(studies, conf, wait=True, **kwargs):
        srv = LocalServer(studies, conf, **kwargs)
        started.append(srv)
        return srv.start() if wait else srv

    yield start
    for srv in started:
        srv.stop()
