"""lib/infers/http_guard.py: the checks in front of MONAI Label's /infer (server test: test_app_server)."""
import pytest
from fastapi import FastAPI, HTTPException

from lib.infers.http_guard import ROUTE_NAME, install_infer_guard, parse_params_field, require_input


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
    assert install_infer_guard(None) is False
