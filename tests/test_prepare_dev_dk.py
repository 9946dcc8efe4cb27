"""scripts/prepare_dev_dk.py: the Desikan-Killiany split into development and fitting targets by structure name."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from prepare_dev_dk import DEV_DEEP, split  # noqa: E402

DEEP = ("thalamusproper", "caudate", "putamen", "pallidum", "accumbensarea", "hippocampus", "amygdala")


def _rows():
    """The atlas's csv layout: 34 cortical parcels then 7 deep structures per hemisphere, then the brainstem."""
    cortex = [f"parcel{i:02d}" for i in range(34)]
    rows, ident = [], 1
    for hemi in ("L", "R"):
        for name, kind in [(c, "cortex") for c in cortex] + [(d, "subcortex/brainstem") for d in DEEP]:
            rows.append({"id": str(ident), "label": name, "hemisphere": hemi, "structure": kind})
            ident += 1
    rows.append({"id": str(ident), "label": "brainstem", "hemisphere": "B", "structure": "subcortex/brainstem"})
    return rows


def test_a_structure_and_its_mirror_image_are_on_the_same_side():
    got = split(_rows())
    names = {side: {t.split(" ", 1)[-1] for t, _ in got[side]} for side in got}
    assert not names["dev"] & names["fit"]  # no structure (or its mirror image) on both sides
    assert all(t.startswith("left ") for t, _ in got["dev"])  # development: the left hemisphere only
    assert {d for d in DEV_DEEP} <= names["dev"] and len(got["dev"]) == 4 + 5  # every seventh parcel: 5
    assert {"caudate", "pallidum", "accumbensarea", "brainstem"} <= names["fit"]
    fit_cortex = [t for t, _ in got["fit"] if "parcel" in t]
    assert len(fit_cortex) == 2 * 15 and {t.split()[0] for t in fit_cortex} == {"left", "right"}
    ids = [i for side in got.values() for _, i in side]
    assert len(ids) == len(set(ids))
