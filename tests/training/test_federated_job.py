"""`train_federated` and `privaudit train --federated`: the run directory and bad input."""

from __future__ import annotations

import json

import click
import numpy as np
import pytest
from click.testing import CliRunner

from privaudit.accounting import make_accountant
from privaudit.cli import main
from privaudit.cli._federated_options import run_federated
from privaudit.cli.train import train
from privaudit.training._fed_job import train_federated
from privaudit.training._fed_settings import FederatedSettings
from privaudit.training._rundir import RunDir

SMALL = dict(model="logreg", clients=20, rounds=3, partition="dirichlet", local_steps=2, batch_size=16, lr=0.5)


def test_client_dp_run_directory_is_complete_and_consistent(tmp_path):
    seen = []
    result = train_federated(FederatedSettings(out=str(tmp_path), name="c", client_rate=0.25, dp="client",
                                               noise_multiplier=1.0, **SMALL), on_round=seen.append)
    rd = RunDir.open(tmp_path / "c")
    ledger = rd.read_ledger()
    assert ledger.total_count() == result.rounds == 3  # one ledger entry per round, clients or not
    eps = make_accountant("pld").compose(ledger.to_event()).get_epsilon(1e-5)
    assert rd.read_summary()["epsilon"] == pytest.approx(eps, rel=1e-12) == result.epsilon
    metrics = rd.read_metrics()
    assert [m["round"] for m in metrics] == [1, 2, 3] == [r.round for r in seen]
    assert metrics[0]["epsilon"] < metrics[1]["epsilon"] < metrics[2]["epsilon"] == pytest.approx(eps)
    fed = json.loads((tmp_path / "c" / "federation.json").read_text())
    assert fed["format"] == "privaudit.federation/1" and len(fed["rounds"]) == 3
    assert [len(r["clients"]) for r in fed["rounds"]] == [m["clients"] for m in metrics]
    members = rd.read_split()["members"]
    rows = sorted(i for c in fed["partition"]["clients"] for i in c)
    assert rows == list(range(len(members)))
    examples = fed["partition"]["client_examples"]
    assert [members[i] for i in fed["partition"]["clients"][5]] == examples[5]
    assert set(rd.load_weights()) == {"1.weight", "1.bias"}
    assert rd.read_config()["resolved"]["sampler"]["sampling_rate"] == 0.25


def test_target_epsilon_is_met_for_both_samplers_and_adaptive_clipping(tmp_path):
    for i, kw in enumerate([dict(client_rate=0.5), dict(clients_per_round=5, adaptive_clip=True,
                                                        count_noise_std=2.0)]):
        r = train_federated(FederatedSettings(out=str(tmp_path), name=f"t{i}", dp="client", target_epsilon=3.0,
                                              **{**SMALL, **kw}))
        assert 2.9 < r.epsilon <= 3.0


def test_sample_level_run_keeps_every_clients_ledger(tmp_path):
    r = train_federated(FederatedSettings(out=str(tmp_path), name="s", dp="sample", noise_multiplier=1.0,
                                          **{**SMALL, "clients": 4, "rounds": 2}))
    rd = RunDir.open(tmp_path / "s")
    ledgers = json.loads((tmp_path / "s" / "client_ledgers.json").read_text())
    assert len(ledgers) == 4
    worst = rd.read_summary()["worst_client"]
    assert rd.read_ledger().metadata["client"] == worst
    assert rd.read_ledger().total_count() == 2 * 2  # every client takes part in every round (q = 1)
    assert r.epsilon == pytest.approx(make_accountant("pld").compose(rd.read_ledger().to_event()).get_epsilon(1e-5))


def test_non_private_run_and_owner_partition(tmp_path):
    rng = np.random.default_rng(0)
    csv = tmp_path / "d.csv"
    lines = ["a,b,owner,y"] + [f"{rng.normal():.4f},{rng.normal():.4f},u{i % 7},{i % 2}" for i in range(140)]
    csv.write_text("\n".join(lines) + "\n")
    r = train_federated(FederatedSettings(out=str(tmp_path), name="o", data=str(csv), target="y",
                                          owner_column="owner", partition="owner", clients=None, dp="none",
                                          model="logreg", rounds=2, local_steps=1))
    assert r.num_clients == 7 and r.epsilon == float("inf")
    rd = RunDir.open(tmp_path / "o")
    assert rd.read_ledger().total_count() == 0 and rd.read_summary()["epsilon"] is None
    assert json.loads((tmp_path / "o" / "federation.json").read_text())["partition"]["owners"][0] == "u0"


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        (dict(clients=5000, dp="none"), "num_clients=5000 in \\[1, 1437\\]"),
        (dict(alpha=0.0, dp="none"), "alpha=0.0 in \\(0, inf\\)"),
        (dict(client_rate=0.0, dp="none"), "client_rate=0.0 in \\(0.0, 1.0\\]"),
        (dict(client_rate=1.2, dp="none"), "client_rate=1.2"),
        (dict(clients_per_round=21, dp="none"), "clients_per_round=21"),
        (dict(client_rate=0.5, clients_per_round=2, dp="none"), "at most one"),
        (dict(local_epochs=1.0, dp="none"), "at most one of local_steps"),
        (dict(dp="client"), "exactly one"),
        (dict(dp="none", noise_multiplier=1.0), "dp='none'"),
        (dict(dp="secure"), "dp='secure'"),
        (dict(partition="owner", dp="none"), "owner_column"),
        (dict(dp="sample", noise_multiplier=1.0, adaptive_clip=True), "adaptive_clip"),
    ],
)
def test_bad_settings_are_refused(tmp_path, kw, needle):
    with pytest.raises(ValueError, match=needle):
        train_federated(FederatedSettings(out=str(tmp_path), **{**SMALL, **kw}))


# -- CLI ----------------------------------------------------------------------------------------
def _train_command() -> click.Command:
    """`privaudit train` with the federated flags wired in (as the CLI diff in the report does)."""
    if any(p.name == "federated" for p in train.params):
        return main
    from privaudit.cli._federated_options import federated_options

    def callback(**kwargs):
        ctx = click.get_current_context()
        config_path, resume, quiet = kwargs.pop("config_path"), kwargs.pop("resume"), kwargs.pop("quiet")
        run_federated(ctx, kwargs, config_path=config_path, resume=resume, quiet=quiet)
        return train.callback.__wrapped__(ctx, config_path, resume, quiet, **kwargs)

    cmd = federated_options(callback)
    return click.Command("train", params=list(train.params) + list(cmd.__click_params__), callback=callback)


def _invoke(args):
    cmd = _train_command()
    return CliRunner().invoke(cmd, (["train"] if cmd is main else []) + args)


def test_cli_federated_run(tmp_path):
    r = _invoke(["--federated", "--model", "logreg", "--clients", "10", "--rounds", "2", "--client-rate", "0.5",
                 "--dp", "client", "--noise-multiplier", "1.0", "--partition", "dirichlet", "--alpha", "0.3",
                 "--local-steps", "2", "--clip", "0.5", "--adaptive-clip", "--target-quantile", "0.6",
                 "--count-noise-std", "2", "--out", str(tmp_path), "--name", "f", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "privaudit train --federated" in r.output
    s = RunDir.open(tmp_path / "f").read_config()["settings"]
    assert (s["clients"], s["client_rate"], s["clip"], s["adaptive_clip"], s["alpha"]) == (10, 0.5, 0.5, True, 0.3)
    assert RunDir.open(tmp_path / "f").read_ledger().total_count() == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--clients", "10"], "add --federated"),
        (["--federated", "--epochs", "3", "--no-dp"], "--epochs"),
        (["--federated", "--resume", "--no-dp"], "not resumable"),
        (["--federated", "--clients", "100000", "--no-dp"], "num_clients=100000"),
        (["--federated", "--client-rate", "2", "--noise-multiplier", "1"], "client_rate=2.0"),
        (["--federated", "--no-dp", "--dp", "client"], "--no-dp"),
    ],
)
def test_cli_federated_bad_input_exits_2(tmp_path, args, needle):
    r = _invoke([*args, "--out", str(tmp_path), "--quiet"])
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output
