"""Read a run directory into one frozen `RunReport` (and its JSON twin, report.json).

Readers are tolerant: a missing or unreadable artefact leaves its section out and
says why in `RunReport.missing`; nothing here raises for a half-finished run. The
one hard requirement is the run directory itself (`run.json`).

Keys relied on (everything else is optional):

* config.toml: ``settings`` (data, model, epochs, batch_size, lr, momentum, max_grad_norm,
  delta, no_dp, accountant, target_epsilon, noise_multiplier), ``resolved.dataset``,
  ``resolved.dp``, ``privaudit_version``, ``torch_version``.
* summary.json: status, epsilon, delta, private, steps, test_accuracy.
* metrics.jsonl: ``step`` (or ``round``), ``epoch``, train/test loss and accuracy, ``epsilon``.
* ledger.json: the `PrivacyLedger` format.
* attack.json (`privaudit.attack/1`): attacks.<name>.{auc, tpr_at_fpr, tpr_at_fpr_unreported,
  advantage, balanced_accuracy, epsilon_lower_bound.{value, method}, positives, negatives},
  delta, alpha, fprs, seed, shadows.count; ROC points from attacks.<name>.roc.{fpr, tpr}
  when present, else recomputed from attack_scores.json (written by `privaudit run`).
* audit.json (`privaudit.audit/1`): verdict, epsilon_claimed, epsilon_lower_bound, confidence,
  alpha, delta, bound.method, gdp_estimate.{epsilon, mu}, scores, membership, statistic,
  trainer, threat, canaries, runs, seed, trainer_info (noise_multiplier, sampling_rate, steps,
  max_grad_norm).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import __version__
from ._privacy import EpsilonCurve, describe_event, epsilon_curves
from ._results import Attacks, AuditSection, read_attacks, read_audit
from ._values import as_float, as_int, jsonable

__all__ = ["LedgerRow", "Privacy", "PrivacyPoint", "REPORT_FORMAT", "RunReport", "Setting", "Utility", "collect_run"]

REPORT_FORMAT = "privaudit.report/1"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Setting:
    """What was trained, on what, with which privacy parameters, seeds and software."""

    run_name: str
    run_dir: str
    status: str | None
    data: Mapping[str, Any]
    model: Mapping[str, Any]
    dp: Mapping[str, Any] | None
    seeds: Mapping[str, Any]
    software: Mapping[str, Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivacyPoint:
    """An epoch boundary: its step count and the epsilon training logged there (its accountant)."""

    epoch: float | None
    step: int
    logged_epsilon: float | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class LedgerRow:
    index: int
    event: str
    count: int
    first: str
    last: str
    note: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Privacy:
    """Epsilon over training for every accountant, recomputed from the ledger."""

    private: bool
    delta: float | None
    neighboring_relation: str
    total_steps: int
    training_accountant: str | None
    points: tuple[PrivacyPoint, ...]
    curves: tuple[EpsilonCurve, ...]
    ledger: tuple[LedgerRow, ...]
    notes: tuple[str, ...] = ()

    def final_epsilon(self, accountant: str = "pld") -> float | None:
        for c in self.curves:
            if c.accountant == accountant:
                return c.final
        return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Utility:
    """Loss and accuracy per epoch (or round) from metrics.jsonl."""

    x_name: str
    x: tuple[float, ...]
    series: Mapping[str, tuple[float | None, ...]]
    final_test_accuracy: float | None

@dataclasses.dataclass(frozen=True, kw_only=True)
class RunReport:
    """Everything the report shows. A section is None when its artefact is missing;
    `missing[section]` then says why, in words fit for the report."""

    format: str
    generated: str
    setting: Setting
    privacy: Privacy | None
    utility: Utility | None
    attacks: Attacks | None
    audit: AuditSection | None
    missing: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        """report.json's content (non-finite numbers as null)."""
        return jsonable(dataclasses.asdict(self))

# ------------------------------------------------------------------------------------ setting


def _software() -> dict[str, Any]:
    import numpy
    import scipy

    out = {"python": platform.python_version(), "numpy": numpy.__version__, "scipy": scipy.__version__,
           "privaudit": __version__}
    try:
        import matplotlib

        out["matplotlib"] = matplotlib.__version__
    except ImportError:
        pass
    return out


def _setting(run: Any, config: Mapping[str, Any], summary: Mapping[str, Any],
             split: Mapping[str, Any]) -> Setting:
    s = dict(config.get("settings") or {})
    resolved = dict(config.get("resolved") or {})
    ds = dict(resolved.get("dataset") or {})
    data = {k: ds[k] for k in ("name", "source", "preprocessing", "num_classes", "input_shape", "n_train", "n_test",
                               "split_method", "split_seed", "test_fraction") if k in ds}
    data.setdefault("name", s.get("data"))
    optimizer = s.get("optimizer") or ("sgd" if "momentum" in s else None)
    model = {"architecture": s.get("model"), "optimizer": {"sgd": "SGD", "adam": "Adam"}.get(str(optimizer)),
             **{k: s[k] for k in ("hidden", "activation", "epochs", "rounds", "batch_size", "lr", "clipping") if k in s},
             **({"momentum": s["momentum"]} if optimizer == "sgd" and "momentum" in s else {}),
             **({"expected_batch_size": resolved["expected_batch_size"]} if "expected_batch_size" in resolved else {})}
    private = not bool(s.get("no_dp", False)) and summary.get("private", True) is not False
    dp = None
    if private:
        rdp = dict(resolved.get("dp") or {})
        dp = {"target_epsilon": s.get("target_epsilon"), "delta": s.get("delta", summary.get("delta")),
              "noise_multiplier": rdp.get("noise_multiplier", summary.get("noise_multiplier")),
              "max_grad_norm": rdp.get("max_grad_norm", s.get("max_grad_norm")),
              "sampling_rate": rdp.get("sampling_rate", summary.get("sampling_rate")),
              "steps": summary.get("steps", rdp.get("steps")), "accountant": s.get("accountant"),
              "sampler": resolved.get("sampler"),
              "neighboring_relation": resolved.get("neighboring_relation")}
        dp = {k: v for k, v in dp.items() if v is not None}
    seeds = dict(split.get("seeds") or {}) if split else {}
    if not seeds:  # no split.json: the settings' seeds are all there is
        seeds = {k: s[k] for k in ("seed", "split_seed") if k in s}
    recorded = {k: config[k] for k in ("privaudit_version", "torch_version") if k in config}
    return Setting(run_name=run.name, run_dir=str(run.path), status=summary.get("status"), data=data, model=model,
                   dp=dp, seeds=seeds, software={"recorded at training": recorded, "report": _software()})


# ------------------------------------------------------------------------------------ privacy


def _privacy(run: Any, config: Mapping[str, Any], summary: Mapping[str, Any],
             metrics: list[dict[str, Any]]) -> tuple[Privacy | None, str | None]:
    s = dict(config.get("settings") or {})
    try:
        ledger = run.read_ledger()
    except ValueError as exc:
        return None, f"no readable ledger: {exc}"
    private = not bool(s.get("no_dp", False)) and summary.get("private", True) is not False
    delta = as_float(s.get("delta", summary.get("delta")))
    rows = tuple(LedgerRow(index=i + 1, event=describe_event(e.event.to_dict()), count=e.count, first=e.timestamp,
                           last=e.last_timestamp or e.timestamp, note=e.note) for i, e in enumerate(ledger.entries))
    total = ledger.total_count()
    points, notes = [], []
    for rec in metrics:
        step = rec.get("step", rec.get("round"))
        if as_int(step) is None:
            continue
        points.append(PrivacyPoint(epoch=as_float(rec.get("epoch", rec.get("round"))), step=int(step),
                                   logged_epsilon=as_float(rec.get("epsilon"))))
    if not points and total:
        points.append(PrivacyPoint(epoch=None, step=total, logged_epsilon=as_float(summary.get("epsilon"))))
    if any(p.step > total for p in points):
        notes.append(f"metrics.jsonl records steps beyond the ledger's {total}: those points use the whole ledger.")
    elif points and points[-1].step < total:
        notes.append(f"The ledger holds {total} steps, more than the {points[-1].step} of the last recorded epoch "
                     "(an interrupted run, or several ledger entries per step): the last row uses the whole ledger.")
        points.append(PrivacyPoint(epoch=None, step=total, logged_epsilon=None))
    curves: tuple[EpsilonCurve, ...] = ()
    if not private:
        notes.append("Trained without differential privacy: epsilon is infinite; no guarantee to account for.")
    elif delta is None:
        notes.append("No delta recorded: epsilon cannot be computed.")
    elif total == 0:
        notes.append("The ledger is empty: nothing was released yet.")
    else:
        curves = epsilon_curves(ledger, [p.step for p in points], delta=delta)
    return Privacy(private=private, delta=delta if private else None, neighboring_relation=ledger.neighboring_relation,
                   total_steps=total, training_accountant=s.get("accountant"), points=tuple(points), curves=curves,
                   ledger=rows, notes=tuple(notes)), None


# ------------------------------------------------------------------------------------ utility


def _utility(metrics: list[dict[str, Any]]) -> tuple[Utility | None, str | None]:
    if not metrics:
        return None, "metrics.jsonl not found or empty: training recorded no epochs"
    x_name = "epoch" if "epoch" in metrics[0] else "round"
    keys = ("train_loss", "test_loss", "train_accuracy", "test_accuracy")
    xs, series = [], {k: [] for k in keys}
    for i, rec in enumerate(metrics):
        xs.append(as_float(rec.get(x_name)) if as_float(rec.get(x_name)) is not None else float(i + 1))
        for k in keys:
            series[k].append(as_float(rec.get(k)))
    tests = [v for v in series["test_accuracy"] if v is not None]
    return Utility(x_name=x_name, x=tuple(xs), series={k: tuple(v) for k, v in series.items()},
                   final_test_accuracy=tests[-1] if tests else None), None

# ------------------------------------------------------------------------------------ all


def collect_run(run_dir: str | Path) -> RunReport:
    """Reads `run_dir` into a `RunReport`.

    Raises:
        ValueError: `run_dir` is not a privaudit run directory.
    """
    from ..training._rundir import RunDir

    run = RunDir.open(run_dir)
    missing: dict[str, str] = {}
    try:
        config = run.read_config()
    except ValueError as exc:
        config, missing["setting"] = {}, f"config.toml unreadable: {exc}"
    try:
        summary = run.read_summary()
    except ValueError:
        summary = {}
    try:
        split = run.read_split()
    except ValueError:
        split = {}
    try:
        metrics = run.read_metrics()
    except ValueError as exc:
        metrics, missing["utility"] = [], str(exc)
    privacy, why = _privacy(run, config, summary, metrics)
    if why:
        missing["privacy"] = why
    utility, why = _utility(metrics)
    if why:
        missing.setdefault("utility", why)
    attacks, why = read_attacks(run.path)
    if why:
        missing["attacks"] = why
    private = not bool((config.get("settings") or {}).get("no_dp", False))
    audit, why = read_audit(run.path, private)
    if why:
        missing["audit"] = why
    return RunReport(format=REPORT_FORMAT,
                     generated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     setting=_setting(run, config, summary, split), privacy=privacy, utility=utility,
                     attacks=attacks, audit=audit, missing=missing)
