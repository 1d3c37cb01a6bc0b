"""Every report figure labels its axes, uses the colour-blind-safe palette, and saves as PNG."""

from __future__ import annotations

import math

import pytest
from matplotlib.colors import to_hex

from privaudit.reports import _plots, collect_run


@pytest.fixture(scope="module")
def report(pipeline_run):
    return collect_run(pipeline_run[0])


def _sweep_points():
    def attacks(auc):
        return {"loss": {"auc": auc, "tpr_at_1pct": None, "epsilon_lower_bound": 0.0},
                "lira_online": {"auc": auc + 0.01, "tpr_at_1pct": 0.02, "epsilon_lower_bound": 0.1}}
    return [{"epsilon": e, "max_grad_norm": c, "test_accuracy": acc, "test_accuracy_sd": 0.01, "attacks": attacks(a)}
            for e, c, acc, a in ((1.0, 0.1, 0.8, 0.5), (8.0, 0.1, 0.9, 0.52), (1.0, 1.0, 0.7, 0.5),
                                 (8.0, 1.0, 0.85, 0.53), (math.inf, None, 0.97, 0.6))]


def _figures(report):
    drawable = [(r.name, r.roc_fpr, r.roc_tpr, r.auc) for r in report.attacks.rows]
    return {
        "privacy": _plots.privacy_figure(report.privacy),
        "utility": _plots.utility_figure(report.utility),
        "roc": _plots.roc_figure(drawable, negatives=report.attacks.non_members, positives=report.attacks.members),
        "audit_bound": _plots.audit_bound_figure(report.audit),
        "canaries": _plots.canary_histogram_figure(report.audit),
        "sweep": _plots.sweep_figure(_sweep_points(), attacks=["loss", "lira_online"]),
    }


def test_every_figure_has_axis_labels_and_titles(report):
    for name, fig in _figures(report).items():
        assert _plots.unlabelled_axes(fig) == [], name
        for ax in fig.axes:
            assert ax.get_title(), name
            assert ax.lines or ax.patches or ax.collections, f"{name}: empty axes"


def test_units_are_named(report):
    figs = _figures(report)
    assert "nats" in figs["privacy"].axes[0].get_ylabel()
    assert "%" in figs["utility"].axes[1].get_ylabel()
    roc = figs["roc"].axes[0]
    assert roc.get_xscale() == roc.get_yscale() == "log"
    assert "log scale" in roc.get_xlabel() and "log scale" in roc.get_ylabel()


def test_series_use_the_okabe_ito_palette_and_distinct_styles(report):
    roc = _figures(report)["roc"].axes[0]
    curves = [line for line in roc.lines if not line.get_label().startswith("chance")]
    assert {to_hex(line.get_color()).upper() for line in curves} <= set(_plots.OKABE_ITO)
    assert len({str(line.get_linestyle()) for line in curves}) == len(curves)  # readable in grey print


def test_gdp_is_labelled_an_approximation(report):
    labels = [line.get_label() for line in _figures(report)["privacy"].axes[0].lines]
    assert any("GDP" in lab and "approximation" in lab for lab in labels)


def test_sweep_puts_infinity_on_the_axis():
    ax = _plots.sweep_figure(_sweep_points(), attacks=["loss", "lira_online"]).axes[0]
    assert any("∞" in t.get_text() for t in ax.get_xticklabels())


def test_png_bytes_and_refusal_of_unlabelled_axes(report):
    png = _plots.figure_png(_plots.privacy_figure(report.privacy))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and b"matplotlib" not in png
    fig = _plots.privacy_figure(report.privacy)
    fig.axes[0].set_xlabel("")
    with pytest.raises(RuntimeError, match="no x label"):
        _plots.figure_png(fig)
