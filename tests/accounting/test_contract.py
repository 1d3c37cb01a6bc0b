"""One contract every accountant honours (as dp_accounting's privacy_accountant_test does)."""

from __future__ import annotations

import math

import pytest

from privaudit.accounting import (
    ACCOUNTANT_NAMES,
    ComposedEvent,
    DpEvent,
    GaussianEvent,
    NoOpEvent,
    PoissonSampledEvent,
    UnsupportedEventError,
    dpsgd_event,
    make_accountant,
)


class _Mystery(DpEvent):
    kind = "mystery_for_tests"


@pytest.fixture(params=ACCOUNTANT_NAMES)
def name(request):
    return request.param


def test_compose_returns_self_and_records_history(name):
    acct = make_accountant(name)
    e = dpsgd_event(1.0, 10, sampling_rate=0.1)
    assert acct.compose(e) is acct
    assert acct.history == ((e, 1),)


def test_unsupported_event_is_named(name):
    acct = make_accountant(name)
    bad = ComposedEvent((GaussianEvent(1.0), _Mystery()))
    assert not acct.supports(bad)
    with pytest.raises(UnsupportedEventError, match="Mystery"):
        acct.compose(bad)
    assert acct.history == ()


def test_nothing_composed_costs_nothing(name):
    acct = make_accountant(name).compose(NoOpEvent())
    assert acct.get_epsilon(1e-5) == 0.0
    assert acct.get_delta(0.0) == 0.0


def test_zero_sampling_rate_costs_nothing(name):
    acct = make_accountant(name).compose(PoissonSampledEvent(0.0, GaussianEvent(1.0)), 100)
    assert acct.get_epsilon(1e-5) == pytest.approx(0.0, abs=1e-9)


def test_epsilon_and_delta_are_consistent(name):
    acct = make_accountant(name).compose(dpsgd_event(1.0, 500, sampling_rate=0.02))
    eps = acct.get_epsilon(1e-5)
    assert 0 < eps < 10
    assert acct.get_delta(eps) <= 1e-5 * (1 + 1e-3)
    assert acct.get_delta(eps * 0.9) > 1e-5


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, math.nan, math.inf, "0.1"])
def test_bad_delta(name, delta):
    with pytest.raises(ValueError, match="delta"):
        make_accountant(name).compose(GaussianEvent(1.0)).get_epsilon(delta)


@pytest.mark.parametrize("epsilon", [-1.0, math.nan, math.inf])
def test_bad_epsilon(name, epsilon):
    with pytest.raises(ValueError, match="epsilon"):
        make_accountant(name).compose(GaussianEvent(1.0)).get_delta(epsilon)


def test_bad_relation_and_count(name):
    with pytest.raises(ValueError, match="neighboring_relation"):
        make_accountant(name, neighboring_relation="swap")
    with pytest.raises(ValueError, match="count"):
        make_accountant(name).compose(GaussianEvent(1.0), -2)


def test_unknown_accountant():
    with pytest.raises(ValueError, match="accountant='moments'"):
        make_accountant("moments")
