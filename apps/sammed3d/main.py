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
  cache_mb N               memory bound of the volume cache (both tasks) and embeddings (default 2048)
  modality auto|CT|MR|...  CT gets the [-1000, 1000] clamp; auto decides per image (default auto)
  click_mode all|newest    clicks sent to the decoder (default: the model config's, else the session's measured best)
  max_crops N              crops one label may grow to for large structures (default 8)
  medsam auto|true|false   serve the MedSAM box task (default auto: when lite_medsam.pth is found)
  medsam_checkpoint PATH   lite_medsam.pth (default: apps/sammed3d/model/medsam/, fetched by setup)
  prior_flood auto|on|off  one click fills a large walled tissue (lungs, liver; default auto: the model's, off)
  prior_flood_labels "a,b" segment names that get prior_flood on per click (e.g. organ,lung,liver); a request's
                           own prior_flood (Slicer's task options) wins
  prior_fine auto|on|off   a click in a small walled structure (a lesion) takes its 1.5 mm region (default
                           auto: the model's; default-v6 on)
  local_update auto|off|monotone|piece  how a later click changes the mask: monotone = an include click only
                           adds, an exclude only removes; piece = only the connected piece it lies in (default
                           auto: the model's config)
  plain_region auto|on|off where a click's answer is the prior's plain box competition, the geodesic region on
                           the stored grid instead (default auto: the model's config; default-v9 on)
  plain_region_merge auto|on|off  that region merged into the shown mask by the click update (on) or replacing
                           it (off; default auto: the model's config; default-v10 on)
  atlas_prior auto|off     a brain MR click in a deep grey nucleus, or deep in cerebral white matter, answered by
                           the registered atlas, and include clicks in cortical parcels that do not touch by their
                           hemisphere's cortex (default auto: the model's config; default-v12 nuclei, default-v14
                           nuclei and white matter, default-v15 also the cortex)
  atlas_wait true|false    a first click waits for its volume's atlas fit (about 5 s once per volume) instead of
                           answering without it (default false)
  ohif_labels "a,b,c"      segment names /info offers (OHIF lists only these for include clicks;
                           default lesion,organ,tumor,vessel,bone; any name works from Slicer)
  model_version vNNNN|base serve a published fine-tuned version (rollback) or the base checkpoint
                           (default: the live version in versions_dir, see lib/versions.py)
  versions_dir DIR         where fine-tuned versions are published (default model/versions)

Kept thin on purpose, as MONAI Label's sample apps: one config per model (lib/configs: SAM-Med3D's
clicks, MedSAM's boxes), each building its engine and describing the weights it serves; this file
loops over them. Weights choice lives in lib/weights.py, geometry and caching in lib/session, request
handling in lib/infers.
"""
import logging
import os
from typing import Dict

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask

from lib.configs import MedSAMConfig, SAMMed3DConfig
from lib.configs.options import shared_volumes, startup_check
from lib.dicom import advertise_segments, install_ohif_asset_route, ohif_segment_names
from lib.guards import configure_limits, image_uri_or_404, install_guards, unknown_task_404

logger = logging.getLogger(__name__)

MODEL_NAME = "sammed3d"
MEDSAM_NAME = "medsam_box"


class SAMMed3DApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        conf = conf or {}
        self.model_dir = os.path.join(app_dir, "model")
        # one volume cache for both engines (--conf cache_mb: volumes and SAM-Med3D embeddings together)
        self.volumes = startup_check(shared_volumes, conf)
        # The configs must exist before super().__init__, which calls init_infers(); SAM-Med3D's builds
        # its engine now (a weights problem stops start-up here), MedSAM's when its task is asked for.
        self.sammed3d = SAMMed3DConfig()
        self.models: Dict[str, TaskConfig] = {MODEL_NAME: self.sammed3d, MEDSAM_NAME: MedSAMConfig()}
        for name, config in self.models.items():
            config.init(name, self.model_dir, conf, None, volumes=self.volumes)
        self.engine = self.sammed3d.engine
        self.watcher = self.sammed3d.watcher  # hot swap of published versions (lib/versions.py)
        # Segment names for /info: OHIF offers only these for include clicks (docs/dicom.md).
        self.segment_names = startup_check(ohif_segment_names, conf)
        startup_check(configure_limits, conf)  # --conf max_upload_mb / max_voxels (docs/reliability.md)
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
        infers = {}
        for name, config in self.models.items():
            tasks = config.infer()
            for key, task in (tasks if isinstance(tasks, dict) else {name: tasks}).items():
                advertise_segments(task, self.segment_names)  # names only: the models stay class-agnostic
                infers[key] = task
        return infers

    def init_trainers(self):
        return {name: t for name, config in self.models.items() if (t := config.trainer()) is not None}

    def init_strategies(self):
        # MONAI Label's own stay available beside the configs' (lib/activelearning, docs/activelearning.md)
        from monailabel.tasks.activelearning.first import First
        from monailabel.tasks.activelearning.random import Random

        strategies = {"random": Random(), "first": First()}
        for config in self.models.values():
            strategies.update(config.strategy() or {})
        return strategies

    def init_scoring_methods(self):
        methods = {}
        for config in self.models.values():
            methods.update(config.scoring_method() or {})
        return methods

    def info(self):
        self.watcher.poll()  # /info names the live version right after a training publishes one
        meta = super().info()
        meta["weights"] = self.sammed3d.weights.info()
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
        sample = super().next_sample(request)
        if isinstance(sample, dict) and sample.get("id") and not self.studies.startswith(("http://", "https://")):
            try:  # the atlas prior's fit of the image handed out, started before its first click (a local file)
                self.sammed3d.prefit(self.datastore().get_image_uri(sample["id"]))
            except Exception:  # only a head start: the click path fits it anyway
                logger.warning("atlas prefit of %s not started", sample["id"], exc_info=True)
        return sample

    def infer(self, request, datastore=None):
        self.watcher.poll()  # hot swap: the next click gets a newly published version
        # MONAI Label 0.8.5 answers an unknown model or image id with a plain 500; clients need a 404.
        model = request.get("model")
        if model not in self._infers:
            raise unknown_task_404("model", model, self._infers)
        image_uri_or_404(datastore or self.datastore(), request.get("image"))
        return super().infer(request, datastore)
