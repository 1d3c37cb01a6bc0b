"""`privaudit account`: outputs, calibration, ledgers, and bad input -> exit 2 without traceback."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from privaudit.accounting import PLDAccountant, PrivacyLedger, dpsgd_event
from privaudit.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_help_of_every_subcommand():
    result = run("--help")
    assert result.exit_code == 0
    for name in main.list_commands(None):  # type: ignore[arg-type]
        sub = run(name, "--help")
        assert sub.exit_code == 0, (name, sub.output)
        assert "Usage:" in sub.output


def test_account_json_matches_library():
    result = run("account", "-s", "1.0", "-q", "0.01", "-T", "1000", "--delta", "1e-5",
                 "--accountant", "all", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    by_name = {r["accountant"]: r for r in data["results"]}
    assert set(by_name) == {"pld", "rdp", "gdp"}
    expected = PLDAccountant().compose(dpsgd_event(1.0, 1000, sampling_rate=0.01)).get_epsilon(1e-5)
    assert by_name["pld"]["epsilon"] == pytest.approx(expected, rel=1e-12)
    assert by_name["pld"]["epsilon"] < by_name["rdp"]["epsilon"]
    assert by_name["gdp"]["is_upper_bound"] is False
    assert data["setting"]["steps"] == 1000


def test_account_epochs_form_equals_rate_form():
    a = json.loads(run("account", "-s", "1.1", "--epochs", "2", "--batch-size", "100",
                       "--dataset-size", "1000", "--json").output)
    b = json.loads(run("account", "-s", "1.1", "-q", "0.1", "-T", "20", "--json").output)
    assert a["results"] == b["results"]


def test_account_table_for_people():
    result = run("account", "-s", "1.0", "-q", "0.01", "-T", "100")
    assert result.exit_code == 0
    assert "epsilon" in result.output and "pld" in result.output


def test_target_epsilon_calibrates_and_never_overshoots():
    result = run("account", "-q", "0.01", "-T", "1000", "--target-epsilon", "2", "--json",
                 "--accountant", "all")
    assert result.exit_code == 0, result.output
    rows = {r["accountant"]: r for r in json.loads(result.output)["results"]}
    for r in rows.values():
        assert r["epsilon"] <= 2.0
        assert r["epsilon"] > 1.9
    # The tight accountant needs less noise than RDP for the same claim.
    assert rows["pld"]["noise_multiplier"] < rows["rdp"]["noise_multiplier"]


def test_account_ledger(tmp_path):
    ledger = PrivacyLedger()
    ledger.record(dpsgd_event(1.0, 400, sampling_rate=0.01))
    ledger.record(dpsgd_event(1.0, 600, sampling_rate=0.01))
    path = tmp_path / "ledger.json"
    ledger.save(path)
    from_ledger = json.loads(run("account", "--ledger", str(path), "--json").output)
    direct = json.loads(run("account", "-s", "1", "-q", "0.01", "-T", "1000", "--json").output)
    assert from_ledger["results"][0]["epsilon"] == pytest.approx(direct["results"][0]["epsilon"], rel=1e-9)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-s", "0", "-q", "0.01", "-T", "10"], "noise_multiplier"),
        (["-s", "-1", "-q", "0.01", "-T", "10"], "noise_multiplier"),
        (["-s", "nan", "-q", "0.01", "-T", "10"], "noise_multiplier"),
        (["-s", "1", "-q", "1.5", "-T", "10"], "sampling_rate"),
        (["-s", "1", "-q", "-0.1", "-T", "10"], "sampling_rate"),
        (["-s", "1", "-q", "0.1", "-T", "-5"], "steps"),
        (["-s", "1", "-q", "0.1", "-T", "2.5"], "steps"),
        (["-s", "1", "-q", "0.1", "-T", "10", "--delta", "0"], "delta"),
        (["-s", "1", "-q", "0.1", "-T", "10", "--delta", "1"], "delta"),
        (["-s", "1", "-q", "0.1", "-T", "10", "--delta", "inf"], "delta"),
        (["-s", "1", "-q", "0.1"], "--steps"),
        (["-q", "0.1", "-T", "10"], "--noise-multiplier"),
        (["-s", "1", "--epochs", "1", "--batch-size", "10"], "--dataset-size"),
        (["-s", "1", "--epochs", "1", "--batch-size", "100", "--dataset-size", "10"], "batch_size"),
        (["-q", "0.1", "-T", "10", "--target-epsilon", "-1"], "target_epsilon"),
        (["--ledger", "/nonexistent/ledger.json"], "ledger"),
        (["-s", "1", "-q", "0.1", "-T", "10", "--accountant", "moments"], "accountant"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(args, needle):
    result = run("account", *args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output


def test_corrupt_ledger_exits_2(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text("{")
    result = run("account", "--ledger", str(path))
    assert result.exit_code == 2
    assert "not valid JSON" in result.output
