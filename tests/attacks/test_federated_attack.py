"""Attacks on a federated run directory: LOSS works, shadow-model attacks are refused."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from privaudit.attacks import run_attack
from privaudit.cli import main
from privaudit.training._fed_job import train_federated
from privaudit.training._fed_settings import FederatedSettings


@pytest.fixture(scope="module")
def fed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    s = FederatedSettings(data="digits", model="logreg", clients=4, rounds=2, client_rate=0.5, local_steps=2,
                          batch_size=32, dp="client", noise_multiplier=1.0, delta=1e-6, test_fraction=0.5,
                          device="cpu", out=str(out), name="fed", eval_every=2)
    return train_federated(s).run_dir


def test_loss_attack_on_a_federated_run_writes_attack_json(fed_run):
    report = run_attack(fed_run, attacks="loss", device="cpu")
    data = json.loads((fed_run / "attack.json").read_text())
    assert list(data["attacks"]) == ["loss"] == list(report.results)
    assert 0.0 <= data["attacks"]["loss"]["auc"] <= 1.0
    split = json.loads((fed_run / "split.json").read_text())
    clients = json.loads((fed_run / "federation.json").read_text())["partition"]["client_examples"]
    members = sum(len(c) for c in clients)
    assert members == len(split["members"])
    assert data["population"] == {"size": members + len(split["non_members"]), "members": members,
                                  "non_members": len(split["non_members"])}
    assert data["delta"] == 1e-6 and data["delta_source"] == "the run's delta"
    assert data["source"]["federated"] is True and data["source"]["dp"] == "client"


@pytest.mark.parametrize("attack", ["lira", "rmia_offline"])
def test_shadow_attacks_on_a_federated_run_are_refused(fed_run, attack):
    with pytest.raises(ValueError, match="shadow training for federated runs is not supported"):
        run_attack(fed_run, attacks=attack, shadows=4, device="cpu", write=False)


def test_cli_refuses_lira_on_a_federated_run_with_exit_2(fed_run):
    result = CliRunner().invoke(main, ["attack", str(fed_run), "--attack", "lira", "--quiet", "--device", "cpu"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "lira_online" in result.output and "shadow training for federated runs is not supported" in result.output
    assert not (fed_run / "shadows").exists()
