"""Regenerate everything under reports/ with one command.

    python bench/regenerate.py              # benchmarks + the example report + the digits sweep
    python bench/regenerate.py --all        # ... and the long studies (attacks, audit, utility, federated utility)
    python bench/regenerate.py --only example --only sweep
    python bench/regenerate.py --dry-run    # list the steps and their commands

Each step is one of the bench scripts (they are the benchmarks' owners; this
only calls them, one after the other, from the repository root) or
`privaudit run` / `privaudit report` for the example report. A failing step is
recorded and the others still run. The steps' commands, wall times, exit
statuses and the machine go to reports/regenerated.md; each bench writes its
own Markdown table, with its own machine section, as its docstring says.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_model, load_average  # bench/_machine.py (scripts run as python bench/NAME.py)

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CLI = [PY, "-c", "from privaudit.cli import main; main()"]

#: name: (writes, commands). "{tmp}" is a fresh temporary folder, "{root}" the repository; a command
#: starting with "@DIR" runs in DIR, the others in the repository root.
STEPS: dict[str, tuple[str, list[list[str]]]] = {
    "accounting": ("reports/benchmarks/accounting.md", [[PY, "bench/accounting.py"]]),
    "engine": ("reports/benchmarks/engine.md", [[PY, "bench/engine.py", "--threads", "1", "--steps", "20"]]),
    "attacks": ("reports/benchmarks/attacks.md", [[PY, "bench/attacks.py"]]),
    "federated": ("reports/benchmarks/federated.md", [[PY, "bench/federated.py", "speed"]]),
    # Run in {tmp} (cwd), so that the report names the run "runs/digits-mlp-eps2-seed0", not a temporary path.
    "example": ("reports/example/", [["@{tmp}", *CLI, "run", "--quiet"],
                                     ["@{tmp}", *CLI, "report", "runs/digits-mlp-eps2-seed0", "--out",
                                      "{root}/reports/example"]]),
    "sweep": ("reports/sweep_digits.md", [[PY, "bench/sweep_digits.py"]]),
}
#: Long studies, run with --all.
LONG_STEPS: dict[str, tuple[str, list[list[str]]]] = {
    "attack_digits": ("reports/attacks_digits.md", [[PY, "bench/attack_digits.py"]]),
    "audit": ("reports/audit.md", [[PY, "bench/audit.py"]]),
    "utility": ("reports/utility.md", [[PY, "bench/utility.py"]]),
    "train_cli": ("reports/train_cli.md", [[PY, "bench/train_cli.py"]]),
    "engine_large": ("reports/benchmarks/engine_large_batch.md",
                     [[PY, "bench/engine.py", "--threads", "1", "--steps", "10", "--models", "cnn,transformer",
                       "--batch-cnn", "128", "--batch-transformer", "64",
                       "--out", "reports/benchmarks/engine_large_batch.md"]]),
    "federated_utility": ("reports/federated_digits.md", [[PY, "bench/federated.py", "utility"]]),
}


def _machine() -> str:
    cpu = cpu_model()
    load = load_average()
    return (f"{platform.system()} {platform.machine()}, CPU {cpu}, {os.cpu_count()} logical cores, "
            f"Python {platform.python_version()}; load average at the end {load}")


def _display(cmd: list[str]) -> str:
    where = ""
    if cmd and cmd[0].startswith("@"):
        where, cmd = f"(in {cmd[0][1:]}) ", cmd[1:]
    shown = ["privaudit", *cmd[3:]] if cmd[:3] == CLI else ["python", *cmd[1:]]
    return where + " ".join(shown)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="also the long studies (hours on a small CPU)")
    parser.add_argument("--only", action="append", choices=sorted({*STEPS, *LONG_STEPS}), help="run only these")
    parser.add_argument("--dry-run", action="store_true", help="print the steps, run nothing")
    args = parser.parse_args()
    steps = {**STEPS, **(LONG_STEPS if args.all or args.only else {})}
    if args.only:
        steps = {k: v for k, v in steps.items() if k in args.only}
    rows = []
    for name, (writes, commands) in steps.items():
        if args.dry_run:
            print(f"{name}: writes {writes}")
            for cmd in commands:
                print(f"    {_display(cmd)}")
            continue
        tmp = tempfile.mkdtemp(prefix=f"privaudit-{name}-")
        t0, status = time.perf_counter(), "ok"
        try:
            for cmd in commands:
                cmd = [part.replace("{tmp}", tmp).replace("{root}", str(ROOT)) for part in cmd]
                cwd = ROOT
                if cmd[0].startswith("@"):
                    cwd, cmd = Path(cmd[0][1:]), cmd[1:]
                print(f"[{name}] {_display(cmd)}", flush=True)
                rc = subprocess.run(cmd, cwd=cwd).returncode
                if rc != 0:
                    status = f"failed (exit {rc})"
                    break
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        seconds = time.perf_counter() - t0
        print(f"[{name}] {status} in {seconds:.0f} s", flush=True)
        rows.append(f"| {name} | `{'; '.join(_display(c) for c in commands)}` | {writes} | {seconds:.0f} | {status} |")
    if args.dry_run:
        return 0
    text = ["# How reports/ was last regenerated", "",
            f"`python bench/regenerate.py{' --all' if args.all else ''}"
            + "".join(f" --only {o}" for o in args.only or []) + "`, finished "
            f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
            f"Machine: {_machine()}.", "",
            "| step | command | writes | seconds | status |", "|---|---|---|---|---|", *rows, ""]
    from privaudit import _io

    _io.atomic_write_text(ROOT / "reports" / "regenerated.md", "\n".join(text))
    return 0 if all(r.endswith("| ok |") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
