"""Audit figures: canary score histograms, and the lower bound against the claim (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_bound", "plot_scores"]

_SCORE_LABELS = {
    "lr": "canary score: log-likelihood ratio, IN vs OUT (nats)",
    "sum": "canary score: sum over steps of the update's projection (gradient-norm units)",
    "scaled_logit": "canary score: scaled logit log(p / (1 - p)) of the canary's label (nats)",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_scores(result: Any, path: str | Path) -> Path:
    """Histograms of the IN and OUT canaries' scores on shared bins; returns `path`."""
    plt = _pyplot()
    s, member = np.asarray(result.scores, dtype=float), np.asarray(result.membership, dtype=bool)
    finite = s[np.isfinite(s)]
    bins = np.histogram_bin_edges(finite, bins=min(60, max(10, finite.size // 20))) if finite.size else 10
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.hist(s[~member & np.isfinite(s)], bins=bins, alpha=0.6, label=f"OUT (not trained on), n={int((~member).sum())}")
    ax.hist(s[member & np.isfinite(s)], bins=bins, alpha=0.6, label=f"IN (trained on), n={int(member.sum())}")
    ax.set_xlabel(_SCORE_LABELS.get(result.statistic, f"canary score ({result.statistic})"))
    ax.set_ylabel("canaries (count)")
    ax.set_title(f"{result.trainer}, {result.threat}: canary scores (claimed epsilon {result.epsilon_claimed:.3g})")
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_bound(result: Any, path: str | Path) -> Path:
    """The rigorous lower bound (a one-sided interval, drawn as an upward bar) and the GDP
    estimate, against epsilon claimed; returns `path`."""
    plt = _pyplot()
    lb, claimed = float(result.epsilon_lower), float(result.epsilon_claimed)
    gdp = None if result.gdp is None else float(result.gdp.epsilon)
    top = max(claimed, lb, gdp if gdp is not None and np.isfinite(gdp) else 0.0) * 1.3 + 0.1
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    ax.axhline(claimed, color="black", linestyle="--", label=f"epsilon claimed = {claimed:.3g}")
    pct = f"{100 * result.confidence:.0f}%"
    # A one-sided confidence interval [lb, inf): a band from the bound to the top of the axis.
    ax.vlines(0, lb, top, color="tab:red", linewidth=6, alpha=0.35)
    ax.plot([0], [lb], "o", color="tab:red",
            label=f"rigorous lower bound = {lb:.3g} ({pct} confidence: epsilon in [lb, inf))")
    if gdp is not None and np.isfinite(gdp):
        ax.plot([1], [gdp], "s", color="tab:blue", label=f"GDP estimate = {gdp:.3g} (not a bound)")
    ax.set_xticks([0, 1], ["lower bound", "GDP estimate"])
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylim(0, top)
    ax.set_ylabel(f"epsilon at delta = {result.delta:g} (nats)")
    ax.set_title(f"{result.trainer}, {result.threat}, {result.canaries} canaries x {result.runs} run(s): "
                 f"{result.verdict}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, frameon=False)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
