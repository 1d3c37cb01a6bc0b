"""Words and numbers as the reports print them (shared by the HTML and Markdown twins)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ._values import as_float as _finite

__all__ = ["fmt_eps", "fmt_num", "fmt_pct", "verdict_sentence"]


def fmt_num(x: Any, digits: int = 4) -> str:
    """`x` to `digits` significant digits; "n/a" for None or NaN, "∞" for infinity."""
    if isinstance(x, str) and x in ("inf", "Infinity"):
        return "∞"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}" if abs(x) >= 10_000 else str(x)
    f = _finite(x)
    if f is None:
        return "∞" if isinstance(x, float) and math.isinf(x) and x > 0 else "n/a"
    return f"{f:.{digits}g}"


def fmt_eps(x: Any) -> str:
    """An epsilon with three decimals ("∞" when infinite, "n/a" when unknown)."""
    if isinstance(x, float) and math.isinf(x) and x > 0:
        return "∞"
    f = _finite(x)
    return "n/a" if f is None else f"{f:.3f}"


def fmt_pct(x: Any, decimals: int = 1) -> str:
    """A fraction in [0, 1] as a percentage."""
    f = _finite(x)
    return "n/a" if f is None else f"{100 * f:.{decimals}f}%"


def verdict_sentence(audit: Mapping[str, Any]) -> str:
    """The audit's verdict in plain words, from audit.json's fields.

    The sentence starts with the verdict itself, so that it can never disagree
    with audit.json.

    >>> verdict_sentence({"verdict": "PASS", "epsilon_claimed": 2.0, "epsilon_lower_bound": 0.39,
    ...                   "confidence": 0.95, "delta": 1e-5}).split(" (at")[0]
    'PASS: with 95% confidence, the audit shows ε ≥ 0.390'
    """
    verdict = str(audit.get("verdict", "")).upper()
    claimed, lower = fmt_eps(audit.get("epsilon_claimed")), fmt_eps(audit.get("epsilon_lower_bound"))
    conf = _finite(audit.get("confidence"))
    if conf is None and _finite(audit.get("alpha")) is not None:
        conf = 1.0 - float(audit["alpha"])
    conf_txt = "n/a" if conf is None else f"{100 * conf:g}%"
    delta = fmt_num(audit.get("delta"), 3)
    if verdict == "PASS":
        return (f"PASS: with {conf_txt} confidence, the audit shows ε ≥ {lower} (at δ = {delta}), which does not "
                f"exceed the claimed ε = {claimed}. The training is consistent with its privacy claim; an audit "
                "can find a violation but never prove a guarantee, so this is not a proof that the claim holds.")
    if verdict == "FAIL":
        return (f"FAIL: with {conf_txt} confidence, ε ≥ {lower} (at δ = {delta}), which exceeds the claimed "
                f"ε = {claimed}. The training does not give the privacy it claims: treat the claimed ε as false "
                "until the implementation is fixed.")
    return f"{verdict or 'UNKNOWN'}: audit.json holds a verdict this report does not know how to read."


#: The clipping key of a sweep point whose run let C adapt (Andrew et al. 2021) instead of fixing it.
ADAPTIVE = "adaptive"


def clipping_series(points: Any) -> list[Any]:
    """The clipping keys of a sweep's DP points, fixed norms ascending then "adaptive"; [None] if none.

    >>> clipping_series([{"max_grad_norm": 1.0}, {"max_grad_norm": "adaptive"}, {"max_grad_norm": 0.1},
    ...                  {"max_grad_norm": None}])
    [0.1, 1.0, 'adaptive']
    """
    keys = {p["max_grad_norm"] for p in points if p.get("max_grad_norm") is not None}
    return sorted(k for k in keys if k != ADAPTIVE) + ([ADAPTIVE] if ADAPTIVE in keys else []) or [None]


def clipping_text(c: Any) -> str:
    """ "C = 0.5", "adaptive C", or "none (no DP)" for a sweep point's clipping key."""
    if c is None:
        return "none (no DP)"
    return "adaptive C" if c == ADAPTIVE else f"C = {fmt_num(c)}"
