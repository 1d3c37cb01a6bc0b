"""Epsilon over training, recomputed from the ledger: what the report's privacy section shows.

The ledger records every step (runs of identical steps merged into one entry).
The epsilon after `s` steps is the accountant's epsilon over the ledger's first
`s` counts: entries are taken in order and the last one is cut at `s`. One count
is one optimizer step (one round for federated runs), which is how `train_job`
and `train_federated` record them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..accounting import ComposedEvent, PrivacyLedger, SelfComposedEvent, make_accountant

__all__ = ["ACCOUNTANT_LABELS", "EpsilonCurve", "describe_event", "epsilon_curves", "ledger_prefix_event"]

#: Accountants shown in the report, in order, with the words printed next to them.
ACCOUNTANT_LABELS: Mapping[str, str] = {
    "pld": "PLD (tight upper bound)",
    "rdp": "RDP (looser upper bound)",
    "gdp": "GDP (CLT approximation, not a bound)",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class EpsilonCurve:
    """One accountant's epsilon at each recorded step count.

    Attributes:
        accountant: "pld", "rdp" or "gdp".
        label: how the report names it (GDP is marked as an approximation).
        is_upper_bound: whether the accountant's epsilon is a rigorous upper bound.
        steps: step counts (ledger prefixes), increasing.
        epsilons: epsilon at `delta` after each prefix; None where the accountant failed.
        error: why the accountant could not account for the ledger, or None.
    """

    accountant: str
    label: str
    is_upper_bound: bool
    steps: tuple[int, ...]
    epsilons: tuple[float | None, ...]
    error: str | None = None

    @property
    def final(self) -> float | None:
        return self.epsilons[-1] if self.epsilons else None


def ledger_prefix_event(ledger: PrivacyLedger, steps: int) -> ComposedEvent:
    """The composition of the ledger's first `steps` counts (the last entry cut short).

    >>> from privaudit.accounting import PrivacyLedger, dpsgd_event, GaussianEvent
    >>> led = PrivacyLedger()
    >>> _ = led.record(GaussianEvent(1.0), 3); _ = led.record(GaussianEvent(2.0), 5)
    >>> [(e.event.noise_multiplier, e.count) for e in ledger_prefix_event(led, 4).events]
    [(1.0, 3), (2.0, 1)]
    """
    if steps < 0:
        raise ValueError(f"Expected steps={steps!r} >= 0.")
    parts, left = [], int(steps)
    for entry in ledger.entries:
        if left <= 0:
            break
        take = min(entry.count, left)
        parts.append(SelfComposedEvent(entry.event, take))
        left -= take
    return ComposedEvent(tuple(parts))


def epsilon_curves(ledger: PrivacyLedger, steps: Sequence[int], *, delta: float,
                   accountants: Sequence[str] = tuple(ACCOUNTANT_LABELS)) -> tuple[EpsilonCurve, ...]:
    """Each accountant's epsilon at `delta` after each step count in `steps`.

    Step counts beyond the ledger's total are clipped to it. An accountant that
    cannot handle an event (`UnsupportedEventError`, a `ValueError`) gives a
    curve with `error` set and no values, never a wrong number.
    """
    total = ledger.total_count()
    points = sorted({min(int(s), total) for s in steps if int(s) > 0})
    curves = []
    for name in accountants:
        try:
            acct_cls = type(make_accountant(name))
            upper = bool(getattr(acct_cls, "is_upper_bound", True))
        except ValueError as exc:
            curves.append(EpsilonCurve(accountant=name, label=name, is_upper_bound=False, steps=(), epsilons=(),
                                       error=str(exc)))
            continue
        values: list[float | None] = []
        error = None
        for s in points:
            try:
                acct = make_accountant(name, neighboring_relation=ledger.neighboring_relation)
                eps = acct.compose(ledger_prefix_event(ledger, s)).get_epsilon(delta)
            except ValueError as exc:
                error = f"{type(exc).__name__}: {exc}"
                values = []
                break
            values.append(float(eps) if math.isfinite(eps) else None)
        curves.append(EpsilonCurve(accountant=name, label=ACCOUNTANT_LABELS.get(name, name), is_upper_bound=upper,
                                   steps=tuple(points) if error is None else (), epsilons=tuple(values),
                                   error=error))
    return tuple(curves)


def describe_event(event: Mapping[str, Any]) -> str:
    """Plain words for an event dict (`DpEvent.to_dict()`), e.g. "Poisson-sampled (q=0.1781) Gaussian (σ=6.633)".

    >>> describe_event({"kind": "poisson_sampled", "sampling_rate": 0.25,
    ...                 "event": {"kind": "gaussian", "noise_multiplier": 1.5}})
    'Poisson-sampled (q=0.25) Gaussian (σ=1.5)'
    """
    kind = event.get("kind")
    if kind == "gaussian":
        return f"Gaussian (σ={_num(event.get('noise_multiplier'))})"
    if kind == "laplace":
        return f"Laplace (b={_num(event.get('noise_multiplier'))})"
    if kind == "noop":
        return "no-op (releases nothing)"
    if kind == "poisson_sampled":
        return f"Poisson-sampled (q={_num(event.get('sampling_rate'))}) {describe_event(event.get('event') or {})}"
    if kind == "sampled_without_replacement":
        return (f"sampled without replacement ({event.get('sample_size')} of {event.get('source_size')}) "
                f"{describe_event(event.get('event') or {})}")
    if kind == "self_composed":
        return f"{event.get('count')} × {describe_event(event.get('event') or {})}"
    if kind == "composed":
        inner = [describe_event(e) for e in event.get("events") or []]
        return "composition of [" + "; ".join(inner) + "]"
    return str(kind or "unknown event")


def _num(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)
