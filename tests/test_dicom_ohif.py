"""lib/dicom/ohif.py: the segment names OHIF needs in /info, and the nested-asset route fix."""
import os

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lib.dicom import DEFAULT_OHIF_SEGMENTS, advertise_segments, install_ohif_asset_route, ohif_segment_names
from lib.dicom.ohif import ohif_static_dir, resolve_ohif_file


def test_segment_names_from_conf_or_defaults():
    assert ohif_segment_names({}) == list(DEFAULT_OHIF_SEGMENTS)
    assert ohif_segment_names({"ohif_labels": " liver, spleen ,,liver"}) == ["liver", "spleen"]
    for bad in ("", " , ", "liver,Background"):
        with pytest.raises(ValueError):
            ohif_segment_names({"ohif_labels": bad})


def test_advertised_segments_show_in_the_task_info():
    from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

    class Task(InferTask):
        def __init__(self):
            super().__init__(type=InferType.DEEPGROW, labels=None, dimension=3, description="t")

        def is_valid(self):
            return True

        def __call__(self, request):
            raise NotImplementedError

    task = Task()
    assert task.info()["labels"] == []
    advertise_segments(task, ["liver", "spleen"])
    assert task.info()["labels"] == ["liver", "spleen"]


@pytest.fixture()
def client():
    app = FastAPI()

    @app.get("/ohif/{path:path}")  # stands for MONAI Label's own route, which must lose
    def original(path: str):
        return {"mangled": path.replace("/", os.pathsep)}

    assert install_ohif_asset_route(app) and install_ohif_asset_route(app)  # idempotent
    assert sum(getattr(r, "name", "") == "sammed3d_ohif_files" for r in app.router.routes) == 1
    return TestClient(app)


def test_nested_assets_are_served_as_files(client):
    nested = next(os.path.relpath(os.path.join(d, f), ohif_static_dir())
                  for d, _, files in os.walk(ohif_static_dir()) if d != ohif_static_dir() for f in files
                  if f.endswith(".png"))
    r = client.get("/ohif/" + nested.replace(os.sep, "/"))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    with open(os.path.join(ohif_static_dir(), nested), "rb") as f:
        assert r.content == f.read()


def test_viewer_routes_and_escapes_get_index_html(client):
    index = open(os.path.join(ohif_static_dir(), "index.html"), "rb").read()
    for path in ("/ohif/", "/ohif/monai-label", "/ohif/%2e%2e/%2e%2e/app.py", "/ohif/assets/%2e%2e/%2e%2e/%2e%2e/__init__.py"):
        r = client.get(path)
        assert r.status_code == 200 and r.content == index, path
    assert resolve_ohif_file("app-config.js").endswith(os.path.join("ohif", "app-config.js"))
