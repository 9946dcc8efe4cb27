"""lib.util (the one true/false parser and file hash) and the one CheckpointError hierarchy."""
from __future__ import annotations

import hashlib

import pytest

from lib.configs.medsam import build_medsam_task
from lib.util import parse_bool, sha256_file
from lib.weights import WeightsError, resolve_weights


@pytest.mark.parametrize("value,expected", [
    (True, True), (False, False), (1, True), (0, False), (1.0, True),
    ("true", True), (" TRUE ", True), ("1", True), ("yes", True), ("on", True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("off", False),
])
def test_parse_bool_spellings(value, expected):
    assert parse_bool(value, "x") is expected


def test_parse_bool_empty_and_errors():
    assert parse_bool(None, "x", default=False) is False and parse_bool("  ", "x", default=True) is True
    for bad in (None, "", 2, "maybe", [1]):
        with pytest.raises(ValueError, match="x must be true or false"):
            parse_bool(bad, "x")
    with pytest.raises(KeyError):
        parse_bool("maybe", "x", error=KeyError)
    with pytest.raises(ValueError) as e:
        parse_bool("y" * 100, "x")
    assert len(str(e.value)) < 80  # the echoed value is cut


def test_sha256_file(tmp_path):
    p = tmp_path / "f.bin"
    data = bytes(range(256)) * 5000
    p.write_bytes(data)
    assert sha256_file(str(p)) == sha256_file(str(p), chunk=7) == hashlib.sha256(data).hexdigest()


def test_one_checkpoint_error_hierarchy():
    from lib.medsam import CheckpointError as MedSAMCheckpointError
    from lib.model import CheckpointError

    assert issubclass(MedSAMCheckpointError, CheckpointError)
    assert issubclass(MedSAMCheckpointError, RuntimeError) and issubclass(CheckpointError, ValueError)


def test_conf_flags_are_strict(tmp_path):
    with pytest.raises(WeightsError, match="--conf download must be true or false"):
        resolve_weights({"download": "maybe"}, str(tmp_path))
    with pytest.raises(RuntimeError, match="--conf medsam must be auto, true or false"):
        build_medsam_task({"medsam": "maybe"})
    assert build_medsam_task({"medsam": "off"}) is None


def test_process_threads_is_one_pool_per_name_and_process(monkeypatch):
    """The same pool for a name in one process; another name, another pool; a forked child (another pid) gets
    a new one instead of the parent's, whose threads it does not have."""
    import os

    from lib.util import process_threads

    a = process_threads("test-a", 2)
    assert process_threads("test-a", 2) is a and process_threads("test-b", 1) is not a
    assert a.submit(lambda: 41 + 1).result() == 42
    pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: pid + 1)
    assert process_threads("test-a", 2) is not a
