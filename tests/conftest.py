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
