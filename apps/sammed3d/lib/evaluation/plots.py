"""Plot of the evaluation: mean Dice against the number of clicks, one line per mode (model click
modes solid, the comparison rows dashed) -> dice_vs_clicks.png. Needs matplotlib (skipped without).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np


def modes(rows) -> List[str]:
    """Modes in the order they first appear (model rows first, as evaluated)."""
    seen: List[str] = []
    for r in rows:
        if r["mode"] not in seen:
            seen.append(r["mode"])
    return seen


def plot_dice_vs_clicks(rows: List[Dict], out_dir: str, report_at: Sequence[int],
                        title: Optional[str] = None) -> Optional[str]:
    """Write out_dir/dice_vs_clicks.png; its path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the PNG plot (CSV files are written)")
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in modes(rows):
        cn = sorted({int(r["clicks"]) for r in rows if r["mode"] == mode})
        means = [np.mean([float(r["dice"]) for r in rows if r["mode"] == mode and int(r["clicks"]) == n]) for n in cn]
        model_mode = mode in ("all", "newest") or ":" in mode
        ax.plot(cn, means, marker="o", label=f"{mode} clicks" if mode in ("all", "newest") else mode,
                linestyle="-" if model_mode else "--")
    ax.set_xlabel("number of clicks")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1)
    ax.set_xticks([n for n in report_at if n <= max(int(r["clicks"]) for r in rows)])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    path = os.path.join(out_dir, "dice_vs_clicks.png")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
