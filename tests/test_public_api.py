"""Each package's `__all__` is sorted, complete and importable (one public door per package)."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = ["privaudit", "privaudit.accounting", "privaudit.attacks", "privaudit.audit", "privaudit.cli", "privaudit.reports", "privaudit.training"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_importable(name):
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=lambda s: (s.lower(), s)) or exported == sorted(exported)
    for attr in exported:
        assert hasattr(module, attr), f"{name}.{attr} missing"
    public = {n for n in vars(module) if not n.startswith("_")
              and not isinstance(getattr(module, n), type(importlib))}
    assert public <= set(exported) | {"annotations"}, public - set(exported)


def test_accounting_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys, privaudit.accounting as a; "
            "a.make_accountant('pld'); a.make_accountant('rdp'); a.make_accountant('gdp'); "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
