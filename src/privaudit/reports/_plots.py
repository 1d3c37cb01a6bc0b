"""The reports' figures: matplotlib `Figure` objects (Agg canvas, no pyplot state), PNG bytes on demand.

Every function returns the figure unsaved, so that tests can inspect it (axis
labels, lines) before `figure_png` renders it. Colours are the Okabe-Ito
palette (Okabe & Ito 2008, "Color Universal Design"), safe under the common
colour-vision deficiencies; every series also has its own line style and
marker, so the figures stay readable printed in grey.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ._text import clipping_series, clipping_text

__all__ = ["OKABE_ITO", "audit_bound_figure", "canary_histogram_figure", "figure_png", "privacy_figure",
           "roc_figure", "sweep_figure", "unlabelled_axes", "utility_figure"]

#: Okabe-Ito without its yellow (too light on white paper).
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_STYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 1)))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_RC = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9, "xtick.labelsize": 9,
       "ytick.labelsize": 9, "axes.grid": True, "grid.color": "#d0d0d0", "grid.linewidth": 0.6,
       "axes.spines.top": False, "axes.spines.right": False, "savefig.facecolor": "white"}


@contextlib.contextmanager
def _rc() -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context(_RC):
        yield


def _figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] = (7.0, 4.2)) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _style(i: int) -> dict[str, Any]:
    return {"color": OKABE_ITO[i % len(OKABE_ITO)], "linestyle": _STYLES[i % len(_STYLES)],
            "marker": _MARKERS[i % len(_MARKERS)]}


def unlabelled_axes(fig: Any) -> list[str]:
    """Descriptions of the visible axes of `fig` that lack an x or a y label (empty: all labelled)."""
    problems = []
    for i, ax in enumerate(fig.axes):
        if not ax.axison:
            continue
        for which, label in (("x", ax.get_xlabel()), ("y", ax.get_ylabel())):
            if not label.strip():
                problems.append(f"axes {i} ({ax.get_title() or 'untitled'}) has no {which} label")
    return problems


def figure_png(fig: Any, *, dpi: int = 110) -> bytes:
    """The figure as PNG bytes, with no metadata (no software name or URL inside the file).

    Raises:
        RuntimeError: an axis without a label (every report figure must say what it plots).
    """
    problems = unlabelled_axes(fig)
    if problems:
        raise RuntimeError("Refusing to save a figure with unlabelled axes: " + "; ".join(problems))
    buf = io.BytesIO()
    with _rc():
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


# ------------------------------------------------------------------------------------ run report


def privacy_figure(privacy: Any) -> Any:
    """Epsilon against training steps for each accountant (GDP drawn thinner and marked as an approximation)."""
    with _rc():
        fig, axes = _figure()
        ax = axes[0, 0]
        for i, curve in enumerate(c for c in privacy.curves if c.epsilons):
            xs = [s for s, e in zip(curve.steps, curve.epsilons) if e is not None]
            ys = [e for e in curve.epsilons if e is not None]
            ax.plot(xs, ys, label=curve.label, linewidth=1.2 if not curve.is_upper_bound else 1.8,
                    markersize=4, **_style(i))
        logged = [(p.step, p.logged_epsilon) for p in privacy.points if p.logged_epsilon is not None]
        if logged:
            ax.plot(*zip(*logged), linestyle="none", marker="x", color="#000000", markersize=5,
                    label=f"logged during training ({privacy.training_accountant or 'its accountant'})")
        ax.set_xlabel("training step (optimizer steps; one round per step for federated runs)")
        ax.set_ylabel(f"ε at δ = {privacy.delta:g} (nats)" if privacy.delta else "ε (nats)")
        ax.set_title("Privacy spent over training")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left")
    return fig


def utility_figure(utility: Any) -> Any:
    """Loss and accuracy curves (train and held-out) side by side."""
    with _rc():
        fig, axes = _figure(1, 2, size=(9.0, 3.8))
        unit = "epochs" if utility.x_name == "epoch" else "rounds"
        for ax, kind, scale, ylabel in ((axes[0, 0], "loss", 1.0, "cross-entropy loss (nats per example)"),
                                        (axes[0, 1], "accuracy", 100.0, "accuracy (%)")):
            for i, split in enumerate(("train", "test")):
                ys = utility.series.get(f"{split}_{kind}", ())
                pts = [(x, scale * y) for x, y in zip(utility.x, ys) if y is not None]
                if pts:
                    ax.plot(*zip(*pts), label=f"{'training' if split == 'train' else 'held-out'} split",
                            markersize=3, **_style(i))
            ax.set_xlabel(f"{utility.x_name} ({unit} of training)")
            ax.set_ylabel(ylabel)
            ax.set_title(kind.capitalize())
            if ax.lines:
                ax.legend()
    return fig


def roc_figure(curves: Sequence[tuple[str, Sequence[float], Sequence[float], float | None]], *,
               negatives: int | None = None, positives: int | None = None) -> Any:
    """Log-log ROC curves: (name, fpr, tpr, auc) per attack, with the chance line.

    Points with FPR or TPR of 0 cannot sit on log axes and are left out; the
    x axis starts at 1 / (2 N) so that the smallest reachable FPR, 1 / N, shows.
    """
    with _rc():
        fig, axes = _figure(size=(6.2, 5.0))
        ax = axes[0, 0]
        smallest = 1.0
        for i, (name, fpr, tpr, auc) in enumerate(curves):
            f, t = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
            keep = (f > 0) & (t > 0)
            if keep.any():
                smallest = min(smallest, float(f[keep].min()))
            label = f"{name} (AUC {auc:.3f})" if auc is not None else name
            ax.plot(f[keep], t[keep], label=label, linewidth=1.6, marker=None,
                    **{k: v for k, v in _style(i).items() if k != "marker"})
        lo = 0.5 / negatives if negatives else max(1e-4, smallest / 2)
        ax.plot([lo, 1.0], [lo, 1.0], color="#777777", linestyle=":", linewidth=1.0, label="chance (TPR = FPR)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, 1.0)
        ax.set_ylim(0.5 / positives if positives else lo, 1.0)
        ax.set_xlabel("false-positive rate (fraction of non-members flagged, log scale)")
        ax.set_ylabel("true-positive rate (fraction of members flagged, log scale)")
        ax.set_title("Membership-inference ROC")
        ax.legend(loc="lower right")
    return fig


def audit_bound_figure(audit: Any) -> Any:
    """Claimed epsilon, the rigorous lower bound and the Gaussian-DP estimate on one axis."""
    with _rc():
        fig, axes = _figure(size=(7.0, 2.8))
        ax = axes[0, 0]
        conf = f"{100 * audit.confidence:g}%" if audit.confidence is not None else "?"
        rows = [("claimed ε (accountant)", audit.epsilon_claimed, OKABE_ITO[0], ""),
                (f"lower bound ({conf} confidence)", audit.epsilon_lower_bound, OKABE_ITO[1], ""),
                ("Gaussian-DP estimate (not a bound)", audit.gdp_epsilon, OKABE_ITO[2], "//")]
        for y, (label, value, colour, hatch) in enumerate(rows):
            if value is None:
                ax.text(0.01, y, "n/a", va="center", transform=ax.get_yaxis_transform())
                continue
            ax.barh(y, value, color=colour if not hatch else "white", edgecolor=colour, hatch=hatch, height=0.6)
            ax.text(value, y, f"  {value:.3f}", va="center")
        ax.set_yticks(range(len(rows)), [r[0] for r in rows])
        ax.invert_yaxis()
        top = max([v for _, v, _, _ in rows if v is not None] or [1.0])
        ax.set_xlim(0, 1.25 * top if top > 0 else 1.0)
        ax.set_xlabel(f"ε at δ = {audit.delta:g} (nats)" if audit.delta else "ε (nats)")
        ax.set_ylabel("quantity")
        ax.set_title(f"Audit: {audit.verdict}")
    return fig


def canary_histogram_figure(audit: Any) -> Any:
    """Histograms of the IN and OUT canaries' scores on shared bins."""
    with _rc():
        fig, axes = _figure(size=(7.0, 3.8))
        ax = axes[0, 0]
        s_in, s_out = np.asarray(audit.scores_in, dtype=float), np.asarray(audit.scores_out, dtype=float)
        both = np.concatenate([s_in, s_out])
        bins = np.histogram_bin_edges(both, bins=min(50, max(8, both.size // 15))) if both.size else 10
        ax.hist(s_out, bins=bins, histtype="stepfilled", alpha=0.35, color=OKABE_ITO[0],
                label=f"OUT: not trained on (n = {s_out.size})")
        ax.hist(s_out, bins=bins, histtype="step", color=OKABE_ITO[0], linewidth=1.4)
        ax.hist(s_in, bins=bins, histtype="step", color=OKABE_ITO[1], linewidth=1.8, linestyle="--",
                label=f"IN: trained on (n = {s_in.size})")
        ax.set_xlabel(f"canary score ({audit.statistic or 'score'}; higher = more likely IN)")
        ax.set_ylabel("canaries (count)")
        ax.set_title("Canary scores, IN vs OUT")
        ax.legend()
    return fig


# ------------------------------------------------------------------------------------ sweep


def _eps_positions(eps: Sequence[float]) -> tuple[list[float], float | None]:
    """x positions on a log axis: finite epsilons as they are, infinity one octave right of the largest."""
    finite = [e for e in eps if math.isfinite(e)]
    inf_x = (2.0 * max(finite) if finite else 1.0) if any(math.isinf(e) for e in eps) else None
    return [e if math.isfinite(e) else float(inf_x) for e in eps], inf_x


def _series(ax: Any, xs: Sequence[float], ys: Sequence[float], err: Sequence[float], inf_x: float | None, *,
            label: str, style: Mapping[str, Any]) -> None:
    """Finite epsilons joined by a line; the no-DP point (at `inf_x`) as a lone marker, past the axis break."""
    ys_a, err_a, xs_a = np.asarray(ys, dtype=float), np.asarray(err, dtype=float), np.asarray(xs, dtype=float)
    if np.isnan(ys_a).all():
        return
    at_inf = xs_a == inf_x if inf_x is not None else np.zeros(xs_a.shape, dtype=bool)
    ax.errorbar(xs_a[~at_inf], ys_a[~at_inf], yerr=err_a[~at_inf], label=label, capsize=3, markersize=4, **style)
    if at_inf.any():
        ax.errorbar(xs_a[at_inf], ys_a[at_inf], yerr=err_a[at_inf], capsize=3, markersize=5,
                    **{**style, "linestyle": "none"})


def sweep_figure(points: Sequence[Mapping[str, Any]], *, attacks: Sequence[str]) -> Any:
    """One page of four panels against epsilon: accuracy, attack AUC, TPR at 1% FPR, empirical ε lower bound.

    Each point is a mapping with "epsilon" (math.inf for no DP), "max_grad_norm",
    "test_accuracy" and "attacks": {name: {"auc", "tpr_at_1pct", "epsilon_lower_bound"}};
    values are means over seeds, with "..._sd" standard deviations where there are several.
    Colour and marker name the attack; the line style names the clipping norm.
    """
    with _rc():
        fig, axes = _figure(2, 2, size=(10.0, 7.6))
        norms = clipping_series(points)
        all_eps = sorted({float(p["epsilon"]) for p in points})
        _, inf_x = _eps_positions(all_eps)
        panels = [(axes[0, 0], "test accuracy (%)", "Utility"),
                  (axes[0, 1], "attack AUC (0.5 = chance)", "Attack AUC"),
                  (axes[1, 0], "TPR at 1% FPR (%)", "Attack TPR at 1% FPR"),
                  (axes[1, 1], "empirical ε lower bound (nats)", "Empirical ε lower bound")]
        for j, c in enumerate(norms):
            # A run without DP does not clip: it closes every clipping norm's series.
            pts = sorted((p for p in points if p.get("max_grad_norm") in (c, None)), key=lambda p: float(p["epsilon"]))
            xs, _ = _eps_positions([float(p["epsilon"]) for p in pts])
            suffix = "" if c is None or len(norms) == 1 else f", {clipping_text(c)}"
            acc = [100 * p["test_accuracy"] if p.get("test_accuracy") is not None else np.nan for p in pts]
            sd = [100 * (p.get("test_accuracy_sd") or 0.0) for p in pts]
            _series(axes[0, 0], xs, acc, sd, inf_x, label=f"held-out accuracy{suffix}", style=_style(j))
            for i, name in enumerate(attacks):
                style = {**_style(i), "linestyle": _STYLES[j % len(_STYLES)]}
                for ax, key, scale in ((axes[0, 1], "auc", 1.0), (axes[1, 0], "tpr_at_1pct", 100.0),
                                       (axes[1, 1], "epsilon_lower_bound", 1.0)):
                    ys = [_get(p, name, key, scale) for p in pts]
                    err = [_get(p, name, key + "_sd", scale, default=0.0) for p in pts]
                    _series(ax, xs, ys, err, inf_x, label=f"{name}{suffix}", style=style)
        finite = [e for e in all_eps if math.isfinite(e)]
        if finite:
            axes[1, 1].plot(finite, finite, color="#777777", linestyle=":", label="claimed ε (upper bound)")
        lo = min(finite) / 1.4 if finite else 0.5
        hi = (inf_x if inf_x else max(finite)) * 1.4
        for ax, ylabel, title in panels:
            ax.set_xscale("log")
            ticks = finite + ([inf_x] if inf_x else [])
            ax.set_xticks(ticks, [f"{e:g}" for e in finite] + (["∞\n(no DP)"] if inf_x else []))
            ax.minorticks_off()
            ax.set_xlim(lo, hi)
            if inf_x and finite:  # the axis break between the largest epsilon and infinity
                ax.axvline(math.sqrt(max(finite) * inf_x), color="#bbbbbb", linewidth=0.8, linestyle=(0, (2, 2)))
            ax.set_xlabel("privacy budget ε at δ (nats, log scale)")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            if ax.containers or any(line.get_label()[:1] != "_" for line in ax.lines):
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, "not reported: too few non-members\nfor this FPR to mean anything",
                        transform=ax.transAxes, ha="center", va="center", color="#555555")
        axes[0, 1].axhline(0.5, color="#999999", linewidth=0.8)
    return fig


def _get(p: Mapping[str, Any], name: str, key: str, scale: float, default: float = np.nan) -> float:
    v = (p.get("attacks") or {}).get(name, {}).get(key)
    return default if v is None else scale * float(v)
