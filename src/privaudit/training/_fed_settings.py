"""Settings of a federated run (`privaudit train --federated`) and their noise calibration."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import _validate
from ..accounting import (ACCOUNTANT_NAMES, GaussianEvent, SampledWithoutReplacementEvent, SelfComposedEvent,
                          calibrate_noise_multiplier, make_accountant)
from ._fed_partition import PARTITION_METHODS
from ._models import MODEL_NAMES

__all__ = ["DP_MODES", "FED_ENGINES", "FederatedSettings", "calibrate_fixed_k"]

DP_MODES = ("client", "sample", "none")
FED_ENGINES = ("vectorised", "sequential", "flower")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FederatedSettings:
    """Everything `privaudit train --federated` accepts.

    Clients per round: `client_rate` (Poisson, each client with probability q) or
    `clients_per_round` (k without replacement); neither means every client, every round.
    Local work: `local_steps`, or `local_epochs` (converted to steps for the average
    client, see `LocalTraining.steps_for_epochs`); neither means one local epoch.
    DP: 'client' (DP-FedAvg; `clip` is S, the bound on each client's update),
    'sample' (DP-SGD inside each client; `max_grad_norm` bounds each example's
    gradient) or 'none'. Unless `dp='none'`, exactly one of `noise_multiplier` and
    `target_epsilon` is given.
    """

    data: str = "digits"
    target: str | None = None
    owner_column: str | None = None
    model: str = "mlp"
    clients: int | None = 10
    rounds: int = 50
    client_rate: float | None = None
    clients_per_round: int | None = None
    partition: str = "iid"
    alpha: float = 0.5
    local_steps: int | None = None
    local_epochs: float | None = None
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    server_lr: float = 1.0
    server_momentum: float = 0.0
    dp: str = "client"
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    clip: float = 1.0
    adaptive_clip: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    count_noise_std: float | None = None
    max_grad_norm: float = 1.0
    clipping: str = "flat"
    accountant: str = "pld"
    engine: str = "vectorised"
    max_clients: int = 1024
    eval_every: int = 1
    seed: int = 0
    split_seed: int = 0
    test_fraction: float = 0.2
    device: str = "auto"
    name: str | None = None
    out: str = "runs"

    def __post_init__(self) -> None:
        for field, allowed in (("model", MODEL_NAMES), ("accountant", ACCOUNTANT_NAMES), ("dp", DP_MODES),
                               ("partition", PARTITION_METHODS), ("engine", FED_ENGINES),
                               ("clipping", ("flat", "per_layer"))):
            if getattr(self, field) not in allowed:
                raise ValueError(f"Expected {field}={getattr(self, field)!r} in {list(allowed)}.")
        _validate.integer(minimum=1, rounds=self.rounds, batch_size=self.batch_size, max_clients=self.max_clients,
                          eval_every=self.eval_every)
        _validate.integer(minimum=0, seed=self.seed, split_seed=self.split_seed)
        _validate.positive(lr=self.lr, server_lr=self.server_lr, clip=self.clip, alpha=self.alpha,
                           max_grad_norm=self.max_grad_norm, clip_learning_rate=self.clip_learning_rate)
        _validate.in_range(0.0, 1.0, hi_open=True, momentum=self.momentum, server_momentum=self.server_momentum)
        _validate.in_range(0.0, 1.0, lo_open=True, hi_open=True, delta=self.delta, test_fraction=self.test_fraction,
                           target_quantile=self.target_quantile)
        if self.partition == "owner":
            if self.owner_column is None:
                raise ValueError("partition='owner' needs owner_column (a column of the CSV/Parquet file).")
        elif self.clients is None:
            raise ValueError(f"Expected clients (an integer >= 1) with partition={self.partition!r}.")
        if self.clients is not None:
            _validate.integer(minimum=1, clients=self.clients)
        if self.client_rate is not None and self.clients_per_round is not None:
            raise ValueError("Give at most one of client_rate and clients_per_round.")
        if self.client_rate is not None:
            _validate.in_range(0.0, 1.0, lo_open=True, client_rate=self.client_rate)
        if self.clients_per_round is not None:
            _validate.integer(minimum=1, clients_per_round=self.clients_per_round)
            if self.clients is not None and self.clients_per_round > self.clients:
                raise ValueError(f"Expected clients_per_round={self.clients_per_round} in [1, clients={self.clients}].")
        if self.local_steps is not None and self.local_epochs is not None:
            raise ValueError("Give at most one of local_steps and local_epochs.")
        if self.local_steps is not None:
            _validate.integer(minimum=1, local_steps=self.local_steps)
        if self.local_epochs is not None:
            _validate.positive(local_epochs=self.local_epochs)
        if self.dp == "none":
            if self.noise_multiplier is not None or self.target_epsilon is not None:
                raise ValueError("dp='none' adds no noise: drop noise_multiplier/target_epsilon.")
        elif (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError(f"Give exactly one of noise_multiplier and target_epsilon with dp={self.dp!r}.")
        if self.noise_multiplier is not None:
            _validate.positive(noise_multiplier=self.noise_multiplier)
        if self.target_epsilon is not None:
            _validate.positive(target_epsilon=self.target_epsilon)
        if self.count_noise_std is not None:
            _validate.positive(count_noise_std=self.count_noise_std)
        if self.adaptive_clip and self.dp != "client":
            raise ValueError("adaptive_clip applies to dp='client' only.")
        _validate.device_name(device=self.device)

    def run_name(self) -> str:
        if self.name:
            return self.name
        budget = "nodp" if self.dp == "none" else (
            f"eps{self.target_epsilon:g}" if self.target_epsilon is not None else f"sigma{self.noise_multiplier:g}")
        data = Path(self.data).stem if ("/" in self.data or "." in self.data) else self.data
        n = self.clients if self.clients is not None else "owners"
        return f"{data}-{self.model}-fed{n}-{self.dp}-{budget}-seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FederatedSettings:
        return _validate.settings_from_mapping(cls, data, what="federated")


def calibrate_fixed_k(*, target_epsilon: float, target_delta: float, num_clients: int, clients_per_round: int,
                      rounds: int, accountant: str = "pld", rtol: float = 1e-3) -> float:
    """Smallest noise multiplier (to `rtol`) for `rounds` rounds of k-of-N sampling without
    replacement under the replace-one relation; never overshoots `target_epsilon`."""
    def eps(sigma: float) -> float:
        event = SelfComposedEvent(SampledWithoutReplacementEvent(num_clients, clients_per_round,
                                                                 GaussianEvent(sigma)), rounds)
        return make_accountant(accountant, neighboring_relation="replace_one").compose(event).get_epsilon(target_delta)

    hi = 1.0
    while eps(hi) > target_epsilon:
        hi *= 2.0
        if hi > 1e4:
            raise ValueError(f"No noise_multiplier <= 1e4 reaches target_epsilon={target_epsilon}.")
    lo = hi / 2.0
    while lo > 1e-3 and eps(lo) <= target_epsilon:
        hi, lo = lo, lo / 2.0
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        hi, lo = (mid, lo) if eps(mid) <= target_epsilon else (hi, mid)
    return hi


def calibrate_poisson(*, target_epsilon: float, target_delta: float, sampling_rate: float, steps: int,
                      accountant: str) -> float:
    """`calibrate_noise_multiplier`, re-exported here so the job reads in one place."""
    return calibrate_noise_multiplier(target_epsilon=target_epsilon, target_delta=target_delta,
                                      sampling_rate=sampling_rate, steps=steps, accountant=accountant)


def worst_sample_rate(sizes: Any, batch_size: int) -> float:
    """max_k min(B, n_k) / n_k: the largest local Poisson rate of any client (sample-level DP)."""
    return max(min(batch_size, int(n)) / int(n) for n in sizes) if len(sizes) else 1.0

