"""The privacy-utility sweep: grid parsing, aggregation over seeds, and one tiny sweep end to end."""

from __future__ import annotations

import json
import math

import pytest

from privaudit.reports import SweepOptions, run_sweep
from privaudit.reports._sweep import _grid, aggregate, parse_grid, parse_seeds
from privaudit.reports._sweep_document import monotone_within_noise
from privaudit.training._job import TrainSettings


@pytest.mark.parametrize("text, message", [("", "at least one"), ("1,x", "comma-separated"), ("0", r"\(0, inf\)"),
                                           ("-1", r"\(0, inf\)"), ("inf", "finite")])
def test_bad_grids_name_the_argument(text, message):
    with pytest.raises(ValueError, match=message):
        parse_grid(text, name="max_grad_norm")


def test_seeds_and_infinity():
    assert parse_grid("8, 0.5,inf,∞", name="epsilons", allow_inf=True) == (8.0, 0.5, math.inf)
    assert parse_seeds("2,0,2") == (2, 0)
    with pytest.raises(ValueError, match="non-negative integers"):
        parse_seeds("1,-2")


def test_grid_trains_no_dp_once_per_seed():
    base = TrainSettings(target_epsilon=1.0)
    grid = _grid(base, SweepOptions(epsilons=(math.inf, 1.0), max_grad_norms=(0.1, 1.0), seeds=(0, 1)))
    assert grid == [(1.0, 0.1, 0), (1.0, 1.0, 0), (math.inf, None, 0), (1.0, 0.1, 1), (1.0, 1.0, 1),
                    (math.inf, None, 1)]


def test_options_are_validated():
    with pytest.raises(ValueError, match="shadows >= 3 for LiRA"):
        SweepOptions(shadows=2)
    with pytest.raises(ValueError, match="epsilon"):
        SweepOptions(epsilons=(1.0, -1.0))


def test_aggregate_means_over_seeds_and_refuses_partial_tprs():
    runs = [{"target_epsilon": 1.0, "max_grad_norm": 0.1, "seed": s, "epsilon": 0.99, "test_accuracy": acc,
             "attacks": {"loss": {"auc": auc, "tpr_at_1pct": tpr, "epsilon_lower_bound": 0.0, "advantage": 0.1}}}
            for s, acc, auc, tpr in ((0, 0.8, 0.5, 0.01), (1, 0.9, 0.6, None))]
    (point,) = aggregate(runs, ["loss"])
    assert point["test_accuracy"] == pytest.approx(0.85) and point["test_accuracy_sd"] == pytest.approx(0.0707107)
    assert point["attacks"]["loss"]["auc"] == pytest.approx(0.55)
    assert point["attacks"]["loss"]["tpr_at_1pct"] is None  # one seed had too few negatives


def test_monotone_within_noise():
    assert monotone_within_noise([0.5, None, 0.4], [0.01] * 3) == (True, [])
    assert monotone_within_noise([0.9, 0.85], [0.01, 0.01]) == (False, [0])


def test_tiny_sweep_end_to_end(tmp_path):
    base = TrainSettings(model="logreg", epochs=1, batch_size=256, optimizer="sgd", lr=2.0, max_grad_norm=0.1,
                         target_epsilon=1.0, test_fraction=0.5, device="cpu")
    options = SweepOptions(epsilons=(2.0, math.inf), seeds=(0,), attacks=("loss", "lira"), shadows=3, device="cpu",
                           no_dp_lr=0.1, adaptive_clip=True)
    events = []
    result = run_sweep(base, options, out=tmp_path / "sw", listener=events.append)
    assert [r["label"] for r in result.runs] == ["eps2-C0.1-seed0", "eps2-Cadaptive-seed0", "nodp-seed0"]
    # The adaptive run started from the base C, moved it, and reached the same budget.
    adaptive = result.runs[1]
    assert adaptive["max_grad_norm"] == "adaptive" and adaptive["final_clipping_norm"] != 0.1
    assert adaptive["epsilon"] == pytest.approx(2.0, abs=0.01)
    shadows = json.loads((tmp_path / "sw" / "runs" / adaptive["label"] / "attack.json").read_text())["shadows"]
    assert shadows["training"]["max_grad_norm"] == pytest.approx(adaptive["final_clipping_norm"])
    assert [p["max_grad_norm"] for p in result.points] == [0.1, "adaptive", None]
    assert {e.stage for e in events} == {"train", "attack"}
    data = json.loads(result.files.json.read_text())
    assert data["format"] == "privaudit.sweep/1" and data["points"][-1]["epsilon"] == "inf"
    assert data["runs"][0]["epsilon"] == pytest.approx(2.0, abs=0.01)
    assert data["runs"][2]["epsilon"] == "inf"
    for run in data["runs"]:
        attack = json.loads((tmp_path / "sw" / "runs" / run["label"] / "attack.json").read_text())
        assert run["attacks"]["loss"]["auc"] == attack["attacks"]["loss"]["auc"]
    md = result.files.markdown.read_text(encoding="utf-8")
    assert "arXiv 2110.03620" in md and "--adaptive-clip" in md
    assert (tmp_path / "sw" / "sweep.png").is_file() and "data:image/png;base64," in result.files.html.read_text()
    # A second call reuses every finished run: nothing is trained or attacked again.
    events.clear()
    again = run_sweep(base, options, out=tmp_path / "sw", listener=events.append)
    assert events == [] and again.points == result.points
    # Other settings in the same folder are refused, not mixed in.
    with pytest.raises(ValueError, match="other settings"):
        run_sweep(TrainSettings(**{**base.to_dict(), "lr": 1.0}), options, out=tmp_path / "sw")


def test_cli_help_and_bad_input_exit_2(tmp_path):
    from click.testing import CliRunner

    from privaudit.cli import main

    runner = CliRunner()
    help_ = runner.invoke(main, ["sweep", "--help"])
    assert help_.exit_code == 0 and "--max-grad-norm" in help_.output and "--epsilons" in help_.output
    for args, message in ((["--epsilons", "1,abc"], "comma-separated"), (["--max-grad-norm", "0"], "max_grad_norm"),
                          (["--seeds", "x"], "non-negative integers"), (["--shadows", "2"], "shadows >= 3")):
        result = runner.invoke(main, ["sweep", "--out", str(tmp_path / "sw"), "--quiet", *args])
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == 1 and message in result.output
    assert not (tmp_path / "sw").exists()
