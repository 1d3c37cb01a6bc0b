"""`privaudit train`: DP-SGD (or non-private) training into a run directory."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click

from ._errors import BadInput, bad_input_as_exit_2
from ._federated_options import federated_options, run_federated

__all__ = ["train"]


def _read_config(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise BadInput(f"Cannot read --config file {path!r}: {exc.strerror or exc}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"--config file {path!r} is not valid TOML: {exc}.") from None
    # A run's own config.toml keeps the settings under [settings]: accept both layouts.
    return dict(data.get("settings", data))


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML file of settings (flags win).")
@click.option("--data", default="digits", show_default=True,
              help="digits | breast-cancer | synthetic | synthetic-tokens | cifar10[:DIR] | PATH.csv | PATH.parquet")
@click.option("--target", help="Label column for CSV/Parquet data.")
@click.option("--model", type=click.Choice(["logreg", "mlp", "cnn", "transformer"]), default="mlp", show_default=True)
@click.option("--hidden", type=int, help="MLP hidden units [default: 256].")
@click.option("--activation", type=click.Choice(["tanh", "relu", "gelu"]), help="MLP/CNN activation [default: tanh].")
@click.option("--epochs", type=float, help="Passes over the data [default: 40].")
@click.option("--batch-size", type=int,
              help="Expected (logical) batch size q*N [default: N/6, i.e. sampling rate 1/6].")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), help="[default: adam]")
@click.option("--lr", type=float, help="Learning rate [default: 0.02].")
@click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD momentum.")
@click.option("--noise-multiplier", type=float, help="Noise std / clipping norm.")
@click.option("--target-epsilon", type=float, help="Calibrate the noise for this epsilon at --delta.")
@click.option("--delta", type=float, default=1e-5, show_default=True)
@click.option("--max-grad-norm", type=float, help="Per-example clipping norm C [default: 0.5].")
@click.option("--clipping", type=click.Choice(["flat", "per_layer"]), default="flat", show_default=True)
@click.option("--adaptive-clip", is_flag=True,
              help="Let C follow a noisy quantile of the norms (Andrew et al. 2021); --max-grad-norm is the start.")
@click.option("--target-quantile", type=float, help="Adaptive clipping: unclipped fraction to aim at [default: 0.5].")
@click.option("--count-noise-std", type=float,
              help="Adaptive clipping: noise on the unclipped count [default: expected batch / 20; with "
                   "--target-epsilon at least 5x the calibrated multiplier].")
@click.option("--accountant", type=click.Choice(["pld", "rdp", "gdp"]), default="pld", show_default=True)
@click.option("--physical-batch-size", type=int, help="Rows per forward pass (default: automatic).")
@click.option("--no-dp", is_flag=True, help="Train the same model without DP (attack baseline).")
@click.option("--seed", type=int, default=0, show_default=True, help="Model, sampler and noise seed.")
@click.option("--split-seed", type=int, default=0, show_default=True, help="Train/held-out split seed.")
@click.option("--test-fraction", type=float, default=0.2, show_default=True)
@click.option("--secure-rng", is_flag=True, help="Seed the noise from the OS CSPRNG (not reproducible).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--name", help="Run name (default: derived from the settings).")
@click.option("--out", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--resume", is_flag=True, help="Continue runs/<name> from its last checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@federated_options
@click.pass_context
def train(ctx: click.Context, config_path: str | None, resume: bool, quiet: bool, **flags: Any) -> None:
    """Train a model with DP-SGD and write runs/<name>/ (config, weights, ledger, split, metrics).

    The defaults are one recipe chosen once on a validation split of digits and
    used at every epsilon (MLP 256 tanh, Adam 0.02, sampling rate 1/6, 40
    epochs, C = 0.5): only the noise multiplier depends on the budget.

    \b
    Examples:
      privaudit train --target-epsilon 1 --name digits-eps1
      privaudit train --no-dp --name digits-nodp
      privaudit train --name digits-eps1 --resume

    Under torchrun (e.g. `torchrun --nproc-per-node 2 -m privaudit.cli train ...`) each
    process trains its share of every batch; rank 0 alone prints and writes runs/<name>/.
    """
    from ..training._distributed import env_rank
    from ..training._job import TrainSettings, train_job

    main_rank = env_rank() == 0

    with bad_input_as_exit_2():
        run_federated(ctx, flags, config_path=config_path, resume=resume, quiet=quiet)
        values: dict[str, Any] = {}
        if config_path is not None:
            values.update(_read_config(config_path))
        for key, value in flags.items():
            source = ctx.get_parameter_source(key)
            if source is not click.core.ParameterSource.DEFAULT or key not in values:
                values[key] = value
        values = {k: v for k, v in values.items() if v is not None}
        if resume:
            from ..training._rundir import RunDir

            name = values.get("name") or TrainSettings.from_mapping(values).run_name()
            rd = RunDir.open(Path(values.get("out", "runs")) / name)
            stored = dict(rd.read_config().get("settings", {}))
            stored.update(out=values.get("out", "runs"), device=values.get("device", "auto"), name=name)
            values = stored
        settings = TrainSettings.from_mapping(values)
        result = _run(settings, resume=resume, quiet=quiet or not main_rank, train_job=train_job)
    if main_rank:
        _print_result(result, settings)
    if result.interrupted and main_rank:
        click.echo(f"Interrupted after {result.steps} steps; checkpoint saved. Continue with: "
                   f"privaudit train --name {settings.run_name()} --out {settings.out} --resume", err=True)
    if result.interrupted:
        ctx.exit(130)


def _run(settings: Any, *, resume: bool, quiet: bool, train_job: Any) -> Any:
    if quiet:
        return train_job(settings, resume=resume)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[info]}"), transient=False) as progress:
        task = progress.add_task("train", total=None, info="")
        last = {"acc": float("nan"), "eps": 0.0}

        def on_step(trainer: Any, stats: Any) -> None:
            progress.update(task, total=trainer.planned_steps, completed=trainer.steps_taken,
                            info=f"loss {stats.loss:.3f}  test acc {last['acc']:.3f}  eps {last['eps']:.3f}")

        def on_epoch(rec: Any) -> None:
            last["acc"], last["eps"] = rec.test_accuracy, rec.epsilon

        return train_job(settings, resume=resume, on_step=on_step, on_epoch=on_epoch)


def _print_result(result: Any, settings: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"privaudit train: {result.run_dir}")
    for col in ("test accuracy", f"epsilon (delta={settings.delta:g})", "noise multiplier", "steps", "time (s)"):
        table.add_column(col, justify="right")
    eps = "inf (no DP)" if settings.no_dp else f"{result.epsilon:.4f}"
    sigma = "-" if result.noise_multiplier is None else f"{result.noise_multiplier:.4f}"
    table.add_row(f"{result.test_accuracy:.4f}", eps, sigma, f"{result.steps}/{result.planned_steps}",
                  f"{result.seconds:.1f}")
    Console().print(table)
