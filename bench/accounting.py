"""Accountant speed and tightness: privaudit PLD against its peers, in one run.

For every (sigma, q, T) of a grid (delta = 1e-5, add/remove, Poisson-sampled
Gaussian) this measures the epsilon and the wall time of

* privaudit PLD (automatic interval) and privaudit RDP;
* dp_accounting PLD (value_discretization_interval = 1e-4) and RDP;
* Opacus RDP and PRV (their defaults),

each accountant in its own subprocess (imports are not timed; a run under 1 s is
repeated and the best of 3 kept), with a 60 s timeout per configuration and an
8 GiB address-space limit.
Failures (errors, timeouts, MemoryError) are recorded as "failed: ...".
The Markdown table goes to reports/benchmarks/accounting.md (written atomically),
with the machine it ran on and speed ratios (peer time / privaudit PLD time).

    python bench/accounting.py            # the whole grid, a few minutes
    python bench/accounting.py --quick    # three rows
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from _machine import cpu_model  # bench/_machine.py (scripts run as python bench/NAME.py)

DELTA = 1e-5
TIMEOUT_S = 60
MEMORY_BYTES = 8 << 30
BUDGET_S = 9 * 60  # no peer run goes past this (so the whole bench stays near 10 min)
REPORT = Path(__file__).resolve().parents[1] / "reports" / "benchmarks" / "accounting.md"

# (sigma, q, T, why it is in the grid)
GRID = [
    (1.0, 0.01, 1_000, "REFERENCES"),
    (1.0, 0.01, 10_000, "REFERENCES"),
    (0.8, 0.01, 10_000, "REFERENCES"),
    (0.5, 0.001, 10_000, "REFERENCES"),
    (1.0, 0.1, 1, "REFERENCES (single step)"),
    (0.5, 1.0, 100, "REFERENCES (closed form)"),
    (1.0, 0.01, 100_000, "T = 1e5"),
    (2.0, 0.1, 100_000, "T = 1e5"),
    (0.8, 0.001, 100_000, "T = 1e5"),
    (5.0, 0.001, 10_000, "small eps"),
    (0.5, 0.1, 1_000, "large-eps corner"),
    (0.8, 1.0, 1_000, "large-eps corner, q = 1"),
    (1.0, 0.5, 10_000, "eps > 709"),
]
QUICK = [GRID[0], GRID[6], GRID[10]]

ACCOUNTANTS = [
    ("privaudit PLD", "privaudit_pld"),
    ("privaudit RDP", "privaudit_rdp"),
    ("dp_accounting PLD 1e-4", "dpa_pld"),
    ("dp_accounting RDP", "dpa_rdp"),
    ("Opacus RDP", "opacus_rdp"),
    ("Opacus PRV", "opacus_prv"),
]


# --------------------------------------------------------------------------------------
# worker: one accountant, one configuration (runs in a subprocess)
# --------------------------------------------------------------------------------------
def _prepare(name: str, sigma: float, q: float, steps: int):  # noqa: ANN202 - a closure
    """Imports the accountant's package and returns a function that computes epsilon."""
    if name in ("privaudit_pld", "privaudit_rdp"):
        from privaudit.accounting import dpsgd_event, make_accountant

        kind = name.split("_")[1]
        if not make_accountant(kind).supports(dpsgd_event(sigma, 1, sampling_rate=q)):
            raise RuntimeError("does not support the event")

        def run() -> float:
            return make_accountant(kind).compose(dpsgd_event(sigma, steps, sampling_rate=q)).get_epsilon(DELTA)

        return run
    if name in ("dpa_pld", "dpa_rdp"):
        import dp_accounting as dpa
        from dp_accounting.pld import pld_privacy_accountant
        from dp_accounting.rdp import rdp_privacy_accountant

        def run() -> float:
            if name == "dpa_pld":
                acct = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
            else:
                acct = rdp_privacy_accountant.RdpAccountant()
            base = dpa.GaussianDpEvent(sigma)
            event = base if q == 1.0 else dpa.PoissonSampledDpEvent(q, base)
            acct.compose(dpa.SelfComposedDpEvent(event, steps))
            return acct.get_epsilon(DELTA)

        return run
    if name in ("opacus_rdp", "opacus_prv"):
        from opacus.accountants import PRVAccountant, RDPAccountant

        def run() -> float:
            acct = RDPAccountant() if name == "opacus_rdp" else PRVAccountant()
            acct.history = [(sigma, q, steps)]
            return float(acct.get_epsilon(delta=DELTA))

        return run
    raise ValueError(f"Unknown accountant {name!r}.")


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):  # noqa: ANN001, ARG001 - signal handler signature
    raise _Timeout


def _worker(spec: str) -> None:
    """Runs one accountant over every configuration; prints one JSON line per configuration."""
    name, configs, deadline = json.loads(spec)
    signal.signal(signal.SIGALRM, _on_alarm)
    for sigma, q, steps in configs:
        key = [sigma, q, steps]
        left = deadline - time.time()
        limit = int(min(TIMEOUT_S, left))
        if limit < 5:
            out = {"error": f"skipped: bench time budget ({BUDGET_S} s) used up"}
        else:
            signal.alarm(limit)
            try:
                run = _prepare(name, sigma, q, steps)
                times, eps = [], math.nan
                for _ in range(3):
                    t0 = time.perf_counter()
                    eps = run()
                    times.append(time.perf_counter() - t0)
                    if times[0] >= 1.0:
                        break
                out = {"eps": eps, "time": min(times)}
            except _Timeout:
                why = "" if limit == TIMEOUT_S else ", the rest of the bench time budget"
                out = {"error": f"timeout (> {limit} s{why})"}
            except MemoryError:
                out = {"error": f"MemoryError (address space limited to {MEMORY_BYTES >> 30} GiB)"}
            except Exception as exc:  # noqa: BLE001 - a peer's failure is a result
                out = {"error": f"{type(exc).__name__}: {exc}"[:160]}
            finally:
                signal.alarm(0)
        if "eps" in out and not (isinstance(out["eps"], float) and math.isfinite(out["eps"])):
            out = {"error": f"epsilon = {out['eps']!r}"}
        print(json.dumps({"key": key, **out}), flush=True)


def _limit_memory() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))


def run_accountant(name: str, configs: list[tuple[float, float, int]], deadline: float) -> dict:
    """Runs one accountant over `configs` in a subprocess; maps config -> result."""
    spec = json.dumps([name, configs, deadline])
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", spec],
            capture_output=True,
            text=True,
            timeout=(TIMEOUT_S + 30) * len(configs),
            preexec_fn=_limit_memory,
        )
        stdout = proc.stdout
        err = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or ""
        stdout, err = (out.decode() if isinstance(out, bytes) else out), "killed after its time limit"
    results: dict = {}
    for line in stdout.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        results[tuple(row.pop("key"))] = row
    for cfg in configs:
        results.setdefault(tuple(cfg), {"error": f"worker died: {err}"[:160]})
    return results


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------
def _machine() -> dict[str, str]:
    import numpy
    import scipy

    cpu = cpu_model(platform.processor() or "unknown")
    versions = {}
    for mod in ("dp_accounting", "opacus", "torch"):
        try:
            from importlib.metadata import version

            versions[mod] = version(mod.replace("_", "-"))
        except Exception:  # noqa: BLE001 - report, never fail, on a missing peer
            versions[mod] = "not installed"
    try:
        load = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "unknown"
    return {
        "date (UTC)": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "load average at start (1/5/15 min)": load,
        "Python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "dp_accounting": versions["dp_accounting"],
        "opacus": versions["opacus"],
        "torch": versions["torch"],
    }


def _cell(r: dict, base: dict | None) -> str:
    if "error" in r:
        return f"failed: {r['error']}"
    txt = f"{r['eps']:.6g} ({r['time'] * 1e3:.3g} ms"
    if base is not None and "time" in base and "eps" in base:
        txt += f", {r['time'] / base['time']:.1f}x"
    return txt + ")"


def render(machine: dict[str, str], rows: list[tuple], results: dict, wall: float) -> str:
    names = [label for label, _ in ACCOUNTANTS]
    lines = [
        "# Accountant benchmark",
        "",
        "Generated by `python bench/accounting.py`. Poisson-sampled Gaussian (DP-SGD), add/remove,",
        f"delta = {DELTA:g}. Each cell: epsilon (wall time, peer time / privaudit PLD time).",
        "Times are the best of 3 runs when a run takes under 1 s, one process per accountant",
        f"(imports not timed); each run gets {TIMEOUT_S} s, each process {MEMORY_BYTES >> 30} GiB.",
        "The machine is shared: timings are noisy, ratios within a row were taken minutes apart.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in machine.items()],
        f"- whole bench: {wall:.0f} s",
        "",
        "## Results",
        "",
        "| sigma | q | T | why | " + " | ".join(names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for sigma, q, steps, why in rows:
        res = results[(sigma, q, steps)]
        base = res.get("privaudit_pld")
        cells = [_cell(res["privaudit_pld"], None)]
        cells += [_cell(res[key], base) for _, key in ACCOUNTANTS[1:]]
        lines.append(f"| {sigma:g} | {q:g} | {steps:,} | {why} | " + " | ".join(cells) + " |")
    lines += ["", "## Tightness of privaudit PLD against dp_accounting PLD (1e-4)", ""]
    gaps = []
    for sigma, q, steps, _ in rows:
        res = results[(sigma, q, steps)]
        ours, ref = res["privaudit_pld"], res["dpa_pld"]
        if "eps" in ours and "eps" in ref:
            gap = (ours["eps"] - ref["eps"]) / ref["eps"]
            gaps.append(gap)
            lines.append(
                f"- sigma={sigma:g}, q={q:g}, T={steps:,}: privaudit {ours['eps']:.8g}, "
                f"dp_accounting {ref['eps']:.8g}, relative gap {gap:+.2e}"
            )
    if gaps:
        lines += [
            "",
            f"Largest |relative gap|: {max(abs(g) for g in gaps):.2e}; privaudit is never looser "
            f"than dp_accounting by more than {max(max(gaps), 0.0):.1e} (relative).",
        ]
    lines += [
        "",
        "Notes:",
        "",
        "- privaudit PLD's automatic grid nests in dp_accounting's 1e-4 grid (same connect-the-dots",
        "  discretisation), so where both are accurate they agree to ~1e-7; privaudit adds tiny",
        "  allowances for floating-point rounding, hence gaps of order +1e-8.",
        "- Where privaudit is *tighter* by more than that, dp_accounting is the inaccurate one:",
        "  (a) for eps > ~745 its epsilon search underflows (exp(-loss) == 0) and returns a quantile",
        "  of the loss, about 1 above the exact value; (b) with q = 1e-3 and sigma >= 0.8 one step's",
        "  loss spans few 1e-4 cells and that grid inflates eps (~2 % at sigma = 5); privaudit picks",
        "  a finer grid there, and dp_accounting given the same finer grid agrees with it.",
        "- q = 1 rows use the mu-GDP closed form (checked against mpmath in tests/accounting/test_pld.py).",
        "- RDP and PRV rows are other methods: RDP is a looser upper bound; Opacus' PRV is an",
        "  estimate with an error band (eps_error = 0.01 by default).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="three rows only")
    parser.add_argument("--output", type=Path, default=REPORT)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
        return

    from privaudit._io import atomic_write_text

    machine = _machine()
    rows = QUICK if args.quick else GRID
    configs = [(sigma, q, steps) for sigma, q, steps, _ in rows]
    start = time.perf_counter()
    deadline = time.time() + BUDGET_S
    results: dict = {cfg: {} for cfg in configs}
    for label, key in ACCOUNTANTS:
        for cfg, res in run_accountant(key, configs, deadline).items():
            results[cfg][key] = res
            base = results[cfg].get("privaudit_pld") if key != "privaudit_pld" else None
            print(f"sigma={cfg[0]:g} q={cfg[1]:g} T={cfg[2]:,} {label}: {_cell(res, base)}", flush=True)
    wall = time.perf_counter() - start
    atomic_write_text(args.output, render(machine, rows, results, wall))
    print(f"wrote {args.output} ({wall:.0f} s)")


if __name__ == "__main__":
    main()
