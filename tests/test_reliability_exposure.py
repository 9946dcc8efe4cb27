"""Who can reach the server: loopback by default, a warning otherwise, the CORS policy in the log."""
import logging

from lib.guards.exposure import bound_host, warn_if_exposed


def test_bound_host_is_read_from_the_command_line():
    assert bound_host(["monailabel", "start_server", "--app", "a", "--host", "127.0.0.1"]) == "127.0.0.1"
    assert bound_host(["monailabel", "start_server", "--app", "a"]) == "0.0.0.0"  # MONAI Label's own default
    assert bound_host(["x", "start_server", "-i", "10.0.0.5"]) == "10.0.0.5"
    assert bound_host(["python", "-m", "pytest"]) is None


def test_any_address_but_loopback_is_warned_about(caplog):
    with caplog.at_level(logging.INFO, logger="lib.guards.exposure"):
        assert "SERVER EXPOSED" in warn_if_exposed(["m", "start_server", "--host", "0.0.0.0"])
        assert "SERVER EXPOSED" in warn_if_exposed(["m", "start_server"])
        quiet = warn_if_exposed(["m", "start_server", "--host", "127.0.0.1"])
    assert "only (this machine)" in quiet and "CORS allows" in quiet
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and "README" in warned[0].getMessage()


def test_the_real_server_logs_its_exposure(reliability_server):
    log = reliability_server.log()
    assert "listening on 127.0.0.1 only" in log and "CORS allows" in log
    assert "SERVER EXPOSED" not in log


def test_serve_sh_binds_loopback_and_closes_cors():
    import os

    text = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "serve.sh")).read()
    assert '--host "${HOST:-127.0.0.1}"' in text
    assert "MONAI_LABEL_CORS_ORIGINS" in text
