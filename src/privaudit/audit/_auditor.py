"""The audit: insert canaries, train, score them, bound epsilon, and compare with the claim.

``audit(trainer, epsilon=..., delta=..., canaries=m)`` draws the canaries'
inclusion (fair coins, seeded), trains once (or ``runs`` times), scores every
canary, and reports

* **epsilon claimed**: the PLD accountant over the event the trainer claims it ran;
* **a rigorous lower bound** valid with probability >= 1 - alpha: the one-run bound
  (Steinke, Nasr, Jagielski 2023) when ``runs == 1``, Clopper-Pearson over the runs
  (one canary each) when ``runs > 1``;
* **the Gaussian-DP estimate** (Nasr et al. 2023), an estimate and never used for the verdict;
* **the verdict**: "FAIL" if the rigorous bound exceeds epsilon claimed, else "PASS"
  (the run is consistent with the claim; it does not prove the claim).

Importing this module does not import torch; `audit()` does, when it trains.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from privaudit import _validate
from privaudit._io import atomic_write_json
from privaudit.accounting import PLDAccountant

from ._bounds import Bonferroni, EpsilonBound, _as_scores, epsilon_lower_bound
from ._canaries import (
    BLACKBOX_STATISTICS,
    INPUT_CANARY_KINDS,
    AuditDataset,
    GradientCanaries,
    TrainerOutput,
    make_input_canaries,
)
from ._gdp_fit import GdpEstimate, gdp_fit
from ._one_run import OneRunBound, _as_membership, _epsilon

__all__ = ["AuditResult", "THREAT_MODELS", "audit", "one_run_two_sided", "write_audit"]

THREAT_MODELS = ("blackbox", "whitebox")
#: Guess counts tried by the one-run bound, as fractions of the canaries (each guessed IN and OUT).
GUESS_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.45)
AUDIT_FORMAT = "privaudit.audit/1"


def one_run_two_sided(
    scores: Any, membership: Any, *, delta: float, alpha: float = 0.05, m: int | None = None,
    fractions: tuple[float, ...] = GUESS_FRACTIONS,
) -> OneRunBound:
    """One-run epsilon lower bound guessing IN on the k highest and OUT on the k lowest scores.

    This is the auditor of Steinke, Nasr, Jagielski 2023 (arXiv:2305.08846 v1,
    Algorithm 1) with k+ = k- = k: r = 2k guesses, v of them right, and the bound
    of `one_run_epsilon`. k runs over ``fractions`` of the canaries, fixed before
    the scores are seen, and each k is tested at level ``alpha / len(ks)`` (union
    bound), so the best of them is valid at level alpha. Ties are broken by
    canary index, never by membership.

    >>> import numpy as np
    >>> member = np.arange(1000) % 2 == 0
    >>> b = one_run_two_sided(member.astype(float), member, delta=0.0)   # a perfect attack
    >>> b.guesses, b.correct, round(b.epsilon, 2)
    (900, 900, 5.18)

    Raises:
        ValueError: on empty or NaN scores, membership of another shape, m < len(scores),
            or alpha / delta out of range.
    """
    s = _as_scores("scores", scores)
    member = _as_membership(membership, s.size)
    m = s.size if m is None else m
    _validate.integer(minimum=s.size, m=m)
    _validate.in_range(0, 1, hi_open=True, delta=delta)
    _validate.in_range(0, 1, lo_open=True, hi_open=True, alpha=alpha)
    order = np.argsort(-s, kind="stable")
    ks = sorted({min(max(1, int(f * s.size)), s.size // 2) for f in fractions} - {0})
    if not ks:  # a single canary: guess it IN (k- = 0)
        v = int(member[order[0]])
        return OneRunBound(epsilon=_epsilon(m, 1, v, delta, alpha), threshold=float(s[order[0]]), guesses=1,
                           correct=v, m=m, alpha=alpha, delta=delta, method="one-run/top-1",
                           thresholds_tried=1)
    best: tuple[float, int, int, float] = (-1.0, 0, 0, math.nan)
    for k in ks:
        v = int(member[order[:k]].sum() + (~member[order[-k:]]).sum())
        eps = _epsilon(m, 2 * k, v, delta, alpha / len(ks))
        if eps > best[0]:
            best = (eps, 2 * k, v, float(s[order[k - 1]]))
    return OneRunBound(epsilon=best[0], threshold=best[3], guesses=best[1], correct=best[2], m=m, alpha=alpha,
                       delta=delta, method="one-run/two-sided top-k grid", thresholds_tried=len(ks))


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class AuditResult:
    """What an audit found. `verdict` rests on `bound` only; `gdp` is an estimate.

    Attributes:
        trainer: the trainer's name (built-in name or 'module:function').
        threat: "blackbox" or "whitebox".
        data: the base dataset.
        canaries: canaries per run; runs: trainings.
        seed: the audit's seed (canaries, inclusion, trainer seeds derive from it).
        alpha: the bound holds with probability >= 1 - alpha; delta: the delta audited.
        epsilon_target: the epsilon the trainer was asked for.
        epsilon_claimed: the PLD accountant's epsilon at `delta` for the claimed event.
        claimed_event: that event, as a dict.
        bound: the rigorous lower bound (`OneRunBound` or `EpsilonBound`).
        gdp: the Gaussian-DP estimate, or None when the scores do not allow a fit.
        verdict: "FAIL" if ``bound.epsilon > epsilon_claimed`` else "PASS".
        statistic: how canaries were scored: "lda", "lr", "lr-centered", "sum" (white-box,
            see `_whitebox`) or "scaled_logit", "scaled_logit-ring" (black-box, see `_blackbox`).
        scores, membership: one score and one inclusion flag per canary (per run).
        trainer_info, canary_info: what the trainer and the canaries recorded.
        seconds: wall-clock time of the audit.
    """

    trainer: str
    threat: str
    data: str
    canaries: int
    runs: int
    seed: int
    alpha: float
    delta: float
    epsilon_target: float
    epsilon_claimed: float
    claimed_event: dict[str, Any]
    bound: OneRunBound | EpsilonBound
    gdp: GdpEstimate | None
    verdict: str
    statistic: str
    scores: np.ndarray
    membership: np.ndarray
    trainer_info: dict[str, Any]
    canary_info: dict[str, Any]
    seconds: float

    @property
    def epsilon_lower(self) -> float:
        """The rigorous lower bound on epsilon."""
        return self.bound.epsilon

    @property
    def confidence(self) -> float:
        return 1.0 - self.alpha

    def to_dict(self, *, include_scores: bool = True) -> dict[str, Any]:
        """JSON-able dict (non-finite numbers as the strings "inf", "-inf", "nan")."""
        out: dict[str, Any] = {
            "format": AUDIT_FORMAT, "verdict": self.verdict, "trainer": self.trainer, "threat": self.threat,
            "data": self.data, "canaries": self.canaries, "runs": self.runs, "seed": self.seed,
            "alpha": self.alpha, "confidence": self.confidence, "delta": self.delta,
            "epsilon_target": self.epsilon_target, "epsilon_claimed": self.epsilon_claimed,
            "epsilon_lower_bound": self.epsilon_lower, "bound": self.bound.to_dict(),
            "gdp_estimate": None if self.gdp is None else self.gdp.to_dict(),
            "statistic": self.statistic, "claimed_event": self.claimed_event,
            "trainer_info": self.trainer_info, "canary_info": self.canary_info, "seconds": self.seconds,
        }
        if include_scores:
            out["scores"] = self.scores.tolist()
            out["membership"] = self.membership.astype(int).tolist()
        return _jsonable(out)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def write_audit(result: AuditResult, out_dir: str | Path, *, plots: bool = True) -> list[Path]:
    """Writes ``audit.json`` (atomically) and, with matplotlib, ``audit_scores.png`` and
    ``audit_bound.png`` into `out_dir`; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "audit.json", result.to_dict())
    written = [out / "audit.json"]
    if plots:
        try:
            from ._plots import plot_bound, plot_scores
        except ImportError:  # matplotlib is optional
            return written
        written += [plot_scores(result, out / "audit_scores.png"), plot_bound(result, out / "audit_bound.png")]
    return written


def _check_args(*, epsilon: float, delta: float, canaries: int, threat: str, runs: int, alpha: float,
                seed: int, canary_kind: str, canary_norm: float) -> None:
    _validate.positive(epsilon=epsilon, canary_norm=canary_norm)
    _validate.in_range(0, 1, lo_open=True, hi_open=True, delta=delta, alpha=alpha)
    _validate.integer(minimum=1, canaries=canaries, runs=runs)
    _validate.integer(minimum=0, seed=seed)
    if threat not in THREAT_MODELS:
        raise ValueError(f"Expected threat={threat!r} in {list(THREAT_MODELS)}.")
    if canary_kind != "auto" and canary_kind not in INPUT_CANARY_KINDS:
        raise ValueError(f"Expected canary_kind={canary_kind!r} in {['auto', *INPUT_CANARY_KINDS]}.")
    if runs > 1 and canaries != 1:
        raise ValueError(f"Expected canaries=1 with runs={runs} > 1: a multi-run audit uses one canary per "
                         f"run (Clopper-Pearson over runs); got canaries={canaries}. Use runs=1 for the "
                         "one-run audit of many canaries.")


def audit(
    trainer: Any,
    *,
    epsilon: float,
    delta: float,
    canaries: int,
    threat: str = "blackbox",
    runs: int = 1,
    data: Any = "digits",
    alpha: float = 0.05,
    seed: int = 0,
    canary_kind: str = "auto",
    canary_norm: float = 100.0,
    canary_support: int | None = None,
    statistic: str = "auto",
    options: Any = None,
    out_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> AuditResult:
    """Audits `trainer` at (epsilon, delta) with `canaries` canaries; see the module docstring.

    Args:
        trainer: a built-in name (`BUILTIN_TRAINERS`), ``"module:function"``, or a callable
            following the `Trainer` protocol.
        epsilon, delta: the guarantee the trainer is asked to give (and claims).
        canaries: m, canaries per run (each included with probability 1/2).
        threat: "whitebox" (gradient canaries, every step's noisy clipped sum is seen)
            or "blackbox" (input canaries, the final model is queried).
        runs: 1 for the one-run audit; R > 1 trains R times with one canary each
            (then ``canaries`` must be 1) and bounds epsilon by Clopper-Pearson over runs.
        data: base dataset: a `load_dataset` spec such as "digits", or a loaded `Dataset`
            (e.g. a CSV read with its target column); its training split is used.
        alpha: the bound holds with probability >= 1 - alpha.
        seed: everything random in the audit derives from it.
        canary_kind: black-box canaries: "outlier", "mislabeled" or "random" (see
            `make_input_canaries`); "auto" is "outlier" for real-valued inputs and
            "mislabeled" for token ids.
        canary_norm: L2 norm of white-box canary gradients (above any sane clipping norm).
        canary_support: coordinates per white-box canary (None: as many as fit; 1 = Dirac).
        statistic: white-box score: "auto", "lda", "lr", "lr-centered" or "sum" (see `_whitebox`);
            black-box score: "auto", "scaled_logit" or "scaled_logit-ring" (see `_blackbox`;
            "auto" takes the ring for outlier canaries).
        options: `TrainingOptions` for a built-in trainer.
        out_dir: if given, `write_audit` writes audit.json and the plots there.
        progress: called with a short message before each training run.

    Raises:
        ValueError: any bad argument (named), or a trainer that breaks the `Trainer` contract.
    """
    _check_args(epsilon=epsilon, delta=delta, canaries=canaries, threat=threat, runs=runs, alpha=alpha,
                seed=seed, canary_kind=canary_kind, canary_norm=canary_norm)
    from privaudit.training._data import load_dataset

    from ._trainers import load_trainer
    from ._whitebox import WHITEBOX_STATISTICS

    allowed = WHITEBOX_STATISTICS if threat == "whitebox" else BLACKBOX_STATISTICS
    if statistic not in allowed:
        raise ValueError(f"Expected statistic={statistic!r} in {list(allowed)} for threat={threat!r}.")
    started = time.perf_counter()
    name, train = load_trainer(trainer, options=options)
    ds = load_dataset(data) if isinstance(data, str) else _check_dataset(data)
    if canary_kind == "auto":
        canary_kind = "mislabeled" if np.issubdtype(np.asarray(ds.x_train).dtype, np.integer) else "outlier"
    root = np.random.SeedSequence(seed)
    run_seeds = root.spawn(runs)
    scores: list[dict[str, np.ndarray]] = []  # one {statistic: scores} per run
    member, claims, infos = [], [], []
    canary_info: dict[str, Any] = {}
    for r, rs in enumerate(run_seeds):
        s_member, s_canary, s_trainer, s_query = (int(x) for x in rs.generate_state(4) % 2**31)
        inc = np.random.default_rng(s_member).random(canaries) < 0.5
        if progress is not None:
            progress(f"training run {r + 1}/{runs} ({name}, {threat}, {canaries} canaries)")
        if threat == "whitebox":
            gc = GradientCanaries(count=canaries, included=np.flatnonzero(inc), norm=canary_norm,
                                  support=canary_support, seed=s_canary)
            dataset = AuditDataset(x=ds.x_train, y=ds.y_train, num_classes=ds.num_classes, name=ds.name,
                                   gradient_canaries=gc)
        else:
            ic, keep = make_input_canaries(ds.x_train, ds.y_train, num_classes=ds.num_classes, count=canaries,
                                           kind=canary_kind, seed=s_canary)
            dataset = AuditDataset(x=np.concatenate([ds.x_train[keep], ic.x[inc]]),
                                   y=np.concatenate([ds.y_train[keep], ic.y[inc]]),
                                   num_classes=ds.num_classes, name=ds.name)
        output = train(dataset, epsilon=float(epsilon), delta=float(delta), seed=s_trainer,
                       record_updates=threat == "whitebox")
        if not isinstance(output, TrainerOutput):
            raise ValueError(f"Expected trainer={name!r} to return a TrainerOutput, got {type(output).__name__}.")
        if threat == "whitebox":
            if runs > 1 and statistic == "auto":  # one score for all runs, fixed by the claim alone
                from ._whitebox import claim_statistic

                statistic = claim_statistic(output.event, output.max_grad_norm)
            stat, values, canary_info = _score_whitebox(name, output, gc, statistic)
            run_scores = {stat: values}
        else:
            from ._blackbox import RING_ANGLE_DEGREES, RING_POINTS, blackbox_scores, default_statistic

            stat = default_statistic(ic.kind) if statistic == "auto" else statistic
            run_scores = {stat: blackbox_scores(output.model, ic, statistic=stat, seed=s_query)}
            canary_info = {"kind": ic.kind, "count": ic.count, "base_examples": int(keep.size)}
            if ic.norm is not None:
                canary_info["norm"] = ic.norm
            if stat == "scaled_logit-ring":
                canary_info.update(ring_angle_degrees=RING_ANGLE_DEGREES, ring_points=RING_POINTS)
        scores.append(run_scores)
        member.append(inc)
        claims.append(output.event)
        infos.append(dict(output.info))
    primary = next(iter(scores[0]))
    all_scores = np.concatenate([s[primary] for s in scores])
    all_member = np.concatenate(member)
    event = claims[0]
    if any(e != event for e in claims[1:]):
        raise ValueError(f"Expected trainer={name!r} to claim the same event in every run.")
    eps_claimed = PLDAccountant().compose(event).get_epsilon(float(delta))
    bound = _rigorous_bound(all_scores, all_member, runs=runs, delta=float(delta), alpha=float(alpha))
    result = AuditResult(
        trainer=name, threat=threat, data=ds.name, canaries=canaries, runs=runs, seed=seed, alpha=float(alpha),
        delta=float(delta), epsilon_target=float(epsilon), epsilon_claimed=float(eps_claimed),
        claimed_event=event.to_dict(), bound=bound, gdp=_gdp(all_scores, all_member, float(delta)),
        verdict="FAIL" if bound.epsilon > eps_claimed else "PASS", statistic=primary, scores=all_scores,
        membership=all_member, trainer_info=infos[0], canary_info=canary_info,
        seconds=time.perf_counter() - started)
    if out_dir is not None:
        write_audit(result, out_dir)
    return result


def _check_dataset(data: Any) -> Any:
    missing = [a for a in ("x_train", "y_train", "num_classes", "name") if not hasattr(data, a)]
    if missing:
        raise ValueError(f"Expected data to be a dataset spec (str) or a loaded Dataset, got "
                         f"{type(data).__name__} without {missing}.")
    return data


def _score_whitebox(name: str, output: TrainerOutput, canaries: GradientCanaries,
                    statistic: str) -> tuple[str, np.ndarray, dict[str, Any]]:
    from ._whitebox import canary_projections, num_trainable, whitebox_scores

    if output.updates is None:
        raise ValueError(f"Expected trainer={name!r} to return updates with record_updates=True: the white-box "
                         "threat model scores canaries on every step's noisy clipped sum.")
    d = num_trainable(output.model)
    width = np.shape(output.updates)[1] if np.ndim(output.updates) == 2 else None
    if width != d:
        raise ValueError(f"Expected trainer={name!r} to record updates of shape (steps, {d}) (the model's "
                         f"trainable parameters), got {np.shape(output.updates)}.")
    proj = canary_projections(output.updates, canaries)
    stat, scores = whitebox_scores(proj, event=output.event, max_grad_norm=output.max_grad_norm,
                                   statistic=statistic)
    info = {**canaries.to_dict(), "support": canaries.support_size(d), "num_params": d,
            "steps_recorded": int(proj.shape[0])}
    return stat, scores, info


def _rigorous_bound(scores: np.ndarray, member: np.ndarray, *, runs: int, delta: float,
                    alpha: float) -> OneRunBound | EpsilonBound:
    if runs == 1:
        return one_run_two_sided(scores, member, delta=delta, alpha=alpha)
    ins, outs = scores[member], scores[~member]
    if ins.size == 0 or outs.size == 0:  # every run drew the same coin: nothing to compare
        return EpsilonBound(epsilon=0.0, threshold=math.nan, tp=0, fp=0, positives=int(ins.size),
                            negatives=int(outs.size), alpha=alpha, delta=delta,
                            method="clopper-pearson/one-sided-sample", thresholds_tried=0)
    return epsilon_lower_bound(ins, outs, delta=delta, alpha=alpha, threshold=Bonferroni())


def _gdp(scores: np.ndarray, member: np.ndarray, delta: float) -> GdpEstimate | None:
    if member.all() or not member.any():
        return None
    try:
        return gdp_fit(scores[member], scores[~member], delta=delta)
    except ValueError:  # too few or too tied to fit
        return None
