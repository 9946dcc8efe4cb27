"""Prototype of the atlas prior's cortical parcels (issue 14, twenty-second run; docs/default_model.md): the served
lib.session.atlas_prior with its `cortex`, `grow_mm`, `snap_mm`, `whole_after`, `lesion_wm`, `white_matter`, `wm_reach_mm`, `wm_depth_mm` and `whole_cortex_mm` parameters set from the environment, whatever the
checkpoint's config says, and with FOCUS="factor,minimum_mm" the click update's `local_update_focus`
(lib.session.local_update), in this process only; the rest is `python -m lib.evaluation` with its own arguments (from
apps/sammed3d, on a checkpoint whose config has `atlas_prior`, default-v12):

    CORTEX=1 GROW_MM=3 SNAP_MM=3 OMP_NUM_THREADS=1 ../../.venv/bin/python ../../docs/eval/click_unet/atlas_cortex_prototype.py \\
        --data ../../work_data/dev_atlas_cortex --model sammed3d --checkpoint model/default/model.pt \\
        --model-name cortex --click-mode all --clicks 5 --report-at 1,3,5 --no-nsd --out /tmp/dev_atlas_cortex
"""
import dataclasses, os, runpy, sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "apps", "sammed3d"))
from lib.session.atlas_prior import AtlasParams  # noqa: E402

_from_config = AtlasParams.from_config.__func__


def from_config(cls, config):
    params = _from_config(cls, config)
    return dataclasses.replace(params, cortex=os.environ.get("CORTEX", "1") == "1",
                               grow_mm=float(os.environ.get("GROW_MM", "0")),
                               snap_mm=float(os.environ.get("SNAP_MM", "0")),
                               whole_after=int(os.environ.get("WHOLE_AFTER", "0")),
                               lesion_wm=float(os.environ.get("LESION_WM", "0")),
                               white_matter=os.environ.get("WHITE_MATTER", "0") == "1",
                               wm_reach_mm=float(os.environ.get("WM_REACH_MM", "4")),
                               wm_depth_mm=float(os.environ.get("WM_DEPTH_MM", "5")),
                               whole_cortex_mm=float(os.environ.get("WHOLE_CORTEX_MM", "0")))


def _focused(resolve):
    def resolve_local(mode, config):  # FOCUS="factor,minimum_mm" (twenty-third run): the click update's focus
        focus = os.environ.get("FOCUS")
        return resolve(mode, dict(config or {}, local_update_focus=[float(v) for v in focus.split(",")])
                       if focus else config)
    return resolve_local


if __name__ == "__main__":
    import lib.session.local_update as local_update

    local_update.resolve_local = _focused(local_update.resolve_local)
    AtlasParams.from_config = classmethod(from_config)
    sys.argv = ["lib.evaluation"] + sys.argv[1:]
    runpy.run_module("lib.evaluation", run_name="__main__")
