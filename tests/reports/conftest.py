"""One tiny run through the whole pipeline (train -> attack -> audit -> report), shared by the report tests."""

from __future__ import annotations

import shutil

import pytest

from privaudit.reports import PipelineOptions, run_pipeline
from privaudit.training._job import TrainSettings


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """(run_dir, PipelineResult): logistic regression, 2 epochs at target epsilon 2, LOSS + LiRA with
    3 shadow models, a white-box audit with 40 canaries. Tests must copy it before changing it."""
    out = tmp_path_factory.mktemp("pipeline")
    settings = TrainSettings(data="digits", model="logreg", epochs=2, batch_size=256, lr=2.0, target_epsilon=2.0,
                             test_fraction=0.5, device="cpu", name="tiny", out=str(out))
    options = PipelineOptions(attacks=("loss", "lira"), shadows=3, canaries=40, device="cpu")
    events = []
    result = run_pipeline(settings, options, listener=events.append)
    return out / "tiny", result, events


@pytest.fixture
def run_copy(pipeline_run, tmp_path):
    """A private copy of the pipeline's run directory, free to edit."""
    return shutil.copytree(pipeline_run[0], tmp_path / "tiny")
