"""The attack and audit sections of a report, read from attack.json and audit.json.

ROC points come from attack.json's ``attacks.<name>.roc.{fpr, tpr}`` when present,
else they are recomputed from attack_scores.json (which `privaudit run` writes
next to attack.json, tied to it by attack.json's SHA-256); else there are none
and the report shows attack.json's own plot.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._text import verdict_sentence
from ._values import as_float, as_int, read_json

__all__ = ["AttackRow", "Attacks", "AuditSection", "SCORES_FORMAT", "SCORES_NAME", "read_attacks", "read_audit"]

SCORES_NAME = "attack_scores.json"
SCORES_FORMAT = "privaudit.attack_scores/1"
_AUDIT_PLACES = ("audit.json", "audit/audit.json")


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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _saved_scores(run_dir: Path, attack_path: Path) -> tuple[dict[str, Any] | None, str | None]:
    path = run_dir / SCORES_NAME
    data, err = read_json(path)
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


def read_attacks(run_dir: Path) -> tuple[Attacks | None, str | None]:
    path = run_dir / "attack.json"
    data, err = read_json(path)
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
            fpr = as_float(key)
            if fpr is not None:
                why = None if value is not None else str(unreported.get(key, "not reported"))
                tprs.append((fpr, as_float(value), why))
        bound = entry.get("epsilon_lower_bound") if isinstance(entry.get("epsilon_lower_bound"), Mapping) else {}
        fpr_pts, tpr_pts, source = _roc_points(name, entry, saved)
        if fpr_pts is None and source is not None:
            notes.append(source)
        elif source is not None:
            sources.add(source)
        rows.append(AttackRow(name=str(name), auc=as_float(entry.get("auc")),
                              advantage=as_float(entry.get("advantage")),
                              balanced_accuracy=as_float(entry.get("balanced_accuracy")),
                              tpr_at_fpr=tuple(sorted(tprs)), epsilon_lower_bound=as_float(bound.get("value")),
                              epsilon_method=bound.get("method"), roc_fpr=fpr_pts, roc_tpr=tpr_pts))
    if any(r.roc_fpr is None for r in rows):
        notes.append("ROC points are not stored in attack.json"
                     + (f" and {saved_err}" if saved_err else "") + ": the attack's own ROC plot is shown instead.")
    plot = data.get("plot") if isinstance(data.get("plot"), str) else None
    plot = plot if plot and (run_dir / plot).is_file() else None
    pop = data.get("population") if isinstance(data.get("population"), Mapping) else {}
    shadows = data.get("shadows") if isinstance(data.get("shadows"), Mapping) else {}
    notes.extend(str(n) for n in data.get("notes") or [])
    return Attacks(members=as_int(pop.get("members")), non_members=as_int(pop.get("non_members")),
                   delta=as_float(data.get("delta")), delta_source=data.get("delta_source"),
                   alpha=as_float(data.get("alpha")), seed=as_int(data.get("seed")),
                   shadows=as_int(shadows.get("count")),
                   rows=tuple(rows), roc_source=", ".join(sorted(sources)) or "none",
                   plot_file=plot, notes=tuple(notes)), None


def read_audit(run_dir: Path, private: bool) -> tuple[AuditSection | None, str | None]:
    for place in _AUDIT_PLACES:
        if (run_dir / place).is_file():
            path = run_dir / place
            break
    else:
        if not private:
            return None, "not run: the model was trained without DP, so there is no privacy claim to audit"
        return None, "not run (no audit.json); `privaudit run` audits the training at the run's epsilon"
    data, err = read_json(path)
    if not isinstance(data, dict) or "verdict" not in data:
        return None, err or "audit.json holds no verdict"
    scores = data.get("scores") or []
    member = data.get("membership") or []
    s_in, s_out = [], []
    if len(scores) == len(member):
        for s, m in zip(scores, member):
            v = as_float(s)
            if v is not None:
                (s_in if m else s_out).append(v)
    bound = data.get("bound") if isinstance(data.get("bound"), Mapping) else {}
    gdp = data.get("gdp_estimate") if isinstance(data.get("gdp_estimate"), Mapping) else {}
    confidence = as_float(data.get("confidence"))
    if confidence is None and as_float(data.get("alpha")) is not None:
        confidence = 1.0 - float(data["alpha"])
    return AuditSection(
        file=str(path.relative_to(run_dir)), verdict=str(data["verdict"]), sentence=verdict_sentence(data),
        epsilon_claimed=as_float(data.get("epsilon_claimed")),
        epsilon_lower_bound=as_float(data.get("epsilon_lower_bound")),
        confidence=confidence, delta=as_float(data.get("delta")), method=bound.get("method"),
        gdp_epsilon=as_float(gdp.get("epsilon")), gdp_mu=as_float(gdp.get("mu")), trainer=data.get("trainer"),
        trainer_info=dict(data.get("trainer_info") or {}) if isinstance(data.get("trainer_info"), Mapping) else {},
        threat=data.get("threat"), canaries=as_int(data.get("canaries")), runs=as_int(data.get("runs")),
        seed=as_int(data.get("seed")), statistic=data.get("statistic"), scores_in=tuple(s_in),
        scores_out=tuple(s_out)), None
