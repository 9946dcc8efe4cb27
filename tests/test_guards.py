"""lib/guards: the checks in front of MONAI Label's routes (through a real server: test_app_server)."""
import numpy as np
import pytest
import SimpleITK as sitk
from fastapi import FastAPI, HTTPException

from lib.guards import check_image_file, check_label_file, check_scoring_request, check_train_request, install_guards
from lib.guards.common import parse_params_field
from lib.guards.infer import ROUTE_NAME, install_infer_guard, require_input
from lib.trainers.options import FineTuneOptions


@pytest.mark.parametrize("text,expected", [("", {}), (None, {}), ("{}", {}), ('{"a": [1, 2]}', {"a": [1, 2]})])
def test_params_that_monai_label_accepts_parse_the_same(text, expected):
    assert parse_params_field(text) == expected


@pytest.mark.parametrize("text,words", [("{a: 1}", "cannot parse"), ("[1, 2]", "got a JSON list"),
                                        ("3", "got a JSON int"), ('"x"', "got a JSON str"), ("x" * 500, "...")])
def test_bad_params_get_400_naming_the_problem(text, words):
    with pytest.raises(HTTPException) as e:
        parse_params_field(text)
    assert e.value.status_code == 400 and words in e.value.detail and len(e.value.detail) < 300


def test_an_input_is_required():
    require_input("img", None, "")
    require_input("", object(), "")
    require_input("", None, "sid")
    with pytest.raises(HTTPException) as e:
        require_input("", None, "")
    assert e.value.status_code == 400 and "image" in e.value.detail


def test_guard_goes_first_and_only_once():
    app = FastAPI()
    app.router.add_api_route("/infer/{model}", lambda model: {}, methods=["POST"], name="monailabel")
    assert install_infer_guard(app) and install_infer_guard(app)
    names = [r.name for r in app.router.routes if getattr(r, "path", "") == "/infer/{model}"]
    assert names == [ROUTE_NAME, "monailabel"]


def test_without_a_server_nothing_is_installed(monkeypatch):
    import sys
    monkeypatch.delitem(sys.modules, "monailabel.app", raising=False)
    assert install_guards(None) is False


def test_all_guards_go_in_front():
    app = FastAPI()
    assert install_guards(app)
    first = sorted((r.path, sorted(r.methods)[0]) for r in app.router.routes[:9])
    assert first == [("/batch/infer/{model}", "POST"), ("/datastore/", "DELETE"), ("/datastore/", "PUT"),
                     ("/datastore/image", "DELETE"), ("/datastore/image", "PUT"), ("/datastore/label", "PUT"),
                     ("/infer/{model}", "POST"), ("/scoring/{method}", "POST"), ("/train/{model}", "POST")]


# ------------------------------------------------------------------------------ saved label files

def _write(path, shape=(8, 9, 10), spacing=(1.0, 1.0, 2.5), origin=(0.0, 0.0, 0.0), direction=None):
    img = sitk.GetImageFromArray(np.zeros(shape[::-1], np.uint8))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path))
    return str(path)


def test_a_label_on_the_image_grid_passes(tmp_path):
    image = _write(tmp_path / "img.nii.gz")
    check_label_file(_write(tmp_path / "a.nii.gz"), image)
    check_label_file(_write(tmp_path / "b.nrrd", origin=(1e-5, 0, 0)), image)  # float noise of an export
    check_label_file(_write(tmp_path / "c.nrrd", shape=(3, 3, 3)), None)  # DICOM series: readable and 3D only


@pytest.mark.parametrize("kwargs,words", [
    ({"shape": (8, 9, 11)}, "size"),
    ({"spacing": (1.0, 1.0, 2.0)}, "spacing"),
    ({"origin": (0.0, 5.0, 0.0)}, "origin"),
    ({"direction": (-1, 0, 0, 0, 1, 0, 0, 0, 1)}, "direction"),
])
def test_a_label_on_another_grid_gets_400(tmp_path, kwargs, words):
    image = _write(tmp_path / "img.nii.gz")
    with pytest.raises(HTTPException) as e:
        check_label_file(_write(tmp_path / "l.nii.gz", **kwargs), image)
    assert e.value.status_code == 400 and words in e.value.detail and "grid" in e.value.detail


def test_an_uploaded_image_must_be_a_readable_3d_image(tmp_path):
    check_image_file(_write(tmp_path / "ok.nrrd"))
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"nope" * 50)
    with pytest.raises(HTTPException) as e:
        check_image_file(str(junk))
    assert e.value.status_code == 400 and "cannot read image file" in e.value.detail


def test_unreadable_or_2d_labels_get_400(tmp_path):
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image" * 20)
    with pytest.raises(HTTPException) as e:
        check_label_file(str(junk), None)
    assert e.value.status_code == 400 and "cannot read" in e.value.detail
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 5), np.uint8)), str(flat))
    with pytest.raises(HTTPException) as e:
        check_label_file(str(flat), None)
    assert "3D" in e.value.detail


# ------------------------------------------------------------------------------ train / scoring

class _Store:
    def __init__(self, labelled):
        self.labelled = labelled

    def datalist(self):
        return [{"image": "a", "label": "a_label"}] if self.labelled else []


class _App:
    def __init__(self, labelled=True):
        self._trainers = {"sammed3d": type("T", (), {"defaults": FineTuneOptions()})()}
        self._scoring_methods = {"uncertainty": object()}
        self._store = _Store(labelled)

    def datastore(self):
        return self._store


def test_train_requests_are_checked_before_submission():
    check_train_request(_App(), "sammed3d", {"max_epochs": 2, "gpus": "all", "some_client_key": 1})
    cases = [(_App(), "nope", {}, 404, "unknown trainer"),
             (_App(), "sammed3d", {"max_epochs": "abc"}, 400, "max_epochs"),
             (_App(), "sammed3d", {"train_parts": "everything"}, 400, "train_parts"),
             (_App(labelled=False), "sammed3d", {}, 400, "no final labels")]
    for app, model, params, status, words in cases:
        with pytest.raises(HTTPException) as e:
            check_train_request(app, model, params)
        assert e.value.status_code == status and words in e.value.detail, (params, e.value.detail)


def test_unknown_scoring_method_is_404():
    check_scoring_request(_App(), "uncertainty")
    with pytest.raises(HTTPException) as e:
        check_scoring_request(_App(), "nope")
    assert e.value.status_code == 404 and "uncertainty" in e.value.detail
