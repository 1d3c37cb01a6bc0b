"""`privaudit audit`: empirical epsilon lower bounds for a trainer, and a PASS/FAIL verdict (exit 3 on FAIL)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from ._errors import BadInput, bad_input_as_exit_2

__all__ = ["audit"]

#: Exit code when a rigorous lower bound exceeds the claimed epsilon.
EXIT_FAIL = 3
#: The trainer name of one-shot estimation for DP-FedAvg.
FED_TRAINER = "dp-fedavg"
#: Options of the canary audits that one-shot estimation does not take.
_NOT_FED = ("threat", "runs", "canary_kind", "epochs", "sampling_rate", "hidden", "max_grad_norm")


def _default_out(trainer: str, threat: str, epsilon: float, canaries: int, runs: int, seed: int) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", trainer).strip("_") or "trainer"
    return Path("audits") / f"{name}-{threat}-eps{epsilon:g}-m{canaries}-r{runs}-seed{seed}"


@click.command()
@click.option("--trainer", required=True,
              help="Built-in (privaudit, opacus, reference, broken-no-clipping, broken-clamp, broken-noise-sigma, "
                   "broken-noise-batch, broken-shuffle, broken-no-noise) or module:function.")
@click.option("--epsilon", type=float, required=True, help="The epsilon the trainer is asked for (and claims).")
@click.option("--delta", type=float, default=1e-5, show_default=True, help="The delta audited, in (0, 1).")
@click.option("--canaries", type=int, required=True, help="Canaries per run, each included with probability 1/2.")
@click.option("--threat", type=click.Choice(["blackbox", "whitebox"]), default="blackbox", show_default=True,
              help="whitebox: gradient canaries, every step's noisy sum seen; blackbox: input canaries, final model.")
@click.option("--runs", type=int, default=1, show_default=True,
              help="1: one-run bound; R > 1: R trainings with one canary each (needs --canaries 1).")
@click.option("--data", default="digits", show_default=True, help="Base dataset (as for privaudit train).")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="Bounds hold with probability 1 - alpha.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds canaries, inclusion and training.")
@click.option("--canary-kind", type=click.Choice(["auto", "outlier", "mislabeled", "random"]), default="auto",
              show_default=True,
              help="Black-box canaries: outlier (far random inputs, random labels; auto's choice for real-valued "
                   "data), mislabeled training rows, or random inputs within the data's range.")
@click.option("--epochs", type=float, help="Built-in trainers: epochs (default 10).")
@click.option("--sampling-rate", type=float,
              help="Built-in trainers: Poisson rate q (default 0.1; 1 = full-batch DP-GD).")
@click.option("--hidden", type=int, help="Built-in trainers: MLP hidden width (default 256).")
@click.option("--max-grad-norm", type=float, help="Built-in trainers: clipping norm C.")
@click.option("--clients", type=int, help="dp-fedavg: real clients N (default 10).")
@click.option("--rounds", type=int, help="dp-fedavg: rounds (default 50).")
@click.option("--client-rate", type=float, help="dp-fedavg: Poisson client rate q (default: every client, "
                                                 "unless --clients-per-round).")
@click.option("--clients-per-round", type=int, help="dp-fedavg: k clients per round without replacement.")
@click.option("--local-steps", type=int, help="dp-fedavg: local SGD steps per round (default: one local epoch).")
@click.option("--clip", type=float, help="dp-fedavg: bound S on each client update's norm (default 1).")
@click.option("--model", help="dp-fedavg: model (default mlp).")
@click.option("--null-directions", type=int, help="dp-fedavg: unobserved random directions (default 1000).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Folder for audit.json and the plots (default: audits/<trainer>-<threat>-...).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", is_flag=True, help="No progress messages.")
@click.pass_context
def audit(ctx: click.Context, trainer: str, epsilon: float, delta: float, canaries: int, threat: str, runs: int,
          data: str, alpha: float, seed: int, canary_kind: str, epochs: float | None, sampling_rate: float | None,
          hidden: int | None, max_grad_norm: float | None, clients: int | None, rounds: int | None,
          client_rate: float | None, clients_per_round: int | None, local_steps: int | None, clip: float | None,
          model: str | None, null_directions: int | None, out_dir: str | None, as_json: bool, quiet: bool) -> None:
    """Audit a DP trainer: insert canaries, train, bound epsilon from below, compare with the claim.

    Exit status: 0 PASS (no evidence against the claim), 3 FAIL (a rigorous lower
    bound exceeds the claimed epsilon), 2 bad input.

    --trainer dp-fedavg: a one-run audit of a DP-FedAvg run: --canaries candidate
    canary clients with fixed random updates each join with probability 1/2, the
    noise is calibrated to --epsilon counting all of them, and their cosines with the
    final model delta give a rigorous lower bound at confidence 1 - --alpha (the
    verdict; exit 3 on FAIL) and the one-shot estimate of Andrew et al. 2023 (an
    estimate, not a bound).

    \b
    Examples:
      privaudit audit --trainer privaudit --epsilon 2 --canaries 1000 --threat whitebox
      privaudit audit --trainer broken-no-clipping --epsilon 2 --canaries 1000 --threat whitebox
      privaudit audit --trainer mypkg.train:dp_train --epsilon 4 --canaries 500 --threat blackbox
      privaudit audit --trainer dp-fedavg --epsilon 2 --canaries 100 --clients 20 --rounds 20 --client-rate 0.5
    """
    fed_flags = {"clients": clients, "rounds": rounds, "client_rate": client_rate,
                 "clients_per_round": clients_per_round, "local_steps": local_steps, "clip": clip, "model": model,
                 "null_directions": null_directions}
    if trainer.strip() == FED_TRAINER:
        _fed_oneshot(ctx, epsilon=epsilon, delta=delta, canaries=canaries, data=data, seed=seed, alpha=alpha,
                     flags=fed_flags, out_dir=out_dir, as_json=as_json, quiet=quiet)
        return
    given_fed = [k for k, v in fed_flags.items() if v is not None]
    if given_fed:
        raise BadInput(f"--{given_fed[0].replace('_', '-')} applies to --trainer {FED_TRAINER} only.")
    from ..audit import audit as run_audit
    from ..audit import write_audit

    with bad_input_as_exit_2():
        given = {k: v for k, v in (("epochs", epochs), ("sampling_rate", sampling_rate), ("hidden", hidden),
                                   ("max_grad_norm", max_grad_norm)) if v is not None}
        options = None
        if given:
            from ..audit import BUILTIN_TRAINERS, TrainingOptions

            if trainer.strip() not in BUILTIN_TRAINERS:
                flags = ", ".join("--" + k.replace("_", "-") for k in given)
                raise ValueError(f"{flags} apply to built-in trainers only, not to trainer={trainer!r}.")
            options = TrainingOptions(**given)
        progress = None if (quiet or as_json) else (lambda msg: click.echo(msg, err=True))
        result = run_audit(trainer, epsilon=epsilon, delta=delta, canaries=canaries, threat=threat, runs=runs,
                           data=data, alpha=alpha, seed=seed, canary_kind=canary_kind, options=options,
                           progress=progress)
    out = Path(out_dir) if out_dir else _default_out(trainer, threat, epsilon, canaries, runs, seed)
    written = write_audit(result, out)
    if as_json:
        payload = result.to_dict(include_scores=False)
        payload["files"] = [str(p) for p in written]
        click.echo(json.dumps(payload, indent=2))
    else:
        _print(result, written)
    if result.verdict == "FAIL":
        ctx.exit(EXIT_FAIL)


def _print(result: Any, written: list[Path]) -> None:
    b = result.bound
    pct = f"{100 * result.confidence:g}%"
    if hasattr(b, "guesses"):
        detail = f"{b.method}: {b.correct}/{b.guesses} guesses right of m={b.m}"
    else:
        detail = f"{b.method}: TP={b.tp}/{b.positives}, FP={b.fp}/{b.negatives}"
    lines = [
        f"privaudit audit: {result.trainer}, {result.threat}, {result.canaries} canaries x {result.runs} run(s), "
        f"data={result.data}, seed={result.seed} ({result.seconds:.1f} s)",
        f"  epsilon claimed (PLD accountant, delta={result.delta:g}): {result.epsilon_claimed:.4f}",
        f"  epsilon lower bound ({pct} confidence):          {result.epsilon_lower:.4f}   [{detail}]",
    ]
    if result.gdp is not None:
        lines.append(f"  epsilon estimate (Gaussian-DP fit, NOT a bound):   {result.gdp.epsilon:.4f}   "
                     f"[mu={result.gdp.mu:.3f}]")
    else:
        lines.append("  epsilon estimate (Gaussian-DP fit, NOT a bound):   n/a (too few canaries to fit)")
    if result.verdict == "FAIL":
        lines.append(f"  verdict: FAIL: epsilon >= {result.epsilon_lower:.4f} > {result.epsilon_claimed:.4f} "
                     f"claimed, with {pct} confidence")
    else:
        lines.append("  verdict: PASS: the lower bound does not exceed the claim (consistent; not a proof)")
    lines.append(f"  wrote {', '.join(str(p) for p in written)}")
    click.echo("\n".join(lines))


def _fed_oneshot(ctx: click.Context, *, epsilon: float, delta: float, canaries: int, data: str, seed: int,
                 alpha: float, flags: dict[str, Any], out_dir: str | None, as_json: bool, quiet: bool) -> None:
    """`--trainer dp-fedavg`: one-run audit of a DP-FedAvg run; prints claim, bound, estimate and verdict, writes
    audit.json."""
    for key in _NOT_FED:
        if ctx.get_parameter_source(key) not in (None, click.core.ParameterSource.DEFAULT):
            raise BadInput(f"--{key.replace('_', '-')} does not apply to --trainer {FED_TRAINER}.")
    from ..audit import fed_oneshot_estimate, write_fed_oneshot
    from ..training._fed_settings import FederatedSettings

    with bad_input_as_exit_2():
        null = flags.pop("null_directions")
        values = {k: v for k, v in flags.items() if v is not None}
        settings = FederatedSettings(data=data, dp="client", target_epsilon=epsilon, delta=delta, seed=seed,
                                     **values)
        progress = None if (quiet or as_json) else (lambda msg: click.echo(msg, err=True))
        result = fed_oneshot_estimate(settings, canaries=canaries, seed=seed, alpha=alpha, progress=progress,
                                      **({} if null is None else {"null_directions": null}))
    out = Path(out_dir) if out_dir else Path("audits") / f"{FED_TRAINER}-oneshot-eps{epsilon:g}-k{canaries}-seed{seed}"
    written = write_fed_oneshot(result, out)
    if as_json:
        payload = result.to_dict()
        payload["files"] = [str(p) for p in written]
        click.echo(json.dumps(payload, indent=2))
        if result.verdict == "FAIL":
            ctx.exit(EXIT_FAIL)
        return
    r = result
    b = r.bound
    click.echo("\n".join([
        f"privaudit audit: {FED_TRAINER} one-shot audit (Andrew et al. 2023), {r.clients} clients + "
        f"{r.inserted} of {r.canaries} candidate canary clients, {r.rounds} rounds, d={r.dimension}, data={data}, "
        f"seed={seed} ({r.seconds:.1f} s)",
        f"  epsilon claimed (accountant, delta={r.delta:g}):       {r.epsilon_claimed:.4f}   "
        f"[noise multiplier {r.noise_multiplier:.4f}, S={r.clipping_norm:g}]",
        f"  epsilon lower bound (one-run, {100 * (1 - b['alpha']):g}% confidence): {r.epsilon_lower:.4f}   "
        f"[{b['correct']} / {b['guesses']} guesses right]",
        f"  epsilon estimate (one-shot, NOT a bound):          {r.epsilon_estimate:.4f}   "
        f"[N(0, 1/d) vs N(mu_c={r.mu_c:.4g}, sigma_c={r.sigma_c:.4g}); sigma_0={r.sigma_0:.4g}]",
        f"  epsilon estimate, equal variances (mu-GDP):        {r.epsilon_gdp:.4f}   [mu={r.gdp_mu:.3f}]",
        f"  null check: {r.null_directions} unobserved directions, mean {r.null_mean:.3g}, std {r.null_std:.3g} "
        f"(expected 0, {r.sigma_0:.3g})",
        f"  verdict: {r.verdict}: " + ("the run leaks more than it claims" if r.verdict == "FAIL" else
                                       "the lower bound does not exceed the claim (consistent; not a proof)"),
        f"  wrote {', '.join(str(p) for p in written)}"]))
    if r.verdict == "FAIL":
        ctx.exit(EXIT_FAIL)
