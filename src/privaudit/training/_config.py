"""The DP-SGD configuration (which carries its own DP event) and per-step statistics."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .. import _validate
from ..accounting import ACCOUNTANT_NAMES, DpEvent, dpsgd_event
from ._adaptive import AdaptiveClipping, effective_noise_multiplier

__all__ = ["CLIPPING_MODES", "DPConfig", "PrivacyBudgetExhaustedError", "StepStats", "auto_physical_batch_size"]

CLIPPING_MODES = ("flat", "per_layer")
#: Largest physical batch `auto_physical_batch_size` picks.
MAX_AUTO_PHYSICAL_BATCH = 1024
#: Fixed cost of one forward/backward pass, in rows, in `auto_physical_batch_size`'s cost model.
PASS_OVERHEAD_ROWS = 16
#: `auto_physical_batch_size` never picks more than this multiple of the expected batch size:
#: a pass's memory grows with its rows, so the automatic size never needs more memory than
#: passes of the expected size (the cost model's saving above it was measured at ~5% of a step).
MAX_AUTO_OVER_EXPECTED = 1.0


class PrivacyBudgetExhaustedError(RuntimeError):
    """The trainer was asked for a step beyond the number its budget was planned for."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPConfig:
    """Everything that determines the privacy cost of a DP-SGD run.

    Training and accounting both read `dp_event()`, so they cannot drift:
    each step is a Poisson-subsampled Gaussian mechanism with rate
    `sampling_rate` and noise multiplier `noise_multiplier` applied to a sum of
    gradients clipped to `max_grad_norm`.

    The guarantee is void if any of these differ from what actually ran: a
    different sampler (shuffling, fixed-size batches), a per-example
    contribution that escapes clipping (a module with cross-example
    interaction, such as BatchNorm), or more steps than recorded.
    """

    noise_multiplier: float
    max_grad_norm: float
    sampling_rate: float
    dataset_size: int
    steps: int
    clipping: str = "flat"
    physical_batch_size: int
    accountant: str = "pld"
    target_delta: float = 1e-5
    target_epsilon: float | None = None
    adaptive: AdaptiveClipping | None = None
    count_noise_std: float | None = None

    def __post_init__(self) -> None:
        _validate.positive(noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm)
        _validate.in_range(0.0, 1.0, lo_open=True, sampling_rate=self.sampling_rate)
        _validate.integer(minimum=1, dataset_size=self.dataset_size, physical_batch_size=self.physical_batch_size)
        _validate.integer(minimum=0, steps=self.steps)
        _validate.in_range(0.0, 1.0, lo_open=True, hi_open=True, target_delta=self.target_delta)
        if self.target_epsilon is not None:
            _validate.positive(target_epsilon=self.target_epsilon)
        if self.clipping not in CLIPPING_MODES:
            raise ValueError(f"Expected clipping={self.clipping!r} in {list(CLIPPING_MODES)}.")
        if self.accountant not in ACCOUNTANT_NAMES:
            raise ValueError(f"Expected accountant={self.accountant!r} in {list(ACCOUNTANT_NAMES)}.")
        if self.adaptive is not None:
            if not isinstance(self.adaptive, AdaptiveClipping):
                raise ValueError(f"Expected adaptive to be AdaptiveClipping or None, got {type(self.adaptive).__name__}.")
            if self.clipping != "flat":
                raise ValueError("Adaptive clipping follows a quantile of the flat per-example norm: use clipping='flat'.")
            if self.count_noise_std is None:
                raise ValueError("Expected count_noise_std in (0, inf) with adaptive clipping (got None).")
            _validate.positive(count_noise_std=self.count_noise_std)
        elif self.count_noise_std is not None:
            raise ValueError("count_noise_std applies to adaptive clipping only (adaptive=None).")

    @property
    def expected_batch_size(self) -> float:
        """q * N, the denominator of every noisy gradient."""
        return self.sampling_rate * self.dataset_size

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise added to the clipped sum: sigma * C (C: the initial norm
        under adaptive clipping, where the std follows the current C)."""
        return self.noise_multiplier * self.max_grad_norm

    @property
    def accounted_noise_multiplier(self) -> float:
        """sigma, or with adaptive clipping the one multiplier of the noisy sum and noisy count together."""
        if self.adaptive is None or self.count_noise_std is None:
            return self.noise_multiplier
        return effective_noise_multiplier(self.noise_multiplier, self.count_noise_std)

    def dp_event(self, steps: int | None = None) -> DpEvent:
        """The event of `steps` steps (default: the planned `self.steps`)."""
        return dpsgd_event(self.accounted_noise_multiplier, self.steps if steps is None else steps,
                           sampling_rate=self.sampling_rate)

    def step_event(self) -> DpEvent:
        """The event of one step (what the ledger records after each optimizer step)."""
        return self.dp_event(1).event  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class StepStats:
    """What one optimizer step did.

    `loss`, `grad_norm_mean` and `clipped_fraction` are computed from the
    private batch *before* noise is added: they are for monitoring only, are
    not covered by the DP guarantee, and must not be published as if they were.
    """

    step: int  # steps taken so far, this one included
    batch_size: int  # examples in the logical batch (Poisson: random, may be 0)
    physical_batches: int  # forward passes (this process's, in distributed training)
    loss: float  # mean per-example loss over the logical batch (nan when empty)
    grad_norm_mean: float  # mean per-example gradient norm before clipping (nan without DP)
    clipped_fraction: float  # share of examples whose gradient was scaled down
    noise_std: float  # std of the noise added to the clipped sum (0 without DP)
    clipping_norm: float = math.nan  # C used in this step (changes under adaptive clipping; nan without DP)
    noisy_unclipped_fraction: float | None = None  # released by adaptive clipping (private), else None


def _tail(m: float, mean: float, sd: float) -> float:
    """P(b > m) for b ~ Binomial(N, q), normal approximation with continuity correction."""
    if sd == 0.0:
        return 1.0 if mean > m else 0.0
    return 0.5 * math.erfc((m + 0.5 - mean) / (sd * math.sqrt(2.0)))


def auto_physical_batch_size(*, expected_batch_size: float, dataset_size: int, sampling_rate: float) -> int:
    """The physical batch size that minimises the expected work per step.

    A logical batch of b ~ Binomial(N, q) rows takes ceil(b / P) passes of P rows,
    the last one padded. The work of one step is modelled as
    E[ceil(b / P)] * (P + PASS_OVERHEAD_ROWS), with E[ceil(b / P)] = sum_k P(b > kP).
    P ranges over multiples of 8 (of 2 when the expected batch is below 64) up to
    `MAX_AUTO_PHYSICAL_BATCH`, N, and `MAX_AUTO_OVER_EXPECTED` times the expected
    batch size (rounded up to the grain), so that a pass never holds more memory than
    a pass of the expected size. Without that cap an expected batch of 16 got passes
    of 24 rows: 1.5x the memory, for a modelled saving of 13% of the work that
    measured as ~5% of a step on CPU (reports/benchmarks/engine.md).
    """
    mean = expected_batch_size
    sd = math.sqrt(dataset_size * sampling_rate * (1.0 - sampling_rate))
    grain = 8 if mean >= 64 else 2
    cap = max(grain, math.ceil(MAX_AUTO_OVER_EXPECTED * mean / grain) * grain)
    top = min(dataset_size, MAX_AUTO_PHYSICAL_BATCH, cap, max(1, math.ceil(mean + 6.0 * sd)))
    candidates = sorted({*range(grain, top + 1, grain), top})
    best, best_cost = top, math.inf
    for size in candidates:
        passes, k = 0.0, 0
        while True:
            t = _tail(k * size, mean, sd)
            if t < 1e-9:
                break
            passes += t
            k += 1
        cost = passes * (size + PASS_OVERHEAD_ROWS)
        if cost < best_cost - 1e-9:
            best, best_cost = size, cost
    return best
