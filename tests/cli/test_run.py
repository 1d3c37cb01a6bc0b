"""`privaudit run` end to end on a reduced setting: every artefact exists and agrees with the others."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from privaudit.accounting import make_accountant
from privaudit.attacks import roc_curve
from privaudit.cli import main
from privaudit.reports import PipelineEvent, PipelineResult, verdict_sentence
from privaudit.training._rundir import RunDir


def run(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    out = tmp_path_factory.mktemp("run-cli")
    result = run("run", "--model", "logreg", "--epochs", "2", "--shadows", "3", "--canaries", "40", "--attack", "loss",
                 "--attack", "lira", "--test-fraction", "0.5", "--epsilon", "2", "--name", "e2e", "--out", out,
                 "--device", "cpu", "--quiet")
    return out / "e2e", result


def test_help():
    result = run("run", "--help")
    assert result.exit_code == 0
    for flag in ("--epochs", "--shadows", "--canaries", "--quick", "--epsilon"):
        assert flag in result.output


def test_ends_with_the_report_path_and_writes_every_artefact(e2e):
    run_dir, result = e2e
    assert result.exit_code == 0, result.output
    assert Path(result.output.strip().splitlines()[-1]) == run_dir / "report" / "report.html"
    for name in ("config.toml", "ledger.json", "split.json", "metrics.jsonl", "summary.json", "model.safetensors",
                 "attack.json", "attack_roc.png", "attack_scores.json", "audit.json", "audit_scores.png",
                 "audit_bound.png", "report/report.html", "report/report.md", "report/report.json",
                 "report/privacy.png", "report/utility.png", "report/roc.png", "report/audit_bound.png",
                 "report/audit_scores.png"):
        assert (run_dir / name).is_file(), name


def test_epsilon_in_the_report_is_the_ledger_epsilon(e2e):
    run_dir, _ = e2e
    report = json.loads((run_dir / "report" / "report.json").read_text())
    ledger = RunDir.open(run_dir).read_ledger()
    summary = RunDir.open(run_dir).read_summary()
    delta = report["privacy"]["delta"]
    assert delta == summary["delta"] == 1e-5
    finals = {c["accountant"]: c["epsilons"][-1] for c in report["privacy"]["curves"]}
    assert set(finals) == {"pld", "rdp", "gdp"}
    for name, eps in finals.items():
        assert eps == pytest.approx(make_accountant(name).compose(ledger.to_event()).get_epsilon(delta), rel=1e-9)
    assert finals["pld"] == pytest.approx(summary["epsilon"], rel=1e-9)
    assert finals["pld"] <= 2.0 + 1e-9  # calibrated to the target, never above it
    md = (run_dir / "report" / "report.md").read_text(encoding="utf-8")
    assert f"ε = {finals['pld']:.3f} at δ = 1e-05 (PLD)" in md


def test_roc_in_the_report_is_attack_json_s(e2e):
    run_dir, _ = e2e
    report = json.loads((run_dir / "report" / "report.json").read_text())
    attack = json.loads((run_dir / "attack.json").read_text())
    scores = json.loads((run_dir / "attack_scores.json").read_text())
    rows = {r["name"]: r for r in report["attacks"]["rows"]}
    assert list(rows) == list(attack["attacks"])
    for name, entry in attack["attacks"].items():
        row = rows[name]
        # The report draws attack.json's stored points: at most 500 of the saved scores' full curve.
        assert row["roc_fpr"] == entry["roc"]["fpr"] and row["roc_tpr"] == entry["roc"]["tpr"]
        curve = roc_curve(scores=scores["scores"][name], membership=scores["membership"])
        assert len(row["roc_fpr"]) <= 500 and entry["roc"]["points_total"] == len(curve.fpr)
        assert set(zip(row["roc_fpr"], row["roc_tpr"])) <= set(zip(curve.fpr.tolist(), curve.tpr.tolist()))
        fpr, tpr = np.asarray(row["roc_fpr"]), np.asarray(row["roc_tpr"])
        assert float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)) == pytest.approx(entry["auc"], abs=2e-3)
        assert row["auc"] == entry["auc"] and row["advantage"] == entry["advantage"]
        assert row["epsilon_lower_bound"] == entry["epsilon_lower_bound"]["value"]
        reported = {f: v for f, v, _ in row["tpr_at_fpr"]}
        assert reported == {float(k): v for k, v in entry["tpr_at_fpr"].items()}
    page = (run_dir / "report" / "report.html").read_text(encoding="utf-8")
    assert "n/a (too few negatives)" in page  # 899 non-members: no TPR at 0.1% FPR


def test_verdict_in_the_report_is_audit_json_s(e2e):
    run_dir, result = e2e
    audit = json.loads((run_dir / "audit.json").read_text())
    page = (run_dir / "report" / "report.html").read_text(encoding="utf-8")
    import html

    assert html.escape(verdict_sentence(audit)) in page
    assert f"audit: {audit['verdict']}" in result.output
    # The audit tested the run's claim: same epsilon (the PLD accountant over the same kind of event).
    summary = RunDir.open(run_dir).read_summary()
    assert audit["epsilon_claimed"] == pytest.approx(summary["epsilon"], abs=0.02)
    assert audit["trainer_info"]["max_grad_norm"] == 0.5  # the default recipe's C


@pytest.mark.parametrize("args, message", [
    (("--shadows", "2"), "shadows >= 3 for LiRA"),
    (("--canaries", "0"), "canaries"),
    (("--epsilon", "-1"), "target_epsilon"),
    (("--epochs", "0"), "epochs"),
])
def test_bad_input_exits_2_before_training(tmp_path, args, message):
    result = run("run", "--out", tmp_path, "--quiet", *args)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and message in result.output
    assert not any(tmp_path.iterdir())  # nothing was trained


def test_existing_run_directory_is_refused(e2e):
    run_dir, _ = e2e
    result = run("run", "--name", run_dir.name, "--out", run_dir.parent, "--quiet")
    assert result.exit_code == 2 and "exists" in result.output


def test_progress_display_names_each_stage(monkeypatch, tmp_path):
    import privaudit.reports as reports

    def fake_pipeline(settings, options, *, listener=None):
        for stage in ("train", "attack", "audit", "report"):
            listener(PipelineEvent(stage=stage, kind="start", message=f"{stage} started"))
            listener(PipelineEvent(stage=stage, kind="progress", completed=1, total=2))
            listener(PipelineEvent(stage=stage, kind="done", message=f"{stage} finished"))
        return PipelineResult(run_dir=tmp_path, report=type("F", (), {"html": tmp_path / "report.html"})(),
                              test_accuracy=0.5, epsilon=1.0, verdict="PASS", interrupted=False, seconds={"train": 1.0})

    monkeypatch.setattr(reports, "run_pipeline", fake_pipeline)
    result = run("run", "--out", tmp_path, "--quick")
    assert result.exit_code == 0, result.output
    for title in ("1/4 train", "2/4 attack", "3/4 audit", "4/4 report", "report finished"):
        assert title in result.output
    assert result.output.strip().splitlines()[-1] == str(tmp_path / "report.html")
