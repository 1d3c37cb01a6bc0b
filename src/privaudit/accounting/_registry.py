"""Accountants by name, for the CLI and for calibration."""

from __future__ import annotations

import importlib
from typing import Any

from ._accountant import PrivacyAccountant

__all__ = ["ACCOUNTANT_NAMES", "make_accountant"]

_CLASSES = {
    "pld": ("privaudit.accounting.pld", "PLDAccountant"),
    "rdp": ("privaudit.accounting.rdp", "RDPAccountant"),
    "gdp": ("privaudit.accounting.gdp", "GDPAccountant"),
}
ACCOUNTANT_NAMES: tuple[str, ...] = tuple(_CLASSES)


def make_accountant(name: str, **kwargs: Any) -> PrivacyAccountant:
    """Returns a fresh accountant: 'pld' (tight, the default), 'rdp', or 'gdp' (an estimate)."""
    try:
        module, cls = _CLASSES[name]
    except KeyError:
        raise ValueError(f"Expected accountant={name!r} in {list(ACCOUNTANT_NAMES)}.") from None
    return getattr(importlib.import_module(module), cls)(**kwargs)
