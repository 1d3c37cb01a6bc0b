"""Log-log ROC curves of membership-inference attacks, as a PNG (matplotlib, Agg backend).

Log-log axes, as Carlini et al. 2022 (arXiv 2112.03570v2, Sec. III.C) argue:
the low-FPR corner is where an attack is confidently right. Colours are the
Okabe-Ito palette (distinguishable under the common colour-vision
deficiencies), and every curve also has its own line style.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .. import _io
from ._metrics import RocCurve

__all__ = ["OKABE_ITO", "plot_roc"]

#: Okabe & Ito (2008), "Color Universal Design", without yellow (too light on white).
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_STYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)))


def plot_roc(curves: Mapping[str, tuple[RocCurve, float]], path: str | Path, *, title: str = "") -> Path:
    """Writes a log-log ROC plot of `curves` ({label: (roc, auc)}) to `path` (PNG, atomically).

    Points with FPR or TPR of 0 cannot sit on log axes and are left out; the FPR
    axis starts at 1 / (negatives), the smallest non-zero FPR there is.

    Raises:
        ValueError: no curves, or matplotlib is not installed.
    """
    if not curves:
        raise ValueError("Expected at least one ROC curve to plot.")
    try:
        # A bare Figure renders with the Agg canvas; pyplot (and its global backend) is never touched.
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("Plotting the ROC curve needs matplotlib (pip install matplotlib).") from None
    fig = Figure(figsize=(5.2, 4.6), dpi=150)
    ax = fig.add_subplot()
    lowest = min(1.0 / max(roc.negatives, 1) for roc, _ in curves.values())
    for i, (label, (roc, auc)) in enumerate(curves.items()):
        keep = (roc.fpr > 0) & (roc.tpr > 0)
        ax.plot(roc.fpr[keep], roc.tpr[keep], color=OKABE_ITO[i % len(OKABE_ITO)],
                linestyle=_STYLES[i % len(_STYLES)], linewidth=1.6, label=f"{label} (AUC {auc:.3f})")
    grid = np.logspace(np.log10(lowest), 0, 50)
    ax.plot(grid, grid, color="#7f7f7f", linestyle=":", linewidth=1.0, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lowest, 1.0)
    ax.set_ylim(lowest, 1.0)
    ax.set_xlabel("False-positive rate (fraction of non-members flagged, log scale)")
    ax.set_ylabel("True-positive rate (fraction of members flagged, log scale)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", linewidth=0.4, alpha=0.5)
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    target = Path(path)
    _io.atomic_write_bytes(target, buf.getvalue())
    return target
