"""From `FederatedSettings` to the pieces of a federation, shared by every engine.

`load_federation` is what each client needs (data, partition, local training);
`build_server` what the server needs (client sampler, aggregator with its DP
wrapper and noise calibration). The embedded simulator, and the Flower
ServerApp and ClientApp, all build from here, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from ._data import Dataset, load_dataset
from ._adaptive import AdaptiveClipping, default_count_noise_std, update_noise_multiplier
from ._fed_aggregate import Aggregator, DpFedAvg, FedAvg
from ._fed_local import LocalTraining
from ._fed_partition import Partition, partition_by_owner, partition_dirichlet, partition_iid
from ._fed_settings import FederatedSettings, calibrate_fixed_k, calibrate_poisson, worst_sample_rate
from ._fed_sim import ClientSampler, SampleLevelDP
from ._job import _tensors
from ._models import build_model

__all__ = ["Federation", "ServerSide", "build_federated_model", "build_server", "load_federation",
           "make_partition"]


@dataclasses.dataclass(frozen=True, eq=False)
class Federation:
    """The data side: dataset, its tensors, the partition, and what each client does per round."""

    ds: Dataset
    partition: Partition
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    local: LocalTraining


@dataclasses.dataclass(frozen=True, eq=False)
class ServerSide:
    """The server side: client sampler and aggregator (with DP when asked), and the noise they use."""

    sampler: ClientSampler
    aggregator: Aggregator
    sample_dp: SampleLevelDP | None
    sigma: float | None  # update noise (client-level) or each client's DP-SGD noise (sample-level)
    count_noise_std: float | None  # adaptive clipping only
    accounted_noise_multiplier: float | None


def make_partition(s: FederatedSettings, ds: Dataset) -> Partition:
    """The partition of `ds`'s training part that `s` asks for."""
    if s.partition == "owner":
        if ds.owner_train is None:
            raise ValueError("partition='owner' needs a CSV/Parquet dataset loaded with owner_column.")
        p = partition_by_owner(ds.owner_train)
        if s.clients is not None and s.clients != p.num_clients:
            raise ValueError(f"Expected clients={s.clients} to equal the {p.num_clients} owners in "
                             f"{s.owner_column!r} (or leave clients unset).")
        return p
    assert s.clients is not None
    if s.partition == "iid":
        return partition_iid(ds.n_train, num_clients=s.clients, seed=s.seed)
    return partition_dirichlet(ds.y_train, num_clients=s.clients, alpha=s.alpha, seed=s.seed)


def load_federation(s: FederatedSettings) -> Federation:
    """Loads the data, partitions it and resolves local steps (from `local_epochs` if needed)."""
    ds = load_dataset(s.data, seed=s.split_seed, test_fraction=s.test_fraction, target=s.target,
                      owner_column=s.owner_column, image_shape=(s.model == "cnn" and s.data == "digits"))
    partition = make_partition(s, ds)
    if s.clients_per_round is not None and s.clients_per_round > partition.num_clients:
        raise ValueError(f"Expected clients_per_round={s.clients_per_round} in [1, {partition.num_clients}] "
                         "(the clients).")
    steps = s.local_steps if s.local_steps is not None else LocalTraining.steps_for_epochs(
        1.0 if s.local_epochs is None else s.local_epochs, sizes=partition.sizes, batch_size=s.batch_size)
    x_tr, y_tr, x_te, y_te = _tensors(ds)
    return Federation(ds=ds, partition=partition, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
                      local=LocalTraining(steps=steps, batch_size=s.batch_size, lr=s.lr, momentum=s.momentum))


def build_federated_model(s: FederatedSettings, ds: Dataset) -> nn.Module:
    """The initial global model (seeded by `s.seed`)."""
    torch.manual_seed(s.seed)
    kwargs: dict[str, Any] = {"vocab_size": ds.vocab_size} if s.model == "transformer" else {}
    return build_model(s.model, input_shape=ds.input_shape, num_classes=ds.num_classes, **kwargs)


def _noise(s: FederatedSettings, p: Partition, steps: int, m: float, sigma_b: float | None) -> float | None:
    """The update noise multiplier (given, or calibrated for the planned rounds)."""
    if s.dp == "none":
        return None
    if s.target_epsilon is None:
        return s.noise_multiplier
    if s.dp == "sample":  # the worst client, as if it took part in every round
        q = worst_sample_rate(p.sizes, s.batch_size)
        return calibrate_poisson(target_epsilon=s.target_epsilon, target_delta=s.delta, sampling_rate=q,
                                 steps=steps * s.rounds, accountant=s.accountant)
    if s.clients_per_round is not None:
        z = calibrate_fixed_k(target_epsilon=s.target_epsilon, target_delta=s.delta, num_clients=p.num_clients,
                              clients_per_round=s.clients_per_round, rounds=s.rounds, accountant=s.accountant)
    else:
        z = calibrate_poisson(target_epsilon=s.target_epsilon, target_delta=s.delta, sampling_rate=m / p.num_clients,
                              steps=s.rounds, accountant=s.accountant)
    return z if sigma_b is None else update_noise_multiplier(z, sigma_b)


def build_server(s: FederatedSettings, fed: Federation) -> ServerSide:
    """Client sampler and aggregator; their randomness comes from two streams spawned from `s.seed`."""
    n = fed.partition.num_clients
    sampler_rng, noise_rng = (np.random.default_rng(c) for c in np.random.SeedSequence(s.seed).spawn(2))
    q = None if s.clients_per_round is not None else (1.0 if s.client_rate is None else s.client_rate)
    sampler = ClientSampler(num_clients=n, rng=sampler_rng, sampling_rate=q, clients_per_round=s.clients_per_round)
    m = sampler.expected_clients
    adaptive = (AdaptiveClipping(target_quantile=s.target_quantile, learning_rate=s.clip_learning_rate,
                                 count_noise_std=s.count_noise_std) if s.adaptive_clip else None)
    sigma_b = None if adaptive is None else default_count_noise_std(adaptive, m)
    sigma = _noise(s, fed.partition, fed.local.steps, m, sigma_b)
    aggregator: Aggregator = FedAvg(server_lr=s.server_lr, server_momentum=s.server_momentum)
    sample_dp, accounted = None, sigma
    if s.dp == "client":
        assert sigma is not None
        dp = DpFedAvg(aggregator, noise_multiplier=sigma, clipping_norm=s.clip, num_clients=n, rng=noise_rng,
                      sampling_rate=q, clients_per_round=s.clients_per_round, adaptive=adaptive)
        aggregator, accounted = dp, dp.accounted_noise_multiplier
    elif s.dp == "sample":
        assert sigma is not None
        sample_dp = SampleLevelDP(noise_multiplier=sigma, max_grad_norm=s.max_grad_norm, clipping=s.clipping,
                                  accountant=s.accountant)
    return ServerSide(sampler=sampler, aggregator=aggregator, sample_dp=sample_dp, sigma=sigma,
                      count_noise_std=sigma_b, accounted_noise_multiplier=accounted)
