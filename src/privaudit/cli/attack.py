"""`privaudit attack`: membership-inference attacks on a run (or an npz of logits)."""

from __future__ import annotations

import json
from typing import Any

import click

from ._errors import bad_input_as_exit_2

__all__ = ["attack"]


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--attack", "attacks", multiple=True, default=("all",), show_default=True,
              type=click.Choice(["loss", "lira", "rmia", "all", "lira_online", "lira_offline", "rmia_online",
                                 "rmia_offline"]),
              help="Attack(s) to run; repeatable. lira = online + offline, rmia = online + offline.")
@click.option("--shadows", type=int, default=16, show_default=True, help="Number K >= 2 of shadow models.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the shadows' IN/OUT mask, their training and RMIA's population sample.")
@click.option("--shard", help="Train only shard i/n of the shadow models (e.g. 2/4) into the cache, then stop.")
@click.option("--merge", is_flag=True, help="Merge the trained shards (all of them must exist), then attack.")
@click.option("--npz", type=click.Path(dir_okay=False),
              help="Attack logits from this .npz instead (logits, labels, membership[, shadow_logits, "
                   "shadow_membership]); results go to RUN_DIR.")
@click.option("--delta", type=float, help="delta of the epsilon lower bound (default: the run's; 1e-5 without DP).")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="The bound holds w.p. >= 1 - alpha.")
@click.option("--fpr", "fprs", type=float, multiple=True, default=(0.001, 0.01, 0.1), show_default=True,
              help="FPRs at which to report the TPR; repeatable.")
@click.option("--lira-variance", type=click.Choice(["auto", "fixed", "per-example"]), default="auto",
              show_default=True, help="LiRA variance: auto = one global variance when K < 64.")
@click.option("--rmia-a", type=float, default=0.3, show_default=True, help="RMIA offline's a.")
@click.option("--rmia-gamma", type=float, default=1.0, show_default=True, help="RMIA's gamma.")
@click.option("--rmia-population", type=int, help="Population samples z for RMIA (default: all points).")
@click.option("--augment", type=click.Choice(["auto", "none", "hflip"]), default="auto", show_default=True,
              help="Query augmentation: auto = horizontal flip for images, none otherwise.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--json", "as_json", is_flag=True, help="Print attack.json to stdout instead of a table.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def attack(run_dir: str, attacks: tuple[str, ...], shadows: int, seed: int, shard: str | None, merge: bool,
           npz: str | None, delta: float | None, alpha: float, fprs: tuple[float, ...], lira_variance: str,
           rmia_a: float, rmia_gamma: float, rmia_population: int | None, augment: str, device: str,
           as_json: bool, quiet: bool) -> None:
    """Run membership-inference attacks (LOSS, LiRA, RMIA) on RUN_DIR's model.

    Trains K shadow models side by side with the run's settings (cached in
    RUN_DIR/shadows/), scores every point of the run's dataset, and writes
    RUN_DIR/attack.json and RUN_DIR/attack_roc.png.

    \b
    Examples:
      privaudit attack runs/digits-nodp --shadows 16
      privaudit attack runs/digits-nodp --shadows 64 --shard 1/4   # ... then 2/4, 3/4, 4/4
      privaudit attack runs/digits-nodp --shadows 64 --merge
      privaudit attack out/ --npz logits.npz --attack loss
    """
    from privaudit.attacks._job import AttackOptions, run_attack

    with bad_input_as_exit_2():
        options = AttackOptions(
            alpha=alpha, lira_fixed_variance={"auto": None, "fixed": True, "per-example": False}[lira_variance],
            rmia_a=rmia_a, rmia_gamma=rmia_gamma, rmia_population=rmia_population, augment=augment)
        kwargs: dict[str, Any] = dict(attacks=attacks, shadows=shadows, seed=seed, shard=shard, merge=merge, npz=npz,
                                      delta=delta, fprs=fprs, options=options, device=device)
        if quiet or as_json:
            report = run_attack(run_dir, **kwargs)
        else:
            report = _with_progress(run_attack, run_dir, kwargs)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    if report.shard is not None:
        info = report.shadows or {}
        i, n = report.shard
        click.echo(f"Trained shard {i}/{n} (models {info.get('models')}) into {info.get('folder')}.")
        click.echo(f"When every shard is done: privaudit attack {run_dir} --shadows {shadows} --seed {seed} --merge")
        return
    _print_table(report)


def _with_progress(run_attack: Any, run_dir: str, kwargs: dict[str, Any]) -> Any:
    """Runs the attack with a progress bar that appears only once shadow training starts."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    state: dict[str, Any] = {}

    def on_step(step: int, total: int) -> None:
        if "progress" not in state:
            progress = Progress(TextColumn("[bold]shadow models"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), transient=True)
            progress.start()
            state["progress"], state["task"] = progress, progress.add_task("shadows", total=total)
        state["progress"].update(state["task"], total=total, completed=step)

    try:
        return run_attack(run_dir, on_step=on_step, **kwargs)
    finally:
        if "progress" in state:
            state["progress"].stop()


def _fpr_label(f: float) -> str:
    return f"TPR@{100 * f:g}% FPR"


def _print_table(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    src = report.source
    title = f"privaudit attack: {src.get('run_dir') or src.get('path')}"
    table = Table(title=title)
    table.add_column("attack", no_wrap=True)
    for col in ("AUC", *(_fpr_label(f) for f in report.fprs), "advantage", "ε lower bound"):
        table.add_column(col, justify="right")
    for name, result in report.results.items():
        m = result.metrics
        tprs = [("n/a (too few negatives)" if m.tpr_at_fpr[f] is None else f"{100 * m.tpr_at_fpr[f]:.2f}%")
                for f in report.fprs]
        eps = "-" if m.epsilon is None else f"{m.epsilon.epsilon:.3f}"
        table.add_row(name, f"{m.auc:.4f}", *tprs, f"{m.advantage:.4f}", eps)
    console = Console()
    if not console.is_terminal:  # piped or captured: do not wrap the rows at rich's default of 80 columns
        console = Console(width=160)
    console.print(table)
    pop = report.membership
    lines = [f"population: {int(pop.sum())} members, {int((~pop).sum())} non-members",
             f"ε lower bound: holds with probability ≥ {1 - report.alpha:g} at δ = {report.delta:g} "
             f"({report.delta_source})"]
    if report.shadows is not None:
        sh = report.shadows
        how = "from the cache" if sh.get("from_cache") else "trained now"
        where = sh.get("folder") or sh.get("source")
        lines.append(f"shadow models: {sh.get('count')} ({how}) in {where}")
    if report.json_path is not None:
        lines.append(f"wrote {report.json_path}" + (f" and {report.plot_path}" if report.plot_path else ""))
    lines.extend(report.notes)
    for line in lines:
        console.print(line, highlight=False)
