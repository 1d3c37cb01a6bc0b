"""bench/regenerate.py: the one command that regenerates reports/ names existing scripts and every output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_lists_every_step_and_its_scripts_exist():
    out = subprocess.run([sys.executable, "bench/regenerate.py", "--dry-run", "--all"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    steps = re.findall(r"^(\w+): writes (\S+)$", out, flags=re.M)
    assert [s for s, _ in steps][:6] == ["accounting", "engine", "attacks", "federated", "example", "sweep"]
    for script in re.findall(r"python (bench/\S+\.py)", out):
        assert (ROOT / script).is_file(), script
    assert "privaudit run --quiet" in out and "--out {root}/reports/example" in out
    readme = (ROOT / "reports" / "README.md").read_text(encoding="utf-8")
    assert "python bench/regenerate.py" in readme
    for _, writes in steps:
        assert writes in readme, writes
