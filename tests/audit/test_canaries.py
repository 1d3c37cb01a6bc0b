"""Canaries: seeded inclusion, disjoint unit directions, black-box canary construction, contracts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privaudit.accounting import dpsgd_event
from privaudit.audit import (
    AuditDataset,
    GradientCanaries,
    TrainerOutput,
    draw_membership,
    make_input_canaries,
)
from privaudit.audit._canaries import OUTLIER_SCALE


def test_membership_is_seeded_and_fair():
    a, b = draw_membership(10_000, seed=3), draw_membership(10_000, seed=3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, draw_membership(10_000, seed=4))
    assert abs(a.sum() - 5000) < 4 * math.sqrt(10_000 * 0.25)  # 4 standard deviations


@pytest.mark.parametrize("kwargs, name", [({"count": 0, "seed": 0}, "count"), ({"count": 5, "seed": -1}, "seed")])
def test_membership_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        draw_membership(kwargs["count"], seed=kwargs["seed"])


@pytest.mark.parametrize("count, num_params, support", [(10, 100, None), (7, 50, 3), (100, 100, None), (1, 9, None)])
def test_directions_are_disjoint_unit_blocks(count, num_params, support):
    gc = GradientCanaries(count=count, included=[0], support=support, seed=5)
    coords, values = gc.directions(num_params)
    s = num_params // count if support is None else support
    assert coords.shape == values.shape == (count, s)
    assert np.unique(coords).size == coords.size  # no coordinate is shared
    assert coords.min() >= 0 and coords.max() < num_params
    np.testing.assert_allclose((values**2).sum(1), 1.0)
    np.testing.assert_allclose(np.abs(values), 1 / math.sqrt(s))
    again = GradientCanaries(count=count, included=[], support=support, seed=5).directions(num_params)
    assert np.array_equal(again[0], coords) and np.array_equal(again[1], values)  # membership-blind


def test_dense_rows_are_norm_times_direction():
    gc = GradientCanaries(count=4, included=[1, 3], norm=7.0, seed=0)
    coords, values = gc.directions(40)
    rows = gc.dense([3, 1], 40)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 7.0, rtol=1e-6)
    np.testing.assert_allclose(rows[0, coords[3]], 7.0 * values[3], rtol=1e-6)
    assert np.count_nonzero(rows[1]) == coords.shape[1]


def test_too_many_canaries_for_the_model_names_canaries():
    gc = GradientCanaries(count=50, included=[], seed=0)
    with pytest.raises(ValueError, match="canaries=50"):
        gc.directions(49)
    with pytest.raises(ValueError, match="canaries=5"):
        GradientCanaries(count=5, included=[], support=3, seed=0).directions(14)


@pytest.mark.parametrize("kwargs, name", [
    ({"count": 0, "included": []}, "count"),
    ({"count": 3, "included": [3]}, "included"),
    ({"count": 3, "included": [0.5]}, "included"),
    ({"count": 3, "included": [], "norm": 0.0}, "norm"),
    ({"count": 3, "included": [], "support": 0}, "support"),
])
def test_gradient_canaries_validate(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GradientCanaries(**kwargs)


def test_mislabeled_canaries_leave_the_base_set_with_a_wrong_label():
    rng = np.random.default_rng(0)
    x, y = rng.random((100, 5)).astype(np.float32), rng.integers(0, 4, 100)
    canaries, keep = make_input_canaries(x, y, num_classes=4, count=30, kind="mislabeled", seed=1)
    assert canaries.count == 30 and keep.size == 70
    assert not np.isin(canaries.source_indices, keep).any()
    assert (canaries.y != y[canaries.source_indices]).all()
    np.testing.assert_array_equal(canaries.x, x[canaries.source_indices])
    again, _ = make_input_canaries(x, y, num_classes=4, count=30, kind="mislabeled", seed=1)
    assert np.array_equal(again.y, canaries.y)


def test_random_canaries_stay_in_the_data_range():
    rng = np.random.default_rng(0)
    x, y = rng.random((50, 3)).astype(np.float32) * 5, rng.integers(0, 3, 50)
    canaries, keep = make_input_canaries(x, y, num_classes=3, count=200, kind="random", seed=2)
    assert canaries.x.shape == (200, 3) and keep.size == 50
    assert (canaries.x >= x.min(0) - 1e-6).all() and (canaries.x <= x.max(0) + 1e-6).all()
    assert set(np.unique(canaries.y)) <= {0, 1, 2}


def test_outlier_canaries_are_far_nearly_orthogonal_and_randomly_labelled():
    rng = np.random.default_rng(0)
    x, y = rng.random((300, 64)).astype(np.float32), rng.integers(0, 10, 300)
    canaries, keep = make_input_canaries(x, y, num_classes=10, count=1000, kind="outlier", seed=3)
    rms = float(np.sqrt((x.astype(np.float64) ** 2).sum(1).mean()))
    assert canaries.kind == "outlier" and keep.size == 300 and canaries.source_indices.size == 0
    assert canaries.norm == pytest.approx(OUTLIER_SCALE * rms)
    np.testing.assert_allclose(np.linalg.norm(canaries.x, axis=1), canaries.norm, rtol=1e-5)
    assert np.linalg.norm(canaries.x, axis=1).min() > 5 * np.linalg.norm(x, axis=1).max()  # far from every row
    u = canaries.x / np.linalg.norm(canaries.x, axis=1, keepdims=True)
    cos = u @ u.T
    assert np.abs(cos[~np.eye(1000, dtype=bool)]).mean() < 0.15  # ~ 1 / sqrt(64) * sqrt(2 / pi)
    counts = np.bincount(canaries.y, minlength=10)
    assert counts.min() > 60 and counts.max() < 140  # uniform labels, whatever the data's
    again, _ = make_input_canaries(x, y, num_classes=10, count=1000, kind="outlier", seed=3)
    assert np.array_equal(again.x, canaries.x) and np.array_equal(again.y, canaries.y)
    wider, _ = make_input_canaries(x, y, num_classes=10, count=5, kind="outlier", seed=3, outlier_scale=2.0)
    assert wider.norm == pytest.approx(2.0 * rms)


def test_outlier_canaries_keep_the_input_shape():
    x, y = np.ones((20, 1, 4, 4), np.float32), np.arange(20) % 2
    canaries, _ = make_input_canaries(x, y, num_classes=2, count=7, kind="outlier", seed=0)
    assert canaries.x.shape == (7, 1, 4, 4) and canaries.x.dtype == np.float32


@pytest.mark.parametrize("kwargs, name", [
    ({"count": 100, "kind": "mislabeled"}, "canaries=100"),
    ({"count": 5, "kind": "outlier", "outlier_scale": 0.0}, "outlier_scale"),
    ({"count": 5, "kind": "poisoned"}, "canary_kind"),
    ({"count": 0, "kind": "random"}, "count"),
])
def test_input_canaries_validate(kwargs, name):
    x, y = np.zeros((100, 2), np.float32), np.zeros(100, np.int64)
    with pytest.raises(ValueError, match=name):
        make_input_canaries(x, y, num_classes=2, seed=0, **kwargs)


def test_outlier_canaries_need_data_with_a_norm():
    with pytest.raises(ValueError, match="outlier"):
        make_input_canaries(np.zeros((10, 3), np.float32), np.zeros(10, np.int64), num_classes=2, count=3,
                            kind="outlier", seed=0)


def test_audit_dataset_and_trainer_output_validate():
    with pytest.raises(ValueError, match="num_classes"):
        AuditDataset(x=np.zeros((3, 2)), y=np.zeros(3, np.int64), num_classes=1)
    with pytest.raises(ValueError, match="shape"):
        AuditDataset(x=np.zeros((3, 2)), y=np.zeros(4, np.int64), num_classes=2)
    ds = AuditDataset(x=np.zeros((3, 2, 2)), y=np.zeros(3, np.int64), num_classes=2)
    assert ds.size == 3 and ds.input_shape == (2, 2)
    with pytest.raises(ValueError, match="event"):
        TrainerOutput(model=None, event="dpsgd", delta=1e-5)
    with pytest.raises(ValueError, match="delta"):
        TrainerOutput(model=None, event=dpsgd_event(1.0, 10, sampling_rate=0.1), delta=0.0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        TrainerOutput(model=None, event=dpsgd_event(1.0, 10, sampling_rate=0.1), delta=1e-5, max_grad_norm=-1)
