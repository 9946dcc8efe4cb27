"""SAM-Med3D (clicks): the served weights, the engine, the click task, fine-tuning and active learning.

    config = SAMMed3DConfig()
    config.init("sammed3d", model_dir, conf, None, volumes=shared_volumes(conf))  # builds the engine
    engine, weights = config.served()  # SegmentationEngine, lib.weights.SAMMed3DWeights (frozen)

--conf options read here: checkpoint, checkpoint_sha256, weights_url, download, download_timeout,
allow_random_weights, model_version, versions_dir (lib.weights / lib.versions choose the file),
device, precision, click_mode, refine (+ refine_band, refine_gamma, refine_factor, refine_fine_band,
refine_full_res_max_voxels), prior_flood (auto | on | off: the walled region of the clicked intensity, for
large structures), prior_flood_labels (segment names that get it per request), prior_fine (auto | on | off:
a small walled structure's 1.5 mm region), local_update (auto | off | monotone | piece: how a later click
changes the mask), plain_region and plain_region_merge (auto | on | off: lib.session.plain_region), atlas_prior
(auto | off) and atlas_wait (lib.session.atlas_prior), max_crops, modality, al_* and scoring_threads (active learning).
The hot-swap watcher (lib.versions.LiveModelWatcher) is built here and passed to whoever needs the
live version: the scoring methods and strategies (constructor argument), the infer task (a callable
returning the current weights) and the app (`watcher`, polled before every click and /info).
"""
from __future__ import annotations

import logging
from typing import Dict, Tuple

import torch
from monailabel.interfaces.config import TaskConfig

from lib.infers import SAMMed3DInfer
from lib.model import CheckpointError, build_sam_med3d, load_checkpoint, model_click_mode, model_refine
from lib.model.flood_region import air_threshold_of, describe_flood, switch_flood
from lib.model.geodesic_graph import warm_up as warm_up_geodesics
from lib.session.fine_region import resolve_fine
from lib.session.local_update import resolve_local
from lib.session.atlas_prior import prefit
from lib.session.plain_region import resolve_region
from lib.session import DEFAULT_CLICK_MODE, SegmentationEngine
from lib.session.volume_cache import VolumeCache
from lib.util import parse_bool
from lib.versions import LiveModelWatcher, resolve_served_weights
from lib.weights import SAMMed3DWeights, WeightsError

from .options import al_combine, device, none_if_auto, number, refine, startup_check, stop_startup

logger = logging.getLogger(__name__)

SCORE_METHODS = ("uncertainty", "diversity", "combined")


class SAMMed3DConfig(TaskConfig):
    def init(self, name: str, model_dir: str, conf: Dict[str, str], planner=None, volumes: VolumeCache = None,
             **kwargs):
        """Resolve, load and wrap the weights; any failure stops start-up with a clear message."""
        super().init(name, model_dir, conf, planner, volumes=volumes, **kwargs)
        self.engine, first, (store, served, base) = build_engine(conf, model_dir, volumes)
        self.store = store
        flood = conf.get("prior_flood", "auto")  # a hot-swapped or fine-tuned version gets the same flood
        self.serve_as = lambda m: switch_flood(m, flood)
        self.watcher = LiveModelWatcher(store, self.engine, first, base, served, prepare=self.serve_as)
        self.al_combine = startup_check(al_combine, conf)  # combined score's rule (docs/activelearning.md)

    @property
    def weights(self) -> SAMMed3DWeights:
        """The weights served now (a hot swap replaces the description)."""
        return self.watcher.weights

    def served(self) -> Tuple[SegmentationEngine, SAMMed3DWeights]:
        return self.engine, self.weights

    def prefit(self, image_path: str):
        """The atlas prior's fit of an image the annotator opens next, started in the background (or None)."""
        return prefit(self.engine.region, self.engine.volumes, image_path, self.engine.modality)

    def infer(self) -> SAMMed3DInfer:
        w = self.weights
        loud = " -- RANDOM WEIGHTS, masks are meaningless (allow_random_weights)" if w.is_random else ""
        desc = f"SAM-Med3D interactive 3D segmentation; weights: {w.source} {w.model_version}{loud}"
        flood_labels = [n for n in self.conf.get("prior_flood_labels", "").split(",") if n.strip()]
        return SAMMed3DInfer(self.engine, lambda: self.watcher.weights, desc, flood_labels)

    def trainer(self):
        from lib.trainers.task import SAMMed3DTrainTask

        # the live version is LIVE.json's (the serving process follows it), not a start-up pin
        conf = {k: v for k, v in self.conf.items() if k != "model_version"}
        return SAMMed3DTrainTask(self.store, lambda: resolve_served_weights(conf, self.model_dir, False)[:2],
                                 live_model=lambda: self.engine.runner.model, prepare=self.serve_as)

    def strategy(self):
        # active learning (lib/activelearning, docs/activelearning.md)
        from lib.activelearning.strategies import ScoreStrategy, scoring_trigger

        timeout, weight = float(self.conf.get("al_timeout", 3600)), float(self.conf.get("al_weight", 0.5))
        trigger = scoring_trigger()
        return {m: ScoreStrategy(m, self.watcher.live_version, trigger, timeout, weight, combine=self.al_combine)
                for m in SCORE_METHODS}

    def scoring_method(self):
        from lib.activelearning.scoring import DEFAULTS, ActiveLearningScorer, SAMMed3DScoring

        # --conf al_<option> (n_jitter, sigma, max_prompts, feature_crops, weight) and scoring_threads
        opts = {k: type(DEFAULTS[k])(self.conf[f"al_{k}"]) for k in DEFAULTS if f"al_{k}" in self.conf and k != "flips"}
        opts["threads"] = int(self.conf.get("scoring_threads", DEFAULTS["threads"]))
        scorer = ActiveLearningScorer(self.engine, self.watcher.live_version, opts)
        return {m: SAMMed3DScoring(scorer, m) for m in SCORE_METHODS}


def build_engine(conf: Dict[str, str], model_dir: str, volumes: VolumeCache = None):
    """-> (SegmentationEngine, SAMMed3DWeights, (VersionStore, served WeightsChoice, base WeightsChoice))."""
    try:
        choice, base, store = resolve_served_weights(conf, model_dir)
        if choice.is_random:
            torch.manual_seed(0)  # reproducible, but still meaningless
            model, version = build_sam_med3d(None), "random-seed0"
        else:
            model, ckpt = load_checkpoint(choice.path, map_location="cpu")
            # the file's hash makes the version unique even when two checkpoints share a name
            version = f"{ckpt.get('version') or choice.source}@{choice.sha256[:12]}"
        # the walled region of the clicked intensity (large structures): the model's unless --conf prior_flood says
        flood = switch_flood(model, conf.get("prior_flood", "auto"))
        # a click in a small walled structure (a lesion): its 1.5 mm region, unless --conf prior_fine says
        fine = resolve_fine(conf.get("prior_fine", "auto"), getattr(model, "config", None))
        # how a later click changes the mask (only adds / only removes), unless --conf local_update says
        local = resolve_local(conf.get("local_update", "auto"), getattr(model, "config", None))
        # a click the prior answers with its plain box competition: that region on the stored grid (--conf plain_region)
        # a brain MR click in a deep nucleus: the registered atlas's (--conf atlas_prior auto|off; the fit runs in the
        # background, a label clicked before its volume's fit is answered as before: --conf atlas_wait true waits)
        region = resolve_region(conf.get("plain_region", "auto"), getattr(model, "config", None),
                                getattr(model, "prior", None) is not None, conf.get("plain_region_merge", "auto"),
                                conf.get("atlas_prior", "auto"), parse_bool(conf.get("atlas_wait"), "atlas_wait", False))
        dev = device(conf.get("device", "auto"))
        precision = conf.get("precision", "fp32").strip().lower()
        engine = SegmentationEngine(
            model,
            version,
            device=dev,
            cache_bytes=int(number(conf, "cache_mb", 2048) * (1 << 20)),  # only when no shared cache is given
            modality=none_if_auto(conf.get("modality")),
            # a model trained on its click history (ClickUNet3D with geodesic maps) says so in its config
            click_mode=conf.get("click_mode", model_click_mode(model) or DEFAULT_CLICK_MODE),
            precision=None if precision in ("fp32", "float32", "") else precision,
            max_crops=int(number(conf, "max_crops", 8)),
            volumes=volumes,
            # image-aware post-processing: what the model's config asks for unless --conf refine says
            refine=refine(conf, model_refine(model)),
            fine=fine,
            local=local,
            region=region,
        )
    except (WeightsError, CheckpointError, ValueError) as e:
        raise stop_startup(e) from None
    warm_up_geodesics()  # the compiled shortest-path kernel (0.2 s from numba's cache, ~1.5 s to compile): not in a click
    weights = SAMMed3DWeights(
        source=choice.source,
        path=choice.path,
        sha256=choice.sha256,
        model_version=version,
        device=str(dev),
        precision=precision,
        click_mode=engine.click_mode,
        refine="none" if engine.refine is None else engine.refine.describe(),
        prior_flood=describe_flood(model, flood, air_threshold_of(model)),
        prior_fine="none" if fine is None else fine.describe(),
        local_update="none" if local is None else local.describe(),
        plain_region="none" if region is None else region.describe(),
        tried=tuple(choice.tried),
        version_name=version.split("@")[0] if choice.source == "version" else None,
        versions_dir=store.folder,
    )
    logger.info(f"SAM-Med3D weights live: {choice.describe()}; version {version}; device {dev}")
    if choice.is_random:
        logger.warning("=" * 20 + " SERVING RANDOM WEIGHTS (allow_random_weights): masks are meaningless " + "=" * 20)
    return engine, weights, (store, choice, base)
