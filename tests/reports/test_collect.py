"""Reading a run directory: epsilon recomputed from the ledger, tolerant readers, ROC points."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from privaudit.accounting import (
    GaussianEvent,
    PoissonSampledEvent,
    PrivacyLedger,
    make_accountant,
)
from privaudit.attacks import roc_curve
from privaudit.reports import collect_run, epsilon_curves, ledger_prefix_event, write_report
from privaudit.reports._results import SCORES_NAME
from privaudit.training._rundir import RunDir


def _naive_prefix_epsilon(ledger: PrivacyLedger, steps: int, name: str, delta: float) -> float:
    """Oracle: compose the ledger one step at a time, in order, and stop after `steps`."""
    acct = make_accountant(name, neighboring_relation=ledger.neighboring_relation)
    taken = 0
    for entry in ledger.entries:
        for _ in range(entry.count):
            if taken == steps:
                return acct.get_epsilon(delta)
            acct.compose(entry.event)
            taken += 1
    return acct.get_epsilon(delta)


def test_prefix_matches_step_by_step_composition():
    # Prepare: a heterogeneous ledger (the noise changes after 3 steps).
    ledger = PrivacyLedger()
    ledger.record(PoissonSampledEvent(0.1, GaussianEvent(1.0)), 3)
    ledger.record(PoissonSampledEvent(0.2, GaussianEvent(2.0)), 4)
    # Execute
    curves = epsilon_curves(ledger, [1, 3, 5, 7, 99], delta=1e-5, accountants=("rdp", "gdp"))
    # Assert: every prefix equals the naive composition; 99 is clipped to the ledger's 7 steps.
    for curve in curves:
        assert curve.error is None and curve.steps == (1, 3, 5, 7)
        for s, eps in zip(curve.steps, curve.epsilons):
            assert eps == pytest.approx(_naive_prefix_epsilon(ledger, s, curve.accountant, 1e-5), rel=1e-9)
    assert [e.count for e in ledger_prefix_event(ledger, 5).events] == [3, 2]


def test_report_epsilon_is_the_ledger_epsilon(pipeline_run):
    run_dir, result, _ = pipeline_run
    report = collect_run(run_dir)
    ledger = RunDir.open(run_dir).read_ledger()
    delta = report.privacy.delta
    assert delta == 1e-5 and report.privacy.total_steps == ledger.total_count() > 0
    for curve in report.privacy.curves:
        whole = make_accountant(curve.accountant).compose(ledger.to_event()).get_epsilon(delta)
        assert curve.final == pytest.approx(whole, rel=1e-9), curve.accountant
    # Training logged epsilon with PLD at every epoch: the report's recomputation agrees.
    pld = next(c for c in report.privacy.curves if c.accountant == "pld")
    logged = {p.step: p.logged_epsilon for p in report.privacy.points}
    for step, eps in zip(pld.steps, pld.epsilons):
        assert eps == pytest.approx(logged[step], rel=1e-9)
    assert pld.final == pytest.approx(result.epsilon, rel=1e-9)
    gdp = next(c for c in report.privacy.curves if c.accountant == "gdp")
    assert not gdp.is_upper_bound and "approximation" in gdp.label


def test_roc_points_are_attack_json_s_points_of_the_saved_scores_curve(pipeline_run):
    run_dir, _, _ = pipeline_run
    report = collect_run(run_dir)
    attack = json.loads((run_dir / "attack.json").read_text())
    saved = json.loads((run_dir / SCORES_NAME).read_text())
    assert [r.name for r in report.attacks.rows] == list(attack["attacks"]) == ["loss", "lira_online", "lira_offline"]
    assert report.attacks.roc_source == "attack.json"
    for row in report.attacks.rows:
        stored = attack["attacks"][row.name]["roc"]
        assert list(row.roc_fpr) == stored["fpr"] and list(row.roc_tpr) == stored["tpr"]
        # attack.json keeps at most 500 of the full curve's own points (the curve of the saved scores).
        curve = roc_curve(scores=saved["scores"][row.name], membership=saved["membership"])
        assert len(row.roc_fpr) <= 500 and stored["points_total"] == len(curve.fpr)
        assert set(zip(row.roc_fpr, row.roc_tpr)) <= set(zip(curve.fpr.tolist(), curve.tpr.tolist()))
        # The area under the report's ROC is attack.json's AUC, up to the points left out.
        fpr, tpr = np.asarray(row.roc_fpr), np.asarray(row.roc_tpr)
        area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
        assert area == pytest.approx(attack["attacks"][row.name]["auc"], abs=2e-3)
        assert row.auc == attack["attacks"][row.name]["auc"]


def test_missing_artefacts_are_reported_not_raised(run_copy):
    for name in ("attack.json", "audit.json", "metrics.jsonl", SCORES_NAME):
        (run_copy / name).unlink()
    report, files = write_report(run_copy)
    assert report.attacks is None and report.audit is None and report.utility is None
    assert set(report.missing) == {"attacks", "audit", "utility"}
    html = files.html.read_text()
    assert html.count("Not available:") == 3
    assert report.privacy is not None and report.privacy.curves  # from the ledger alone (no epoch points)


def test_corrupt_and_stale_files(run_copy):
    (run_copy / "audit.json").write_text("{not json")
    attack = json.loads((run_copy / "attack.json").read_text())
    attack["notes"] = ["re-run"]  # attack.json changed since attack_scores.json: the scores are stale
    for entry in attack["attacks"].values():  # and it stores no ROC points of its own (an older attack.json)
        entry.pop("roc", None)
    (run_copy / "attack.json").write_text(json.dumps(attack))
    report = collect_run(run_copy)
    assert report.audit is None and "unreadable" in report.missing["audit"]
    assert all(r.roc_fpr is None for r in report.attacks.rows)
    assert any("earlier attack.json" in n for n in report.attacks.notes)
    _, files = write_report(run_copy)  # falls back to the attack's own plot
    assert (files.html.parent / "attack_roc.png").is_file()


def test_roc_points_stored_in_attack_json_win(run_copy):
    attack = json.loads((run_copy / "attack.json").read_text())
    attack["attacks"]["loss"]["roc"] = {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.75, 1.0]}
    del attack["attacks"]["lira_online"]["roc"]  # an attack without stored points and without saved scores
    (run_copy / "attack.json").write_text(json.dumps(attack))
    (run_copy / SCORES_NAME).unlink()
    rows = {r.name: r for r in collect_run(run_copy).attacks.rows}
    assert rows["loss"].roc_fpr == (0.0, 0.5, 1.0) and rows["lira_online"].roc_fpr is None


def test_report_json_is_the_run_report(pipeline_run, tmp_path):
    run_dir, _, _ = pipeline_run
    report, files = write_report(run_dir, tmp_path / "rep")
    data = json.loads(files.json.read_text())
    assert data["format"] == "privaudit.report/1"
    assert data["privacy"]["curves"][0]["epsilons"] == list(report.privacy.curves[0].epsilons)
    assert data["audit"]["verdict"] == json.loads((run_dir / "audit.json").read_text())["verdict"]
    assert sorted(data["files"]["images"]) == sorted(p.name for p in files.images)
    assert all(math.isfinite(x) for x in data["attacks"]["rows"][0]["roc_fpr"])


def test_not_a_run_directory(tmp_path):
    with pytest.raises(ValueError, match="not a run directory"):
        collect_run(tmp_path)
