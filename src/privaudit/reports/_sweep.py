"""The privacy-utility sweep: the same setting trained at several budgets and clipping norms, each attacked.

For every (epsilon, clipping norm C, seed) of the grid, `train_job` trains the
base `TrainSettings` with that target epsilon (math.inf: without DP, once per
seed, C unused) and `run_attack` attacks the model with K shadow models. The
sweep then reports, against epsilon: held-out accuracy, each attack's AUC, its
TPR at 1% FPR where there are enough non-members for it, and its empirical
epsilon lower bound. Runs land in `out/runs/<eps>-C<c>-seed<s>/`; a finished
run (summary complete, attack.json with the same shadows and attacks) is reused,
so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import _validate
from ._text import ADAPTIVE
from ._write import ReportFiles, write_document

__all__ = ["DEFAULT_EPSILONS", "SweepEvent", "SweepOptions", "SweepResult", "parse_grid", "parse_seeds", "run_sweep"]

SWEEP_FORMAT = "privaudit.sweep/1"
DEFAULT_EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0, math.inf)
_INF_WORDS = ("inf", "infinity", "∞", "nodp", "no-dp", "none")


def parse_grid(text: str, *, name: str, allow_inf: bool = False) -> tuple[float, ...]:
    """ "0.5,1,inf" -> (0.5, 1.0, inf); positive values, duplicates dropped, order kept.

    >>> parse_grid("0.5, 1,2,inf", name="epsilons", allow_inf=True)
    (0.5, 1.0, 2.0, inf)
    """
    values: list[float] = []
    for part in str(text).split(","):
        word = part.strip().lower()
        if not word:
            continue
        if word in _INF_WORDS:
            if not allow_inf:
                raise ValueError(f"Expected finite values in {name}={text!r}, got {part.strip()!r}.")
            x = math.inf
        else:
            try:
                x = float(word)
            except ValueError:
                raise ValueError(
                    f"Expected comma-separated numbers in {name}={text!r}, got {part.strip()!r}.") from None
            _validate.positive(**{name: x})
        if x not in values:
            values.append(x)
    if not values:
        raise ValueError(f"Expected at least one value in {name}={text!r}.")
    return tuple(values)


def parse_seeds(text: str) -> tuple[int, ...]:
    """ "0,1,2" -> (0, 1, 2): non-negative integers, duplicates dropped, order kept.

    >>> parse_seeds("0, 1,1")
    (0, 1)
    """
    seeds: list[int] = []
    for part in str(text).split(","):
        word = part.strip()
        if not word:
            continue
        if not word.isdigit():
            raise ValueError(f"Expected comma-separated non-negative integers in seeds={text!r}, got {word!r}.")
        if int(word) not in seeds:
            seeds.append(int(word))
    if not seeds:
        raise ValueError(f"Expected at least one seed in seeds={text!r}.")
    return tuple(seeds)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepOptions:
    """The grid and the attacks.

    Attributes:
        epsilons: target epsilons; math.inf trains without DP.
        max_grad_norms: clipping norms C (None: the base settings' C only).
        adaptive_clip: also train each DP budget with adaptive clipping (Andrew et al. 2021),
            starting from the base settings' C, as the alternative to the grid of norms.
        seeds: training seeds (each also the split seed, so members differ between seeds).
        attacks: attack names or groups; LOSS + LiRA by default.
        shadows: K shadow models per run (>= 3 for LiRA).
        attack_seed: seeds the shadow split.
        no_dp_lr: the learning rate of the run without DP (epsilon = inf); None (the
            default) keeps the base settings' rate, as the default recipe (Adam) does.
        device: "auto", "cpu" or "cuda[:N]".
    """

    epsilons: tuple[float, ...] = DEFAULT_EPSILONS
    max_grad_norms: tuple[float, ...] | None = None
    adaptive_clip: bool = False
    seeds: tuple[int, ...] = (0,)
    attacks: tuple[str, ...] = ("loss", "lira")
    shadows: int = 4
    attack_seed: int = 0
    no_dp_lr: float | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        from ..attacks._job import expand_attacks

        if not self.epsilons:
            raise ValueError("Expected at least one epsilon.")
        for e in self.epsilons:
            _validate.positive(allow_inf=True, epsilon=e)
        if self.max_grad_norms is not None:
            if not self.max_grad_norms:
                raise ValueError("Expected at least one max_grad_norm.")
            _validate.positive(**{f"max_grad_norms[{i}]": c for i, c in enumerate(self.max_grad_norms)})
        if not self.seeds:
            raise ValueError("Expected at least one seed.")
        _validate.integer(minimum=0, **{f"seeds[{i}]": s for i, s in enumerate(self.seeds)})
        object.__setattr__(self, "attacks", expand_attacks(self.attacks))
        _validate.integer(minimum=2, shadows=self.shadows)
        if self.shadows < 3 and any(a.startswith("lira") for a in self.attacks):
            raise ValueError(f"Expected shadows >= 3 for LiRA, got shadows={self.shadows}.")
        _validate.integer(minimum=0, attack_seed=self.attack_seed)
        if self.no_dp_lr is not None:
            _validate.positive(no_dp_lr=self.no_dp_lr)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepEvent:
    """Progress: run `index` of `runs` (1-based) is in `stage` ("train" or "attack")."""

    index: int
    runs: int
    label: str
    stage: str
    completed: int | None = None
    total: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepResult:
    out_dir: Path
    runs: tuple[Mapping[str, Any], ...]
    points: tuple[Mapping[str, Any], ...]
    files: ReportFiles
    seconds: float


#: A sweep point's clipping: a fixed norm C, `ADAPTIVE`, or None (no DP).
Clip = float | str | None


def _grid(base: Any, options: SweepOptions) -> list[tuple[float, Clip, int]]:
    norms: tuple[Clip, ...] = (*(options.max_grad_norms or (base.max_grad_norm,)),
                               *((ADAPTIVE,) if options.adaptive_clip else ()))
    grid = []
    for seed in options.seeds:
        for eps in sorted(options.epsilons):
            for c in ((None,) if math.isinf(eps) else norms):
                grid.append((eps, c, seed))
    return grid


def _label(eps: float, c: Clip, seed: int) -> str:
    clip = "" if c is None else "-Cadaptive" if c == ADAPTIVE else f"-C{c:g}"
    return f"{'nodp' if math.isinf(eps) else f'eps{eps:g}'}{clip}-seed{seed}"


def _settings_for(base: Any, options: SweepOptions, eps: float, c: Clip, seed: int, runs_dir: Path) -> Any:
    fixed = c is None or c == ADAPTIVE  # no DP, or adaptive clipping from the base norm
    return dataclasses.replace(base, target_epsilon=None if math.isinf(eps) else eps, noise_multiplier=None,
                               no_dp=math.isinf(eps), max_grad_norm=base.max_grad_norm if fixed else c,
                               adaptive_clip=c == ADAPTIVE,
                               lr=options.no_dp_lr if math.isinf(eps) and options.no_dp_lr is not None else base.lr,
                               seed=seed, split_seed=seed, name=_label(eps, c, seed), out=str(runs_dir))


def _finished(run_dir: Path, settings: Any, options: SweepOptions) -> tuple[bool, bool]:
    """(training done, attack done) for an existing run directory with the same settings."""
    from ..training._rundir import RunDir

    if not run_dir.exists():
        return False, False
    rd = RunDir.open(run_dir)
    stored = rd.read_config().get("settings", {})
    mine = {k: v for k, v in settings.to_dict().items() if v is not None}
    diff = sorted(k for k in set(stored) | set(mine) if k not in ("out", "device") and stored.get(k) != mine.get(k))
    if diff:
        raise ValueError(f"{str(run_dir)!r} holds a run with other settings ({diff}): use another --out.")
    trained = rd.summary_path.is_file() and rd.read_summary().get("status") == "complete"
    if not trained:
        raise ValueError(f"{str(run_dir)!r} holds an unfinished run: finish it with `privaudit train --resume` "
                         "or remove it.")
    attacked = False
    if (run_dir / "attack.json").is_file():
        import json

        data = json.loads((run_dir / "attack.json").read_text())
        attacked = ((data.get("shadows") or {}).get("count") == options.shadows
                    and (data.get("shadows") or {}).get("seed") == options.attack_seed
                    and list(data.get("attacks") or {}) == list(options.attacks))
    return trained, attacked


def _run_record(run_dir: Path, eps: float, c: Clip, seed: int) -> dict[str, Any]:
    import json

    summary = json.loads((run_dir / "summary.json").read_text())
    attack = json.loads((run_dir / "attack.json").read_text())
    attacks = {}
    for name, entry in (attack.get("attacks") or {}).items():
        bound = entry.get("epsilon_lower_bound") or {}
        attacks[name] = {"auc": entry.get("auc"), "tpr_at_1pct": (entry.get("tpr_at_fpr") or {}).get("0.01"),
                         "tpr_at_1pct_unreported": (entry.get("tpr_at_fpr_unreported") or {}).get("0.01"),
                         "epsilon_lower_bound": bound.get("value"), "advantage": entry.get("advantage")}
    return {"label": run_dir.name, "run_dir": str(run_dir), "target_epsilon": eps, "max_grad_norm": c, "seed": seed,
            "epsilon": summary.get("epsilon") if not math.isinf(eps) else math.inf,
            "noise_multiplier": summary.get("noise_multiplier"), "test_accuracy": summary.get("test_accuracy"),
            "final_clipping_norm": summary.get("final_clipping_norm"),
            "members": (attack.get("population") or {}).get("members"),
            "non_members": (attack.get("population") or {}).get("non_members"),
            "attack_delta": attack.get("delta"), "attacks": attacks}


def _mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None]
    if not vals or len(vals) < len(values):
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def aggregate(runs: Sequence[Mapping[str, Any]], attacks: Sequence[str]) -> list[dict[str, Any]]:
    """Means (and standard deviations) over seeds for each (epsilon, C); a value missing
    for any seed (TPR where the FPR is unreachable) makes the mean None."""
    keys = sorted({(r["target_epsilon"], r["max_grad_norm"]) for r in runs},
                  key=lambda k: (k[0], -1.0 if k[1] is None else math.inf if k[1] == ADAPTIVE else k[1]))
    points = []
    for eps, c in keys:
        group = [r for r in runs if r["target_epsilon"] == eps and r["max_grad_norm"] == c]
        acc, acc_sd = _mean_sd([r["test_accuracy"] for r in group])
        achieved, _ = _mean_sd([r["epsilon"] for r in group]) if not math.isinf(eps) else (math.inf, None)
        point: dict[str, Any] = {"epsilon": eps, "max_grad_norm": c, "seeds": [r["seed"] for r in group],
                                 "achieved_epsilon": achieved, "test_accuracy": acc, "test_accuracy_sd": acc_sd,
                                 "attacks": {}}
        for name in attacks:
            entry: dict[str, Any] = {}
            for key in ("auc", "tpr_at_1pct", "epsilon_lower_bound", "advantage"):
                mean, sd = _mean_sd([(r["attacks"].get(name) or {}).get(key) for r in group])
                entry[key], entry[key + "_sd"] = mean, sd
            point["attacks"][name] = entry
        points.append(point)
    return points


def run_sweep(base: Any, options: SweepOptions, *, out: str | Path,
              listener: Callable[[SweepEvent], None] | None = None) -> SweepResult:
    """Runs the grid and writes out/sweep.{html,md,json} and out/sweep.png.

    Args:
        base: the `TrainSettings` every run starts from (its epsilon, C, seed, name and out are replaced).
        options: the grid and the attacks.
        out: the sweep's folder.
        listener: called with a `SweepEvent` as runs progress.

    Raises:
        ValueError: bad options, or `out` holding runs with other settings.
    """
    from ..attacks._job import run_attack
    from ..training._job import train_job
    from ._pipeline import save_attack_scores

    t0 = time.perf_counter()
    out_dir = Path(out)
    runs_dir = out_dir / "runs"
    grid = _grid(base, options)
    # Every run's settings are built (and so validated) before the first one trains.
    plans = [(eps, c, seed, _settings_for(base, options, eps, c, seed, runs_dir)) for eps, c, seed in grid]
    records = []
    for i, (eps, c, seed, settings) in enumerate(plans, start=1):
        run_dir = runs_dir / settings.run_name()
        label = settings.run_name()

        def emit(stage: str, completed: int | None = None, total: int | None = None) -> None:
            if listener is not None:
                listener(SweepEvent(index=i, runs=len(plans), label=label, stage=stage, completed=completed,
                                    total=total))

        trained, attacked = _finished(run_dir, settings, options)
        if not trained:
            emit("train")
            result = train_job(settings, on_step=lambda tr, st: emit("train", tr.steps_taken, tr.planned_steps))
            if result.interrupted:
                raise KeyboardInterrupt
        if not attacked:
            emit("attack")
            report = run_attack(run_dir, attacks=options.attacks, shadows=options.shadows, seed=options.attack_seed,
                                device=options.device, on_step=lambda k, n: emit("attack", k, n))
            save_attack_scores(report)
        records.append(_run_record(run_dir, eps, c, seed))
    points = aggregate(records, options.attacks)
    from ._sweep_document import sweep_document

    data = {"format": SWEEP_FORMAT, "base_settings": {k: v for k, v in base.to_dict().items() if v is not None},
            "options": dataclasses.asdict(options), "runs": records, "points": points}
    doc = sweep_document(data)
    files = write_document(doc, out_dir, stem="sweep", data=_json_ready(data))
    return SweepResult(out_dir=out_dir, runs=tuple(records), points=tuple(points), files=files,
                       seconds=time.perf_counter() - t0)


def _json_ready(value: Any) -> Any:
    """JSON-ready: infinity becomes the string "inf" (an epsilon of infinity means no DP)."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else None
    return value
