"""The Flower backend (`--engine flower`): the same federation, run by Flower's Deployment Runtime.

* `server_app` (a Flower `ServerApp`) calls `train_federated` with `FlowerClients` as
  its remote trainer, so client sampling, aggregation (FedAvg / DpFedAvg), accounting
  and the run directory are exactly those of the embedded simulator;
* `client_app` (a Flower `ClientApp`) runs the same local training for the client
  named by its SuperNode's `partition-id` (`train_sequential`, or DP-SGD with
  sample-level DP), drawing its batches from the same seed [seed, round, client];
* `run_flower_deployment` starts `flower-superlink` and one `flower-supernode` per
  client on 127.0.0.1 (insecure, no TLS), submits the app with `flwr run`, and stops
  every process it started, by process group, whatever happens (and after
  `timeout_s` at the latest, through a watchdog).

Local runs only: every connection here is plain HTTP on the loopback interface.
Across machines, give the SuperLink a certificate (`flower-superlink --ssl-certfile
--ssl-keyfile --ssl-ca-certfile`), point SuperNodes at it with `--root-certificates`
instead of `--insecure`, and enable SuperNode authentication
(`--enable-supernode-auth`, `--auth-supernode-private-key`); see Flower's "Enable TLS
connections" and "Authenticate SuperNodes" guides. The ServerApp loads the dataset as
well (for the partition sizes and the test-set evaluation): in a real deployment the
server would hold only a held-out set.

Needs the extra `privaudit[flower]` (flwr 1.42).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..accounting import PrivacyLedger
from ._fed_build import Federation, build_federated_model, load_federation
from ._fed_launch import run_flower_deployment
from ._fed_local import FlatParams, batch_plan, train_dp_sgd, train_sequential
from ._fed_settings import FederatedSettings
from ._fed_sim import dp_sgd_seed

if TYPE_CHECKING:
    from flwr.app import Context, Message
    from flwr.serverapp import Grid

__all__ = ["FlowerClients", "client_app", "run_flower_deployment", "server_app"]


@lru_cache(maxsize=1)
def _apps() -> dict[str, Any]:
    """The ServerApp and ClientApp, built on first use so that importing this module needs no flwr."""
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    server, client = ServerApp(), ClientApp()
    server.main()(main)
    client.query()(query)
    client.train()(train)
    return {"server_app": server, "client_app": client}


def __getattr__(name: str) -> Any:
    """`server_app` and `client_app` (PEP 562), the names a Flower App's pyproject.toml points at."""
    if name in ("server_app", "client_app"):
        return _apps()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@lru_cache(maxsize=2)
def _federation(settings_json: str) -> tuple[FederatedSettings, Federation]:
    s = FederatedSettings.from_mapping(json.loads(settings_json))
    return s, load_federation(s)


def query(msg: Message, context: Context) -> Message:
    """Tells the server which client (partition) this SuperNode holds."""
    from flwr.app import ConfigRecord, Message, RecordDict

    return Message(RecordDict({"config": ConfigRecord({"partition-id": int(context.node_config["partition-id"])})}),
                   reply_to=msg)


def train(msg: Message, context: Context) -> Message:
    """One round of local training from the global model in `msg`; replies with the update."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    s, fed = _federation(str(context.run_config["settings"]))
    cfg = msg.content["config"]
    client, rnd = int(cfg["client"]), int(cfg["round"])
    if client != int(context.node_config["partition-id"]):
        raise ValueError(f"Asked to train client {client} on the SuperNode of client "
                         f"{context.node_config['partition-id']}.")
    model = build_federated_model(s, fed.ds)
    layout = FlatParams(model)
    global_flat = torch.from_numpy(msg.content["arrays"].to_numpy_ndarrays()[0].copy())
    rows = fed.partition.clients[client]
    seed = [s.seed, rnd, client]
    ledger_json = ""
    if s.dp == "sample":
        ledger = PrivacyLedger(metadata={"client": client})
        update = train_dp_sgd(model, layout, global_flat, fed.x_train, fed.y_train, [rows], fed.local,
                              noise_multiplier=float(cfg["noise-multiplier"]), max_grad_norm=s.max_grad_norm,
                              seeds=[dp_sgd_seed(seed)], ledgers=[ledger], clipping=s.clipping,
                              accountant=s.accountant)[0]
        ledger_json = json.dumps(ledger.to_dict())
    else:
        plan = batch_plan([rows], steps=fed.local.steps, batch_size=fed.local.batch_size, seeds=[seed])
        update = train_sequential(model, layout, global_flat, fed.x_train, fed.y_train, plan, fed.local)[0]
    content = RecordDict({"arrays": ArrayRecord.from_numpy_ndarrays([update.numpy()]),
                          "metrics": MetricRecord({"num-examples": int(rows.size)}),
                          "config": ConfigRecord({"ledger": ledger_json})})
    return Message(content, reply_to=msg)


class FlowerClients:
    """The remote trainer of `FederatedSimulation`: client k trains on the SuperNode whose
    `partition-id` is k. Waits (up to `timeout_s`) for all `num_clients` SuperNodes."""

    def __init__(self, grid: Grid, *, num_clients: int, noise_multiplier: float | None,
                 timeout_s: float = 120.0) -> None:
        import time

        from flwr.app import ConfigRecord, Message, MessageType, RecordDict

        self.grid, self.timeout_s, self.noise_multiplier = grid, float(timeout_s), noise_multiplier
        deadline = time.monotonic() + self.timeout_s
        nodes = list(grid.get_node_ids())
        while len(nodes) < num_clients:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Only {len(nodes)} of {num_clients} SuperNodes connected in {timeout_s} s.")
            time.sleep(0.5)
            nodes = list(grid.get_node_ids())
        queries = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY)
                   for n in nodes]
        self.node_of: dict[int, int] = {}
        for reply in grid.send_and_receive(queries, timeout=self.timeout_s):
            _raise_on_error(reply)
            self.node_of[int(reply.content["config"]["partition-id"])] = int(reply.metadata.src_node_id)
        missing = sorted(set(range(num_clients)) - set(self.node_of))
        if missing:
            raise RuntimeError(f"No SuperNode holds the clients {missing[:10]} (partition-id).")

    def __call__(self, clients: Sequence[int], *, round_number: int,
                 global_flat: torch.Tensor) -> tuple[torch.Tensor, list[PrivacyLedger] | None]:
        from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

        arrays = ArrayRecord.from_numpy_ndarrays([global_flat.detach().cpu().numpy()])
        messages = []
        for c in clients:
            config: dict[str, Any] = {"client": int(c), "round": int(round_number)}
            if self.noise_multiplier is not None:
                config["noise-multiplier"] = float(self.noise_multiplier)
            messages.append(Message(RecordDict({"arrays": arrays, "config": ConfigRecord(config)}),
                                    dst_node_id=self.node_of[int(c)], message_type=MessageType.TRAIN))
        replies = {int(r.metadata.src_node_id): r for r in self.grid.send_and_receive(messages,
                                                                                        timeout=self.timeout_s)}
        updates, ledgers = [], []
        for c in clients:
            reply = replies.get(self.node_of[int(c)])
            if reply is None:
                raise RuntimeError(f"Client {int(c)} did not reply in round {round_number} "
                                   f"(timeout {self.timeout_s} s).")
            _raise_on_error(reply)
            updates.append(torch.from_numpy(np.array(reply.content["arrays"].to_numpy_ndarrays()[0])))
            text = str(reply.content["config"]["ledger"])
            ledgers.append(PrivacyLedger.from_dict(json.loads(text)) if text else PrivacyLedger())
        stacked = torch.stack(updates) if updates else torch.zeros(0, global_flat.numel())
        return stacked, ledgers


def _raise_on_error(reply: Message) -> None:
    if reply.has_error():
        raise RuntimeError(f"A ClientApp failed: {reply.error.reason}")


def main(grid: Grid, context: Context) -> None:
    """Runs the whole federated job, its clients being the SuperNodes."""
    from ._fed_build import build_server
    from ._fed_job import train_federated

    s, fed = _federation(str(context.run_config["settings"]))
    sigma = build_server(s, fed).sigma if s.dp == "sample" else None
    remote = FlowerClients(grid, num_clients=fed.partition.num_clients, noise_multiplier=sigma,
                           timeout_s=float(context.run_config.get("timeout-s", 120.0)))
    train_federated(s, remote=remote)
