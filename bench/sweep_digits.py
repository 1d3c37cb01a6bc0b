"""The privacy-utility sweep on digits: accuracy and attack strength against epsilon.

`privaudit sweep`'s library call (`run_sweep`) on scikit-learn digits with the
default training recipe of `privaudit train` (MLP 256 tanh, Adam 0.02, sampling
rate 1/6, 40 epochs, C = 0.5; the same at every epsilon, and without DP), plus,
at every budget, the same recipe with adaptive clipping (C starts at 0.5 and
follows a noisy median of the per-example norms, Andrew et al. 2021), a 50/50
member/non-member split (898 / 899; seed = training seed = split seed), epsilon
in {0.5, 1, 2, 4, 8, inf}, delta = 1e-5, attacked by LOSS and LiRA (online and
offline) with 4 shadow models each. Nothing is tuned on these results; every
number is reported.

    python bench/sweep_digits.py               # seeds 0 1 2: writes reports/sweep_digits.md
    python bench/sweep_digits.py --quick       # one seed, 10 epochs: a smoke test

Runs are kept in --work (default /tmp/privaudit-sweep-digits); a finished run
there is reused, so an interrupted bench continues where it stopped.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shutil
import time
from pathlib import Path

from _machine import cpu_model, load_average  # bench/_machine.py (scripts run as python bench/NAME.py)

ROOT = Path(__file__).resolve().parents[1]


def _recorded_seconds(runs) -> tuple[float, float]:
    """(training, shadow training) seconds summed over the runs, as each run recorded them when it ran."""
    import json

    train = shadows = 0.0
    for run in runs:
        folder = Path(run["run_dir"])
        train += json.loads((folder / "summary.json").read_text()).get("train_seconds") or 0.0
        attack = json.loads((folder / "attack.json").read_text())
        shadows += (attack.get("shadows") or {}).get("training_seconds") or 0.0
    return train, shadows


def _machine(threads: int, seconds: float, recorded: tuple[float, float]) -> list[str]:
    import numpy
    import torch

    import privaudit

    cpu = cpu_model()
    load = load_average()
    return ["## Machine", "",
            f"- date (UTC): {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M}",
            f"- CPU: {cpu}; {os.cpu_count()} logical cores visible; torch threads {threads}",
            f"- load average at the end (1/5/15 min): {load} (the machine is shared with other jobs)",
            f"- Python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}, "
            f"privaudit {privaudit.__version__}",
            f"- wall time of this invocation: {seconds / 60:.1f} min (finished runs found in --work are reused, "
            "not re-run)",
            f"- as recorded by the runs when they ran: {recorded[0] / 60:.1f} min of target training and "
            f"{recorded[1] / 60:.1f} min of shadow-model training in all", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=None, help="default: the recipe's 40")
    parser.add_argument("--no-adaptive", action="store_true", help="leave out the adaptive-clipping runs")
    parser.add_argument("--shadows", type=int, default=4)
    parser.add_argument("--epsilons", default="0.5,1,2,4,8,inf")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--work", default="/tmp/privaudit-sweep-digits-recipe", help="where the runs are kept")
    parser.add_argument("--report", default=str(ROOT / "reports" / "sweep_digits.md"))
    parser.add_argument("--quick", action="store_true", help="one seed, 10 epochs (a smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = args.seeds[:1], 10.0
        args.work = args.work + "-quick"

    import torch

    from privaudit.reports import SweepOptions, run_sweep
    from privaudit.reports._sweep import parse_grid
    from privaudit.training._job import TrainSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    given = {} if args.epochs is None else {"epochs": args.epochs}
    base = TrainSettings(data="digits", model="mlp", target_epsilon=1.0, test_fraction=0.5, device="cpu", **given)
    options = SweepOptions(epsilons=parse_grid(args.epsilons, name="epsilons", allow_inf=True),
                           seeds=tuple(args.seeds), attacks=("loss", "lira"), shadows=args.shadows, device="cpu",
                           adaptive_clip=not args.no_adaptive)
    t0 = time.perf_counter()

    def progress(event) -> None:
        if event.completed in (None, event.total):
            print(f"[{time.perf_counter() - t0:7.0f} s] run {event.index}/{event.runs} {event.label}: {event.stage}",
                  flush=True)

    result = run_sweep(base, options, out=args.work, listener=progress)
    report = Path(args.report)
    assets = report.with_suffix("")  # reports/sweep_digits/
    assets.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.out_dir / "sweep.png", assets / "sweep.png")
    shutil.copyfile(result.out_dir / "sweep.json", assets / "sweep.json")
    body = (result.out_dir / "sweep.md").read_text(encoding="utf-8")
    body = body.replace("](sweep.png)", f"]({assets.name}/sweep.png)")
    title, _, rest = body.partition("\n")
    header = [title.replace("privaudit sweep", "Privacy-utility sweep"), "",
              f"Generated by `python bench/sweep_digits.py{' --quick' if args.quick else ''}` "
              f"(seeds {' '.join(map(str, args.seeds))}, {base.epochs:g} epochs, {args.shadows} shadow models); "
              f"the sweep's JSON is in `{assets.name}/sweep.json`.", "",
              *_machine(torch.get_num_threads(), time.perf_counter() - t0, _recorded_seconds(result.runs)),
              "## Results", ""]
    from privaudit import _io

    _io.atomic_write_text(report, "\n".join(header) + "\n" + rest.lstrip("\n"))
    print(f"wrote {report}")


if __name__ == "__main__":
    main()
