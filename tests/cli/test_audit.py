"""`privaudit audit`: PASS exits 0, FAIL exits 3, bad input exits 2 on one line; files and JSON."""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

from privaudit.cli import main

# A white-box Gaussian mechanism over a 4,030-parameter linear model, claiming full-batch DP-GD.
# `honest` adds the claimed noise; `leaky` a tenth of it.
TRAINERS = textwrap.dedent("""
    import numpy as np
    from torch import nn
    from privaudit.accounting import calibrate_noise_multiplier, dpsgd_event
    from privaudit.audit import TrainerOutput

    def _train(dataset, epsilon, delta, seed, scale):
        steps, model = 10, nn.Linear(64, 62)
        sigma = calibrate_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sampling_rate=1.0,
                                           steps=steps)
        updates = scale * sigma * np.random.default_rng(seed).normal(size=(steps, 64 * 62 + 62))
        gc = dataset.gradient_canaries
        if gc is not None:
            coords, values = gc.directions(updates.shape[1])
            for k in gc.included:
                updates[:, coords[k]] += values[k]
        return TrainerOutput(model=model, event=dpsgd_event(sigma, steps, sampling_rate=1.0), delta=delta,
                             max_grad_norm=1.0, updates=updates)

    def honest(dataset, *, epsilon, delta, seed, record_updates):
        return _train(dataset, epsilon, delta, seed, 1.0)

    def leaky(dataset, *, epsilon, delta, seed, record_updates):
        return _train(dataset, epsilon, delta, seed, 0.1)
""")


@pytest.fixture
def trainers(tmp_path, monkeypatch):
    (tmp_path / "cli_audit_trainers.py").write_text(TRAINERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(main, ["audit", *args])


def test_help():
    result = run("--help")
    assert result.exit_code == 0
    for flag in ("--trainer", "--epsilon", "--delta", "--canaries", "--threat", "--runs", "--data", "--seed",
                 "--out", "--json"):
        assert flag in result.output


def test_pass_exits_0_and_prints_claim_bound_estimate_verdict(trainers):
    result = run("--trainer", "cli_audit_trainers:honest", "--epsilon", "2", "--canaries", "2000",
                 "--threat", "whitebox", "--out", "pass", "--quiet")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "epsilon claimed" in out and "95% confidence" in out and "NOT a bound" in out
    assert "verdict: PASS" in out
    data = json.loads((trainers / "pass" / "audit.json").read_text())
    assert data["verdict"] == "PASS" and len(data["scores"]) == 2000
    assert (trainers / "pass" / "audit_scores.png").exists() and (trainers / "pass" / "audit_bound.png").exists()


def test_fail_exits_3_with_json(trainers):
    result = run("--trainer", "cli_audit_trainers:leaky", "--epsilon", "1", "--canaries", "1000",
                 "--threat", "whitebox", "--json")
    assert result.exit_code == 3, result.output
    data = json.loads(result.output)
    assert data["verdict"] == "FAIL"
    assert data["epsilon_lower_bound"] > data["epsilon_claimed"]
    assert data["gdp_estimate"]["is_bound"] is False
    assert "scores" not in data  # the per-canary arrays stay in audit.json
    assert data["files"][0].endswith("audit.json")  # default folder under ./audits/


def test_builtin_trainer_end_to_end(trainers):
    result = run("--trainer", "privaudit", "--epsilon", "4", "--canaries", "50", "--threat", "blackbox",
                 "--hidden", "16", "--epochs", "1", "--sampling-rate", "1", "--out", "bb", "--quiet")
    assert result.exit_code in (0, 3), result.output
    assert result.exit_code == 0  # correct DP-SGD
    assert json.loads((trainers / "bb" / "audit.json").read_text())["trainer_info"]["steps"] == 1


@pytest.mark.parametrize("args, fragment", [
    (["--trainer", "privaudit", "--epsilon", "-1", "--canaries", "10"], "epsilon=-1.0"),
    (["--trainer", "privaudit", "--epsilon", "1", "--canaries", "0"], "canaries=0"),
    (["--trainer", "privaudit", "--epsilon", "1", "--canaries", "10", "--delta", "2"], "delta=2.0"),
    (["--trainer", "no-such-trainer", "--epsilon", "1", "--canaries", "10"], "trainer="),
    (["--trainer", "no_such_module_xyz:train", "--epsilon", "1", "--canaries", "10"], "Cannot import"),
    (["--trainer", "privaudit", "--epsilon", "1", "--canaries", "10", "--runs", "3"], "canaries=1"),
    (["--trainer", "privaudit", "--epsilon", "1", "--canaries", "10", "--data", "nope"], "spec='nope'"),
    (["--trainer", "cli_audit_trainers:honest", "--epsilon", "1", "--canaries", "10", "--hidden", "8"],
     "built-in trainers only"),
    (["--trainer", "privaudit", "--epsilon", "1", "--canaries", "10", "--sampling-rate", "3"], "sampling_rate"),
])
def test_bad_input_exits_2_on_one_line(trainers, args, fragment):
    result = run(*args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and fragment in lines[0], result.output
    assert "Traceback" not in result.output
