"""The embedded federated simulator: client sampling, local training, aggregation, round by round.

One round (McMahan et al. 2017, arXiv 1602.05629v4, Alg. 1; with DP, McMahan
et al. 2018, arXiv 1710.06963v3, Alg. 1):

1. the `ClientSampler` picks the round's clients (Poisson with rate q, or k of
   N without replacement);
2. each picked client trains from the current global model (`_fed_local`);
3. the `Aggregator` turns the client updates into the global model's change.

Everything runs in one process on one device. `engine='vectorised'` trains
all of a round's clients together (vmap over stacked parameters);
`engine='sequential'` trains them one after another, the reference. Both
consume the same random batches and give the same model up to float rounding.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .. import _validate
from ..accounting import PrivacyLedger
from ._fed_aggregate import Aggregator, DpFedAvg, DpRoundStats
from ._fed_local import FlatParams, LocalTraining, batch_plan, train_dp_sgd, train_sequential, train_vectorised
from ._fed_partition import Partition

__all__ = ["ENGINES", "ClientSampler", "FederatedSimulation", "RemoteTrainer", "RoundResult", "SampleLevelDP",
           "dp_sgd_seed"]

ENGINES = ("vectorised", "sequential")
#: Trains `clients` elsewhere (e.g. on Flower SuperNodes): (clients, round_number=, global_flat=) ->
#: (updates (K, P), each client's ledger of the round or None).
RemoteTrainer = Callable[..., "tuple[torch.Tensor, list[PrivacyLedger] | None]"]


def dp_sgd_seed(client_seed: Sequence[int]) -> int:
    """The DP-SGD seed of a client in a round, derived from its round seed [seed, round, client]."""
    return int(np.random.default_rng(list(client_seed)).integers(0, 2**62))


class ClientSampler:
    """Picks each round's clients: Poisson (each joins with probability `sampling_rate`,
    possibly none) or exactly `clients_per_round` of them without replacement."""

    def __init__(self, *, num_clients: int, rng: np.random.Generator, sampling_rate: float | None = None,
                 clients_per_round: int | None = None) -> None:
        _validate.integer(minimum=1, num_clients=num_clients)
        if (sampling_rate is None) == (clients_per_round is None):
            raise ValueError("Expected exactly one of sampling_rate and clients_per_round.")
        if sampling_rate is not None:
            _validate.in_range(0.0, 1.0, lo_open=True, sampling_rate=sampling_rate)
        else:
            _validate.integer(minimum=1, clients_per_round=clients_per_round)
            if clients_per_round > num_clients:  # type: ignore[operator]
                raise ValueError(f"Expected clients_per_round={clients_per_round} in [1, num_clients={num_clients}].")
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"Expected rng to be a numpy.random.Generator, got {type(rng).__name__}.")
        self.num_clients = int(num_clients)
        self.sampling_rate = None if sampling_rate is None else float(sampling_rate)
        self.clients_per_round = None if clients_per_round is None else int(clients_per_round)
        self.rng = rng

    @property
    def kind(self) -> str:
        return "poisson" if self.sampling_rate is not None else "fixed"

    @property
    def expected_clients(self) -> float:
        return self.sampling_rate * self.num_clients if self.sampling_rate is not None else float(
            self.clients_per_round)  # type: ignore[arg-type]

    def sample(self) -> np.ndarray:
        """Sorted ids of this round's clients."""
        if self.sampling_rate is not None:
            return np.flatnonzero(self.rng.random(self.num_clients) < self.sampling_rate)
        return np.sort(self.rng.choice(self.num_clients, size=self.clients_per_round, replace=False))

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "num_clients": self.num_clients, "sampling_rate": self.sampling_rate,
                "clients_per_round": self.clients_per_round}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SampleLevelDP:
    """Sample-level DP: every client runs DP-SGD locally (the engine's clipping and noise).

    Each client's guarantee covers its own examples and is read from its own
    ledger; client sampling is not counted (it could only help). The clients'
    dataset sizes are treated as public, as DP-SGD treats N.
    """

    noise_multiplier: float
    max_grad_norm: float
    clipping: str = "flat"
    accountant: str = "pld"

    def __post_init__(self) -> None:
        _validate.positive(noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm)


@dataclasses.dataclass(frozen=True)
class RoundResult:
    """What one round did. `update_norm` is the norm of the change of the global model."""

    round: int
    clients: np.ndarray
    update_norm: float
    dp: DpRoundStats | None
    seconds: float


class FederatedSimulation:
    """Runs federated rounds on one device.

    Args:
        module: the model; its current weights are the initial global model.
        x, y: the training set (every client's rows index into it).
        partition: which rows each client holds.
        local: what each client does per round.
        aggregator: `FedAvg`, `DpFedAvg(FedAvg(...), ...)` or any `Aggregator`.
        sampler: the client sampler (its population must be `partition.num_clients`).
        seed: root of the clients' randomness: client c in round r draws its batches
            (and its DP-SGD seed) from `np.random.default_rng([seed, r, c])`.
        engine: 'vectorised' (default) or 'sequential'. Ignored under `sample_dp`,
            which always trains the clients one after another with the engine.
        sample_dp: run DP-SGD on each client; `client_ledgers[k]` records client k's steps.
        max_clients: clients per vectorised chunk (memory bound).
        remote: train the clients elsewhere instead (`engine` is then ignored); the Flower
            backend passes the SuperNodes here.
        fixed_updates: clients whose update is fixed instead of trained: client id -> its (P,)
            update, returned whenever it is sampled (its rows are never used). One-shot privacy
            estimation inserts its canary clients this way (`privaudit.audit.fed_oneshot_estimate`).
    """

    def __init__(self, *, module: nn.Module, x: torch.Tensor, y: torch.Tensor, partition: Partition,
                 local: LocalTraining, aggregator: Aggregator, sampler: ClientSampler, seed: int,
                 engine: str = "vectorised", sample_dp: SampleLevelDP | None = None,
                 max_clients: int = 1024, remote: RemoteTrainer | None = None,
                 fixed_updates: Mapping[int, torch.Tensor] | None = None) -> None:
        if engine not in ENGINES:
            raise ValueError(f"Expected engine={engine!r} in {list(ENGINES)}.")
        if not isinstance(partition, Partition):
            raise ValueError(f"Expected partition to be a Partition, got {type(partition).__name__}.")
        if partition.num_examples != x.shape[0] or x.shape[0] != y.shape[0]:
            raise ValueError(f"Expected x and y with partition.num_examples={partition.num_examples} rows, "
                             f"got {x.shape[0]} and {y.shape[0]}.")
        if sampler.num_clients != partition.num_clients:
            raise ValueError(f"Expected a sampler over {partition.num_clients} clients, got {sampler.num_clients}.")
        if not isinstance(aggregator, Aggregator):
            raise ValueError(f"Expected aggregator to be an Aggregator, got {type(aggregator).__name__}.")
        if sample_dp is not None and isinstance(aggregator, DpFedAvg):
            raise ValueError("Expected either sample_dp or a DpFedAvg aggregator (client-level DP), not both.")
        _validate.integer(minimum=1, max_clients=max_clients)
        _validate.integer(minimum=0, seed=seed)
        self.module = module
        self.layout = FlatParams(module)
        self.device = next(module.parameters()).device
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.partition = partition
        self.local = local
        self.aggregator = aggregator
        self.sampler = sampler
        self.seed = int(seed)
        self.engine = engine
        self.sample_dp = sample_dp
        self.max_clients = int(max_clients)
        self.remote = remote
        self.global_flat = self.layout.flatten(module).clone()
        self.fixed_updates: dict[int, torch.Tensor] = {}
        for c, u in (fixed_updates or {}).items():
            if not 0 <= int(c) < partition.num_clients:
                raise ValueError(f"Expected fixed_updates' clients in [0, {partition.num_clients}), got {c}.")
            if not isinstance(u, torch.Tensor) or tuple(u.shape) != (self.layout.size,):
                raise ValueError(f"Expected client {c}'s fixed update to be a tensor of shape ({self.layout.size},).")
            self.fixed_updates[int(c)] = u.to(self.device, self.global_flat.dtype)
        self.participation: list[list[int]] = []
        self.client_ledgers: list[PrivacyLedger] = (
            [PrivacyLedger(metadata={"client": k}) for k in range(partition.num_clients)]
            if sample_dp is not None else [])

    @property
    def rounds_run(self) -> int:
        return len(self.participation)

    def sync_module(self) -> nn.Module:
        """Loads the current global weights into `module` and returns it."""
        self.layout.load(self.module, self.global_flat)
        return self.module

    def client_seeds(self, round_number: int, clients: Sequence[int]) -> list[list[int]]:
        """The seed of each client's randomness in round `round_number` (1-based)."""
        return [[self.seed, int(round_number), int(c)] for c in clients]

    def client_updates(self, clients: Sequence[int], *, round_number: int) -> torch.Tensor:
        """Local training of `clients` in round `round_number`, from the current global model: (K, P).

        Clients in `fixed_updates` do not train: their row is their fixed update.
        """
        fixed = [i for i, c in enumerate(clients) if int(c) in self.fixed_updates]
        if not fixed:
            return self._trained_updates(clients, round_number=round_number)
        trained = [i for i, c in enumerate(clients) if int(c) not in self.fixed_updates]
        out = torch.empty(len(clients), self.layout.size, dtype=self.global_flat.dtype, device=self.device)
        if trained:
            out[trained] = self._trained_updates([clients[i] for i in trained], round_number=round_number)
        out[fixed] = torch.stack([self.fixed_updates[int(clients[i])] for i in fixed])
        return out

    def _trained_updates(self, clients: Sequence[int], *, round_number: int) -> torch.Tensor:
        rows = [self.partition.clients[int(c)] for c in clients]
        if not rows:
            return torch.zeros(0, self.layout.size, dtype=self.global_flat.dtype, device=self.device)
        client_seeds = self.client_seeds(round_number, clients)
        if self.remote is not None:
            updates, ledgers = self.remote(clients, round_number=round_number, global_flat=self.global_flat)
            if self.sample_dp is not None:
                if ledgers is None or len(ledgers) != len(rows):
                    raise RuntimeError("Sample-level DP: the remote clients must return their ledgers.")
                for c, led in zip(clients, ledgers):
                    self.client_ledgers[int(c)].extend(led)
            return updates.to(self.device, self.global_flat.dtype)
        if self.sample_dp is not None:
            d = self.sample_dp
            seeds = [dp_sgd_seed(s) for s in client_seeds]
            return train_dp_sgd(self.module, self.layout, self.global_flat, self.x, self.y, rows, self.local,
                                noise_multiplier=d.noise_multiplier, max_grad_norm=d.max_grad_norm,
                                seeds=seeds, ledgers=[self.client_ledgers[int(c)] for c in clients],
                                clipping=d.clipping, accountant=d.accountant)
        plan = batch_plan(rows, steps=self.local.steps, batch_size=self.local.batch_size, seeds=client_seeds)
        if self.engine == "vectorised":
            return train_vectorised(self.module, self.layout, self.global_flat, self.x, self.y, plan, self.local,
                                    max_clients=self.max_clients)
        return train_sequential(self.module, self.layout, self.global_flat, self.x, self.y, plan, self.local)

    def run_round(self) -> RoundResult:
        """Samples clients, trains them, aggregates, and updates the global model."""
        t0 = time.perf_counter()
        clients = self.sampler.sample()
        updates = self.client_updates(clients, round_number=self.rounds_run + 1)
        counts = torch.from_numpy(self.partition.sizes[clients]).to(self.device)
        with torch.no_grad():
            change = self.aggregator.aggregate(updates, num_examples=counts)
            self.global_flat = self.global_flat + change.to(self.global_flat.dtype)
        self.participation.append([int(c) for c in clients])
        dp = self.aggregator.last_round if isinstance(self.aggregator, DpFedAvg) else None
        return RoundResult(round=self.rounds_run, clients=clients, update_norm=float(change.norm()), dp=dp,
                           seconds=time.perf_counter() - t0)
