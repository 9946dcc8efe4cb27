"""The click gate (lib/activelearning/gate.py): background scoring is stopped while a click is served,
continues when the clicks pause, is never held past max_pause, and a click that raises releases it.
Fake pause/resume for the bookkeeping, real SIGSTOP/SIGCONT on a child process for the signals, and
MONAI Label's own process table for which scoring runs are held."""
import subprocess
import sys
import threading
import time

import psutil
import pytest

from lib.activelearning import gate as gate_mod
from lib.activelearning.gate import CLICKS, ClickGate, monailabel_scoring_pids
from lib.activelearning.scoring import DEFAULTS, ActiveLearningScorer
from lib.infers.engine_task import EngineInferTask


class Recorder:
    def __init__(self, pids=(101,)):
        self.pids = {p: f"task{p}" for p in pids}
        self.events = []

    def targets(self):
        return dict(self.pids)

    def pause(self, pid):
        self.events.append(("stop", pid))
        return True

    def resume(self, pid):
        self.events.append(("cont", pid))
        return True


def make(rec, **kw):
    kw.setdefault("quiet", 0.05)
    kw.setdefault("max_pause", 10.0)
    return ClickGate(rec.targets, rec.pause, rec.resume, **kw)


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def test_click_stops_scoring_and_resumes_after_quiet():
    rec = Recorder((101, 102))
    g = make(rec)
    with g.serving() as held:
        assert held == 2 and g.inflight == 1
        assert sorted(rec.events) == [("stop", 101), ("stop", 102)]
    assert g.inflight == 0
    assert g.paused  # still held for the quiet period
    assert wait_for(lambda: not g.paused)
    assert sorted(e for e in rec.events if e[0] == "cont") == [("cont", 101), ("cont", 102)]


def test_overlapping_clicks_and_a_quick_next_click_keep_it_stopped():
    rec = Recorder()
    g = make(rec, quiet=0.2)
    g.enter()
    g.enter()  # a second annotator
    g.leave()
    time.sleep(0.3)
    assert rec.events == [("stop", 101)]  # one still in flight
    g.leave()
    time.sleep(0.05)
    with g.serving():  # the next click of a quick series, inside the quiet period
        time.sleep(0.25)
        assert rec.events == [("stop", 101)]
    assert wait_for(lambda: rec.events == [("stop", 101), ("cont", 101)])
    time.sleep(0.3)
    assert rec.events == [("stop", 101), ("cont", 101)]  # resumed once, not again


def test_a_click_that_raises_releases_scoring():
    rec = Recorder()
    g = make(rec)
    with pytest.raises(RuntimeError):
        with g.serving():
            raise RuntimeError("model error")
    assert g.inflight == 0
    assert wait_for(lambda: not g.paused)
    assert rec.events == [("stop", 101), ("cont", 101)]


def test_pause_failure_never_fails_the_click():
    def broken():
        raise OSError("no process table")

    g = ClickGate(broken, lambda pid: True, lambda pid: True, quiet=0.01)
    with g.serving() as held:
        assert held == 0
    assert g.inflight == 0


def test_never_held_longer_than_max_pause():
    rec = Recorder()
    g = make(rec, max_pause=0.2)
    g.enter()
    assert wait_for(lambda: ("cont", 101) in rec.events, 3.0)  # forced, click still in flight
    assert g.stats["forced"] == 1 and not g.paused
    g.enter()  # more clicks while starved: scoring keeps running
    g.leave()
    assert rec.events == [("stop", 101), ("cont", 101)]
    g.leave()  # clicks drop to none once: the next click holds it again
    with g.serving() as held:
        assert held == 1
    assert wait_for(lambda: rec.events[-1] == ("cont", 101) and len(rec.events) == 4)


def test_disabled_gate_and_processes_that_are_gone():
    rec = Recorder()
    g = make(rec, enabled=False)
    with g.serving() as held:
        assert held == 0
    assert rec.events == []
    g = ClickGate(rec.targets, lambda pid: False, rec.resume, quiet=0.01)  # the process exited meanwhile
    with g.serving() as held:
        assert held == 0
    time.sleep(0.05)
    assert rec.events == []


def test_wait_idle_blocks_while_a_click_is_served():
    g = make(Recorder(()), quiet=0.1)
    assert g.wait_idle() < 0.05  # nothing in flight (the scoring subprocess's case)
    waited = []
    g.enter()
    t = threading.Thread(target=lambda: waited.append(g.wait_idle()))
    t.start()
    time.sleep(0.3)
    assert t.is_alive()
    g.leave()
    t.join(5)
    assert not t.is_alive() and 0.35 <= waited[0] < 2.0  # 0.3 s click + 0.1 s quiet
    g.enter()
    assert 0.15 <= g.wait_idle(timeout=0.2) < 1.0  # bounded even if the click never ends
    g.leave()


def test_real_signals_stop_and_continue_a_process():
    child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.01)"])
    try:
        g = ClickGate(lambda: {child.pid: "scoring"}, quiet=0.05)
        proc = psutil.Process(child.pid)
        with g.serving() as held:
            assert held == 1
            assert wait_for(lambda: proc.status() == psutil.STATUS_STOPPED)
        assert wait_for(lambda: proc.status() != psutil.STATUS_STOPPED)
        with pytest.raises(ValueError):
            with g.serving():
                assert wait_for(lambda: proc.status() == psutil.STATUS_STOPPED)
                raise ValueError("bad request")
        assert wait_for(lambda: proc.status() != psutil.STATUS_STOPPED)
    finally:
        child.kill()
        child.wait()


def test_monailabel_scoring_processes_and_their_yield_option(monkeypatch):
    from monailabel.utils.async_tasks import utils as au

    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(3)]
    try:
        monkeypatch.setitem(au.background_processes, "scoring", {"a": kids[0], "b": kids[1], "c": kids[2]})
        monkeypatch.setitem(au.background_tasks, "scoring", [
            {"id": "a", "request": {"method": "combined"}},
            {"id": "b", "request": {"method": "combined", "yield": 0}},
            {"id": "c", "request": {"yield": "true"}}])
        monkeypatch.setitem(au.background_processes, "train", {"t": kids[1]})  # training is never held
        assert monailabel_scoring_pids(True) == {kids[0].pid: "a", kids[2].pid: "c"}
        assert monailabel_scoring_pids(False) == {kids[2].pid: "c"}
        kids[2].kill()
        kids[2].wait()
        assert monailabel_scoring_pids(True) == {kids[0].pid: "a"}  # exited: its pid may be reused
    finally:
        for k in kids:
            k.kill()
            k.wait()


def test_scorer_passes_the_conf_default_on():
    old = CLICKS.default_yield
    try:
        ActiveLearningScorer(None, lambda: "v", {"yield": 0})
        assert CLICKS.default_yield is False
        ActiveLearningScorer(None, lambda: "v", {})
        assert CLICKS.default_yield is True and DEFAULTS["yield"] == 1
    finally:
        CLICKS.configure(default_yield=old)


def test_in_process_scoring_waits_between_units_unless_told_not_to():
    CLICKS.enter()
    try:
        t0 = time.monotonic()
        ActiveLearningScorer._yield({"yield": 0})
        assert time.monotonic() - t0 < 0.05
        threading.Timer(0.2, CLICKS.leave).start()
        t0 = time.monotonic()
        ActiveLearningScorer._yield({"yield": 1})
        assert 0.15 <= time.monotonic() - t0 < 2.0
    finally:
        wait_for(lambda: CLICKS.inflight == 0)


class FakeTask(EngineInferTask):
    def __init__(self, fail=False):
        super().__init__(None, {}, "fake", {})
        self.fail = fail
        self.seen = None

    def __call__(self, request):
        self.seen = CLICKS.inflight
        if self.fail:
            raise RuntimeError("engine failed")
        return "label.nii.gz", {"label": "x"}


def test_infer_tasks_serve_inside_the_gate(monkeypatch):
    rec = Recorder((7,))
    monkeypatch.setattr(gate_mod.CLICKS, "targets", rec.targets)
    monkeypatch.setattr(gate_mod.CLICKS, "pause", rec.pause)
    monkeypatch.setattr(gate_mod.CLICKS, "resume", rec.resume)
    task = FakeTask()
    out, result = task({})
    assert task.seen == 1 and CLICKS.inflight == 0
    assert out == "label.nii.gz" and result == {"label": "x", "scoring_held": 1}
    bad = FakeTask(fail=True)
    with pytest.raises(RuntimeError):
        bad({})
    assert CLICKS.inflight == 0
    assert wait_for(lambda: not CLICKS.paused)
    assert rec.events[-1] == ("cont", 7)
    from lib.infers.medsam_box import MedSAMBoxInfer
    from lib.infers.sammed3d import SAMMed3DInfer

    assert SAMMed3DInfer.__call__._in_click_gate and MedSAMBoxInfer.__call__._in_click_gate
