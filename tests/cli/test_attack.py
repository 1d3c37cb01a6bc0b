"""`privaudit attack`: table and JSON output, artefacts, and bad input -> exit 2 on one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from privaudit.cli import main
from privaudit.training._job import TrainSettings, train_job
from privaudit.training._rundir import RunDir


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-runs")
    train_job(TrainSettings(out=str(out), name="r", data="digits", model="logreg", epochs=1, batch_size=256,
                            lr=0.5, no_dp=True, test_fraction=0.5, device="cpu"))
    return out / "r"


def test_help():
    result = run("attack", "--help")
    assert result.exit_code == 0 and "--shadows" in result.output and "--npz" in result.output


def test_table_and_artefacts(tiny_run, tmp_path):
    rd = shutil.copytree(tiny_run, tmp_path / "r")
    result = run("attack", rd, "--shadows", "3", "--attack", "loss", "--attack", "lira", "--quiet",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    for text in ("lira_online", "lira_offline", "n/a (too few negatives)", "TPR@1% FPR", "not private"):
        assert text in result.output
    assert "rmia" not in result.output.split("population")[0]
    assert (rd / "attack.json").is_file() and (rd / "attack_roc.png").is_file()


def test_json_output(tiny_run, tmp_path):
    rd = shutil.copytree(tiny_run, tmp_path / "r")
    result = run("attack", rd, "--shadows", "2", "--attack", "rmia", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert list(data["attacks"]) == ["rmia_online", "rmia_offline"]
    assert data == json.loads((rd / "attack.json").read_text())


def test_shard_then_merge(tiny_run, tmp_path):
    rd = shutil.copytree(tiny_run, tmp_path / "r")
    first = run("attack", rd, "--shadows", "2", "--shard", "1/2", "--device", "cpu")
    assert first.exit_code == 0 and "Trained shard 1/2" in first.output and "--merge" in first.output
    early = run("attack", rd, "--shadows", "2", "--merge", "--attack", "rmia", "--device", "cpu")
    assert early.exit_code == 2 and "2/2" in early.output
    assert run("attack", rd, "--shadows", "2", "--shard", "2/2", "--device", "cpu").exit_code == 0
    merged = run("attack", rd, "--shadows", "2", "--merge", "--attack", "rmia", "--json", "--device", "cpu")
    assert merged.exit_code == 0, merged.output
    assert json.loads(merged.output)["shadows"]["from_cache"] is True


def _one_line_exit_2(result):
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [
    ["--shadows", "1"],
    ["--shard", "3/2"],
    ["--shard", "x"],
    ["--shard", "0/2"],
    ["--delta", "2"],
])
def test_bad_options_exit_2(tiny_run, args):
    _one_line_exit_2(run("attack", tiny_run, *args))


def test_missing_run_dir_exits_2(tmp_path):
    result = run("attack", tmp_path / "nope")
    _one_line_exit_2(result)
    assert "not a run directory" in result.output


def test_run_dir_without_split_exits_2(tmp_path, tiny_run):
    rd = RunDir.create(tmp_path, "empty")
    rd.write_config({"settings": {"data": "digits", "model": "logreg", "no_dp": True}})
    result = run("attack", rd.path)
    _one_line_exit_2(result)
    assert "split.json" in result.output


def test_npz_with_mismatched_shapes_exits_2(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, logits=np.zeros((10, 3)), labels=np.zeros(9, dtype=np.int64),
             membership=np.arange(10) % 2 == 0)
    result = run("attack", tmp_path / "out", "--npz", path)
    _one_line_exit_2(result)
    assert "labels" in result.output


def test_npz_lira_without_shadows_exits_2(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, logits=np.random.default_rng(0).normal(size=(10, 3)), labels=np.zeros(10, dtype=np.int64),
             membership=np.arange(10) % 2 == 0)
    result = run("attack", tmp_path / "out", "--npz", path, "--attack", "lira")
    _one_line_exit_2(result)
    assert "need shadow models" in result.output
    ok = run("attack", tmp_path / "out", "--npz", path, "--attack", "loss", "--json")
    assert ok.exit_code == 0 and "loss" in json.loads(ok.output)["attacks"]
