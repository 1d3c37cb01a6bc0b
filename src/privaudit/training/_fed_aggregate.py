"""Server-side aggregation of client model updates: FedAvg, and client-level DP around it.

Updates are flat vectors: row k of `updates` (shape (K, P)) is client k's
local model minus the global model it started the round from. An `Aggregator`
turns them into the change of the global model in two steps: `combine` (an
estimate of the mean update) and `server_step` (the server optimizer: a
learning rate and optional momentum, applied to that estimate).

`DpFedAvg` wraps any aggregator: it replaces `combine` by the clipped, noised,
fixed-denominator mean of McMahan et al. 2018 and keeps the wrapped
aggregator's `server_step`, which only post-processes the private estimate.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import numpy as np
import torch

from .. import _validate
from ..accounting import (DpEvent, GaussianEvent, NoOpEvent, PoissonSampledEvent, PrivacyLedger,
                          SampledWithoutReplacementEvent)
from ._adaptive import AdaptiveClipping, default_count_noise_std, effective_noise_multiplier, next_clipping_norm

__all__ = ["Aggregator", "DpFedAvg", "DpRoundStats", "FedAvg", "clip_updates"]

WEIGHTINGS = ("num_examples", "uniform")


def _check_updates(updates: torch.Tensor, num_examples: torch.Tensor) -> None:
    if not isinstance(updates, torch.Tensor) or updates.dim() != 2:
        raise ValueError(f"Expected updates to be a (clients, parameters) tensor, got {type(updates).__name__} "
                         f"of shape {tuple(getattr(updates, 'shape', ()))}.")
    if not isinstance(num_examples, torch.Tensor) or num_examples.shape != (updates.shape[0],):
        raise ValueError(f"Expected num_examples to be a tensor of shape ({updates.shape[0]},).")


class Aggregator(abc.ABC):
    """Turns one round's client updates into the change of the global model."""

    def aggregate(self, updates: torch.Tensor, *, num_examples: torch.Tensor) -> torch.Tensor:
        """`server_step(combine(...))`: the vector to add to the global model's flat parameters."""
        _check_updates(updates, num_examples)
        return self.server_step(self.combine(updates, num_examples=num_examples))

    @abc.abstractmethod
    def combine(self, updates: torch.Tensor, *, num_examples: torch.Tensor) -> torch.Tensor:
        """The server's estimate of the mean client update, shape (P,)."""

    def server_step(self, mean_update: torch.Tensor) -> torch.Tensor:
        """The server optimizer; the identity (server learning rate 1) unless overridden."""
        return mean_update

    def round_event(self) -> DpEvent:
        """What one call of `aggregate` costs in privacy (`NoOpEvent` when it adds no noise)."""
        return NoOpEvent()


class FedAvg(Aggregator):
    """Federated averaging (McMahan et al. 2017, arXiv 1602.05629v4, Alg. 1).

    Args:
        weighting: 'num_examples' (the mean weighted by each client's example
            count, FedAvg's rule) or 'uniform'.
        server_lr: multiplies the averaged update (1.0 is plain FedAvg).
        server_momentum: heavy-ball momentum on the averaged update, in [0, 1)
            (FedAvgM; Hsu, Qi, Brown 2019, arXiv 1909.06335, Sec. 4).

    A round without clients leaves the model unchanged (its mean is zero).
    """

    def __init__(self, *, weighting: str = "num_examples", server_lr: float = 1.0,
                 server_momentum: float = 0.0) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"Expected weighting={weighting!r} in {list(WEIGHTINGS)}.")
        _validate.positive(server_lr=server_lr)
        _validate.in_range(0.0, 1.0, hi_open=True, server_momentum=server_momentum)
        self.weighting = weighting
        self.server_lr = float(server_lr)
        self.server_momentum = float(server_momentum)
        self._velocity: torch.Tensor | None = None

    def combine(self, updates: torch.Tensor, *, num_examples: torch.Tensor) -> torch.Tensor:
        if updates.shape[0] == 0:
            return torch.zeros(updates.shape[1], dtype=updates.dtype, device=updates.device)
        w = (num_examples.to(updates.device, torch.float64) if self.weighting == "num_examples"
             else torch.ones(updates.shape[0], dtype=torch.float64, device=updates.device))
        if bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError("Expected num_examples >= 0 with a positive total.")
        return ((w / w.sum()).to(updates.dtype) @ updates)

    def server_step(self, mean_update: torch.Tensor) -> torch.Tensor:
        if self.server_momentum:
            v = self._velocity
            self._velocity = mean_update.clone() if v is None else v.mul_(self.server_momentum).add_(mean_update)
            mean_update = self._velocity
        return mean_update * self.server_lr if self.server_lr != 1.0 else mean_update

    def state_dict(self) -> dict[str, Any]:
        return {"velocity": None if self._velocity is None else self._velocity.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        v = state.get("velocity")
        self._velocity = None if v is None else v.clone()


def clip_updates(updates: torch.Tensor, clipping_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales each row to L2 norm at most `clipping_norm`: u * min(1, S / ||u||).

    Returns (clipped updates, norms before clipping). The factor is S / max(||u||, S),
    so a zero row stays zero and rows already within the bound are untouched.
    """
    _validate.positive(clipping_norm=clipping_norm)
    norms = torch.linalg.vector_norm(updates.double(), dim=1)
    factors = clipping_norm / torch.clamp(norms, min=clipping_norm)
    return updates * factors.to(updates.dtype)[:, None], norms


@dataclasses.dataclass(frozen=True)
class DpRoundStats:
    """One DP round: the norm used, the released noisy fraction, and (not private) the true one."""

    clipping_norm: float
    noise_std: float
    noisy_unclipped_fraction: float | None  # released (adaptive clipping only)
    clipped_fraction: float  # NOT private: for monitoring only
    clients: int


class DpFedAvg(Aggregator):
    """Client-level differential privacy around an aggregator (DP-FedAvg, McMahan et al. 2018,
    arXiv 1710.06963v3, Alg. 1 with the fixed-denominator estimator f_f).

    Each round: clip every client's update to L2 norm S, sum, add N(0, sigma^2 S^2)
    once, and divide by the *expected* number of clients m (q * num_clients under
    Poisson sampling, k under sampling k without replacement); then the wrapped
    aggregator's `server_step` (post-processing). Adding or removing one client
    moves the noisy sum by at most S whatever the others do, so one round is the
    subsampled Gaussian mechanism recorded in `ledger`.

    The mean is unweighted on purpose. Weighting by example counts, sum_k n_k u_k / sum_k n_k,
    lets one client with a large n_k move the estimate by up to S (its weight
    approaches 1), and its n_k is itself private: the sensitivity is S, not S/m.
    Weights are safe only when capped, w_k = min(n_k / w_cap, 1) in [0, 1], with the
    denominator q * sum_k w_k fixed in advance (McMahan et al. 2018, Sec. 2).

    Args:
        aggregator: the non-private aggregator whose `server_step` is kept.
        noise_multiplier: sigma of the update noise (std sigma * S).
        clipping_norm: S (the initial S under adaptive clipping).
        num_clients: N, the size of the client population.
        sampling_rate: q in (0, 1] under Poisson client sampling; or
        clients_per_round: k under sampling k of N without replacement (accounted
            under the replace-one relation); exactly one of the two.
        rng: the numpy generator every noise draw comes from.
        adaptive: adaptive clipping settings, or None for a fixed S.
        ledger: where each round is recorded (default: a new one, with the relation above).

    Notes:
        The guarantee (neighbouring = one client's whole data added or removed)
        holds only if every update passes through `aggregate`, clients are sampled
        exactly as declared and *which* clients took part stays secret (the
        participation record in federation.json is as private as the data), and
        nothing else computed from client data is released (the `clipped_fraction`
        in `last_round` is not private). The noise comes from `rng` (numpy's PCG64 when
        seeded as usual): not a CSPRNG, and floating-point Gaussian samples are open to
        Mironov 2012 (CCS); whoever knows the seed can subtract the noise.
    """

    def __init__(self, aggregator: Aggregator, *, noise_multiplier: float, clipping_norm: float,
                 num_clients: int, rng: np.random.Generator, sampling_rate: float | None = None,
                 clients_per_round: int | None = None, adaptive: AdaptiveClipping | None = None,
                 ledger: PrivacyLedger | None = None) -> None:
        if not isinstance(aggregator, Aggregator) or isinstance(aggregator, DpFedAvg):
            raise ValueError(f"Expected aggregator to be a non-private Aggregator, got {type(aggregator).__name__}.")
        _validate.positive(noise_multiplier=noise_multiplier, clipping_norm=clipping_norm)
        _validate.integer(minimum=1, num_clients=num_clients)
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"Expected rng to be a numpy.random.Generator, got {type(rng).__name__}.")
        if (sampling_rate is None) == (clients_per_round is None):
            raise ValueError("Expected exactly one of sampling_rate and clients_per_round.")
        if sampling_rate is not None:
            _validate.in_range(0.0, 1.0, lo_open=True, sampling_rate=sampling_rate)
            self.expected_clients = float(sampling_rate) * num_clients
            relation = "add_remove"
        else:
            _validate.integer(minimum=1, clients_per_round=clients_per_round)
            if clients_per_round > num_clients:  # type: ignore[operator]
                raise ValueError(f"Expected clients_per_round={clients_per_round} in [1, num_clients={num_clients}].")
            self.expected_clients = float(clients_per_round)  # type: ignore[arg-type]
            relation = "replace_one"
        if adaptive is not None and not isinstance(adaptive, AdaptiveClipping):
            raise ValueError(f"Expected adaptive to be AdaptiveClipping or None, got {type(adaptive).__name__}.")
        self.aggregator = aggregator
        self.noise_multiplier = float(noise_multiplier)
        self.num_clients = int(num_clients)
        self.sampling_rate = None if sampling_rate is None else float(sampling_rate)
        self.clients_per_round = None if clients_per_round is None else int(clients_per_round)
        self.adaptive = adaptive
        self.count_noise_std = (None if adaptive is None
                                else default_count_noise_std(adaptive, self.expected_clients))
        self.rng = rng
        self.clipping_norm = float(clipping_norm)
        self.ledger = PrivacyLedger(neighboring_relation=relation) if ledger is None else ledger
        if self.ledger.neighboring_relation != relation:
            raise ValueError(f"Expected a ledger kept under neighboring_relation={relation!r} for this sampling.")
        self.last_round: DpRoundStats | None = None

    @property
    def accounted_noise_multiplier(self) -> float:
        """sigma, or with adaptive clipping the effective multiplier of update and count together."""
        if self.count_noise_std is None:
            return self.noise_multiplier
        return effective_noise_multiplier(self.noise_multiplier, self.count_noise_std)

    def round_event(self) -> DpEvent:
        g = GaussianEvent(self.accounted_noise_multiplier)
        if self.sampling_rate is not None:
            return PoissonSampledEvent(self.sampling_rate, g)
        return SampledWithoutReplacementEvent(self.num_clients, self.clients_per_round, g)  # type: ignore[arg-type]

    def _normal(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.rng.standard_normal(shape)).to(like.device, like.dtype)

    def combine(self, updates: torch.Tensor, *, num_examples: torch.Tensor) -> torch.Tensor:
        s = self.clipping_norm
        clipped, norms = clip_updates(updates, s)
        # Gaussian noise N(0, sigma^2 S^2) once on the clipped sum, then the fixed
        # denominator m (McMahan et al. 2018, arXiv 1710.06963v3, Alg. 1, estimator f_f).
        total = clipped.sum(0) + self._normal((updates.shape[1],), updates) * (self.noise_multiplier * s)
        noisy_fraction = None
        if self.adaptive is not None:
            # Andrew et al. 2021 (arXiv 1905.03871), Alg. 1: each client reports b - 1/2 with
            # b = [||u|| <= C]; the noisy mean plus 1/2 estimates the unclipped fraction.
            b = (norms <= s).double() - 0.5
            count = float(b.sum()) + float(self.rng.standard_normal()) * self.count_noise_std
            noisy_fraction = count / self.expected_clients + 0.5
            self.clipping_norm = next_clipping_norm(s, noisy_fraction, self.adaptive)
        self.ledger.record(self.round_event())
        k = int(updates.shape[0])
        self.last_round = DpRoundStats(clipping_norm=s, noise_std=self.noise_multiplier * s,
                                       noisy_unclipped_fraction=noisy_fraction,
                                       clipped_fraction=float((norms > s).double().mean()) if k else 0.0,
                                       clients=k)
        return total / self.expected_clients

    def server_step(self, mean_update: torch.Tensor) -> torch.Tensor:
        return self.aggregator.server_step(mean_update)
