"""Argument validators whose errors name the argument, its value and the accepted range.

Every public entry point validates its inputs here, where they come in, so that
users get ``ValueError: Expected sampling_rate=1.5 in [0, 1].`` instead of a NaN
epsilon several layers down.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

__all__ = [
    "finite",
    "in_range",
    "integer",
    "non_negative",
    "positive",
]


def _as_real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Expected {name} to be a real number, got {value!r}.")
    x = float(value)
    if math.isnan(x):
        raise ValueError(f"Expected {name} to be a number, got NaN.")
    return x


def finite(**kwargs: Any) -> None:
    """Raises ValueError unless every keyword value is a finite real number."""
    for name, value in kwargs.items():
        x = _as_real(name, value)
        if math.isinf(x):
            raise ValueError(f"Expected {name}={value!r} to be finite.")


def positive(*, allow_inf: bool = False, **kwargs: Any) -> None:
    """Raises ValueError unless every keyword value is a real number > 0."""
    for name, value in kwargs.items():
        x = _as_real(name, value)
        if not allow_inf and math.isinf(x):
            raise ValueError(f"Expected {name}={value!r} in (0, inf): it must be finite.")
        if not x > 0:
            raise ValueError(f"Expected {name}={value!r} in (0, inf).")


def non_negative(**kwargs: Any) -> None:
    """Raises ValueError unless every keyword value is a finite real number >= 0."""
    for name, value in kwargs.items():
        x = _as_real(name, value)
        if math.isinf(x) or x < 0:
            raise ValueError(f"Expected {name}={value!r} in [0, inf).")


def in_range(
    lo: float,
    hi: float,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    **kwargs: Any,
) -> None:
    """Raises ValueError unless every keyword value lies in the interval from lo to hi."""
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    for name, value in kwargs.items():
        x = _as_real(name, value)
        ok_lo = x > lo if lo_open else x >= lo
        ok_hi = x < hi if hi_open else x <= hi
        if not (ok_lo and ok_hi):
            raise ValueError(f"Expected {name}={value!r} in {left}{lo}, {hi}{right}.")


def integer(*, minimum: int = 0, **kwargs: Any) -> None:
    """Raises ValueError unless every keyword value is an integer >= minimum.

    Floats with an integral value (``3.0``) are rejected too: a step count of
    ``3.5`` is a bug upstream and must not be silently truncated.
    """
    for name, value in kwargs.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"Expected {name}={value!r} to be an integer >= {minimum}.")
        if int(value) < minimum:
            raise ValueError(f"Expected {name}={value!r} to be an integer >= {minimum}.")


def device_name(*, device: str) -> None:
    """Raises ValueError unless `device` is 'auto', 'cpu', 'cuda' or 'cuda:N'."""
    if device not in ("auto", "cpu") and not (isinstance(device, str) and device.startswith("cuda")):
        raise ValueError(f"Expected device={device!r} in ['auto', 'cpu', 'cuda', 'cuda:N'].")


def settings_from_mapping(cls: Any, data: Any, *, what: str) -> Any:
    """`cls(**data)` for a settings dataclass, naming unknown keys and listing the accepted ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"Unknown {what} setting(s) {unknown}; accepted: {sorted(known)}.")
    return cls(**dict(data))
