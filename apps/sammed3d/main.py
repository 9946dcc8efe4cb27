"""MONAI Label app serving SAM-Med3D (promptable 3D segmentation) to 3D Slicer and OHIF.

    monailabel start_server --app apps/sammed3d --studies sample-data/studies [--conf KEY VALUE ...]

--conf options (all optional; see docs/app.md):
  checkpoint PATH          weights to serve (released sam_med3d_turbo.pth or one of the app's own)
  checkpoint_sha256 HEX    refuse the checkpoint (or download) unless its SHA-256 matches
  weights_url URL          where to download the released file from (default: its Hugging Face URL)
  download true|false      allow that download (default true; it is skipped quickly when offline)
  download_timeout S       network timeout of the download in seconds (default 10)
  allow_random_weights     serve random weights when nothing is found (testing only; /info says so)
  device auto|cpu|cuda[:N] where the model runs (default auto: cuda if present)
  precision fp32|bf16|fp16 encoder precision (default fp32; reduced precision is meant for CUDA)
  cache_mb N               memory bound of the volume/embedding cache (default 2048)
  modality auto|CT|MR|...  CT gets the [-1000, 1000] clamp; auto decides per image (default auto)
  click_mode all|newest    clicks sent to the decoder (default: the model config's, else the session's measured best)
  max_crops N              crops one label may grow to for large structures (default 8)
  medsam auto|true|false   serve the MedSAM box task (default auto: when lite_medsam.pth is found)
  medsam_checkpoint PATH   lite_medsam.pth (default: apps/sammed3d/model/medsam/, fetched by setup)
  ohif_labels "a,b,c"      segment names /info offers (OHIF lists only these for include clicks;
                           default lesion,organ,tumor,vessel,bone; any name works from Slicer)
  model_version vNNNN|base serve a published fine-tuned version (rollback) or the base checkpoint
                           (default: the live version in versions_dir, see lib/versions.py)
  versions_dir DIR         where fine-tuned versions are published (default model/versions)

Kept thin on purpose: weights choice lives in lib/weights.py, geometry and caching in lib/session,
request handling in lib/infers.
"""
import logging
import os
from typing import Dict

import torch
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

from lib.dicom import advertise_segments, install_ohif_asset_route, ohif_segment_names
from lib.infers import SAMMed3DInfer
from lib.guards import configure_limits, image_uri_or_404, install_guards, unknown_task_404
from lib.infers.medsam_box import build_medsam_task
from lib.model import CheckpointError, build_sam_med3d, load_checkpoint
from lib.session import DEFAULT_CLICK_MODE, SegmentationEngine
from lib.versions import LiveModelWatcher, resolve_served_weights
from lib.weights import WeightsError

logger = logging.getLogger(__name__)

MODEL_NAME = "sammed3d"
MEDSAM_NAME = "medsam_box"


class SAMMed3DApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        conf = conf or {}
        # The engine must exist before super().__init__, which calls init_infers().
        self.model_dir = os.path.join(app_dir, "model")
        self.weights_info, self.engine, self._versions = _build_engine(conf, self.model_dir)
        store, served, base = self._versions
        self._live_watcher = LiveModelWatcher(store, self.engine, self.weights_info, base, served)
        # Segment names for /info: OHIF offers only these for include clicks (docs/dicom.md).
        self.segment_names = _startup_check(ohif_segment_names, conf)
        self.al_combine = _startup_check(_al_combine, conf)  # combined score's rule (docs/activelearning.md)
        _startup_check(configure_limits, conf)  # --conf max_upload_mb / max_voxels (docs/reliability.md)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="SAM-Med3D",
            description="Promptable 3D segmentation (SAM-Med3D): click on any structure, in any 3D volume",
            version="1.0",
        )
        install_ohif_asset_route()  # MONAI Label's /ohif/ route mangles nested asset paths
        install_guards()  # 4xx, not MONAI Label's 500 (or a 200 for a broken label), for user errors

    def init_infers(self) -> Dict[str, InferTask]:
        w = self.weights_info
        loud = " -- RANDOM WEIGHTS, masks are meaningless (allow_random_weights)" if w["source"] == "random" else ""
        desc = f"SAM-Med3D interactive 3D segmentation; weights: {w['source']} {w['model_version']}{loud}"
        task = SAMMed3DInfer(self.engine, w, desc)
        advertise_segments(task, self.segment_names)  # names only: the model stays class-agnostic
        infers = {MODEL_NAME: task}
        # MedSAM box prompts (lib/medsam): served when lite_medsam.pth is found (setup fetches it)
        medsam = build_medsam_task(self.conf, device=w["device"])
        if medsam is not None:
            advertise_segments(medsam, self.segment_names)
            infers[MEDSAM_NAME] = medsam
        return infers

    def init_trainers(self):
        from lib.trainers.task import SAMMed3DTrainTask

        # the live version is LIVE.json's (the serving process follows it), not a start-up pin
        conf = {k: v for k, v in self.conf.items() if k != "model_version"}
        return {MODEL_NAME: SAMMed3DTrainTask(self._versions[0], lambda: resolve_served_weights(conf, self.model_dir, False)[:2])}

    def init_strategies(self):
        # active learning (lib/activelearning, docs/activelearning.md); MONAI Label's own stay available
        from lib.activelearning.scoring import live_version
        from lib.activelearning.strategies import ScoreStrategy, scoring_trigger
        from monailabel.tasks.activelearning.first import First
        from monailabel.tasks.activelearning.random import Random

        timeout, weight = float(self.conf.get("al_timeout", 3600)), float(self.conf.get("al_weight", 0.5))
        trigger = scoring_trigger()
        strategies = {"random": Random(), "first": First()}
        for method in ("uncertainty", "diversity", "combined"):
            strategies[method] = ScoreStrategy(method, lambda: live_version(self), trigger, timeout, weight,
                                               combine=self.al_combine)
        return strategies

    def init_scoring_methods(self):
        from lib.activelearning.scoring import DEFAULTS, ActiveLearningScorer, SAMMed3DScoring, live_version

        # --conf al_<option> (n_jitter, sigma, max_prompts, feature_crops, weight) and scoring_threads
        opts = {k: type(DEFAULTS[k])(self.conf[f"al_{k}"]) for k in DEFAULTS if f"al_{k}" in self.conf and k != "flips"}
        opts["threads"] = int(self.conf.get("scoring_threads", DEFAULTS["threads"]))
        scorer = ActiveLearningScorer(self.engine, lambda: live_version(self), opts)
        return {m: SAMMed3DScoring(scorer, m) for m in ("uncertainty", "diversity", "combined")}

    def info(self):
        self._watcher().poll()  # /info names the live version right after a training publishes one
        meta = super().info()
        meta["weights"] = dict(self.weights_info)
        return meta

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            from lib.datastore import serialise_dicomweb_fetches

            # DICOMweb: every saved label is a new SEG series; a series is fetched once at a time
            return serialise_dicomweb_fetches(super().init_datastore())
        from lib.datastore import SafeLocalDatastore  # atomic label saves, earlier saves kept
        from monailabel.config import settings

        return SafeLocalDatastore(self.studies, extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
                                  auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                                  read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)

    def next_sample(self, request):
        strategy = request.get("strategy") or "random"
        if strategy not in self._strategies:  # MONAI Label: a plain 500
            raise unknown_task_404("strategy", strategy, self._strategies)
        return super().next_sample(request)

    def _watcher(self) -> LiveModelWatcher:
        return self._live_watcher

    def infer(self, request, datastore=None):
        self._watcher().poll()  # hot swap: the next click gets a newly published version
        # MONAI Label 0.8.5 answers an unknown model or image id with a plain 500; clients need a 404.
        model = request.get("model")
        if model not in self._infers:
            raise unknown_task_404("model", model, self._infers)
        image_uri_or_404(datastore or self.datastore(), request.get("image"))
        return super().infer(request, datastore)


def _build_engine(conf: Dict[str, str], model_dir: str):
    """Resolve, load and wrap the weights; any failure stops start-up with a clear message."""
    try:
        choice, base, store = resolve_served_weights(conf, model_dir)
        if choice.is_random:
            torch.manual_seed(0)  # reproducible, but still meaningless
            model, version = build_sam_med3d(None), "random-seed0"
        else:
            model, ckpt = load_checkpoint(choice.path, map_location="cpu")
            # the file's hash makes the version unique even when two checkpoints share a name
            version = f"{ckpt.get('version') or choice.source}@{choice.sha256[:12]}"
        device = _device(conf.get("device", "auto"))
        precision = conf.get("precision", "fp32").strip().lower()
        engine = SegmentationEngine(
            model,
            version,
            device=device,
            cache_bytes=int(_number(conf, "cache_mb", 2048) * (1 << 20)),
            modality=_none_if_auto(conf.get("modality")),
            # a model trained on its click history (ClickUNet3D with geodesic maps) says so in its config
            click_mode=conf.get("click_mode", (getattr(model, "config", None) or {}).get("click_mode", DEFAULT_CLICK_MODE)),
            precision=None if precision in ("fp32", "float32", "") else precision,
            max_crops=int(_number(conf, "max_crops", 8)),
        )
    except (WeightsError, CheckpointError, ValueError) as e:
        msg = f"SAM-Med3D app cannot start: {e}"
        logger.error(msg)
        raise RuntimeError(msg) from None
    info = {
        "source": choice.source,
        "path": choice.path,
        "sha256": choice.sha256,
        "model_version": version,
        "device": str(device),
        "precision": precision,
        "click_mode": engine.click_mode,
        "tried": choice.tried,
        "version_name": version.split("@")[0] if choice.source == "version" else None,
        "versions_dir": store.folder,
    }
    logger.info(f"SAM-Med3D weights live: {choice.describe()}; version {version}; device {device}")
    if choice.is_random:
        logger.warning("=" * 20 + " SERVING RANDOM WEIGHTS (allow_random_weights): masks are meaningless " + "=" * 20)
    return info, engine, (store, choice, base)


def _startup_check(fn, *args):
    """Run a --conf parser; a bad value stops start-up with the same clear message as the weights."""
    try:
        return fn(*args)
    except ValueError as e:
        msg = f"SAM-Med3D app cannot start: {e}"
        logger.error(msg)
        raise RuntimeError(msg) from None


def _al_combine(conf: Dict[str, str]):
    from lib.activelearning.select import COMBINE_RULES

    value = conf.get("al_combine")
    if value is not None and value not in COMBINE_RULES:
        raise ValueError(f"--conf al_combine must be one of {list(COMBINE_RULES)}, got {value!r}")
    return value


def _device(value: str) -> str:
    value = (value or "auto").strip().lower()
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--conf device {value}: CUDA is not available on this machine")
    if value != "cpu" and not value.startswith("cuda"):
        raise ValueError(f"--conf device must be auto, cpu or cuda[:N], got {value!r}")
    return value


def _number(conf: Dict[str, str], key: str, default: float) -> float:
    value = conf.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"--conf {key} must be a number, got {value!r}") from None
    if number <= 0:
        raise ValueError(f"--conf {key} must be positive, got {value!r}")
    return number


def _none_if_auto(value):
    return None if value is None or value.strip().lower() in ("", "auto") else value.strip()

