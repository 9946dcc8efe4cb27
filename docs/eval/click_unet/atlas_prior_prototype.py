"""Prototype variants of the atlas prior (issue 14, twenty-first run; docs/default_model.md): how a label's later clicks
are answered once a registered atlas answered its first click with a deep grey nucleus. The served rule
(lib.session.atlas_prior, default-v12: the band region merged by the piece click update) was first measured here as
BAND=merge, with its parameters frozen and committed before the test table was run (commit "Prototype: a registered
Desikan-Killiany atlas ..."); the served file reproduces that prototype's development and test rows exactly, so this
file now patches the served engine for the two other variants of the table:

    BAND=off      later clicks answered as default-v11 answers them (the atlas for the first click only)
    BAND=replace  later clicks by the band region, replacing the shown mask instead of merged into it

The engine is patched in this process only; the rest is `python -m lib.evaluation` with its own arguments (from
apps/sammed3d), on a checkpoint whose config has `atlas_prior` (default-v12):

    BAND=off OMP_NUM_THREADS=1 ../../.venv/bin/python ../../docs/eval/click_unet/atlas_prior_prototype.py \
        --data ../../work_data/dev_atlas --model sammed3d --checkpoint model/default/model.pt --model-name atlas-off \
        --click-mode all --clicks 5 --report-at 1,3,5 --no-nsd --out /tmp/dev_atlas_off
"""
import os, runpy, sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "apps", "sammed3d"))
import lib.session.engine as engine  # noqa: E402
from lib.session.plain_region import PlainRegion  # noqa: E402

BAND = os.environ.get("BAND", "off")
_atlas_for, _result = PlainRegion.atlas_for, engine.SegmentationEngine._result


def atlas_for(self, volume, ct, state):
    """BAND=off: the atlas answers a label's first click only."""
    nucleus = _atlas_for(self, volume, ct, state)
    return nucleus if len(state.fg) == 1 and not state.bg else None


def result(self, req, key, state, t0, roi=None, new=None):
    """BAND=replace: a later click on a label the atlas answered replaces the shown mask."""
    later = self.region is not None and state.atlas is not None and len(state.fg) + len(state.bg) > 1
    merge = self.region.merge if self.region is not None else None
    if later:
        self.region.merge = False
    try:
        return _result(self, req, key, state, t0, roi, new)
    finally:
        if later:
            self.region.merge = merge


if __name__ == "__main__":
    if BAND == "off":
        PlainRegion.atlas_for = atlas_for
    elif BAND == "replace":
        engine.SegmentationEngine._result = result
    else:
        raise SystemExit("BAND must be off or replace (merge is what default-v12 serves)")
    sys.argv = ["lib.evaluation"] + sys.argv[1:]
    runpy.run_module("lib.evaluation", run_name="__main__")
