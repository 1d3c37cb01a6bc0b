"""`run_attack`: membership-inference attacks on a privaudit run, or on logits from anywhere.

On a run directory (`privaudit attack runs/<name>`): the population is the
run's whole dataset (train split = members, held-out split = non-members),
K shadow models are trained on random halves of it with the target's settings
and cached in `runs/<name>/shadows/` (see `shadows_for_run`), and each attack
scores every population point. The results go to `attack.json` and a log-log
ROC plot `attack_roc.png` in the run directory. Each attack's entry in
attack.json carries its ROC curve as `roc: {fpr: [...], tpr: [...], points_total}`:
at most 500 of the curve's own points from (0, 0) to (1, 1), picked by
`downsample_roc` to keep its shape on linear and log-log axes (the trapezoid
area under them stays within ~1e-3 of `auc`).

Attacks (`ATTACK_NAMES`; "lira", "rmia" and "all" name groups):

* ``loss``: Yeom et al. 2018, -loss with one global threshold; needs no shadows.
* ``lira_online`` / ``lira_offline``: Carlini et al. 2022 on the scaled logit,
  one global variance per side when K < 64 (`AttackOptions.lira_fixed_variance`).
* ``rmia_online`` / ``rmia_offline``: Zarifzadeh et al. 2024 on the true-class
  probability. The population samples z are a random subset of the population
  (all of it by default), drawn with the attack seed *without looking at the
  target's membership*: the attack never uses the split it is scored against.
  Their Pr(z) is estimated from the reference models, IN and OUT as they were.

External models (`npz=`): a `.npz` file (read with `allow_pickle=False`) with

    logits             float (n, C), or (A, n, C) with A query augmentations
    labels             int (n,) true classes in [0, C)
    membership         bool or 0/1 (n,): True = in the target's training set
    shadow_logits      optional float (K, n, C) or (K, A, n, C)
    shadow_membership  optional bool or 0/1 (K, n): True = in shadow k's training set

LOSS needs only the first three; LiRA and RMIA need the shadow arrays too.
Results are written into the `run_dir` folder given (created if needed).

A federated run (`privaudit train --federated`): members are the training rows
of all clients, non-members the held-out split; only ``loss`` is supported
(shadow training for federated runs is not, so LiRA and RMIA are refused).

delta for the epsilon lower bound: the run's delta for a DP run; 1e-5 for a
non-private run or an npz (there is no guarantee to test; the report says so).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import _io, _validate
from ._lira import LiraAttack
from ._loss import LossAttack
from ._metrics import (DEFAULT_FPRS, ROC_MAX_POINTS, AttackMetrics, RocCurve, attack_metrics, downsample_roc,
                       roc_curve)
from ._rmia import RmiaAttack
from ._signals import confidence, cross_entropy_loss, scaled_logit

__all__ = [
    "ATTACK_NAMES",
    "AttackInputs",
    "AttackOptions",
    "AttackReport",
    "AttackResult",
    "evaluate_attacks",
    "expand_attacks",
    "parse_shard",
    "run_attack",
]

ATTACK_FORMAT = "privaudit.attack/1"
ATTACK_NAMES: tuple[str, ...] = ("loss", "lira_online", "lira_offline", "rmia_online", "rmia_offline")
_GROUPS = {"lira": ATTACK_NAMES[1:3], "rmia": ATTACK_NAMES[3:5], "all": ATTACK_NAMES}
#: delta of the epsilon lower bound when the target makes no (epsilon, delta) claim.
NO_DP_DELTA = 1e-5
#: LiRA switches to one global variance per side below this many shadow models (Carlini et al. 2022, Sec. VI.A).
FIXED_VARIANCE_BELOW = 64
JSON_NAME = "attack.json"
PLOT_NAME = "attack_roc.png"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttackOptions:
    """The attacks' knobs beyond which attacks, K and the seed.

    Attributes:
        alpha: the epsilon lower bound holds with probability >= 1 - alpha.
        lira_fixed_variance: one global variance per side (None: when K < 64).
        rmia_a: RMIA offline's coefficient a in Pr(x) ~ ((1 + a) P_OUT(x) + (1 - a)) / 2.
        rmia_gamma: RMIA's likelihood-ratio threshold gamma.
        rmia_population: number of population samples z (None: the whole population).
        augment: query augmentation for a run's models: "auto", "none" or "hflip".
        min_false_positives: TPR at an FPR is reported only when negatives * FPR >= this.
    """

    alpha: float = 0.05
    lira_fixed_variance: bool | None = None
    rmia_a: float = 0.3
    rmia_gamma: float = 1.0
    rmia_population: int | None = None
    augment: str = "auto"
    min_false_positives: int = 10

    def __post_init__(self) -> None:
        _validate.in_range(0, 1, lo_open=True, hi_open=True, alpha=self.alpha)
        if self.lira_fixed_variance is not None and not isinstance(self.lira_fixed_variance, bool):
            raise ValueError(f"Expected lira_fixed_variance={self.lira_fixed_variance!r} to be a bool or None.")
        _validate.in_range(0, 1, rmia_a=self.rmia_a)
        _validate.positive(rmia_gamma=self.rmia_gamma)
        if self.rmia_population is not None:
            _validate.integer(minimum=1, rmia_population=self.rmia_population)
        if self.augment not in ("auto", "none", "hflip"):
            raise ValueError(f"Expected augment={self.augment!r} in ['auto', 'hflip', 'none'].")
        _validate.integer(minimum=1, min_false_positives=self.min_false_positives)


def _real(name: str, value: Any, ndims: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"Expected {name} to hold real numbers, got dtype {arr.dtype}.")
    if arr.ndim not in ndims:
        raise ValueError(f"Expected {name} to have {' or '.join(map(str, ndims))} dimensions, got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise ValueError(f"Expected {name} to be finite, found NaN or infinite values.")
    return arr if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float64)


def _mask(name: str, value: Any, ndim: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != ndim:
        raise ValueError(f"Expected {name} to have {ndim} dimension(s), got shape {arr.shape}.")
    if arr.dtype != bool:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)) or not np.isin(
                arr, (0, 1)).all():
            raise ValueError(f"Expected {name} to be booleans or 0/1.")
        arr = arr.astype(bool)
    return arr


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class AttackInputs:
    """Logits and membership: everything the attacks read (shapes in the module docstring).

    Attributes:
        target_logits: (A, n, C) the target model's logits.
        labels: (n,) int64 true classes.
        membership: (n,) bool, the truth the attacks are scored against.
        shadow_logits: (K, A, n, C) or None.
        shadow_membership: (K, n) bool or None.
    """

    target_logits: np.ndarray
    labels: np.ndarray
    membership: np.ndarray
    shadow_logits: np.ndarray | None = None
    shadow_membership: np.ndarray | None = None

    def __post_init__(self) -> None:
        logits = _real("logits", self.target_logits, (2, 3))
        if logits.ndim == 2:
            logits = logits[None]
        a, n, c = logits.shape
        labels = np.asarray(self.labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool:
            raise ValueError(f"Expected labels to be integers of shape ({n},) to match logits {logits.shape[1:]}, "
                             f"got {labels.dtype} {labels.shape}.")
        if labels.size and (labels.min() < 0 or labels.max() >= c):
            raise ValueError(f"Expected labels in [0, {c - 1}] (logits have {c} classes).")
        membership = _mask("membership", self.membership, 1)
        if membership.shape != (n,):
            raise ValueError(f"Expected membership of shape ({n},) to match logits, got {membership.shape}.")
        if membership.all() or not membership.any():
            raise ValueError("Expected membership to contain both members (True) and non-members (False).")
        object.__setattr__(self, "target_logits", logits)
        object.__setattr__(self, "labels", labels.astype(np.int64))
        object.__setattr__(self, "membership", membership)
        if (self.shadow_logits is None) != (self.shadow_membership is None):
            raise ValueError("Expected shadow_logits and shadow_membership together (or neither).")
        if self.shadow_logits is None:
            return
        shadow = _real("shadow_logits", self.shadow_logits, (3, 4))
        if shadow.ndim == 3:
            shadow = shadow[:, None]
        if shadow.shape[1:] != (a, n, c):
            want = f"(K, {n}, {c})" if a == 1 else f"(K, {a}, {n}, {c})"
            raise ValueError(f"Expected shadow_logits of shape {want} to match logits, "
                             f"got {np.shape(self.shadow_logits)}.")
        smask = _mask("shadow_membership", self.shadow_membership, 2)
        if smask.shape != (shadow.shape[0], n):
            raise ValueError(f"Expected shadow_membership of shape ({shadow.shape[0]}, {n}) to match shadow_logits, "
                             f"got {smask.shape}.")
        if shadow.shape[0] < 2:
            raise ValueError(f"Expected at least 2 shadow models, got K={shadow.shape[0]}.")
        object.__setattr__(self, "shadow_logits", shadow)
        object.__setattr__(self, "shadow_membership", smask)

    @property
    def num_shadows(self) -> int:
        return 0 if self.shadow_logits is None else int(self.shadow_logits.shape[0])

    @classmethod
    def from_npz(cls, path: str | Path) -> AttackInputs:
        """Reads the `.npz` format of the module docstring."""
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise ValueError(f"No such npz file {str(p)!r}.") from None
        except (OSError, ValueError) as exc:
            raise ValueError(f"Cannot read {str(p)!r} as an npz file: {exc}.") from None
        missing = [k for k in ("logits", "labels", "membership") if k not in arrays]
        if missing:
            raise ValueError(f"{str(p)!r} lacks the array(s) {missing} (needs logits, labels, membership).")
        extra = sorted(set(arrays) - {"logits", "labels", "membership", "shadow_logits", "shadow_membership"})
        if extra:
            raise ValueError(f"{str(p)!r} has unknown array(s) {extra}.")
        return cls(target_logits=arrays["logits"], labels=arrays["labels"], membership=arrays["membership"],
                   shadow_logits=arrays.get("shadow_logits"), shadow_membership=arrays.get("shadow_membership"))


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class AttackResult:
    """One attack's scores (n,), metrics, ROC curve and settings."""

    name: str
    scores: np.ndarray
    metrics: AttackMetrics
    roc: RocCurve
    settings: Mapping[str, Any]

    def to_dict(self, *, seed: int, roc_points: int = ROC_MAX_POINTS) -> dict[str, Any]:
        """The attack's entry in attack.json (FPR keys as strings such as "0.01").

        `roc` holds at most `roc_points` points of the ROC curve (`downsample_roc`: the
        curve's own points, from (0, 0) to (1, 1), FPR and TPR non-decreasing), with
        `points_total` the number of distinct thresholds of the full curve.
        """
        m = self.metrics.to_dict()
        small = downsample_roc(self.roc, max_points=roc_points)
        eps = self.metrics.epsilon
        bound = None if eps is None else {
            "value": eps.epsilon if math.isfinite(eps.epsilon) else None,
            "alpha": eps.alpha,
            "delta": eps.delta,
            "method": (f"Clopper-Pearson at the best threshold, Bonferroni over {eps.thresholds_tried} thresholds "
                       "(Jagielski, Ullman, Oprea 2020, arXiv 2006.07709)"),
            "threshold": eps.threshold if math.isfinite(eps.threshold) else None,
            "true_positives": eps.true_positives,
            "false_positives": eps.false_positives,
        }
        return {
            "auc": m["auc"],
            "tpr_at_fpr": m["tpr_at_fpr"],
            "tpr_at_fpr_unreported": m["unreported"],
            "balanced_accuracy": m["balanced_accuracy"],
            "advantage": m["advantage"],
            "roc": {"fpr": small.fpr.tolist(), "tpr": small.tpr.tolist(),
                    "points_total": int(self.roc.fpr.shape[0])},
            "epsilon_lower_bound": bound,
            "positives": m["positives"],
            "negatives": m["negatives"],
            "settings": dict(self.settings),
            "seed": seed,
        }


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class AttackReport:
    """What `run_attack` did.

    Attributes:
        out_dir: where attack.json and the plot went (the run directory).
        source: what was attacked (run or npz), JSON-ready.
        results: {attack name: AttackResult}, in `ATTACK_NAMES` order; empty for a shard.
        membership: (n,) the truth.
        delta, delta_source: the epsilon bound's delta and where it came from.
        alpha, fprs, seed: as used.
        shadows: the shadow models used (JSON-ready), or None.
        shard: (i, n) when only a shard of shadows was trained, else None.
        json_path, plot_path: the files written (None when not written).
        notes: anything the reader should know (a skipped plot, ...).
    """

    out_dir: Path
    source: Mapping[str, Any]
    results: Mapping[str, AttackResult]
    membership: np.ndarray
    delta: float
    delta_source: str
    alpha: float
    fprs: tuple[float, ...]
    seed: int
    shadows: Mapping[str, Any] | None
    shard: tuple[int, int] | None = None
    json_path: Path | None = None
    plot_path: Path | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """attack.json's content."""
        return _jsonable({
            "format": ATTACK_FORMAT,
            "source": dict(self.source),
            "population": {"size": int(self.membership.shape[0]), "members": int(self.membership.sum()),
                           "non_members": int((~self.membership).sum())},
            "delta": self.delta,
            "delta_source": self.delta_source,
            "alpha": self.alpha,
            "fprs": list(self.fprs),
            "seed": self.seed,
            "shard": None if self.shard is None else list(self.shard),
            "shadows": None if self.shadows is None else dict(self.shadows),
            "attacks": {name: r.to_dict(seed=self.seed) for name, r in self.results.items()},
            "plot": None if self.plot_path is None else self.plot_path.name,
            "notes": list(self.notes),
        })


def _jsonable(value: Any) -> Any:
    """A JSON-ready copy: numpy scalars to Python numbers, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def expand_attacks(attacks: str | Iterable[str]) -> tuple[str, ...]:
    """Attack names with the groups "lira", "rmia" and "all" expanded, in `ATTACK_NAMES` order."""
    items = [attacks] if isinstance(attacks, str) else list(attacks)
    chosen: set[str] = set()
    for item in items:
        if item in _GROUPS:
            chosen.update(_GROUPS[item])
        elif item in ATTACK_NAMES:
            chosen.add(item)
        else:
            raise ValueError(f"Expected attacks from {[*ATTACK_NAMES, *_GROUPS]}, got {item!r}.")
    if not chosen:
        raise ValueError("Expected at least one attack.")
    return tuple(a for a in ATTACK_NAMES if a in chosen)


def parse_shard(shard: str | Sequence[int]) -> tuple[int, int]:
    """"i/n" (or (i, n)) -> (i, n) with 1 <= i <= n.

    >>> parse_shard("2/4")
    (2, 4)
    """
    if isinstance(shard, str):
        parts = shard.split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"Expected shard='i/n' with integers 1 <= i <= n (e.g. '2/4'), got {shard!r}.")
        i, n = (int(p) for p in parts)
    else:
        try:
            i, n = (int(v) for v in shard)
        except (TypeError, ValueError):
            raise ValueError(f"Expected shard=(i, n), got {shard!r}.") from None
    if not 1 <= i <= n:
        raise ValueError(f"Expected shard='i/n' with 1 <= i <= n, got {i}/{n}.")
    return i, n


def _check_lira_k(names: Sequence[str], k: int) -> None:
    if k < 3 and any(n.startswith("lira") for n in names):
        raise ValueError(f"Expected shadows >= 3 for LiRA, got {k}: with 2 models every example is IN for one "
                         "and OUT for the other, so no variance can be estimated.")


def _per_model(fn: Callable[..., np.ndarray], logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.stack([fn(logits=logits[k], labels=labels, aggregate="none") for k in range(logits.shape[0])])


def evaluate_attacks(
    inputs: AttackInputs,
    *,
    attacks: str | Iterable[str] = "all",
    fprs: Sequence[float] = DEFAULT_FPRS,
    delta: float | None = NO_DP_DELTA,
    seed: int = 0,
    options: AttackOptions | None = None,
) -> dict[str, AttackResult]:
    """Runs the named attacks on `inputs` and scores each against `inputs.membership`.

    Raises:
        ValueError: an attack that needs shadow models when `inputs` has none, or bad options.
    """
    names = expand_attacks(attacks)
    options = AttackOptions() if options is None else options
    _validate.integer(minimum=0, seed=seed)
    need = [a for a in names if a != "loss"]
    if need and inputs.shadow_logits is None:
        raise ValueError(f"Attack(s) {need} need shadow models: give shadow_logits and shadow_membership "
                         "(or attack a run directory, which trains them); only 'loss' works without.")
    labels, logits = inputs.labels, inputs.target_logits
    a = int(logits.shape[0])
    results: dict[str, AttackResult] = {}

    def finish(name: str, scores: np.ndarray, settings: dict[str, Any]) -> None:
        metrics = attack_metrics(scores=scores, membership=inputs.membership, fprs=fprs, delta=delta,
                                 alpha=options.alpha, min_false_positives=options.min_false_positives)
        roc = roc_curve(scores=scores, membership=inputs.membership)
        results[name] = AttackResult(name=name, scores=scores, metrics=metrics, roc=roc, settings=settings)

    if "loss" in names:
        loss = cross_entropy_loss(logits=logits, labels=labels, aggregate="mean")
        finish("loss", LossAttack(signal="loss").score(loss),
               {"signal": "cross-entropy loss", "threshold": "one global threshold", "augmentations": a})
    if not need:
        return results
    assert inputs.shadow_logits is not None and inputs.shadow_membership is not None
    shadow, smask = inputs.shadow_logits, inputs.shadow_membership
    k = int(shadow.shape[0])
    _check_lira_k(names, k)
    fixed = options.lira_fixed_variance if options.lira_fixed_variance is not None else k < FIXED_VARIANCE_BELOW
    if any(n.startswith("lira") for n in names):
        phi_t = scaled_logit(logits=logits, labels=labels, aggregate="none")
        phi_s = _per_model(scaled_logit, shadow, labels)
        for name, online in (("lira_online", True), ("lira_offline", False)):
            if name in names:
                att = LiraAttack(online=online, fixed_variance=fixed).fit(shadow_signals=phi_s,
                                                                          shadow_membership=smask)
                finish(name, att.score(phi_t), {"online": online, "fixed_variance": fixed, "shadows": k,
                                                "signal": "scaled logit", "augmentations": a})
    if any(n.startswith("rmia") for n in names):
        conf_t = confidence(logits=logits, labels=labels, aggregate="none")
        conf_s = _per_model(confidence, shadow, labels)
        n = int(labels.shape[0])
        m = n if options.rmia_population is None else min(options.rmia_population, n)
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A17]))
        z = np.arange(n) if m == n else np.sort(rng.choice(n, size=m, replace=False))
        for name, online in (("rmia_online", True), ("rmia_offline", False)):
            if name in names:
                att = RmiaAttack(online=online, a=options.rmia_a, gamma=options.rmia_gamma)
                att.fit(shadow_signals=conf_s, shadow_membership=smask, population_signals=conf_s[:, z],
                        population_membership=smask[:, z])
                settings: dict[str, Any] = {
                    "online": online, "gamma": options.rmia_gamma, "reference_models": k,
                    "signal": "true-class probability", "augmentations": a, "population_size": m,
                    "population": "random subset of the population drawn with the seed, blind to membership"
                                  if m < n else "the whole population, blind to membership"}
                if not online:
                    settings["a"] = options.rmia_a
                finish(name, att.score(conf_t, population_signals=conf_t[z]), settings)
    return {name: results[name] for name in names}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run_source(target: Any) -> dict[str, Any]:
    s = target.settings
    summary: dict[str, Any] = {}
    if target.run.summary_path.is_file():
        summary = target.run.read_summary()
    resolved = target.config.get("resolved") or {}
    if target.federated:
        return {
            "kind": "run", "run_dir": str(target.run.path), "run_name": target.run.name, "federated": True,
            "private": target.private, "dp": s.dp, "epsilon": summary.get("epsilon"),
            "delta": s.delta if target.private else None, "noise_multiplier": resolved.get("noise_multiplier"),
            "data": s.data, "model": s.model, "rounds": summary.get("rounds", s.rounds),
            "num_clients": resolved.get("num_clients"), "batch_size": s.batch_size, "lr": s.lr,
            "test_accuracy": summary.get("test_accuracy"), "split_seed": s.split_seed,
            "test_fraction": s.test_fraction,
            "members": "the training rows of all clients (federation.json); non-members: the held-out split"}
    return {
        "kind": "run", "run_dir": str(target.run.path), "run_name": target.run.name, "private": not s.no_dp,
        "epsilon": summary.get("epsilon"), "delta": None if s.no_dp else s.delta,
        "noise_multiplier": (resolved.get("dp") or {}).get("noise_multiplier"),
        "data": s.data, "model": s.model, "epochs": s.epochs, "batch_size": s.batch_size, "lr": s.lr,
        "test_accuracy": summary.get("test_accuracy"), "split_seed": s.split_seed, "test_fraction": s.test_fraction,
    }


def _shadow_info(shadows: Any, folder: Path) -> dict[str, Any]:
    return {"count": shadows.spec.num_models, "seed": shadows.spec.seed, "cache_key": shadows.spec.key(),
            "folder": str(folder), "from_cache": shadows.from_cache, "models": list(shadows.models),
            "model_seeds": list(shadows.seeds), "training": dict(shadows.spec.training),
            "training_seconds": shadows.seconds,
            "in_per_example": sorted({int(c) for c in shadows.membership.sum(axis=0)})}


def run_attack(
    run_dir: str | Path,
    *,
    attacks: str | Iterable[str] = ("loss", "lira", "rmia"),
    shadows: int = 16,
    seed: int = 0,
    shard: str | Sequence[int] | None = None,
    merge: bool = False,
    npz: str | Path | None = None,
    delta: float | None = None,
    fprs: Sequence[float] = DEFAULT_FPRS,
    options: AttackOptions | None = None,
    device: str = "auto",
    write: bool = True,
    on_step: Callable[[int, int], None] | None = None,
) -> AttackReport:
    """Attacks a run's target model (or the logits of an `npz`) and writes attack.json + attack_roc.png.

    Args:
        run_dir: a privaudit run directory; with `npz`, the folder the results go to.
        attacks: names or groups ("loss", "lira", "rmia", "all", or `ATTACK_NAMES`).
        shadows: K >= 2 shadow models (ignored with `npz`, whose arrays say K).
        seed: seeds the shadows' IN/OUT mask, their per-model seeds and RMIA's z sample.
        shard: "i/n": only train shard i of n of the shadow models (into the cache) and stop.
        merge: insist on merging complete shards from the cache before attacking.
        npz: attack logits from a file instead (format in the module docstring).
        delta: the epsilon lower bound's delta (default: the run's; 1e-5 without DP).
        fprs: FPRs at which to report the TPR.
        options: the attacks' other knobs.
        device: "auto", "cpu" or "cuda[:N]" for the models.
        write: write attack.json and the plot.
        on_step: progress of shadow training, called with (step, total).

    Raises:
        ValueError: bad arguments, a missing or incomplete run directory, a malformed npz.
    """
    names = expand_attacks(attacks)
    options = AttackOptions() if options is None else options
    _validate.integer(minimum=2, shadows=shadows)
    _validate.integer(minimum=0, seed=seed)
    fprs = tuple(float(f) for f in fprs)
    for f in fprs:
        _validate.in_range(0, 1, lo_open=True, fpr=f)
    if delta is not None:
        _validate.in_range(0, 1, lo_open=True, hi_open=True, delta=delta)
    shard_t = None if shard is None else parse_shard(shard)
    if npz is None and shard_t is None:
        _check_lira_k(names, shadows)
    notes: list[str] = []
    if npz is not None:
        if shard_t is not None or merge:
            raise ValueError("shard and merge apply to a run's shadow models, not to an npz file.")
        inputs = AttackInputs.from_npz(npz)
        out_dir = Path(run_dir)
        source = {"kind": "npz", "path": str(npz), "sha256": _sha256(Path(npz))}
        shadow_info = None if inputs.shadow_logits is None else {"count": inputs.num_shadows, "source": "npz"}
        delta_source = "given" if delta is not None else "default 1e-5: an npz carries no (epsilon, delta) claim"
        delta = NO_DP_DELTA if delta is None else delta
    else:
        from ._model_signals import model_logits
        from ._shadow_run import load_run, shadows_for_run

        target = load_run(run_dir, device=device)
        if target.federated and any(n != "loss" for n in names):
            from ._shadow_run import federated_shadows_error

            raise federated_shadows_error([n for n in names if n != "loss"])
        out_dir = target.run.path
        source = _run_source(target)
        shadow_set = None
        if shard_t is not None:
            shadow_set = shadows_for_run(target, num_models=shadows, seed=seed, shard=shard_t,
                                         augment=options.augment, on_step=on_step)
            folder = target.run.path / "shadows" / shadow_set.spec.key()
            return AttackReport(out_dir=out_dir, source=source, results={}, membership=target.membership,
                                delta=math.nan, delta_source="", alpha=options.alpha, fprs=fprs, seed=seed,
                                shadows=_shadow_info(shadow_set, folder), shard=shard_t,
                                notes=(f"trained shard {shard_t[0]}/{shard_t[1]} only; attack after all shards "
                                       "with --merge",))
        if any(n != "loss" for n in names):
            shadow_set = shadows_for_run(target, num_models=shadows, seed=seed, merge=merge,
                                         augment=options.augment, on_step=on_step)
        from ._model_signals import resolve_augment

        augment = resolve_augment(options.augment, input_ndim=target.inputs.dim())
        logits = model_logits(target.model, target.inputs, augment=augment, device=target.device)
        inputs = AttackInputs(
            target_logits=logits, labels=target.labels.numpy(), membership=target.membership,
            shadow_logits=None if shadow_set is None else shadow_set.logits[augment],
            shadow_membership=None if shadow_set is None else shadow_set.membership)
        shadow_info = None if shadow_set is None else _shadow_info(
            shadow_set, target.run.path / "shadows" / shadow_set.spec.key())
        if delta is not None:
            delta_source = "given"
        elif target.private:
            delta, delta_source = target.settings.delta, "the run's delta"
        else:
            delta, delta_source = NO_DP_DELTA, "default 1e-5: the run is not private, so there is no delta to test"
    results = evaluate_attacks(inputs, attacks=names, fprs=fprs, delta=delta, seed=seed, options=options)
    report = AttackReport(out_dir=out_dir, source=source, results=results, membership=inputs.membership,
                          delta=float(delta), delta_source=delta_source, alpha=options.alpha, fprs=fprs,
                          seed=seed, shadows=shadow_info)
    if not write:
        return report
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_path: Path | None = out_dir / PLOT_NAME
    try:
        from ._plots import plot_roc

        plot_roc({n: (r.roc, r.metrics.auc) for n, r in results.items()}, out_dir / PLOT_NAME,
                 title=f"{source.get('run_name') or Path(str(source.get('path'))).name}: "
                       f"{int(inputs.membership.sum())} members, {int((~inputs.membership).sum())} non-members")
    except ValueError as exc:
        plot_path = None
        notes.append(f"ROC plot skipped: {exc}")
    report = dataclasses.replace(report, json_path=out_dir / JSON_NAME, plot_path=plot_path, notes=tuple(notes))
    _io.atomic_write_json(out_dir / JSON_NAME, report.to_dict())
    return report
