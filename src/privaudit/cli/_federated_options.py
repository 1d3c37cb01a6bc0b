"""`privaudit train --federated ...`: the federated flags and the glue that runs them.

`train` takes these options through `@federated_options` and hands its flags
to `run_federated(ctx, flags, ...)` first thing. Without `--federated` that
only removes the federated flags (refusing any that were given); with it, it
runs `train_federated` and ends the command through `ctx.exit`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ._errors import BadInput

__all__ = ["FEDERATED_FLAGS", "federated_options", "run_federated"]

_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--federated",), dict(is_flag=True, help="[federated] Train with federated averaging (see --clients).")),
    (("--clients",), dict(type=int, help="[federated] Number of clients (default 10; owner partition: the owners).")),
    (("--rounds",), dict(type=int, help="[federated] Rounds (default 50).")),
    (("--client-rate",), dict(type=float, help="[federated] Poisson rate q: each client joins a round w.p. q.")),
    (("--clients-per-round",), dict(type=int, help="[federated] k clients per round, without replacement.")),
    (("--dp",), dict(type=click.Choice(["client", "sample", "none"]),
                     help="[federated] client: DP-FedAvg; sample: DP-SGD in each client (default client).")),
    (("--partition",), dict(type=click.Choice(["iid", "dirichlet", "owner"]), help="[federated] default iid.")),
    (("--alpha",), dict(type=float, help="[federated] Dirichlet concentration (default 0.5).")),
    (("--owner-column",), dict(help="[federated] CSV/Parquet column naming each row's client.")),
    (("--local-steps",), dict(type=int, help="[federated] Local SGD steps per round.")),
    (("--local-epochs",), dict(type=float, help="[federated] Local epochs of the average client (default 1).")),
    (("--clip",), dict(type=float, help="[federated] Client-level DP: bound S on each update's norm (default 1).")),
    (("--server-lr",), dict(type=float, help="[federated] Server learning rate (default 1).")),
    (("--server-momentum",), dict(type=float, help="[federated] Server momentum (default 0).")),
    (("--engine",), dict(type=click.Choice(["vectorised", "sequential", "flower"]),
                         help="[federated] vectorised (default) or sequential embedded simulator, or flower: "
                              "a local SuperLink + one SuperNode per client (needs privaudit[flower]).")),
    (("--eval-every",), dict(type=int, help="[federated] Evaluate every this many rounds (default 1).")),
]
FEDERATED_FLAGS = tuple(opts[0][2:].replace("-", "_") for opts, _ in _OPTIONS)
# Flags of `train` that a federated run reads (same meaning; batch size, lr and momentum are local;
# adaptive clipping applies to client updates under --dp client).
_SHARED = ("data", "target", "model", "batch_size", "lr", "momentum", "noise_multiplier", "target_epsilon",
           "delta", "max_grad_norm", "clipping", "accountant", "seed", "split_seed", "test_fraction", "device",
           "name", "out", "adaptive_clip", "target_quantile", "count_noise_std")
_NOT_FEDERATED = ("epochs", "physical_batch_size", "secure_rng")


def federated_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Adds the federated flags to a command (they arrive in its `**flags`)."""
    for opts, kwargs in reversed(_OPTIONS):
        f = click.option(*opts, **kwargs)(f)
    return f


def _explicit(ctx: click.Context, key: str) -> bool:
    return ctx.get_parameter_source(key) not in (None, click.core.ParameterSource.DEFAULT)


def run_federated(ctx: click.Context, flags: dict[str, Any], *, config_path: str | None, resume: bool,
                  quiet: bool) -> None:
    """Pops the federated flags from `flags`; with `--federated`, runs the federated job and exits."""
    fed = {k: flags.pop(k, None) for k in FEDERATED_FLAGS}
    if not fed.pop("federated"):
        given = [k for k in fed if _explicit(ctx, k)]
        if given:
            raise BadInput(f"--{given[0].replace('_', '-')} applies to federated training: add --federated.")
        return
    from ..training._fed_job import train_federated
    from ..training._fed_settings import FederatedSettings

    for key in _NOT_FEDERATED:
        if _explicit(ctx, key):
            raise BadInput(f"--{key.replace('_', '-')} does not apply with --federated (use --rounds, --local-steps).")
    if resume:
        raise BadInput("--resume is not supported with --federated: federated runs are not resumable yet.")
    values: dict[str, Any] = {}
    if config_path is not None:
        from .train import _read_config

        stored = _read_config(config_path)
        stored.pop("federated", None)
        if stored.pop("no_dp", False):
            stored["dp"] = "none"
        values.update(stored)
    values.update({k: flags[k] for k in _SHARED if k in flags and _explicit(ctx, k)})
    values.update({k: v for k, v in fed.items() if v is not None and _explicit(ctx, k)})
    if flags.get("no_dp"):
        if values.get("dp", "none") != "none":
            raise BadInput(f"--no-dp contradicts --dp {values['dp']}.")
        values["dp"] = "none"
    try:
        settings = FederatedSettings.from_mapping(values)
        result = _run(settings, quiet=quiet, train_federated=train_federated)
    except ValueError as exc:
        raise BadInput(" ".join(str(exc).split())) from None
    _print(result, settings)
    ctx.exit(130 if result.interrupted else 0)


def _run(settings: Any, *, quiet: bool, train_federated: Any) -> Any:
    if quiet:
        return train_federated(settings)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]federated"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[info]}")) as progress:
        task = progress.add_task("rounds", total=settings.rounds, info="")
        last = {"acc": float("nan")}

        def on_round(rec: Any) -> None:
            if rec.test_accuracy is not None:
                last["acc"] = rec.test_accuracy
            progress.update(task, completed=rec.round, info=f"clients {rec.clients}  test acc {last['acc']:.3f}"
                                                            f"  eps {rec.epsilon:.3f}")

        return train_federated(settings, on_round=on_round)


def _print(result: Any, settings: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"privaudit train --federated: {result.run_dir}")
    for col in ("test accuracy", f"epsilon (delta={settings.delta:g})", "DP", "noise multiplier", "clients",
                "rounds", "time (s)"):
        table.add_column(col, justify="right")
    eps = "inf (no DP)" if settings.dp == "none" else f"{result.epsilon:.4f}"
    sigma = "-" if result.noise_multiplier is None else f"{result.noise_multiplier:.4f}"
    table.add_row(f"{result.test_accuracy:.4f}", eps, settings.dp, sigma, str(result.num_clients),
                  f"{result.rounds}/{result.planned_rounds}", f"{result.seconds:.1f}")
    Console().print(table)
