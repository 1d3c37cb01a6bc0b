"""`privaudit run`: the whole job on one dataset: train -> attack -> audit -> report."""

from __future__ import annotations

from typing import Any

import click

from ._errors import bad_input_as_exit_2

__all__ = ["run"]

_STAGE_TITLES = {"train": "1/4 train", "attack": "2/4 attack", "audit": "3/4 audit", "report": "4/4 report"}


@click.command()
@click.option("--data", default="digits", show_default=True, help="Dataset (as for privaudit train).")
@click.option("--model", type=click.Choice(["logreg", "mlp", "cnn", "transformer"]), default="mlp",
              show_default=True)
@click.option("--epsilon", type=float, default=2.0, show_default=True,
              help="Target ε: the noise is calibrated to reach it at --delta after the last epoch.")
@click.option("--delta", type=float, default=1e-5, show_default=True)
@click.option("--no-dp", is_flag=True, help="Train without DP (attacked, not audited: there is no claim).")
@click.option("--epochs", type=float, help="Training epochs (default 40, the recipe of privaudit train; 5 with --quick).")
@click.option("--batch-size", type=int, help="Expected batch size q*N [default: N/6].")
@click.option("--lr", type=float, help="Adam learning rate [default: 0.02].")
@click.option("--max-grad-norm", type=float, help="Clipping norm C [default: 0.5].")
@click.option("--test-fraction", type=float, default=0.2, show_default=True,
              help="Held-out fraction: the non-members of the attacks.")
@click.option("--attack", "attacks", multiple=True, default=("loss", "lira", "rmia"), show_default=True,
              type=click.Choice(["loss", "lira", "rmia", "all", "lira_online", "lira_offline", "rmia_online",
                                 "rmia_offline"]), help="Attack(s) to run; repeatable.")
@click.option("--shadows", type=int, help="Shadow models for LiRA/RMIA (default 8; 4 with --quick).")
@click.option("--canaries", type=int, help="Audit canaries (default 1000; 200 with --quick).")
@click.option("--threat", type=click.Choice(["whitebox", "blackbox"]), default="whitebox", show_default=True,
              help="Audit threat model.")
@click.option("--seed", type=int, default=0, show_default=True, help="Training, attack and audit seed.")
@click.option("--name", help="Run name (default: derived from the settings).")
@click.option("--out", default="runs", show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--quick", is_flag=True, help="A smoke test: 5 epochs, 4 shadow models, 200 canaries.")
@click.option("--quiet", is_flag=True, help="No progress display.")
@click.pass_context
def run(ctx: click.Context, data: str, model: str, epsilon: float, delta: float, no_dp: bool, epochs: float | None,
        batch_size: int | None, lr: float | None, max_grad_norm: float | None, test_fraction: float,
        attacks: tuple[str, ...], shadows: int | None, canaries: int | None, threat: str, seed: int,
        name: str | None, out: str, device: str, quick: bool, quiet: bool) -> None:
    """Train with DP-SGD, attack the model, audit the training, and write the report.

    Ends by printing the path of the HTML report. The defaults: digits, the
    recipe of `privaudit train` (MLP 256 tanh, Adam, 40 epochs, C = 0.5) at
    ε = 2, 8 shadow models, 1,000 white-box canaries (reports/regenerated.md
    records how long the example report took); --quick (5 epochs, 4 shadow
    models, 200 canaries) is a smoke test.

    \b
    Examples:
      privaudit run
      privaudit run --epsilon 8 --name digits-eps8
      privaudit run --quick
    """
    from ..reports import QUICK, PipelineOptions, run_pipeline
    from ..training._job import TrainSettings

    with bad_input_as_exit_2():
        if epochs is None and quick:
            epochs = QUICK["epochs"]
        given = {k: v for k, v in dict(epochs=epochs, batch_size=batch_size, lr=lr,
                                       max_grad_norm=max_grad_norm).items() if v is not None}
        settings = TrainSettings(
            data=data, model=model, **given, delta=delta, no_dp=no_dp,
            target_epsilon=None if no_dp else epsilon, seed=seed, test_fraction=test_fraction,
            device=device, name=name, out=out)
        options = PipelineOptions(
            attacks=attacks, shadows=shadows if shadows is not None else (QUICK["shadows"] if quick else 8),
            canaries=canaries if canaries is not None else (QUICK["canaries"] if quick else 1000),
            threat=threat, seed=seed, device=device)
        result = _run(run_pipeline, settings, options, quiet=quiet)
    if result.interrupted:
        click.echo(f"Interrupted during training; {result.run_dir} keeps a checkpoint. Continue with "
                   f"`privaudit train --name {result.run_dir.name} --out {out} --resume`, then "
                   f"`privaudit attack`, `privaudit report`.", err=True)
        ctx.exit(130)
    eps = "∞ (no DP)" if no_dp else f"{result.epsilon:.3f}"
    click.echo(f"held-out accuracy {result.test_accuracy:.3f}, ε = {eps}, audit: {result.verdict or 'not run'}; "
               f"stages took " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()))
    click.echo(str(result.report.html))


def _run(run_pipeline: Any, settings: Any, options: Any, *, quiet: bool) -> Any:
    if quiet:
        return run_pipeline(settings, options)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(SpinnerColumn(finished_text="✓"), TextColumn("[bold]{task.description:<10}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
                  console=console) as progress:
        tasks = {stage: progress.add_task(title, start=False, total=None, info="waiting")
                 for stage, title in _STAGE_TITLES.items()}

        def listener(event: Any) -> None:
            task = tasks[event.stage]
            if event.kind == "start":
                progress.start_task(task)
                progress.update(task, info=event.message)
            elif event.kind == "progress":
                fields: dict[str, Any] = {"info": event.message} if event.message else {}
                if event.total is not None:
                    fields.update(total=event.total, completed=event.completed)
                progress.update(task, **fields)
            elif event.kind in ("done", "skip"):
                total = progress.tasks[task].total or 1
                progress.update(task, total=total, completed=total,
                                info=("skipped: " if event.kind == "skip" else "") + event.message)
                progress.stop_task(task)

        return run_pipeline(settings, options, listener=listener)
