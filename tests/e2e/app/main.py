"""apps/sammed3d with the two OHIF changes of docs/dicom.md applied, for tests/e2e/ohif_orthanc.sh.

Used only while the app does not advertise segment names itself (the e2e script checks /info of
the real app first). It loads apps/sammed3d/main.py unchanged and applies, from outside, exactly
what docs/dicom.md asks the app to do:
  - lib.dicom.advertise_segments(task, lib.dicom.ohif_segment_names(conf)) for each infer task
    whose labels are empty, so OHIF's Point Prompts tab has a segment to click for;
  - lib.dicom.install_ohif_asset_route(), so nested /ohif/ assets are served as files.
The real app directory is used as app_dir, so its model/ folder and logs are the real ones.
"""
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
APP_DIR = os.path.join(REPO, "apps", "sammed3d")
if APP_DIR not in sys.path:
    sys.path.insert(0, APP_DIR)  # the real app's `lib` package

_spec = importlib.util.spec_from_file_location("sammed3d_real_main", os.path.join(APP_DIR, "main.py"))
_real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_real)

from lib.dicom import advertise_segments, install_ohif_asset_route, ohif_segment_names  # noqa: E402

SAMMed3DApp = _real.SAMMed3DApp  # MONAI Label picks the class whose direct base is MONAILabelApp
_init, _init_infers = SAMMed3DApp.__init__, SAMMed3DApp.init_infers


def _patched_init(self, app_dir, studies, conf):
    self._ohif_segments = ohif_segment_names(conf)
    _init(self, APP_DIR, studies, conf)
    install_ohif_asset_route()


def _patched_init_infers(self):
    infers = _init_infers(self)
    for task in infers.values():
        if not task.labels:
            advertise_segments(task, self._ohif_segments)
    return infers


SAMMed3DApp.__init__ = _patched_init
SAMMed3DApp.init_infers = _patched_init_infers
