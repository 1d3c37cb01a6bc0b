"""Utility of `privaudit train` with its default flags on digits (issue 3's utility check).

Runs the real console script, `privaudit train --target-epsilon E` (E = 1, 8) and
`privaudit train --no-dp`, once per seed, with nothing else changed: digits, 80/20
split, the default recipe. Reads each run's summary.json and writes a Markdown table.

    python bench/train_cli.py --seeds 0 1 2 --out reports/train_cli.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, load_average  # noqa: E402

TARGETS = {"1": 0.88, "8": 0.94, "nodp": 0.96}


def _privaudit() -> list[str]:
    exe = shutil.which("privaudit")
    return [exe] if exe else [sys.executable, "-c", "from privaudit.cli import main; main()"]


def run_one(out: Path, budget: str, seed: int, threads: int) -> dict:
    flags = ["--no-dp"] if budget == "nodp" else ["--target-epsilon", budget]
    name = f"{budget}-seed{seed}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run([*_privaudit(), "train", *flags, "--seed", str(seed), "--name", name, "--out", str(out),
                    "--device", "cpu", "--quiet"], check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    summary = json.loads((out / name / "summary.json").read_text())
    return {"budget": budget, "seed": seed, "accuracy": summary["test_accuracy"], "epsilon": summary["epsilon"],
            "steps": summary["steps"], "sigma": summary["noise_multiplier"], "wall": wall,
            "n_train": summary["n_train"], "n_test": summary["n_test"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="reports/train_cli.md")
    args = p.parse_args()
    load_before = load_average()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for budget in ("1", "8", "nodp"):
            for seed in args.seeds:
                rows.append(run_one(Path(tmp), budget, seed, args.threads))
                print(json.dumps(rows[-1]), flush=True)
    lines = [
        "# `privaudit train` with its default flags on digits",
        "",
        f"`python bench/train_cli.py --seeds {' '.join(map(str, args.seeds))}` on {cpu_model()}, "
        f"{os.cpu_count()} cores, {args.threads} thread(s) per run, load average {load_before} before the "
        f"run and {load_average()} after. Each row is the console script exactly as a user types it: "
        "`privaudit train --target-epsilon 1`, `privaudit train --target-epsilon 8` and "
        "`privaudit train --no-dp` (plus `--seed`), i.e. digits, 80/20 split, MLP 256 tanh, Adam 0.02, "
        "sampling rate 1/6, 40 epochs, C = 0.5, delta = 1e-5, PLD accountant, Poisson sampling.",
        "",
        f"Training / held-out examples: {rows[0]['n_train']} / {rows[0]['n_test']}.",
        "",
        "| budget | issue target | held-out accuracy (mean +- std) | per seed | epsilon spent | sigma | steps "
        "| wall s per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for budget in ("1", "8", "nodp"):
        rs = [r for r in rows if r["budget"] == budget]
        accs = [100 * r["accuracy"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        eps = "inf" if budget == "nodp" else f"{max(r['epsilon'] for r in rs):.4f}"
        sigma = "-" if rs[0]["sigma"] is None else f"{rs[0]['sigma']:.4f}"
        met = "met" if statistics.mean(accs) >= 100 * TARGETS[budget] else "MISSED"
        lines.append(f"| {'no DP' if budget == 'nodp' else 'eps ' + budget} | >= {100 * TARGETS[budget]:.0f}% "
                     f"({met}) | {statistics.mean(accs):.1f} +- {sd:.1f}% | "
                     f"{', '.join(f'{a:.1f}' for a in accs)} | {eps} | {sigma} | {rs[0]['steps']} | "
                     f"{statistics.mean(r['wall'] for r in rs):.1f} |")
    lines += ["", "Wall time includes the process start, data loading and the per-epoch evaluation "
              "and checkpoint; it varies with the machine's load."]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
