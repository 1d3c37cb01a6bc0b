"""`privaudit report`: writes the three twins, says which sections are missing, bad input -> exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from privaudit.cli import main
from privaudit.training._job import TrainSettings, train_job


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("report-cli")
    train_job(TrainSettings(out=str(out), name="r", model="logreg", epochs=1, batch_size=256, lr=2.0,
                            target_epsilon=4.0, device="cpu"))
    return out / "r"


def test_help():
    result = run("report", "--help")
    assert result.exit_code == 0 and "RUN_DIR" in result.output and "--out" in result.output


def test_report_of_a_trained_run(trained, tmp_path):
    result = run("report", trained, "--out", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    html = Path(result.output.strip().splitlines()[-1])
    assert html == tmp_path / "rep" / "report.html" and html.is_file()
    for name in ("report.md", "report.json", "privacy.png", "utility.png"):
        assert (tmp_path / "rep" / name).is_file(), name
    page = html.read_text(encoding="utf-8")
    assert "Not available: not run (attack.json not found)" in page and "Not available: not run (no audit.json)" in page
    assert "attacks: not run" in result.output  # the missing sections are named on stderr too


@pytest.mark.parametrize("make", ["missing", "not-a-run", "file"])
def test_bad_run_dir_exits_2_with_one_line(tmp_path, make):
    target = tmp_path / "x"
    if make == "not-a-run":
        target.mkdir()
    elif make == "file":
        target.write_text("x")
    result = run("report", target)
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "Error" in result.output
