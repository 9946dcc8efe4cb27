"""One config per served model, as MONAI Label's sample apps organise them (radiology's lib/configs).

Each is a monailabel.interfaces.config.TaskConfig: main.py calls `init(name, model_dir, conf, None,
volumes=...)` on each, then asks every one for its infer task(s), trainer, strategies and scoring
methods. Each config also returns its engine and the frozen description of the weights it serves
(`served()`: engine, lib.weights.ServedWeights). Both engines get the app's one VolumeCache.

  sammed3d.py  SAMMed3DConfig: SegmentationEngine, the click task, fine-tuning, active learning,
               and the hot-swap watcher (lib.versions.LiveModelWatcher) passed to what needs it
  medsam.py    MedSAMConfig: MedSAMEngine and the box task (--conf medsam auto|true|false)
  options.py   the --conf parsers the configs and main.py share (one start-up error message)
"""
from .medsam import MedSAMConfig, build_medsam_task
from .sammed3d import SAMMed3DConfig

__all__ = ["MedSAMConfig", "SAMMed3DConfig", "build_medsam_task"]
