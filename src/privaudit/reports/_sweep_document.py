"""The sweep's page: one figure of utility and attack strength against epsilon, and the tables behind it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from . import _plots
from ._document import Block, Bullets, Document, Figure, Paragraph, Table
from ._text import clipping_series, clipping_text, fmt_eps, fmt_num, fmt_pct

__all__ = ["ADAPTIVE_CLIPPING_NOTE", "TUNING_NOTE", "monotone_within_noise", "sweep_document"]

TUNING_NOTE = (
    "Choosing hyperparameters (the clipping norm, the learning rate, the budget itself) by looking at results on "
    "the private data has a privacy cost of its own that none of the ε values here include (Papernot & Steinke "
    "2022, \"Hyperparameter Tuning with Renyi Differential Privacy\", arXiv 2110.03620). Read this page as a "
    "description of the trade-off, not as licence to pick the best cell and report its ε alone.")
ADAPTIVE_CLIPPING_NOTE = (
    "A grid of clipping norms is itself hyperparameter tuning on the private data. The alternative is adaptive "
    "clipping (`privaudit sweep --adaptive-clip`, Andrew et al. 2021, arXiv 1905.03871): C starts at the base "
    "norm and follows a noisy median of the per-example gradient norms, and the noisy count it releases each "
    "step is paid for inside the same budget (the ledger records sum and count as one Gaussian mechanism).")


def _eps_label(eps: float) -> str:
    return "∞ (no DP)" if math.isinf(eps) else f"{eps:g}"


def _auc_se(members: int | None, non_members: int | None) -> float | None:
    """Standard error of a chance AUC with P members and N non-members: AUC = U / (P N) and, under no
    effect and without ties, Var U = P N (P + N + 1) / 12 (Mann & Whitney 1947)."""
    if not members or not non_members:
        return None
    return math.sqrt((members + non_members + 1) / (12.0 * members * non_members))


def monotone_within_noise(values: Sequence[float | None], noise: Sequence[float | None]) -> tuple[bool, list[int]]:
    """Whether `values` never fall by more than twice the combined noise between neighbours.

    Returns (monotone, indices i where values[i + 1] < values[i] - 2 sqrt(noise[i]^2 + noise[i+1]^2)).

    >>> monotone_within_noise([0.8, 0.79, 0.9], [0.02, 0.02, 0.02])
    (True, [])
    >>> monotone_within_noise([0.8, 0.6, 0.9], [0.02, 0.02, 0.02])
    (False, [0])
    """
    drops = []
    for i in range(len(values) - 1):
        a, b = values[i], values[i + 1]
        if a is None or b is None:
            continue
        na, nb = noise[i] or 0.0, noise[i + 1] or 0.0
        if b < a - 2.0 * math.sqrt(na * na + nb * nb):
            drops.append(i)
    return not drops, drops


def _trend_lines(data: Mapping[str, Any]) -> list[str]:
    points, runs = data["points"], data["runs"]
    attacks = list(data["options"]["attacks"])
    norms = clipping_series(points)
    n_test = runs[0].get("non_members") if runs else None
    lines = []
    for c in norms:
        pts = sorted((p for p in points if p["max_grad_norm"] in (c, None)), key=lambda p: p["epsilon"])
        eps = ", ".join(_eps_label(p["epsilon"]) for p in pts)
        where = "" if c is None or len(norms) == 1 else f" ({clipping_text(c)})"
        accs = [p["test_accuracy"] for p in pts]
        # Binomial standard error of an accuracy on n_test held-out examples, or the seeds' spread if larger.
        noise = [max(p["test_accuracy_sd"] or 0.0, math.sqrt(a * (1 - a) / n_test) if a is not None and n_test else 0.0)
                 for p, a in zip(pts, accs)]
        ok, drops = monotone_within_noise(accs, noise)
        lines.append(f"Held-out accuracy over ε = {eps}{where}: {', '.join(fmt_pct(a) for a in accs)} — "
                     + ("never falls as ε grows beyond twice the noise (the larger of the seeds' standard "
                        "deviation and the binomial standard error on the held-out split)." if ok else
                        "falls beyond noise between ε = "
                        + "; ".join(f"{_eps_label(pts[i]['epsilon'])} and {_eps_label(pts[i + 1]['epsilon'])}"
                                    for i in drops) + "."))
        se = _auc_se(runs[0].get("members"), runs[0].get("non_members")) if runs else None
        for name in attacks:
            aucs = [(p["attacks"].get(name) or {}).get("auc") for p in pts]
            ok, drops = monotone_within_noise(aucs, [se] * len(aucs))
            lines.append(f"{name} AUC over the same ε{where}: "
                         + ", ".join("n/a" if a is None else f"{a:.3f}" for a in aucs) + " — "
                         + ("never falls as ε grows beyond twice the standard error of a chance AUC" if ok
                            else "falls beyond noise between ε = " + "; ".join(
                             f"{_eps_label(pts[i]['epsilon'])} and {_eps_label(pts[i + 1]['epsilon'])}"
                             for i in drops))
                         + (f" ({se:.3f} here)." if se else "."))
    return lines


def _mean_sd(mean: float | None, sd: float | None, *, pct: bool = False, decimals: int = 3) -> str:
    """ "mean ± sd" with fixed decimals (percent points for a percentage)."""
    if mean is None:
        return "n/a"
    text = fmt_pct(mean) if pct else f"{mean:.{decimals}f}"
    if sd is not None:
        text += f" ± {100 * sd:.1f}" if pct else f" ± {sd:.{decimals}f}"
    return text


def sweep_document(data: Mapping[str, Any]) -> Document:
    """The sweep page from sweep.json's content (`run_sweep` builds it)."""
    base, options, points, runs = data["base_settings"], data["options"], data["points"], data["runs"]
    attacks = list(options["attacks"])
    images = {"sweep.png": _plots.figure_png(_plots.sweep_figure(points, attacks=attacks), dpi=100)}
    members = runs[0].get("members") if runs else None
    non_members = runs[0].get("non_members") if runs else None
    blocks: list[Block] = [
        Paragraph(f"Data {base.get('data')}, model {base.get('model')}, {fmt_num(base.get('epochs'))} epochs, expected "
                  f"batch {base.get('batch_size') or 'N/6'}, {_optimizer_text(base)}, δ = {fmt_num(base.get('delta'), 3)}, held-out fraction "
                  f"{fmt_num(base.get('test_fraction'))} ({fmt_num(members)} members, {fmt_num(non_members)} "
                  f"non-members per run). Seeds {', '.join(str(s) for s in options['seeds'])} (training and split). "
                  f"Attacks: {', '.join(attacks)} with {options['shadows']} shadow models (shadow seed "
                  f"{options['attack_seed']}). ε = ∞ trains the same model without DP and without clipping, at "
                  f"learning rate {fmt_num(options.get('no_dp_lr') or base.get('lr'))}."),
        Paragraph(TUNING_NOTE, kind="note"),
        Paragraph(ADAPTIVE_CLIPPING_NOTE, kind="note"),
        Figure("sweep.png", "Held-out accuracy, attack AUC, TPR at 1% FPR and empirical epsilon lower bound "
                            "against the privacy budget epsilon",
               caption="Means over seeds (error bars: standard deviation over seeds when there are several). "
                       "TPR at 1% FPR is drawn only where there are at least 1,000 non-members (10 false "
                       "positives); the ε lower bounds are Clopper-Pearson bounds at the attack's best threshold "
                       "(Bonferroni over thresholds), valid with probability ≥ 95%."),
        Bullets(tuple(_trend_lines(data))),
    ]
    header = ["target ε", "C", "ε reached", "held-out accuracy"]
    for name in attacks:
        header += [f"{name} AUC", f"{name} TPR @ 1% FPR", f"{name} ε lower bound"]
    rows = []
    for p in points:
        row = [_eps_label(p["epsilon"]), clipping_text(p["max_grad_norm"]),
               "∞" if math.isinf(p["epsilon"]) else fmt_eps(p["achieved_epsilon"]),
               _mean_sd(p["test_accuracy"], p["test_accuracy_sd"], pct=True)]
        for name in attacks:
            a = p["attacks"].get(name) or {}
            row += [_mean_sd(a.get("auc"), a.get("auc_sd")),
                    _mean_sd(a.get("tpr_at_1pct"), a.get("tpr_at_1pct_sd"), pct=True)
                    if a.get("tpr_at_1pct") is not None else "n/a (too few negatives)",
                    _mean_sd(a.get("epsilon_lower_bound"), a.get("epsilon_lower_bound_sd"), decimals=2)]
        rows.append(tuple(row))
    blocks.append(Table(tuple(header), tuple(rows), caption="Mean ± standard deviation over seeds."))
    run_rows = tuple((r["label"], str(r["seed"]), fmt_eps(r["epsilon"]), fmt_num(r["noise_multiplier"]),
                      fmt_pct(r["test_accuracy"]),
                      *(_mean_sd((r["attacks"].get(n) or {}).get("auc"), None) for n in attacks)) for r in runs)
    blocks.append(Table(("run", "seed", "ε", "noise multiplier", "held-out accuracy", *(f"{n} AUC" for n in attacks)),
                        run_rows, caption="Every run (folders under runs/, each with its attack.json)."))
    return Document(title=f"privaudit sweep: {base.get('data')}, {base.get('model')}", blocks=tuple(blocks),
                    images=images, footer="Machine-readable twin: sweep.json.")


def _optimizer_text(base: dict[str, Any]) -> str:
    if (base.get("optimizer") or "sgd") == "adam":
        return f"Adam lr {fmt_num(base.get('lr'))}"
    return f"SGD lr {fmt_num(base.get('lr'))} (momentum {fmt_num(base.get('momentum'))})"
