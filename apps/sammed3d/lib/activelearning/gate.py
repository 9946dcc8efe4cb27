"""Background scoring yields to interactive clicks (issue 17, item 3).

A click's encoder (a first click on a volume) runs two OpenMP threads that wait for each other at
every barrier, so a scoring process that gets any time slice on either core slows the click, whatever
its nice value (docs/benchmarks.md, "Clicks while active-learning scoring runs"). So while a click is
being served, scoring does not run at all:

* the infer tasks (lib/infers) serve each click inside `CLICKS.serving()`, which counts the clicks in
  flight in this process;
* on the first click in flight the gate stops (SIGSTOP) every scoring subprocess MONAI Label is running
  for this server (its own children, `monailabel.utils.async_tasks.utils.background_processes["scoring"]`)
  whose request asks to yield (request option `yield`, default `--conf al_yield 1`, which the server's
  scorer passes on through `CLICKS.configure(default_yield=...)`);
* when the last click has left and no new one came for `quiet` seconds (default 0.075: a response on
  its way, the next click of a quick series), they continue (SIGCONT);
* bounded: a scoring process is never held longer than `max_pause` seconds in one go (default 60;
  overlapping clicks of several annotators must not starve it). It then runs until the clicks in
  flight drop to none once. Leaving the gate is in a `finally`, so a click that raises resumes
  scoring like any other; the server resumes everything at exit.
* scoring run in the server's own process (POST /scoring?run_sync=true) cannot be stopped by a
  signal; its loop calls `CLICKS.wait_idle()` between prompts and volumes instead (in the scoring
  subprocess nothing is ever in flight, so that call returns at once).

Stopping a process is safe here because the region a click holds the gate for (the infer task's
call: parse, engine, label file) takes no lock the scoring process could hold (the datastore's file
lock is taken after the task returns, and by then the resume timer is running in its own thread).
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import threading
import time
from typing import Callable, Dict, Iterator, Optional

logger = logging.getLogger(__name__)

DEFAULT_QUIET = 0.075
DEFAULT_MAX_PAUSE = 60.0


def truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    return bool(value)


def monailabel_scoring_pids(default_yield: bool) -> Dict[int, str]:
    """{pid: task id} of the scoring subprocesses MONAI Label runs for this server now (alive ones
    whose request's `yield` option, else `default_yield`, is on)."""
    try:
        from monailabel.utils.async_tasks import utils as au
    except Exception:  # no MONAI Label: nothing to pause
        return {}
    procs = dict(au.background_processes.get("scoring") or {})
    requests = {t.get("id"): t.get("request") or {} for t in list(au.background_tasks.get("scoring") or [])}
    out = {}
    for task_id, proc in procs.items():
        if proc.poll() is not None:  # exited (and reaped: its pid may be reused)
            continue
        if truthy(requests.get(task_id, {}).get("yield", default_yield)):
            out[int(proc.pid)] = str(task_id)
    return out


def send(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class ClickGate:
    """Counts the clicks in flight; stops the background scoring processes while any is.

    targets() -> {pid: name} of the processes to hold; pause(pid) / resume(pid) signal one of them
    (SIGSTOP / SIGCONT by default). All three are injectable for tests.
    """

    def __init__(self, targets: Optional[Callable[[], Dict[int, str]]] = None,
                 pause: Optional[Callable[[int], bool]] = None, resume: Optional[Callable[[int], bool]] = None,
                 quiet: float = DEFAULT_QUIET, max_pause: float = DEFAULT_MAX_PAUSE, enabled: bool = True):
        self.default_yield = True
        self.targets = targets or (lambda: monailabel_scoring_pids(self.default_yield))
        self.pause = pause or (lambda pid: send(pid, signal.SIGSTOP))
        self.resume = resume or (lambda pid: send(pid, signal.SIGCONT))
        self.quiet = float(quiet)
        self.max_pause = float(max_pause)
        self.enabled = bool(enabled)
        self._cond = threading.Condition(threading.Lock())
        self._inflight = 0
        self._last_left = -1e18  # monotonic time the last click left
        self._paused: Dict[int, str] = {}
        self._paused_since: Optional[float] = None
        self._starved = False  # max_pause reached: no new pause until the clicks drop to none
        self._timer: Optional[threading.Timer] = None
        self._watchdog: Optional[threading.Timer] = None
        self.stats = {"clicks": 0, "pauses": 0, "resumes": 0, "forced": 0}

    def configure(self, enabled: Optional[bool] = None, default_yield: Optional[bool] = None,
                  quiet: Optional[float] = None, max_pause: Optional[float] = None) -> "ClickGate":
        with self._cond:
            if enabled is not None:
                self.enabled = bool(enabled)
            if default_yield is not None:
                self.default_yield = bool(default_yield)
            if quiet is not None:
                self.quiet = max(0.0, float(quiet))
            if max_pause is not None:
                self.max_pause = max(0.0, float(max_pause))
        return self

    # ------------------------------------------------------------------ click side
    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def paused(self) -> Dict[int, str]:
        with self._cond:
            return dict(self._paused)

    def enter(self) -> int:
        """A click starts; returns how many scoring processes are held for it."""
        with self._cond:
            self._inflight += 1
            self.stats["clicks"] += 1
            self._cancel_timer()
            if self.enabled and not self._starved:
                self._pause_targets()
            return len(self._paused)

    def leave(self) -> None:
        """A click is done (answered or failed)."""
        with self._cond:
            self._inflight = max(0, self._inflight - 1)
            if self._inflight:
                return
            self._last_left = time.monotonic()
            self._starved = False
            self._cond.notify_all()
            if self._paused:
                self._cancel_timer()
                self._timer = _daemon_timer(self.quiet, self._quiet_elapsed)

    @contextlib.contextmanager
    def serving(self) -> Iterator[int]:
        """with CLICKS.serving() as held: ... (held: scoring processes stopped for this click)."""
        try:
            held = self.enter()
        except Exception as e:  # pausing must never fail a click
            logger.warning(f"click gate: {e}")
            held = 0
        try:
            yield held
        finally:
            self.leave()

    # ------------------------------------------------------------------ in-process scoring side
    def wait_idle(self, timeout: Optional[float] = None) -> float:
        """Block while a click is in flight in this process, or left less than `quiet` s ago; at most
        `timeout` s (default max_pause). Returns the seconds waited."""
        t0 = time.monotonic()
        limit = t0 + (self.max_pause if timeout is None else float(timeout))
        with self._cond:
            while self.enabled:
                now = time.monotonic()
                if now >= limit:
                    break
                if self._inflight:
                    self._cond.wait(limit - now)
                    continue
                rest = self._last_left + self.quiet - now
                if rest <= 0:
                    break
                self._cond.wait(min(rest, limit - now))
        return time.monotonic() - t0

    # ------------------------------------------------------------------ internals (under _cond)
    def _pause_targets(self) -> None:
        try:
            targets = self.targets()
        except Exception as e:
            logger.warning(f"click gate: cannot list scoring processes: {e}")
            return
        for pid, name in targets.items():
            if pid in self._paused or pid == os.getpid():
                continue
            if self.pause(pid):
                self._paused[pid] = name
                self.stats["pauses"] += 1
        if self._paused and self._paused_since is None:
            self._paused_since = time.monotonic()
            if self.max_pause > 0:
                self._watchdog = _daemon_timer(self.max_pause, self._max_pause_elapsed)

    def _resume_all(self) -> None:
        for pid in list(self._paused):
            self.resume(pid)
            self.stats["resumes"] += 1
        self._paused.clear()
        self._paused_since = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _quiet_elapsed(self) -> None:
        with self._cond:
            if self._inflight == 0 and time.monotonic() - self._last_left >= self.quiet - 1e-3:
                self._timer = None
                self._resume_all()

    def _max_pause_elapsed(self) -> None:
        with self._cond:
            if self._paused_since is None or time.monotonic() - self._paused_since < self.max_pause - 1e-3:
                return
            logger.info(f"click gate: scoring held {self.max_pause:.0f} s with clicks still in flight; "
                        f"it runs until they stop")
            self.stats["forced"] += 1
            self._starved = self._inflight > 0
            self._resume_all()

    def resume_all(self) -> None:
        """Let every held process continue now (server exit, tests)."""
        with self._cond:
            self._cancel_timer()
            self._resume_all()


def _daemon_timer(seconds: float, fn) -> threading.Timer:
    t = threading.Timer(seconds, fn)
    t.daemon = True
    t.start()
    return t


CLICKS = ClickGate()  # the server's one gate: lib/infers serve every click inside CLICKS.serving()
atexit.register(CLICKS.resume_all)

