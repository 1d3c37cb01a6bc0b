"""Adaptive clipping in DP-SGD (Andrew et al. 2021): C follows a noisy quantile; the ledger pays for the count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from privaudit.accounting import GaussianEvent, PoissonSampledEvent
from privaudit.training import AdaptiveClipping, build_model, make_private
from privaudit.training._adaptive import effective_noise_multiplier, next_clipping_norm, update_noise_multiplier

N, D, K = 400, 6, 3


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


def _trainer(data, **kwargs):
    torch.manual_seed(0)
    model = build_model("logreg", input_shape=(D,), num_classes=K)
    common = dict(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5), data=data,
                  loss_fn=nn.CrossEntropyLoss(), epochs=kwargs.pop("epochs", 10), expected_batch_size=80, seed=3)
    common.update(kwargs)
    return make_private(**common)


def test_the_ledger_records_sum_and_count_as_one_gaussian(data):
    adaptive = AdaptiveClipping(target_quantile=0.5, learning_rate=0.2)
    tr = _trainer(data, max_grad_norm=1.0, noise_multiplier=1.2, adaptive_clipping=adaptive)
    tr.run(steps=3)
    sigma_b = 0.2 * N / 20  # q N / 20, the paper's default
    assert tr.config.count_noise_std == pytest.approx(sigma_b)
    z = effective_noise_multiplier(1.2, sigma_b)
    assert z < 1.2
    event = tr.ledger.entries[0].event
    assert isinstance(event, PoissonSampledEvent) and isinstance(event.event, GaussianEvent)
    assert event.event.noise_multiplier == pytest.approx(z)
    assert tr.ledger.total_count() == 3
    assert tr.ledger.metadata["training"]["adaptive_clipping"]["accounted_noise_multiplier"] == pytest.approx(z)


def test_calibration_to_a_target_epsilon_covers_the_count(data):
    fixed = _trainer(data, max_grad_norm=1.0, target_epsilon=2.0)
    adaptive = _trainer(data, max_grad_norm=1.0, target_epsilon=2.0, adaptive_clipping=AdaptiveClipping())
    # The same total multiplier, of which the update gets a little less than all.
    assert adaptive.config.accounted_noise_multiplier == pytest.approx(fixed.config.noise_multiplier, rel=1e-9)
    assert adaptive.config.noise_multiplier > fixed.config.noise_multiplier
    adaptive.run()
    assert adaptive.epsilon() <= 2.0 + 1e-9
    fixed.run()
    assert adaptive.epsilon() == pytest.approx(fixed.epsilon(), rel=1e-6)  # the same cost as fixed clipping
    assert adaptive.epsilon() >= 0.97 * 2.0


@pytest.mark.parametrize("start", [1e-3, 1e3])
def test_the_norm_moves_to_the_target_quantile_from_either_side(data, start):
    # Prepare: little count noise, so the quantile is tracked closely.
    adaptive = AdaptiveClipping(target_quantile=0.5, learning_rate=0.3, count_noise_std=0.5)
    tr = _trainer(data, epochs=60, max_grad_norm=start, noise_multiplier=0.5, adaptive_clipping=adaptive)
    # Execute
    stats = tr.run()
    # Assert: C left its start by orders of magnitude and settles where about half is unclipped.
    assert 1e-2 < stats[-1].clipping_norm < 1e2
    tail = [s.clipped_fraction for s in stats[-60:] if s.batch_size > 0]
    assert 0.3 < float(np.mean(tail)) < 0.7
    # The noise follows the current norm: std = sigma * C at every step.
    for s in stats:
        assert s.noise_std == pytest.approx(0.5 * s.clipping_norm)
        assert s.noisy_unclipped_fraction is not None


def test_without_adaptive_clipping_the_norm_never_moves(data):
    stats = _trainer(data, max_grad_norm=0.7, noise_multiplier=1.0).run()
    assert {s.clipping_norm for s in stats} == {0.7}
    assert all(s.noisy_unclipped_fraction is None for s in stats)


def test_resume_continues_with_the_adapted_norm(data):
    adaptive = AdaptiveClipping(learning_rate=0.5)
    whole = _trainer(data, max_grad_norm=5.0, noise_multiplier=1.0, adaptive_clipping=adaptive)
    whole.run()
    first = _trainer(data, max_grad_norm=5.0, noise_multiplier=1.0, adaptive_clipping=adaptive)
    first.run(steps=7)
    state = first.state_dict()
    assert state["clipping_norm"] != 5.0
    second = _trainer(data, max_grad_norm=5.0, noise_multiplier=1.0, adaptive_clipping=adaptive)
    second.load_state_dict(state)
    second.run()
    assert second.clipping_norm == whole.clipping_norm
    for a, b in zip(whole.module.parameters(), second.module.parameters()):
        torch.testing.assert_close(a, b)
    assert [(e.event, e.count) for e in second.ledger.entries] == [(e.event, e.count) for e in whole.ledger.entries]


def test_small_budgets_raise_the_automatic_count_noise_instead_of_failing(data):
    # At epsilon 0.3 the total multiplier z exceeds 2 * qN / 20: the automatic sigma_b becomes 5 z.
    tr = _trainer(data, max_grad_norm=1.0, target_epsilon=0.3, adaptive_clipping=AdaptiveClipping())
    z = tr.config.accounted_noise_multiplier
    assert 2 * (0.2 * N / 20) < z
    assert tr.config.count_noise_std == pytest.approx(5 * z)
    assert tr.config.noise_multiplier == pytest.approx(z / math.sqrt(1 - 0.01))


def test_bad_settings_name_the_argument(data):
    with pytest.raises(ValueError, match="clipping='flat'"):
        _trainer(data, max_grad_norm=1.0, noise_multiplier=1.0, clipping="per_layer",
                 adaptive_clipping=AdaptiveClipping())
    with pytest.raises(ValueError, match="count_noise_std"):
        # sigma_b = 0.1 cannot leave room under a total multiplier of ~1: the count alone would cost more.
        _trainer(data, max_grad_norm=1.0, target_epsilon=2.0, adaptive_clipping=AdaptiveClipping(count_noise_std=0.1))
    with pytest.raises(ValueError, match="adaptive_clipping"):
        _trainer(data, max_grad_norm=1.0, noise_multiplier=1.0, adaptive_clipping={"target_quantile": 0.5})
    with pytest.raises(ValueError, match="target_quantile"):
        AdaptiveClipping(target_quantile=1.0)


@settings(max_examples=50, deadline=None)
@given(c=st.floats(1e-4, 1e4), f1=st.floats(-1.0, 2.0), f2=st.floats(-1.0, 2.0),
       gamma=st.floats(0.05, 0.95), eta=st.floats(0.01, 1.0))
def test_geometric_update_is_positive_and_decreasing_in_the_unclipped_fraction(c, f1, f2, gamma, eta):
    a = AdaptiveClipping(target_quantile=gamma, learning_rate=eta)
    lo, hi = sorted((f1, f2))
    assert next_clipping_norm(c, hi, a) <= next_clipping_norm(c, lo, a)
    assert next_clipping_norm(c, lo, a) > 0
    assert math.isclose(next_clipping_norm(c, gamma, a), c, rel_tol=1e-12)


@settings(max_examples=50, deadline=None)
@given(z=st.floats(0.3, 20.0), extra=st.floats(1.01, 100.0))
def test_update_multiplier_inverts_the_effective_one(z, extra):
    sigma_b = extra * z / 2  # needs 2 sigma_b > z
    sigma = update_noise_multiplier(z, sigma_b)
    assert sigma >= z
    assert math.isclose(effective_noise_multiplier(sigma, sigma_b), z, rel_tol=1e-9)
