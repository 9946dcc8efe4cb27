"""What every interactive task of the app shares: a class-agnostic 3D deepgrow task around an engine.

Both tasks (SAM-Med3D clicks, MedSAM boxes) are valid when their engine exists, and /info names the
model version that answers and the weights it came from.

Every subclass's `__call__` (one click or box) runs inside the click gate (lib/activelearning/gate.py):
a background scoring subprocess is stopped while it is served, and its result JSON says how many were
(`scoring_held`).
"""
import functools
import time
from typing import Any, Dict

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib.activelearning.gate import CLICKS


def served_in_gate(call):
    """Wrap an infer task's __call__: background scoring yields while it runs (gate.py)."""
    if getattr(call, "_in_click_gate", False):
        return call

    @functools.wraps(call)
    def wrapper(self, request):
        with CLICKS.serving() as held:
            out, result = call(self, request)
        if isinstance(result, dict):
            result["scoring_held"] = int(held)
        return out, result

    wrapper._in_click_gate = True
    return wrapper


class EngineInferTask(InferTask):
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__:
            cls.__call__ = served_in_gate(cls.__dict__["__call__"])

    def __init__(self, engine, weights, description: str, config: Dict[str, Any]):
        """weights: the served weights' frozen description (lib.weights.ServedWeights), a callable
        returning the current one (follows hot swaps: LiveModelWatcher), or a plain dict."""
        super().__init__(
            type=InferType.DEEPGROW,  # what the Slicer and OHIF plugins send clicks/ROIs to
            labels=None,  # class-agnostic: any segment name the client sends is a label
            dimension=3,
            description=description,
            config=config,
        )
        self.engine = engine
        self._weights = weights

    @property
    def served_weights(self):
        """The served weights' description now (a ServedWeights; a dict where a test passed one)."""
        return self._weights() if callable(self._weights) else self._weights

    @property
    def weights(self) -> Dict[str, Any]:
        """What /info shows about the live checkpoint (a fresh dict)."""
        w = self.served_weights
        return w.info() if hasattr(w, "info") else dict(w)

    def is_valid(self) -> bool:
        return self.engine is not None

    def info(self) -> Dict[str, Any]:
        info = super().info()
        info["model_version"] = self.engine.model_version
        info["weights"] = self.weights
        return info


def common_result(label: str, timings: Dict[str, float], t_write: float, t0: float, mask: np.ndarray,
                  cache_hit: bool, model_version: str) -> Dict[str, Any]:
    """The result JSON fields both tasks report.

    timings: the engine's per-stage seconds (its own "total" is replaced by the request's);
    t_write / t0: perf_counter() when writing the label file began / when the request arrived.
    """
    latencies = {k: round(float(v), 4) for k, v in timings.items() if k != "total"}
    latencies["write"] = round(time.perf_counter() - t_write, 4)
    latencies["total"] = round(time.perf_counter() - t0, 4)
    return {
        "label": label,
        "label_names": {label: 1},
        "latencies": latencies,
        "cache_hit": bool(cache_hit),
        "model_version": model_version,
        "voxels": int(np.count_nonzero(mask)),
    }
