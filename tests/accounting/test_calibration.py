"""Noise calibration never overshoots the target and is nearly tight."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privaudit.accounting import calibrate_noise_multiplier, epsilon_for, sampling_rate_and_steps


@settings(max_examples=12, deadline=None)
@given(
    eps=st.floats(0.5, 10.0),
    q=st.sampled_from([1e-3, 1e-2, 0.1, 1.0]),
    steps=st.integers(10, 3000),
    accountant=st.sampled_from(["pld", "rdp"]),
)
def test_calibrated_sigma_never_overshoots(eps, q, steps, accountant):
    sigma = calibrate_noise_multiplier(target_epsilon=eps, target_delta=1e-5, sampling_rate=q,
                                       steps=steps, accountant=accountant)
    got = epsilon_for(sigma, sampling_rate=q, steps=steps, delta=1e-5, accountant=accountant)
    assert got <= eps
    # ... and it is the smallest such sigma to within the bisection tolerance (rtol=1e-3).
    if sigma > 2e-3:
        less = epsilon_for(sigma * (1 - 1e-3), sampling_rate=q, steps=steps, delta=1e-5,
                           accountant=accountant)
        assert less > eps


def test_pld_needs_less_noise_than_rdp():
    kw = dict(target_epsilon=1.0, target_delta=1e-5, sampling_rate=1 / 6, steps=600)
    pld = calibrate_noise_multiplier(accountant="pld", **kw)
    rdp = calibrate_noise_multiplier(accountant="rdp", **kw)
    assert pld < rdp
    assert (rdp - pld) / rdp > 0.03


def test_sampling_rate_and_steps():
    assert sampling_rate_and_steps(epochs=60, batch_size=256, dataset_size=60000) == (256 / 60000, 14063)
    assert sampling_rate_and_steps(epochs=2, batch_size=100, dataset_size=1000) == (0.1, 20)
    with pytest.raises(ValueError, match="batch_size"):
        sampling_rate_and_steps(epochs=1, batch_size=0, dataset_size=10)
    with pytest.raises(ValueError, match="epochs"):
        sampling_rate_and_steps(epochs=0, batch_size=1, dataset_size=10)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(target_epsilon=0.0), "target_epsilon"),
        (dict(target_delta=0.0), "target_delta"),
        (dict(sampling_rate=0.0), "sampling_rate"),
        (dict(steps=0), "steps"),
    ],
)
def test_bad_calibration_input(kwargs, name):
    base = dict(target_epsilon=1.0, target_delta=1e-5, sampling_rate=0.01, steps=100)
    base.update(kwargs)
    with pytest.raises(ValueError, match=name):
        calibrate_noise_multiplier(**base)
