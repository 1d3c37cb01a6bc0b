"""A whole training run: artefacts, consistency with the accountant, and exact resumption."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from privaudit.accounting import PrivacyLedger, flatten_event, make_accountant
from privaudit.cli import main
from privaudit.training._rundir import RunDir
from privaudit.training._job import TrainSettings, train_job

SMALL = dict(model="logreg", epochs=2, batch_size=256, noise_multiplier=1.0, lr=2.0)


def test_run_directory_is_complete_and_consistent(tmp_path):
    result = train_job(TrainSettings(out=str(tmp_path), name="r", **SMALL))
    rd = RunDir.open(tmp_path / "r")
    ledger = rd.read_ledger()
    # Ledger steps = optimizer steps = planned steps.
    assert ledger.total_count() == result.steps == result.planned_steps
    eps = make_accountant("pld").compose(ledger.to_event()).get_epsilon(1e-5)
    summary = rd.read_summary()
    assert summary["epsilon"] == pytest.approx(eps, rel=1e-12)
    metrics = rd.read_metrics()
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert metrics[-1]["epsilon"] == pytest.approx(eps, rel=1e-12)
    assert metrics[0]["epsilon"] < metrics[1]["epsilon"]
    split = rd.read_split()
    assert len(split["members"]) == 1437 and len(split["non_members"]) == 360
    assert not set(split["members"]) & set(split["non_members"])
    weights = rd.load_weights()
    assert all(isinstance(t, torch.Tensor) for t in weights.values())
    assert rd.read_config()["settings"]["noise_multiplier"] == 1.0


def test_target_epsilon_is_never_exceeded(tmp_path):
    result = train_job(TrainSettings(out=str(tmp_path), name="t", model="logreg", epochs=3, batch_size=256,
                                     target_epsilon=1.0, lr=2.0))
    assert result.epsilon <= 1.0
    assert result.epsilon > 0.95


def test_resume_gives_the_same_ledger_and_model(tmp_path):
    full = train_job(TrainSettings(out=str(tmp_path), name="full", **SMALL))
    part = train_job(TrainSettings(out=str(tmp_path), name="part", **SMALL), max_steps=7)
    assert part.interrupted and part.steps == 7
    ckpt_ledger = RunDir.open(tmp_path / "part").read_ledger()
    assert ckpt_ledger.total_count() == 7  # spent budget is on disk at the interruption
    resumed = train_job(TrainSettings(out=str(tmp_path), name="part", **SMALL), resume=True)
    assert resumed.steps == full.steps
    a = RunDir.open(tmp_path / "full")
    b = RunDir.open(tmp_path / "part")
    la, lb = a.read_ledger(), b.read_ledger()
    assert [(e.event, e.count) for e in la.entries] == [(e.event, e.count) for e in lb.entries]
    assert flatten_event(la.to_event()) == flatten_event(lb.to_event())
    wa, wb = a.load_weights(), b.load_weights()
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert resumed.epsilon == pytest.approx(full.epsilon, rel=1e-12)


def test_existing_run_needs_resume(tmp_path):
    train_job(TrainSettings(out=str(tmp_path), name="x", **{**SMALL, "epochs": 1}))
    with pytest.raises(ValueError, match="--resume"):
        train_job(TrainSettings(out=str(tmp_path), name="x", **{**SMALL, "epochs": 1}))


def test_a_run_that_cannot_start_leaves_no_directory(tmp_path):
    # sigma_b = 0.01 leaves the update no room under the calibrated multiplier: make_private refuses.
    bad = TrainSettings(out=str(tmp_path), name="bad", model="logreg", epochs=1, target_epsilon=1.0,
                        adaptive_clip=True, count_noise_std=0.01)
    with pytest.raises(ValueError, match="count_noise_std"):
        train_job(bad)
    assert not (tmp_path / "bad").exists()
    # ... so the same name works once the settings are fixed.
    train_job(dataclasses.replace(bad, count_noise_std=None))
    assert (tmp_path / "bad" / "summary.json").is_file()


def test_no_dp_run_has_empty_ledger(tmp_path):
    result = train_job(TrainSettings(out=str(tmp_path), name="n", model="logreg", epochs=1, no_dp=True))
    assert result.epsilon == float("inf")
    assert RunDir.open(tmp_path / "n").read_ledger().total_count() == 0
    assert RunDir.open(tmp_path / "n").read_summary()["epsilon"] is None


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(model="resnet"), "model"),
        (dict(epochs=0), "epochs"),
        (dict(batch_size=0), "batch_size"),
        (dict(delta=0.0), "delta"),
        (dict(noise_multiplier=None), "exactly one"),
        (dict(target_epsilon=1.0), "exactly one"),
        (dict(no_dp=True), "--no-dp"),
        (dict(momentum=1.0), "momentum"),
    ],
)
def test_bad_settings(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        TrainSettings(**{**SMALL, **kwargs})


def test_cli_train_writes_a_run_and_resumes(tmp_path):
    runner = CliRunner()
    args = ["train", "--model", "logreg", "--epochs", "1", "--noise-multiplier", "1.0",
            "--out", str(tmp_path), "--name", "c", "--quiet"]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "test accuracy" in r.output
    ledger = PrivacyLedger.load(tmp_path / "c" / "ledger.json")
    assert ledger.total_count() == 6
    again = runner.invoke(main, args)
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(main, ["train", "--name", "c", "--out", str(tmp_path), "--resume", "--quiet"])
    assert resumed.exit_code == 0, resumed.output  # nothing left to do, ledger unchanged
    assert PrivacyLedger.load(tmp_path / "c" / "ledger.json").total_count() == 6


def test_cli_train_config_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('model = "logreg"\nepochs = 1\nno_dp = true\n')
    r = CliRunner().invoke(main, ["train", "--config", str(cfg), "--out", str(tmp_path), "--name", "f", "--quiet"])
    assert r.exit_code == 0, r.output
    settings = json.loads(json.dumps(RunDir.open(tmp_path / "f").read_config()["settings"]))
    assert settings["model"] == "logreg" and settings["no_dp"] is True


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--epochs", "-1", "--noise-multiplier", "1"], "epochs"),
        (["--noise-multiplier", "1", "--target-epsilon", "1"], "exactly one"),
        (["--data", "/nonexistent/file.csv", "--target", "y", "--noise-multiplier", "1"], "file.csv"),
        (["--data", "mnist", "--noise-multiplier", "1"], "mnist"),
        (["--noise-multiplier", "0"], "noise_multiplier"),
        (["--delta", "2", "--noise-multiplier", "1"], "delta"),
        (["--config", "/nonexistent.toml"], "config"),
        (["--device", "tpu", "--noise-multiplier", "1"], "device"),
    ],
)
def test_cli_train_bad_input_exits_2(tmp_path, args, needle):
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path), "--quiet", *args])
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert "Traceback" not in r.output
