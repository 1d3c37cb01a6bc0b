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
import hashlib
import json
import math
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import __version__
from ._privacy import EpsilonCurve, describe_event, epsilon_curves
from ._text import verdict_sentence

__all__ = ["Attacks", "AttackRow", "AuditSection", "LedgerRow", "Privacy", "PrivacyPoint", "REPORT_FORMAT",
           "RunReport", "Setting", "Utility", "collect_run", "jsonable"]

REPORT_FORMAT = "privaudit.report/1"
SCORES_NAME = "attack_scores.json"
SCORES_FORMAT = "privaudit.attack_scores/1"
_AUDIT_PLACES = ("audit.json", "audit/audit.json")


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
class AttackRow:
    """One attack of attack.json; `roc_fpr`/`roc_tpr` are None when no ROC points are stored."""

    name: str
    auc: float | None
    advantage: float | None
    balanced_accuracy: float | None
    tpr_at_fpr: tuple[tuple[float, float | None, str | None], ...]
    epsilon_lower_bound: float | None
    epsilon_method: str | None
    roc_fpr: tuple[float, ...] | None
    roc_tpr: tuple[float, ...] | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Attacks:
    members: int | None
    non_members: int | None
    delta: float | None
    delta_source: str | None
    alpha: float | None
    seed: int | None
    shadows: int | None
    rows: tuple[AttackRow, ...]
    roc_source: str
    plot_file: str | None
    notes: tuple[str, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditSection:
    """The audit's claim, bound, estimate and verdict, with the canaries' scores for the histogram."""

    file: str
    verdict: str
    sentence: str
    epsilon_claimed: float | None
    epsilon_lower_bound: float | None
    confidence: float | None
    delta: float | None
    method: str | None
    gdp_epsilon: float | None
    gdp_mu: float | None
    trainer: str | None
    trainer_info: Mapping[str, Any]
    threat: str | None
    canaries: int | None
    runs: int | None
    seed: int | None
    statistic: str | None
    scores_in: tuple[float, ...]
    scores_out: tuple[float, ...]


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


def jsonable(value: Any) -> Any:
    """A JSON-ready copy: tuples to lists, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    return x if math.isfinite(x) else None


def _float(x: Any) -> float | None:
    """A finite float, or None (None, "nan", "inf" strings, bools and junk all give None)."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(x: Any) -> int | None:
    return int(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _read_json(path: Path) -> tuple[Any, str | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except FileNotFoundError:
        return None, f"{path.name} not found"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{path.name} is unreadable ({type(exc).__name__}: {exc})"


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
    model = {"architecture": s.get("model"), "optimizer": "SGD" if "momentum" in s else None,
             **{k: s[k] for k in ("epochs", "rounds", "batch_size", "lr", "momentum", "clipping") if k in s}}
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
    delta = _float(s.get("delta", summary.get("delta")))
    rows = tuple(LedgerRow(index=i + 1, event=describe_event(e.event.to_dict()), count=e.count, first=e.timestamp,
                           last=e.last_timestamp or e.timestamp, note=e.note) for i, e in enumerate(ledger.entries))
    total = ledger.total_count()
    points, notes = [], []
    for rec in metrics:
        step = rec.get("step", rec.get("round"))
        if _int(step) is None:
            continue
        points.append(PrivacyPoint(epoch=_float(rec.get("epoch", rec.get("round"))), step=int(step),
                                   logged_epsilon=_float(rec.get("epsilon"))))
    if not points and total:
        points.append(PrivacyPoint(epoch=None, step=total, logged_epsilon=_float(summary.get("epsilon"))))
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
        xs.append(_float(rec.get(x_name)) if _float(rec.get(x_name)) is not None else float(i + 1))
        for k in keys:
            series[k].append(_float(rec.get(k)))
    tests = [v for v in series["test_accuracy"] if v is not None]
    return Utility(x_name=x_name, x=tuple(xs), series={k: tuple(v) for k, v in series.items()},
                   final_test_accuracy=tests[-1] if tests else None), None


# ------------------------------------------------------------------------------------ attacks


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _saved_scores(run_dir: Path, attack_path: Path) -> tuple[dict[str, Any] | None, str | None]:
    path = run_dir / SCORES_NAME
    data, err = _read_json(path)
    if data is None:
        return None, err
    if not isinstance(data, dict) or data.get("format") != SCORES_FORMAT:
        return None, f"{SCORES_NAME} is not in the {SCORES_FORMAT} format"
    if data.get("attack_json_sha256") != _sha256(attack_path):
        return None, f"{SCORES_NAME} belongs to an earlier attack.json (the attack was re-run since)"
    return data, None


def _roc_points(name: str, entry: Mapping[str, Any], saved: Mapping[str, Any] | None
                ) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None, str | None]:
    roc = entry.get("roc")
    if isinstance(roc, Mapping) and isinstance(roc.get("fpr"), list) and isinstance(roc.get("tpr"), list):
        fpr = tuple(float(v) for v in roc["fpr"])
        tpr = tuple(float(v) for v in roc["tpr"])
        if len(fpr) == len(tpr) and fpr:
            return fpr, tpr, "attack.json"
    if saved is not None and name in (saved.get("scores") or {}):
        from ..attacks import roc_curve

        try:
            curve = roc_curve(scores=saved["scores"][name], membership=saved["membership"])
        except (ValueError, KeyError) as exc:
            return None, None, f"saved scores of {name} unusable: {exc}"
        return tuple(float(v) for v in curve.fpr), tuple(float(v) for v in curve.tpr), SCORES_NAME
    return None, None, None


def _attacks(run_dir: Path) -> tuple[Attacks | None, str | None]:
    path = run_dir / "attack.json"
    data, err = _read_json(path)
    if data is None:
        return None, f"not run ({err}); run `privaudit attack {run_dir}`"
    if not isinstance(data, dict) or not isinstance(data.get("attacks"), Mapping) or not data["attacks"]:
        return None, "attack.json holds no attack results (a shard of shadow models only?)"
    saved, saved_err = _saved_scores(run_dir, path)
    notes, rows, sources = [], [], set()
    for name, entry in data["attacks"].items():
        entry = entry if isinstance(entry, Mapping) else {}
        unreported = entry.get("tpr_at_fpr_unreported") or {}
        tprs = []
        for key, value in (entry.get("tpr_at_fpr") or {}).items():
            fpr = _float(key)
            if fpr is not None:
                why = None if value is not None else str(unreported.get(key, "not reported"))
                tprs.append((fpr, _float(value), why))
        bound = entry.get("epsilon_lower_bound") if isinstance(entry.get("epsilon_lower_bound"), Mapping) else {}
        fpr_pts, tpr_pts, source = _roc_points(name, entry, saved)
        if fpr_pts is None and source is not None:
            notes.append(source)
        elif source is not None:
            sources.add(source)
        rows.append(AttackRow(name=str(name), auc=_float(entry.get("auc")), advantage=_float(entry.get("advantage")),
                              balanced_accuracy=_float(entry.get("balanced_accuracy")),
                              tpr_at_fpr=tuple(sorted(tprs)), epsilon_lower_bound=_float(bound.get("value")),
                              epsilon_method=bound.get("method"), roc_fpr=fpr_pts, roc_tpr=tpr_pts))
    if any(r.roc_fpr is None for r in rows):
        notes.append("ROC points are not stored in attack.json"
                     + (f" and {saved_err}" if saved_err else "") + ": the attack's own ROC plot is shown instead.")
    plot = data.get("plot") if isinstance(data.get("plot"), str) else None
    plot = plot if plot and (run_dir / plot).is_file() else None
    pop = data.get("population") if isinstance(data.get("population"), Mapping) else {}
    shadows = data.get("shadows") if isinstance(data.get("shadows"), Mapping) else {}
    notes.extend(str(n) for n in data.get("notes") or [])
    return Attacks(members=_int(pop.get("members")), non_members=_int(pop.get("non_members")),
                   delta=_float(data.get("delta")), delta_source=data.get("delta_source"),
                   alpha=_float(data.get("alpha")), seed=_int(data.get("seed")), shadows=_int(shadows.get("count")),
                   rows=tuple(rows), roc_source=", ".join(sorted(sources)) or "none",
                   plot_file=plot, notes=tuple(notes)), None


# ------------------------------------------------------------------------------------ audit


def _audit(run_dir: Path, private: bool) -> tuple[AuditSection | None, str | None]:
    for place in _AUDIT_PLACES:
        if (run_dir / place).is_file():
            path = run_dir / place
            break
    else:
        if not private:
            return None, "not run: the model was trained without DP, so there is no privacy claim to audit"
        return None, "not run (no audit.json); `privaudit run` audits the training at the run's epsilon"
    data, err = _read_json(path)
    if not isinstance(data, dict) or "verdict" not in data:
        return None, err or "audit.json holds no verdict"
    scores = data.get("scores") or []
    member = data.get("membership") or []
    s_in, s_out = [], []
    if len(scores) == len(member):
        for s, m in zip(scores, member):
            v = _float(s)
            if v is not None:
                (s_in if m else s_out).append(v)
    bound = data.get("bound") if isinstance(data.get("bound"), Mapping) else {}
    gdp = data.get("gdp_estimate") if isinstance(data.get("gdp_estimate"), Mapping) else {}
    confidence = _float(data.get("confidence"))
    if confidence is None and _float(data.get("alpha")) is not None:
        confidence = 1.0 - float(data["alpha"])
    return AuditSection(
        file=str(path.relative_to(run_dir)), verdict=str(data["verdict"]), sentence=verdict_sentence(data),
        epsilon_claimed=_float(data.get("epsilon_claimed")),
        epsilon_lower_bound=_float(data.get("epsilon_lower_bound")),
        confidence=confidence, delta=_float(data.get("delta")), method=bound.get("method"),
        gdp_epsilon=_float(gdp.get("epsilon")), gdp_mu=_float(gdp.get("mu")), trainer=data.get("trainer"),
        trainer_info=dict(data.get("trainer_info") or {}) if isinstance(data.get("trainer_info"), Mapping) else {},
        threat=data.get("threat"), canaries=_int(data.get("canaries")), runs=_int(data.get("runs")),
        seed=_int(data.get("seed")), statistic=data.get("statistic"), scores_in=tuple(s_in),
        scores_out=tuple(s_out)), None


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
    attacks, why = _attacks(run.path)
    if why:
        missing["attacks"] = why
    private = not bool((config.get("settings") or {}).get("no_dp", False))
    audit, why = _audit(run.path, private)
    if why:
        missing["audit"] = why
    return RunReport(format=REPORT_FORMAT,
                     generated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     setting=_setting(run, config, summary, split), privacy=privacy, utility=utility,
                     attacks=attacks, audit=audit, missing=missing)
