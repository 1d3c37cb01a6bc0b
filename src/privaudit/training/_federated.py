"""Federated learning with DP-FedAvg: the names `privaudit.training` exports for it.

* partitions: `partition_iid`, `partition_dirichlet`, `partition_by_owner` -> `Partition`;
* aggregation: `FedAvg`, and client-level DP around any aggregator: `DpFedAvg`
  (McMahan et al. 2018, arXiv 1710.06963v3) with optional `AdaptiveClipping`
  (Andrew et al. 2021, arXiv 1905.03871);
* the embedded simulator: `FederatedSimulation` (vectorised over clients, or the
  sequential reference), `ClientSampler`, `LocalTraining`, `SampleLevelDP`;
* the job behind `privaudit train --federated`: `FederatedSettings`, `train_federated`.

>>> import numpy as np, torch
>>> from privaudit.training import build_model
>>> g = torch.Generator().manual_seed(0)
>>> x, y = torch.randn(200, 8, generator=g), torch.randint(0, 2, (200,), generator=g)
>>> part = partition_iid(200, num_clients=20, seed=0)
>>> agg = DpFedAvg(FedAvg(), noise_multiplier=1.0, clipping_norm=0.5, num_clients=20,
...                sampling_rate=0.5, rng=np.random.default_rng(0))
>>> sim = FederatedSimulation(
...     module=build_model("logreg", input_shape=(8,), num_classes=2), x=x, y=y, partition=part,
...     local=LocalTraining(steps=2, batch_size=5, lr=0.1), aggregator=agg,
...     sampler=ClientSampler(num_clients=20, sampling_rate=0.5, rng=np.random.default_rng(1)),
...     seed=2)
>>> rounds = [sim.run_round() for _ in range(3)]
>>> agg.ledger.total_count() == sim.rounds_run == 3
True
"""

from ._adaptive import AdaptiveClipping as AdaptiveClipping
from ._adaptive import effective_noise_multiplier as effective_noise_multiplier
from ._adaptive import update_noise_multiplier as update_noise_multiplier
from ._fed_aggregate import Aggregator as Aggregator
from ._fed_aggregate import DpFedAvg as DpFedAvg
from ._fed_aggregate import DpRoundStats as DpRoundStats
from ._fed_aggregate import FedAvg as FedAvg
from ._fed_aggregate import clip_updates as clip_updates
from ._fed_job import FederatedResult as FederatedResult
from ._fed_job import RoundRecord as RoundRecord
from ._fed_job import train_federated as train_federated
from ._fed_local import LocalTraining as LocalTraining
from ._fed_partition import Partition as Partition
from ._fed_partition import partition_by_owner as partition_by_owner
from ._fed_partition import partition_dirichlet as partition_dirichlet
from ._fed_partition import partition_iid as partition_iid
from ._fed_settings import FederatedSettings as FederatedSettings
from ._fed_sim import ClientSampler as ClientSampler
from ._fed_sim import FederatedSimulation as FederatedSimulation
from ._fed_sim import RoundResult as RoundResult
from ._fed_sim import SampleLevelDP as SampleLevelDP

__all__ = [
    "AdaptiveClipping",
    "Aggregator",
    "ClientSampler",
    "DpFedAvg",
    "DpRoundStats",
    "FedAvg",
    "FederatedResult",
    "FederatedSettings",
    "FederatedSimulation",
    "LocalTraining",
    "Partition",
    "RoundRecord",
    "RoundResult",
    "SampleLevelDP",
    "clip_updates",
    "effective_noise_multiplier",
    "partition_by_owner",
    "partition_dirichlet",
    "partition_iid",
    "train_federated",
    "update_noise_multiplier",
]
