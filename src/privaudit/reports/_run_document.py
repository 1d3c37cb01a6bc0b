"""The run report's content: a `RunReport` turned into headings, tables and figures."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from . import _plots
from ._collect import RunReport
from ._document import Block, Bullets, Document, Figure, Heading, Paragraph, Table
from ._text import fmt_eps, fmt_num, fmt_pct

__all__ = ["run_document"]

#: Longest per-epoch table; longer runs show evenly spaced epochs (all of them are in report.json).
MAX_EPOCH_ROWS = 15


def run_document(report: RunReport) -> Document:
    """The report's blocks and figures (PNG bytes), ready for `render_html` / `render_markdown`."""
    images: dict[str, bytes] = {}
    blocks: list[Block] = [Paragraph(_headline(report))]
    blocks += _setting(report)
    blocks += _privacy(report, images)
    blocks += _utility(report, images)
    blocks += _attacks(report, images)
    blocks += _audit(report, images)
    footer = (f"Generated {report.generated} by privaudit {report.setting.software['report'].get('privaudit')} "
              f"from {report.setting.run_dir}. Machine-readable twin: report.json.")
    return Document(title=f"privaudit report: {report.setting.run_name}", blocks=tuple(blocks), images=images,
                    footer=footer)


def _headline(r: RunReport) -> str:
    parts = []
    if r.utility is not None and r.utility.final_test_accuracy is not None:
        parts.append(f"held-out accuracy {fmt_pct(r.utility.final_test_accuracy)}")
    if r.privacy is not None:
        if not r.privacy.private:
            parts.append("no differential privacy (ε = ∞)")
        elif r.privacy.final_epsilon() is not None:
            parts.append(f"ε = {fmt_eps(r.privacy.final_epsilon())} at δ = {fmt_num(r.privacy.delta, 3)} (PLD)")
    if r.attacks is not None:
        aucs = [(row.auc, row.name) for row in r.attacks.rows if row.auc is not None]
        if aucs:
            auc, name = max(aucs)
            parts.append(f"strongest attack AUC {auc:.3f} ({name})")
    if r.audit is not None:
        parts.append(f"audit {r.audit.verdict}")
    return ("Summary: " + "; ".join(parts) + ".") if parts else "Summary: nothing but the run directory exists yet."


def _missing(r: RunReport, section: str) -> list[Block]:
    return [Paragraph(f"Not available: {r.missing.get(section, 'not run')}.", kind="missing")]


def _value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "×".join(str(x) for x in v) if all(isinstance(x, int) for x in v) else json.dumps(v)
    if isinstance(v, float):
        return fmt_num(v, 6)
    return "n/a" if v is None else str(v)


def _rows(items: Any) -> tuple[tuple[str, str], ...]:
    return tuple((k.replace("_", " "), _value(v)) for k, v in items.items() if v is not None)


def _setting(r: RunReport) -> list[Block]:
    s = r.setting
    blocks: list[Block] = [Heading("1. The setting"),
                           Paragraph(f"Run {s.run_name} ({s.run_dir}), status: {_value(s.status)}.")]
    if "setting" in r.missing:
        blocks += _missing(r, "setting")
    blocks.append(Table(("data", "value"), _rows(s.data)))
    blocks.append(Table(("model and training", "value"), _rows(s.model)))
    if s.dp is None:
        blocks.append(Paragraph("Differential privacy: none. The model was trained without DP (ε = ∞).",
                                kind="note"))
    else:
        blocks.append(Table(("differential privacy", "value"), _rows(s.dp)))
    blocks.append(Table(("seed", "value"), _rows(s.seeds)))
    soft = [(f"{where}: {name}", str(ver)) for where, versions in s.software.items() for name, ver in versions.items()]
    blocks.append(Table(("software", "version"), tuple(soft), caption="Versions recorded when the model was "
                                                                      "trained, and those that wrote this report."))
    return blocks


def _privacy(r: RunReport, images: dict[str, bytes]) -> list[Block]:
    blocks: list[Block] = [Heading("2. Privacy")]
    p = r.privacy
    if p is None:
        return blocks + _missing(r, "privacy")
    blocks += [Paragraph(n, kind="note") for n in p.notes]
    if p.curves:
        blocks.append(Paragraph(
            f"ε at δ = {fmt_num(p.delta, 3)} ({p.neighboring_relation.replace('_', '/')} neighbours), recomputed by "
            "this report from the ledger's first steps at each epoch boundary, with each accountant. PLD and RDP "
            "give rigorous upper bounds (PLD the tighter); GDP is a central-limit approximation that can "
            "under-report ε, shown for comparison only. The last column is the ε training logged with its own "
            f"accountant ({p.training_accountant})."))
        images["privacy.png"] = _plots.figure_png(_plots.privacy_figure(p))
        blocks.append(Figure("privacy.png", "Epsilon against training steps for the PLD, RDP and GDP accountants"))
        by_step = {c.accountant: dict(zip(c.steps, c.epsilons)) for c in p.curves}
        header = ("epoch", "step", *(c.label for c in p.curves), "logged in training")
        shown = _spread(list(p.points), MAX_EPOCH_ROWS)
        rows = tuple((fmt_num(pt.epoch), str(pt.step),
                      *(fmt_eps(by_step[c.accountant].get(min(pt.step, p.total_steps))) for c in p.curves),
                      fmt_eps(pt.logged_epsilon)) for pt in shown)
        caption = "" if len(shown) == len(p.points) else f"{len(shown)} of {len(p.points)} epochs (all in report.json)."
        blocks.append(Table(header, rows, caption=caption))
        for c in p.curves:
            if c.error:
                blocks.append(Paragraph(f"{c.label}: could not account for the ledger ({c.error}).", kind="note"))
    blocks.append(Heading("The privacy ledger", level=3))
    if p.ledger:
        blocks.append(Table(("#", "event", "count", "first", "last", "note"),
                            tuple((str(e.index), e.event, str(e.count), e.first, e.last, e.note or "")
                                  for e in p.ledger),
                            caption=f"{p.total_steps} steps in all (ledger.json; identical consecutive steps "
                                    "share one entry)."))
    else:
        blocks.append(Paragraph("The ledger is empty: no private release was recorded.", kind="note"))
    return blocks


def _spread(items: list[Any], n: int) -> list[Any]:
    if len(items) <= n:
        return items
    idx = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)})
    return [items[i] for i in idx]


def _utility(r: RunReport, images: dict[str, bytes]) -> list[Block]:
    blocks: list[Block] = [Heading("3. Utility")]
    u = r.utility
    if u is None:
        return blocks + _missing(r, "utility")
    images["utility.png"] = _plots.figure_png(_plots.utility_figure(u))
    blocks.append(Figure("utility.png", "Loss and accuracy on the training and held-out splits over training"))
    last = {k: next((v for v in reversed(vals) if v is not None), None) for k, vals in u.series.items()}
    blocks.append(Table(("split", "loss (nats)", "accuracy"),
                        (("training", fmt_num(last.get("train_loss")), fmt_pct(last.get("train_accuracy"))),
                         ("held-out", fmt_num(last.get("test_loss")), fmt_pct(last.get("test_accuracy")))),
                        caption=f"After the last {u.x_name} ({fmt_num(u.x[-1])}); from metrics.jsonl."))
    return blocks


def _fixed(x: float | None, decimals: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{decimals}f}"


def _attacks(r: RunReport, images: dict[str, bytes]) -> list[Block]:
    blocks: list[Block] = [Heading("4. Membership-inference attacks")]
    a = r.attacks
    if a is None:
        return blocks + _missing(r, "attacks")
    # Standard error of a chance AUC: AUC = U / (P N), and under no effect (no ties) Var U = P N (P + N + 1) / 12
    # (Mann & Whitney 1947), so Var AUC = (P + N + 1) / (12 P N).
    se = (math.sqrt((a.members + a.non_members + 1) / (12.0 * a.members * a.non_members))
          if a.members and a.non_members else None)
    blocks.append(Paragraph(
        f"Population: {fmt_num(a.members)} members (trained on) and {fmt_num(a.non_members)} non-members; "
        f"{fmt_num(a.shadows)} shadow models; attack seed {fmt_num(a.seed)}. An AUC of 0.5 is chance. The ε lower "
        f"bound holds with probability ≥ {fmt_num(1 - a.alpha) if a.alpha is not None else 'n/a'} at "
        f"δ = {fmt_num(a.delta, 3)} ({a.delta_source or 'as recorded'}); TPR at an FPR is reported only when there "
        "are enough non-members for that FPR to mean at least a handful of false positives."
        + ("" if se is None else f" For scale: with these population sizes an attack that knows nothing scores "
                                 f"AUC 0.5 with a standard error of {se:.3f}.")))
    drawable = [(row.name, row.roc_fpr, row.roc_tpr, row.auc) for row in a.rows if row.roc_fpr is not None]
    if drawable:
        images["roc.png"] = _plots.figure_png(_plots.roc_figure(drawable, negatives=a.non_members,
                                                                positives=a.members))
        blocks.append(Figure("roc.png", "Log-log ROC curves of every attack",
                             caption=f"ROC points from {a.roc_source}."))
    elif a.plot_file is not None:
        images["attack_roc.png"] = (Path(r.setting.run_dir) / a.plot_file).read_bytes()
        blocks.append(Figure("attack_roc.png", "Log-log ROC curves of every attack (attack.json's own plot)"))
    fprs = sorted({f for row in a.rows for f, _, _ in row.tpr_at_fpr})
    header = ("attack", "AUC", *(f"TPR @ {100 * f:g}% FPR" for f in fprs), "advantage", "ε lower bound")
    rows = []
    for row in a.rows:
        tpr = {f: v for f, v, _ in row.tpr_at_fpr}
        cells = [fmt_pct(tpr[f], 2) if tpr.get(f) is not None else "n/a (too few negatives)" for f in fprs]
        rows.append((row.name, _fixed(row.auc), *cells, _fixed(row.advantage), fmt_eps(row.epsilon_lower_bound)))
    blocks.append(Table(header, tuple(rows), caption="From attack.json."))
    # One line per method, with the per-attack numbers of thresholds folded into "the thresholds tried".
    methods = sorted({re.sub(r"\b\d+ thresholds", "the thresholds tried", row.epsilon_method)
                      for row in a.rows if row.epsilon_method})
    if methods:
        blocks.append(Bullets(tuple(f"ε lower bound: {m}." for m in methods)))
    blocks += [Paragraph(n, kind="note") for n in a.notes]
    return blocks


def _audit(r: RunReport, images: dict[str, bytes]) -> list[Block]:
    blocks: list[Block] = [Heading("5. Audit")]
    d = r.audit
    if d is None:
        return blocks + _missing(r, "audit")
    kind = {"PASS": "pass", "FAIL": "fail"}.get(d.verdict.upper(), "note")
    blocks.append(Paragraph(d.sentence, kind=kind))
    info = d.trainer_info
    if info:
        blocks.append(Paragraph(
            f"What was audited: the {d.trainer} trainer ({info.get('implementation', 'n/a')}) trained afresh with "
            f"canaries inserted, at noise multiplier {fmt_num(info.get('noise_multiplier'))}, sampling rate "
            f"{fmt_num(info.get('sampling_rate'))}, {fmt_num(info.get('steps'))} steps and clipping norm "
            f"{fmt_num(info.get('max_grad_norm'))}. An audit needs training runs of its own, so it tests the "
            "implementation's claim at this setting, not the weights of this particular run."))
    conf = f"{100 * d.confidence:g}%" if d.confidence is not None else "n/a"
    blocks.append(Table(("quantity", "value"), (
        ("claimed ε (PLD accountant over the claimed event)", fmt_eps(d.epsilon_claimed)),
        (f"rigorous ε lower bound ({conf} confidence)", fmt_eps(d.epsilon_lower_bound)),
        ("Gaussian-DP estimate (an estimate, not a bound)",
         fmt_eps(d.gdp_epsilon) + ("" if d.gdp_mu is None else f" (μ = {d.gdp_mu:.3f})")),
        ("δ", fmt_num(d.delta, 3)),
        ("bound method", d.method or "n/a"),
        ("trainer audited / threat model", f"{d.trainer} / {d.threat}"),
        ("canaries × runs", f"{fmt_num(d.canaries)} × {fmt_num(d.runs)}"),
        ("audit seed", fmt_num(d.seed)),
    ), caption=f"From {d.file}."))
    images["audit_bound.png"] = _plots.figure_png(_plots.audit_bound_figure(d))
    blocks.append(Figure("audit_bound.png", "Claimed epsilon against the audit's lower bound and estimate"))
    if d.scores_in or d.scores_out:
        images["audit_scores.png"] = _plots.figure_png(_plots.canary_histogram_figure(d))
        blocks.append(Figure("audit_scores.png", "Histograms of the IN and OUT canaries' scores",
                             caption="The further apart the two histograms, the more the training reveals "
                                     "about which canaries it saw."))
    return blocks
