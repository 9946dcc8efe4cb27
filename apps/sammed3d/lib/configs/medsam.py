"""MedSAM (boxes): the LiteMedSAM weights, the engine and the box task, when served.

    config = MedSAMConfig()
    config.init("medsam_box", model_dir, conf, None, volumes=shared)  # nothing loaded yet
    task = config.infer()  # MedSAMBoxInfer, or {} when not served
    engine, weights = config.served()  # MedSAMEngine, lib.weights.MedSAMWeights (frozen); None, None if not

--conf options read here: medsam auto (default: serve when the weights are found) | true (required:
missing weights stop start-up) | false; medsam_checkpoint PATH; medsam_cache_mb N (default 1024);
medsam_encoder fp32 (default) | int8 (dynamically quantised Linear layers: faster encoding, slightly
different masks; docs/medsam.md); medsam_encode_batch N (default 2: slices per encoder call during
propagation; same masks); medsam_slice_stride k (default 2: every 2nd slice of a box is encoded and
decoded and the others are filled from their two neighbours, about half the encodings: a 30-slice box
in 17.7 s instead of 33.6 s on the 2-core CPU, evaluation row within 0.02 (docs/medsam.md); 1: every
slice, the original protocol); device (shared with SAM-Med3D).
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple

from monailabel.interfaces.config import TaskConfig

from lib.infers.medsam_box import MedSAMBoxInfer
from lib.medsam import MedSAMEngine, MedSAMWeightsError, load_lite_medsam, locate_weights
from lib.model.medsam import ENCODER_MODES, quantize_encoder
from lib.session.volume_cache import VolumeCache
from lib.util import parse_bool
from lib.weights import MedSAMWeights

from .options import device as parse_device

logger = logging.getLogger(__name__)

# Issue 17: stride 2 meets the 20 s box target on the 2-core CPU with the evaluation row's mean Dice
# within 0.02 at 2, 5 and 10 actions (largest single-structure drop 0.018); docs/medsam.md.
DEFAULT_SLICE_STRIDE = 2


class MedSAMConfig(TaskConfig):
    def init(self, name: str, model_dir: str, conf: Dict[str, str], planner=None, volumes: VolumeCache = None,
             **kwargs):
        super().init(name, model_dir, conf, planner, volumes=volumes, **kwargs)
        self.task: Optional[MedSAMBoxInfer] = None

    def served(self) -> Tuple[Optional[MedSAMEngine], Optional[MedSAMWeights]]:
        return (self.task.engine, self.task.served_weights) if self.task is not None else (None, None)

    def infer(self):
        """The box task, built on first call (the weights are loaded then), or {} when not served."""
        if self.task is None:
            self.task = build_medsam_task(self.conf, device=parse_device(self.conf.get("device", "auto")),
                                          volumes=self.kwargs.get("volumes"))
        return {} if self.task is None else self.task

    def trainer(self):
        return None  # LiteMedSAM is served as released (its pseudo-labels train SAM-Med3D: lib.medsam.teacher)


def build_medsam_task(conf: Dict[str, str], device: str = "cpu",
                      volumes: Optional[VolumeCache] = None) -> Optional[MedSAMBoxInfer]:
    """The task, or None when the weights are absent and not required (see the module docstring)."""
    mode = str(conf.get("medsam", "auto")).strip().lower()
    try:
        required = None if mode in ("", "auto") else parse_bool(mode, "--conf medsam", error=RuntimeError)
    except RuntimeError:
        raise RuntimeError(f"--conf medsam must be auto, true or false, got {mode!r:.40}") from None
    if required is False:
        return None
    encoder = str(conf.get("medsam_encoder", "fp32")).strip().lower()
    if encoder not in ENCODER_MODES:
        raise RuntimeError(f"--conf medsam_encoder must be one of {list(ENCODER_MODES)}, got {encoder!r}")
    try:
        stride = int(conf.get("medsam_slice_stride", DEFAULT_SLICE_STRIDE))
    except ValueError:
        raise RuntimeError(f"--conf medsam_slice_stride must be a whole number, got {conf.get('medsam_slice_stride')!r}") from None
    if stride < 1:
        raise RuntimeError(f"--conf medsam_slice_stride must be >= 1, got {stride}")
    try:
        loc = locate_weights(conf.get("medsam_checkpoint"))
    except MedSAMWeightsError as e:
        if required:
            raise RuntimeError(f"MedSAM box task cannot start: {e}") from None
        logger.warning(f"MedSAM box task not served: {e}")
        return None
    model = load_lite_medsam(loc.path, device=device)
    version = f"lite_medsam@{(loc.sha256 or 'conf')[:12]}"
    if encoder != "fp32":
        if device != "cpu":
            raise RuntimeError(f"--conf medsam_encoder {encoder} runs on the CPU only (device {device})")
        quantize_encoder(model, encoder)
        version += f"+{encoder}"
    try:
        batch = int(conf.get("medsam_encode_batch", 2))
    except ValueError:
        raise RuntimeError(f"--conf medsam_encode_batch must be a whole number, got {conf.get('medsam_encode_batch')!r}") from None
    if batch < 1:
        raise RuntimeError(f"--conf medsam_encode_batch must be >= 1, got {batch}")
    if stride > 1:
        version += f"+stride{stride}"
    engine = MedSAMEngine(model, version, device=device, encode_batch=batch, volumes=volumes, slice_stride=stride,
                          cache_bytes=int(float(conf.get("medsam_cache_mb", 1024)) * (1 << 20)))
    weights = MedSAMWeights(source=loc.source, path=loc.path, sha256=loc.sha256, model_version=version,
                            device=device, encoder=encoder)
    desc = f"MedSAM (LiteMedSAM) 3D box: slice-by-slice from the box centre; weights {loc.source} {version}"
    return MedSAMBoxInfer(engine, weights, desc)
