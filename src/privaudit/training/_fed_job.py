"""A whole federated run: data -> partition -> rounds -> run directory.

`train_federated(settings)` is what `privaudit train --federated` calls. It
writes the same run directory as `train_job` (config.toml, split.json,
ledger.json, metrics.jsonl with one line per round, model.safetensors,
summary.json) plus `federation.json`: the partition (client -> training rows
and original example indices) and which clients took part in each round.

federation.json is as private as the data: under client-level DP the guarantee
relies on the secrecy of who was sampled, and the partition names each
client's examples. Federated runs are not resumable (an interrupted run keeps
what it wrote, with status 'interrupted' in summary.json).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__, _io
from ..accounting import PrivacyLedger, flatten_event, make_accountant
from ._fed_aggregate import DpFedAvg
from ._fed_build import build_federated_model, build_server, load_federation
from ._fed_settings import FederatedSettings
from ._fed_sim import FederatedSimulation, RemoteTrainer
from ._job import _device, _stop_requests, evaluate
from ._rundir import RunDir

__all__ = ["FEDERATION_FORMAT", "FederatedResult", "RoundRecord", "train_federated"]

FEDERATION_FORMAT = "privaudit.federation/1"


@dataclasses.dataclass(frozen=True)
class RoundRecord:
    """One line of `metrics.jsonl` (accuracy and loss are None on rounds that were not evaluated)."""

    round: int
    clients: int
    test_loss: float | None
    test_accuracy: float | None
    train_loss: float | None
    train_accuracy: float | None
    epsilon: float
    clipping_norm: float | None
    update_norm: float
    round_seconds: float
    seconds: float


@dataclasses.dataclass(frozen=True)
class FederatedResult:
    """What a finished (or interrupted) federated run reports; epsilon is inf without DP."""

    run_dir: Path
    rounds: int
    planned_rounds: int
    epsilon: float
    delta: float
    noise_multiplier: float | None
    test_accuracy: float
    seconds: float
    interrupted: bool
    num_clients: int


class _Epsilon:
    """Epsilon so far: the server ledger (client-level), or the worst client's ledger (sample-level)."""

    def __init__(self, s: FederatedSettings, sim: FederatedSimulation, ledger: PrivacyLedger | None) -> None:
        self.s, self.sim, self.ledger = s, sim, ledger
        self._cache: dict[Any, float] = {}
        self.worst_client: int | None = None

    def _eps(self, ledger: PrivacyLedger) -> float:
        key = (ledger.neighboring_relation, tuple(flatten_event(ledger.to_event())))
        if key not in self._cache:
            acct = make_accountant(self.s.accountant, neighboring_relation=ledger.neighboring_relation)
            self._cache[key] = acct.compose(ledger.to_event()).get_epsilon(self.s.delta) if key[1] else 0.0
        return self._cache[key]

    def __call__(self) -> float:
        if self.s.dp == "none":
            return math.inf
        if self.ledger is not None:
            return self._eps(self.ledger)
        # Sample-level: epsilon grows with a client's local rate and its step count, so
        # the maximum over clients is attained on their Pareto front of (rate, steps).
        sizes = self.sim.partition.sizes
        rate = np.minimum(self.s.batch_size, sizes) / sizes
        steps = np.array([led.total_count() for led in self.sim.client_ledgers])
        best, front = -1, []
        for k in sorted(range(len(sizes)), key=lambda k: (-rate[k], -steps[k])):
            if steps[k] > best:
                front.append(k)
                best = steps[k]
        eps = {k: self._eps(self.sim.client_ledgers[k]) for k in front}
        self.worst_client = max(eps, key=lambda k: eps[k])
        return eps[self.worst_client]


def train_federated(settings: FederatedSettings, *, on_round: Callable[[RoundRecord], None] | None = None,
                    max_rounds: int | None = None, remote: RemoteTrainer | None = None) -> FederatedResult:
    """Runs `settings.rounds` federated rounds and writes the run directory.

    Args:
        settings: the run's settings.
        on_round: called after every round with its `RoundRecord` (epsilon so far included).
        max_rounds: stop (as if interrupted) after this many rounds.
        remote: where clients train when they do not train here (the Flower ServerApp passes
            its SuperNodes). With `settings.engine == 'flower'` and no `remote`, this starts a
            local Flower deployment whose ServerApp calls back into this function.

    Raises:
        ValueError: bad settings, data that cannot give the asked clients, or an existing run.
    """
    s = settings
    if s.engine == "flower" and remote is None:
        from ._fed_launch import run_flower_deployment

        return run_flower_deployment(s)
    out, name = Path(s.out), s.run_name()
    if (out / name).exists():
        raise ValueError(f"Run directory {str(out / name)!r} exists: choose another --name.")
    device = _device(s.device)
    fed = load_federation(s)
    ds, partition, n_clients = fed.ds, fed.partition, fed.partition.num_clients
    x_tr, y_tr, x_te, y_te = fed.x_train, fed.y_train, fed.x_test, fed.y_test
    model = build_federated_model(s, ds).to(device)
    server = build_server(s, fed)
    sampler, aggregator, local, sigma, sigma_b, m = (server.sampler, server.aggregator, fed.local, server.sigma,
                                                     server.count_noise_std, server.sampler.expected_clients)
    sim = FederatedSimulation(module=model, x=x_tr, y=y_tr, partition=partition, local=local, aggregator=aggregator,
                              sampler=sampler, seed=s.seed, engine="sequential" if remote else s.engine,
                              sample_dp=server.sample_dp,
                              max_clients=s.max_clients, remote=remote)
    server_ledger = aggregator.ledger if isinstance(aggregator, DpFedAvg) else (
        PrivacyLedger() if s.dp == "none" else None)
    epsilon = _Epsilon(s, sim, server_ledger)
    accounted = server.accounted_noise_multiplier
    rd = RunDir.create(out, name)
    rd.write_config({
        "privaudit_version": __version__, "torch_version": torch.__version__,
        "settings": {k: v for k, v in s.to_dict().items() if v is not None},
        "resolved": {"run_name": name, "device": str(device), "dataset": ds.describe(), "federated": True,
                     "num_clients": n_clients, "sampler": sampler.to_dict(), "expected_clients_per_round": m,
                     "local": dataclasses.asdict(local), "noise_multiplier": sigma,
                     "accounted_noise_multiplier": accounted, "count_noise_std": sigma_b,
                     "neighboring_relation": (server_ledger.neighboring_relation if server_ledger is not None
                                              else "add_remove (per client's examples)"),
                     "unit_of_privacy": {"client": "client", "sample": "example", "none": None}[s.dp]}})
    rd.write_split(ds.split_record(), {"training_seed": s.seed, "noise_seed": s.seed, "secure_rng": False,
                                       "model_init_seed": s.seed, "partition_seed": partition.seed})

    def write_ledgers() -> None:
        if server_ledger is not None:
            rd.write_ledger(server_ledger)
            return
        worst = 0 if epsilon.worst_client is None else epsilon.worst_client
        led = PrivacyLedger(metadata={"client": worst, "note": "sample-level DP: the ledger of the client with "
                                      "the largest epsilon; every client's ledger is in client_ledgers.json"})
        led.extend(sim.client_ledgers[worst])
        rd.write_ledger(led)
        _io.atomic_write_json(rd.path / "client_ledgers.json",
                              {str(k): led.to_dict() for k, led in enumerate(sim.client_ledgers)})

    write_ledgers()
    t0, interrupted, te_acc = time.perf_counter(), False, float("nan")
    with _stop_requests() as stop:
        for r in range(1, s.rounds + 1):
            if stop or (max_rounds is not None and sim.rounds_run >= max_rounds):
                interrupted = True
                break
            res = sim.run_round()
            evaluate_now = r % s.eval_every == 0 or r == s.rounds
            tr = te = (None, None)
            if evaluate_now:
                sim.sync_module()
                te = evaluate(model, x_te, y_te, device=device)
                tr = evaluate(model, x_tr, y_tr, device=device)
                te_acc = te[1]
            rec = RoundRecord(round=r, clients=len(res.clients), test_loss=te[0], test_accuracy=te[1],
                              train_loss=tr[0], train_accuracy=tr[1], epsilon=epsilon(),
                              clipping_norm=None if res.dp is None else res.dp.clipping_norm,
                              update_norm=res.update_norm, round_seconds=res.seconds, seconds=time.perf_counter() - t0)
            rd.append_metrics(dataclasses.asdict(rec))
            if on_round is not None:
                on_round(rec)
    sim.sync_module()
    if not math.isfinite(te_acc) or interrupted:
        te_acc = evaluate(model, x_te, y_te, device=device)[1]
    eps, seconds = epsilon(), time.perf_counter() - t0
    rd.save_weights(model.state_dict(), metadata={"rounds": str(sim.rounds_run)})
    write_ledgers()
    _io.atomic_write_json(rd.path / "federation.json", {
        "format": FEDERATION_FORMAT,
        "warning": "As private as the data: the partition names each client's examples, and the guarantee of "
                   "client-level DP relies on keeping secret which clients took part in each round.",
        "partition": {**partition.to_dict(), "client_examples": [ds.train_indices[c].tolist()
                                                                  for c in partition.clients]},
        "sampler": sampler.to_dict(), "local": dataclasses.asdict(local), "dp": s.dp,
        "rounds": [{"round": i + 1, "clients": c} for i, c in enumerate(sim.participation)]})
    rd.write_summary({
        "status": "interrupted" if interrupted else "complete", "federated": True, "rounds": sim.rounds_run,
        "planned_rounds": s.rounds, "epsilon": eps if math.isfinite(eps) else None, "delta": s.delta,
        "private": s.dp != "none", "dp": s.dp, "noise_multiplier": sigma, "accounted_noise_multiplier": accounted,
        "clip": s.clip if s.dp == "client" else None,
        "final_clip": aggregator.clipping_norm if isinstance(aggregator, DpFedAvg) else None,
        "max_grad_norm": s.max_grad_norm if s.dp == "sample" else None, "worst_client": epsilon.worst_client,
        "accountant": s.accountant, "test_accuracy": te_acc, "train_seconds": seconds, "num_clients": n_clients,
        "expected_clients_per_round": m, "local_steps": local.steps, "n_train": ds.n_train, "n_test": ds.n_test})
    return FederatedResult(run_dir=rd.path, rounds=sim.rounds_run, planned_rounds=s.rounds, epsilon=eps,
                           delta=s.delta, noise_multiplier=sigma, test_accuracy=te_acc, seconds=seconds,
                           interrupted=interrupted, num_clients=n_clients)
