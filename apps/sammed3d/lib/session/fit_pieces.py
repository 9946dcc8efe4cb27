"""Work on a volume's atlas fit that a label's next click may need, made once per (fit, key): where it is first asked
for, or on the atlas band's background thread while the annotator looks at an answer (the atlas prior's hemisphere
cortex after a first click in cortex, the other hemisphere's white matter after a first white matter answer), so that
the click asking for it finds it made.

    FitPieces(keep=4).get(fit, key, make, background=False) -> Future of make()
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Callable, Hashable

from ..util import process_threads


class FitPieces:
    """make()'s result per (fit, key), the newest `keep` kept (a hemisphere's piece is a few MB to tens of MB)."""

    def __init__(self, keep: int = 4):
        self.keep, self._jobs, self._lock = keep, OrderedDict(), threading.Lock()

    def get(self, fit, key: Hashable, make: Callable, background: bool = False) -> Future:
        """The job making `key` on the volume of `fit`: started here (`background`: on the atlas band's thread, the
        caller goes on; else run now) unless it was started before for the same fit object."""
        with self._lock:
            hit = self._jobs.get((id(fit), key))
            mine = hit is None or hit[0] is not fit  # a refit of the volume is a new fit
            if mine:
                hit = self._jobs[(id(fit), key)] = (fit, Future())
                while len(self._jobs) > self.keep:
                    self._jobs.popitem(last=False)
        job = hit[1]

        def run():
            try:
                job.set_result(make())
            except BaseException as e:  # the caller's .result() raises it
                job.set_exception(e)

        if mine and background:
            process_threads("atlas-band", 1).submit(run)
        elif mine:
            run()
        return job
