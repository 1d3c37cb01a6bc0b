"""`privaudit account`: (epsilon, delta) of a DP-SGD setting or a saved ledger; noise calibration."""

from __future__ import annotations

import json
from typing import Any

import click

from ._errors import BadInput, bad_input_as_exit_2

__all__ = ["account"]

_ACCOUNTANTS = ("pld", "rdp", "gdp", "all")
_NOTES = {
    "pld": "tight upper bound (privacy loss distribution)",
    "rdp": "upper bound (Renyi DP)",
    "gdp": "CLT approximation: may UNDER-report epsilon",
}


def _resolve_setting(
    *,
    noise_multiplier: float | None,
    sample_rate: float | None,
    steps: int | None,
    epochs: float | None,
    batch_size: int | None,
    dataset_size: int | None,
) -> tuple[float, int]:
    from ..accounting import sampling_rate_and_steps

    by_rate = sample_rate is not None or steps is not None
    by_epochs = epochs is not None or batch_size is not None or dataset_size is not None
    if by_rate and by_epochs:
        raise BadInput(
            "Give either --sample-rate/--steps or --epochs/--batch-size/--dataset-size, not both."
        )
    if by_epochs:
        missing = [n for n, v in (("--epochs", epochs), ("--batch-size", batch_size),
                                  ("--dataset-size", dataset_size)) if v is None]
        if missing:
            raise BadInput(f"Missing {', '.join(missing)} (needed with --epochs/--batch-size/--dataset-size).")
        assert epochs is not None and batch_size is not None and dataset_size is not None
        return sampling_rate_and_steps(epochs=epochs, batch_size=batch_size, dataset_size=dataset_size)
    missing = [n for n, v in (("--sample-rate", sample_rate), ("--steps", steps)) if v is None]
    if missing:
        raise BadInput(
            f"Missing {', '.join(missing)}: give --sample-rate and --steps, "
            "or --epochs, --batch-size and --dataset-size, or --ledger."
        )
    assert sample_rate is not None and steps is not None
    return sample_rate, steps


@click.command()
@click.option("--noise-multiplier", "-s", type=float, help="Noise std / clipping norm (sigma).")
@click.option("--sample-rate", "-q", type=float, help="Poisson sampling rate q in [0, 1].")
@click.option("--steps", "-T", type=int, help="Number of DP-SGD steps.")
@click.option("--epochs", type=float, help="Epochs (with --batch-size and --dataset-size).")
@click.option("--batch-size", type=int, help="Expected (logical) batch size.")
@click.option("--dataset-size", type=int, help="Number of training examples.")
@click.option("--delta", type=float, default=1e-5, show_default=True, help="Target delta in (0, 1).")
@click.option("--target-epsilon", type=float, help="Calibrate the smallest sigma meeting this epsilon instead.")
@click.option("--accountant", type=click.Choice(_ACCOUNTANTS), default="pld", show_default=True)
@click.option("--neighboring", type=click.Choice(["add_remove", "replace_one"]), default="add_remove",
              show_default=True, help="Neighbouring-dataset relation.")
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False), help="Account a saved privacy ledger (JSON).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def account(
    noise_multiplier: float | None,
    sample_rate: float | None,
    steps: int | None,
    epochs: float | None,
    batch_size: int | None,
    dataset_size: int | None,
    delta: float,
    target_epsilon: float | None,
    accountant: str,
    neighboring: str,
    ledger_path: str | None,
    as_json: bool,
) -> None:
    """Compute (epsilon, delta) for DP-SGD, account a ledger, or calibrate the noise.

    \b
    Examples:
      privaudit account -s 1.1 -q 0.004 -T 10000 --delta 1e-5 --accountant all
      privaudit account --epochs 60 --batch-size 256 --dataset-size 60000 --target-epsilon 2
      privaudit account --ledger runs/demo/ledger.json
    """
    from .. import accounting as acc

    names = ["pld", "rdp", "gdp"] if accountant == "all" else [accountant]
    rows: list[dict[str, Any]] = []
    setting: dict[str, Any] = {"delta": delta, "neighboring_relation": neighboring}
    with bad_input_as_exit_2():
        acc_delta = float(delta)
        from .. import _validate

        _validate.in_range(0.0, 1.0, lo_open=True, hi_open=True, delta=acc_delta)
        if ledger_path is not None:
            if any(v is not None for v in (noise_multiplier, sample_rate, steps, epochs,
                                           batch_size, dataset_size, target_epsilon)):
                raise BadInput("--ledger cannot be combined with a DP-SGD setting or --target-epsilon.")
            ledger = acc.PrivacyLedger.load(ledger_path)
            event = ledger.to_event()
            relation = ledger.neighboring_relation
            setting.update(ledger=ledger_path, entries=len(ledger), total_count=ledger.total_count(),
                           neighboring_relation=relation)
            for name in names:
                a = acc.make_accountant(name, neighboring_relation=relation).compose(event)
                rows.append(_row(name, a.get_epsilon(acc_delta), acc_delta, a.is_upper_bound))
        else:
            q, t = _resolve_setting(noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                                    steps=steps, epochs=epochs, batch_size=batch_size,
                                    dataset_size=dataset_size)
            setting.update(sample_rate=q, steps=t)
            if target_epsilon is not None:
                if noise_multiplier is not None:
                    raise BadInput("Give --noise-multiplier or --target-epsilon, not both.")
                setting["target_epsilon"] = target_epsilon
                for name in names:
                    sigma = acc.calibrate_noise_multiplier(
                        target_epsilon=target_epsilon, target_delta=acc_delta, sampling_rate=q,
                        steps=t, accountant=name, neighboring_relation=neighboring)
                    eps = acc.epsilon_for(sigma, sampling_rate=q, steps=t, delta=acc_delta,
                                          accountant=name, neighboring_relation=neighboring)
                    row = _row(name, eps, acc_delta, acc.make_accountant(name).is_upper_bound)
                    row["noise_multiplier"] = sigma
                    rows.append(row)
            else:
                if noise_multiplier is None:
                    raise BadInput("Missing --noise-multiplier (or give --target-epsilon to calibrate it).")
                setting["noise_multiplier"] = noise_multiplier
                event = acc.dpsgd_event(noise_multiplier, t, sampling_rate=q)
                for name in names:
                    a = acc.make_accountant(name, neighboring_relation=neighboring).compose(event)
                    rows.append(_row(name, a.get_epsilon(acc_delta), acc_delta, a.is_upper_bound))
    if as_json:
        click.echo(json.dumps({"setting": setting, "results": rows}, indent=2))
        return
    _print_table(setting, rows)


def _row(name: str, eps: float, delta: float, upper: bool) -> dict[str, Any]:
    return {"accountant": name, "epsilon": eps, "delta": delta, "is_upper_bound": upper,
            "note": _NOTES[name]}


def _print_table(setting: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    title = ", ".join(f"{k}={v}" for k, v in setting.items() if k != "neighboring_relation")
    table = Table(title=f"privaudit account ({title})")
    table.add_column("accountant")
    if any("noise_multiplier" in r for r in rows):
        table.add_column("noise multiplier", justify="right")
    table.add_column("epsilon", justify="right")
    table.add_column("delta", justify="right")
    table.add_column("note")
    for r in rows:
        cells = [r["accountant"]]
        if "noise_multiplier" in r:
            cells.append(f"{r['noise_multiplier']:.4f}")
        cells += [f"{r['epsilon']:.4f}", f"{r['delta']:.3g}", r["note"]]
        table.add_row(*cells)
    Console().print(table)
