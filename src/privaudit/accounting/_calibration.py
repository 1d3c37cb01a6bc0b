"""Noise calibration: the smallest noise multiplier that meets a target (epsilon, delta)."""

from __future__ import annotations

import math

from .. import _validate
from ._events import dpsgd_event
from ._registry import make_accountant

__all__ = ["calibrate_noise_multiplier", "epsilon_for", "sampling_rate_and_steps"]


def sampling_rate_and_steps(*, epochs: float, batch_size: int, dataset_size: int) -> tuple[float, int]:
    """Converts (epochs, expected batch size, dataset size) to (q, T) for Poisson sampling.

    q = batch_size / dataset_size and T = ceil(epochs * dataset_size / batch_size),
    the convention of Opacus' `get_noise_multiplier(epochs=...)`.
    """
    _validate.positive(epochs=epochs)
    _validate.integer(minimum=1, batch_size=batch_size, dataset_size=dataset_size)
    if batch_size > dataset_size:
        raise ValueError(f"Expected batch_size={batch_size} in [1, dataset_size={dataset_size}].")
    q = batch_size / dataset_size
    steps = int(math.ceil(epochs * dataset_size / batch_size - 1e-9))
    return q, steps


def epsilon_for(
    noise_multiplier: float,
    *,
    sampling_rate: float,
    steps: int,
    delta: float,
    accountant: str = "pld",
    neighboring_relation: str = "add_remove",
) -> float:
    """Epsilon of `steps` Poisson-sampled Gaussian steps under the named accountant."""
    event = dpsgd_event(noise_multiplier, steps, sampling_rate=sampling_rate)
    acct = make_accountant(accountant, neighboring_relation=neighboring_relation)
    return acct.compose(event).get_epsilon(delta)


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    target_delta: float,
    sampling_rate: float,
    steps: int,
    accountant: str = "pld",
    neighboring_relation: str = "add_remove",
    rtol: float = 1e-3,
    max_noise_multiplier: float = 1e4,
) -> float:
    """Smallest noise multiplier (to relative tolerance `rtol`) whose epsilon is
    at most `target_epsilon` at `target_delta`. Never overshoots: the returned
    sigma is always on the feasible side of the bisection.

    Raises:
        ValueError: bad arguments, or no sigma up to `max_noise_multiplier` meets the target.
    """
    _validate.positive(target_epsilon=target_epsilon)
    _validate.in_range(0.0, 1.0, lo_open=True, hi_open=True, target_delta=target_delta)
    _validate.in_range(0.0, 1.0, lo_open=True, sampling_rate=sampling_rate)
    _validate.integer(minimum=1, steps=steps)
    _validate.in_range(1e-8, 0.5, rtol=rtol)

    def eps(sigma: float) -> float:
        return epsilon_for(
            sigma,
            sampling_rate=sampling_rate,
            steps=steps,
            delta=target_delta,
            accountant=accountant,
            neighboring_relation=neighboring_relation,
        )

    hi = 1.0
    while eps(hi) > target_epsilon:
        hi *= 2.0
        if hi > max_noise_multiplier:
            raise ValueError(
                f"No noise_multiplier <= {max_noise_multiplier} reaches target_epsilon="
                f"{target_epsilon} at target_delta={target_delta} with sampling_rate="
                f"{sampling_rate} and steps={steps}."
            )
    lo = hi / 2.0
    while lo > 1e-3 and eps(lo) <= target_epsilon:
        hi, lo = lo, lo / 2.0
    # Invariant: eps(hi) <= target < eps(lo) (or lo tiny).
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if eps(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi
