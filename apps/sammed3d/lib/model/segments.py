"""A fine-tuned version answers with its learned residual only for the segments it learnt.

Why: fine-tuning the offline default teaches its residual decoder one kind of structure from a handful of labels,
and that residual then answers every click. Measured (docs/default_model.md, "Seventeenth run"): fine-tuned on eight
volumes of one synthetic lobe, the held-out lobes go 0.11 -> 0.65 at one click, but the 54 development targets of
other structures fall from 0.486 / 0.694 to 0.342 / 0.477 Dice after 1 / 5 clicks. Users annotate several structures
in one app, and a segment's name says which one a click is for (3D Slicer sends the segment name with every click
and the segments' names with every saved label). So a version records the names it learnt (config
`learned_segments`, from the labels' label_info) and a click for another segment is answered with the residual off:
exactly as the embedded default (residual zero) answers it, with its plain region and floods.

    residual_for_segment(model, label)   context: model.residual_on is False for the call where `label` is not
                                         one of the model's learned segments (no-op for any other model)
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import FrozenSet, Iterator, Optional


def _key(name: str) -> str:
    return " ".join(str(name).split()).lower()


def learned_segments(model) -> Optional[FrozenSet[str]]:
    """The normalised names (case and spacing folded) whose clicks get the residual; None: every segment."""
    names = (getattr(model, "config", None) or {}).get("learned_segments")
    return frozenset(_key(n) for n in names) if names else None


def answers_with_residual(model, label: str) -> bool:
    """Whether a click for segment `label` is answered with the model's learned residual."""
    names = learned_segments(model)
    return names is None or _key(label) in names


@contextmanager
def residual_for_segment(model, label: str) -> Iterator[bool]:
    """Serve one request for segment `label`: the residual is switched off for the call when the model (one with a
    switchable residual, lib.model.click_unet.ClickUNet3D) did not learn that segment. The caller holds the
    engine's lock, so no other decode sees the switch. Yields whether the residual answers."""
    if not hasattr(model, "residual_on") or answers_with_residual(model, label):
        yield True
        return
    saved, model.residual_on = model.residual_on, False
    try:
        yield False
    finally:
        model.residual_on = saved
