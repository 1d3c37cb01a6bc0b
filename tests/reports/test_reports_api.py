"""`privaudit.reports`: one public door with a sorted, complete `__all__`, importable without torch."""

from __future__ import annotations

import importlib
import subprocess
import sys


def test_all_is_sorted_complete_and_importable():
    module = importlib.import_module("privaudit.reports")
    exported = list(module.__all__)
    assert exported == sorted(exported)
    for name in exported:
        assert hasattr(module, name), name
    public = {n for n in vars(module) if not n.startswith("_") and not isinstance(getattr(module, n), type(sys))}
    assert public <= set(exported), public - set(exported)


def test_importing_reports_does_not_import_torch():
    code = "import sys, privaudit.reports; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
