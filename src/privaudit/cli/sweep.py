"""`privaudit sweep`: utility and attack strength against the privacy budget (and the clipping norm)."""

from __future__ import annotations

from typing import Any

import click

from ._errors import bad_input_as_exit_2

__all__ = ["sweep"]


@click.command()
@click.option("--epsilons", default="0.5,1,2,4,8,inf", show_default=True,
              help="Target epsilons, comma-separated; inf trains without DP (--no-dp).")
@click.option("--max-grad-norm", "max_grad_norms", default="0.5", show_default=True,
              help="Clipping norm(s) C, comma-separated, e.g. 0.1,0.5,1 (0.5: the default recipe).")
@click.option("--adaptive-clip", is_flag=True,
              help="Also train each budget with adaptive clipping (Andrew et al. 2021) from the first C.")
@click.option("--seeds", default="0", show_default=True, help="Training/split seeds, comma-separated.")
@click.option("--attack", "attacks", multiple=True, default=("loss", "lira"), show_default=True,
              type=click.Choice(["loss", "lira", "rmia", "all", "lira_online", "lira_offline", "rmia_online",
                                 "rmia_offline"]), help="Attack(s); repeatable.")
@click.option("--shadows", type=int, default=4, show_default=True, help="Shadow models per run (>= 3 for LiRA).")
@click.option("--data", default="digits", show_default=True)
@click.option("--model", type=click.Choice(["logreg", "mlp", "cnn", "transformer"]), default="mlp", show_default=True)
@click.option("--epochs", type=float, help="[default: 40, the recipe of privaudit train]")
@click.option("--batch-size", type=int, help="Expected batch size [default: N/6].")
@click.option("--lr", type=float, help="Learning rate [default: Adam 0.02].")
@click.option("--no-dp-lr", type=float, help="Learning rate of the run without DP [default: --lr].")
@click.option("--delta", type=float, default=1e-5, show_default=True)
@click.option("--test-fraction", type=float, default=0.5, show_default=True,
              help="Held-out fraction; 0.5 gives the attacks as many non-members as members.")
@click.option("--out", default=None,
              help="Sweep folder (default: sweeps/<data>-<model>). Finished runs in it are reused.")
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress display.")
def sweep(epsilons: str, max_grad_norms: str, adaptive_clip: bool, seeds: str, attacks: tuple[str, ...],
          shadows: int, data: str, model: str, epochs: float | None, batch_size: int | None, lr: float | None,
          no_dp_lr: float | None, delta: float, test_fraction: float, out: str | None, device: str,
          quiet: bool) -> None:
    """Train the same setting at several budgets and clipping norms, attack each, plot it all against ε.

    Writes OUT/sweep.html (one page), OUT/sweep.md with sweep.png, and OUT/sweep.json.
    --adaptive-clip adds, at every budget, a run whose clipping norm follows a
    noisy median of the gradient norms (its cost is inside the same epsilon):
    the alternative to tuning C over a grid on the private data.

    \b
    Examples:
      privaudit sweep
      privaudit sweep --epsilons 1,8,inf --max-grad-norm 0.1,0.5,1 --seeds 0,1,2
    """
    from ..reports._sweep import SweepOptions, parse_grid, parse_seeds, run_sweep
    from ..training._job import TrainSettings

    with bad_input_as_exit_2():
        options = SweepOptions(epsilons=parse_grid(epsilons, name="epsilons", allow_inf=True),
                               max_grad_norms=parse_grid(max_grad_norms, name="max_grad_norm"),
                               adaptive_clip=adaptive_clip,
                               seeds=parse_seeds(seeds), attacks=attacks, shadows=shadows,
                               no_dp_lr=no_dp_lr, device=device)
        given = {k: v for k, v in dict(epochs=epochs, batch_size=batch_size, lr=lr).items() if v is not None}
        base = TrainSettings(data=data, model=model, delta=delta, max_grad_norm=options.max_grad_norms[0],
                             target_epsilon=1.0, test_fraction=test_fraction, device=device, **given)
        folder = out or f"sweeps/{base.run_name().split('-eps')[0]}"
        result = _run(run_sweep, base, options, folder, quiet=quiet)
    click.echo(f"{len(result.runs)} runs in {result.seconds:.0f} s; wrote {result.files.markdown}, "
               f"{result.files.json}")
    click.echo(str(result.files.html))


def _run(run_sweep: Any, base: Any, options: Any, out: str, *, quiet: bool) -> Any:
    if quiet:
        return run_sweep(base, options, out=out)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=Console(stderr=True)) as progress:
        overall = progress.add_task("sweep", total=None, info="")
        stage = progress.add_task("run", total=None, info="")

        def listener(event: Any) -> None:
            progress.update(overall, total=event.runs, completed=event.index - 1, info=event.label)
            fields: dict[str, Any] = {"description": event.stage, "info": event.label}
            if event.total is not None:
                fields.update(total=event.total, completed=event.completed)
            progress.update(stage, **fields)

        result = run_sweep(base, options, out=out, listener=listener)
        progress.update(overall, completed=len(result.runs), total=len(result.runs), info="done")
        return result
