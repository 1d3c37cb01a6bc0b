"""The end-to-end job behind `privaudit run`: train -> attack -> audit -> report.

1. **train**: `train_job` with the given `TrainSettings` writes `runs/<name>/`.
2. **attack**: `run_attack` trains K shadow models with the run's settings and
   attacks the model (attack.json); the attacks' per-example scores are saved
   next to it in attack_scores.json, so the report can draw every ROC curve.
3. **audit**: `audit` inserts gradient (white-box) or input (black-box) canaries
   into privaudit's own DP-SGD trainer, run with the run's epsilon, delta,
   sampling rate, epochs and clipping norm, so that the audited claim is the
   run's claim (the model is the audit trainer's MLP, not the run's weights:
   an audit needs a training run of its own, with canaries in it). Writes
   audit.json and its plots into the run directory. A run without DP makes no
   claim and is not audited.
4. **report**: `write_report` writes runs/<name>/report/report.{html,md,json}.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import _io, _validate
from ._results import SCORES_FORMAT, SCORES_NAME
from ._write import ReportFiles, write_report

__all__ = ["STAGES", "PipelineEvent", "PipelineOptions", "PipelineResult", "QUICK", "run_pipeline"]

STAGES = ("train", "attack", "audit", "report")
#: What `--quick` changes (flags given explicitly still win): a smoke test in well under a minute.
QUICK = {"epochs": 5.0, "shadows": 4, "canaries": 200}


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineEvent:
    """Progress of one stage: kind is "start", "progress", "done" or "skip"."""

    stage: str
    kind: str
    completed: int | None = None
    total: int | None = None
    message: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineOptions:
    """Everything after training.

    Attributes:
        attacks: attack names or groups (see `privaudit.attacks.ATTACK_NAMES`).
        shadows: K shadow models (>= 3 for LiRA).
        canaries: canaries of the one-run audit.
        threat: "whitebox" (gradient canaries, every step's noisy sum seen) or "blackbox".
        seed: seeds the attack (shadow split, RMIA sample) and the audit.
        alpha: the attack and audit lower bounds hold with probability >= 1 - alpha.
        device: "auto", "cpu" or "cuda[:N]" for the attack's models.
        audit: False skips the audit stage.
    """

    attacks: tuple[str, ...] = ("loss", "lira", "rmia")
    shadows: int = 8
    canaries: int = 1000
    threat: str = "whitebox"
    seed: int = 0
    alpha: float = 0.05
    device: str = "auto"
    audit: bool = True

    def __post_init__(self) -> None:
        from ..attacks._job import expand_attacks

        object.__setattr__(self, "attacks", expand_attacks(self.attacks))
        _validate.integer(minimum=2, shadows=self.shadows)
        if self.shadows < 3 and any(a.startswith("lira") for a in self.attacks):
            raise ValueError(f"Expected shadows >= 3 for LiRA, got shadows={self.shadows}.")
        _validate.integer(minimum=1, canaries=self.canaries)
        _validate.integer(minimum=0, seed=self.seed)
        _validate.in_range(0, 1, lo_open=True, hi_open=True, alpha=self.alpha)
        if self.threat not in ("whitebox", "blackbox"):
            raise ValueError(f"Expected threat={self.threat!r} in ['blackbox', 'whitebox'].")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineResult:
    """What `run_pipeline` did: the run directory, the report's files and each stage's seconds."""

    run_dir: Path
    report: ReportFiles | None
    test_accuracy: float
    epsilon: float
    verdict: str | None
    interrupted: bool
    seconds: dict[str, float]


Listener = Callable[[PipelineEvent], None]


def _emit(listener: Listener | None, stage: str, kind: str, **kw: Any) -> None:
    if listener is not None:
        listener(PipelineEvent(stage=stage, kind=kind, **kw))


def save_attack_scores(report: Any) -> Path:
    """Writes attack_scores.json next to attack.json: membership and every attack's scores,
    tied to that attack.json by its SHA-256 (a later re-attack makes it stale, never wrong)."""
    attack_json = Path(report.json_path)
    digest = hashlib.sha256(attack_json.read_bytes()).hexdigest()
    path = attack_json.parent / SCORES_NAME
    _io.atomic_write_json(path, {
        "format": SCORES_FORMAT, "attack_json_sha256": digest,
        "membership": [bool(m) for m in report.membership],
        "scores": {name: [float(v) for v in r.scores] for name, r in report.results.items()},
    })
    return path


def _train(settings: Any, listener: Listener | None) -> Any:
    from ..training._job import train_job

    last = {"info": ""}

    def on_step(trainer: Any, stats: Any) -> None:
        _emit(listener, "train", "progress", completed=trainer.steps_taken, total=trainer.planned_steps,
              message=last["info"])

    def on_epoch(rec: Any) -> None:
        last["info"] = f"epoch {rec.epoch}: held-out accuracy {rec.test_accuracy:.3f}, ε {rec.epsilon:.3f}"

    return train_job(settings, on_step=on_step, on_epoch=on_epoch)


def _audit(settings: Any, result: Any, run_dir: Path, options: PipelineOptions, listener: Listener | None) -> Any:
    from ..audit import TrainingOptions, audit
    from ..training._rundir import RunDir

    summary = RunDir.open(run_dir).read_summary()
    epsilon = settings.target_epsilon if settings.target_epsilon is not None else result.epsilon
    n_train = max(1, int(summary.get("n_train", 1)))
    q = summary.get("sampling_rate") or settings.expected_batch_size(n_train) / n_train
    # The audit's trainer follows the run's recipe (MLP width, Adam's rate, q, epochs, C).
    training = TrainingOptions(epochs=settings.epochs, sampling_rate=float(q), max_grad_norm=settings.max_grad_norm,
                               lr=settings.lr, hidden=settings.hidden)
    return audit("privaudit", epsilon=float(epsilon), delta=settings.delta, canaries=options.canaries,
                 threat=options.threat, data=settings.data, alpha=options.alpha, seed=options.seed,
                 options=training, out_dir=run_dir,
                 progress=lambda msg: _emit(listener, "audit", "progress", message=msg))


def run_pipeline(settings: Any, options: PipelineOptions, *, listener: Listener | None = None) -> PipelineResult:
    """Trains, attacks, audits and reports; see the module docstring.

    Args:
        settings: `privaudit.training._job.TrainSettings` of the run.
        options: the attack and audit settings.
        listener: called with a `PipelineEvent` as each stage starts, progresses and ends.

    Raises:
        ValueError: bad settings, or a run directory that already exists (checked before training).
    """
    from ..attacks._job import run_attack

    run_dir = Path(settings.out) / settings.run_name()
    if run_dir.exists():
        raise ValueError(f"Run directory {str(run_dir)!r} exists: choose another --name (or --out), or remove it.")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    _emit(listener, "train", "start", message=f"{settings.data}, {settings.model}, "
                                              + ("no DP" if settings.no_dp else f"target ε {settings.target_epsilon}"))
    result = _train(settings, listener)
    seconds["train"] = time.perf_counter() - t0
    eps_txt = "∞ (no DP)" if settings.no_dp else f"{result.epsilon:.3f}"
    _emit(listener, "train", "done", message=f"held-out accuracy {result.test_accuracy:.3f}, ε {eps_txt}")
    if result.interrupted:
        return PipelineResult(run_dir=run_dir, report=None, test_accuracy=result.test_accuracy,
                              epsilon=result.epsilon, verdict=None, interrupted=True, seconds=seconds)

    t0 = time.perf_counter()
    _emit(listener, "attack", "start", message=f"{', '.join(options.attacks)} with {options.shadows} shadow models")
    attack = run_attack(run_dir, attacks=options.attacks, shadows=options.shadows, seed=options.seed,
                        device=options.device,
                        on_step=lambda step, total: _emit(listener, "attack", "progress", completed=step,
                                                          total=total, message="training shadow models"))
    save_attack_scores(attack)
    seconds["attack"] = time.perf_counter() - t0
    best = max(attack.results.values(), key=lambda r: r.metrics.auc)
    _emit(listener, "attack", "done", message=f"best AUC {best.metrics.auc:.3f} ({best.name})")

    verdict = None
    if options.audit and not settings.no_dp:
        t0 = time.perf_counter()
        _emit(listener, "audit", "start", message=f"{options.threat}, {options.canaries} canaries")
        audited = _audit(settings, result, run_dir, options, listener)
        seconds["audit"] = time.perf_counter() - t0
        verdict = audited.verdict
        _emit(listener, "audit", "done", message=f"{audited.verdict}: ε ≥ {audited.epsilon_lower:.3f} vs "
                                                 f"{audited.epsilon_claimed:.3f} claimed")
    else:
        why = "trained without DP: no claim to audit" if settings.no_dp else "skipped"
        _emit(listener, "audit", "skip", message=why)

    t0 = time.perf_counter()
    _emit(listener, "report", "start", message="report.html, report.md, report.json")
    _, files = write_report(run_dir)
    seconds["report"] = time.perf_counter() - t0
    _emit(listener, "report", "done", message=str(files.html))
    return PipelineResult(run_dir=run_dir, report=files, test_accuracy=result.test_accuracy, epsilon=result.epsilon,
                          verdict=verdict, interrupted=False, seconds=seconds)
