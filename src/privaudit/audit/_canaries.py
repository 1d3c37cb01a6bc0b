"""Canaries, and what a trainer under audit receives (`AuditDataset`) and returns (`TrainerOutput`).

An audit inserts m canaries, each independently with probability 1/2 (the
coin flips are seeded and recorded), trains once, and tries to tell the
included canaries from the others (Steinke, Nasr, Jagielski 2023,
arXiv:2305.08846 v1, Algorithm 1). Two kinds of canary:

* `GradientCanaries` (white-box): canary k is an "example" whose gradient is
  the fixed vector ``norm * u_k``, whatever the model's parameters; ``u_k`` is a
  unit vector on its own block of coordinates of the flat parameter vector,
  with random signs. A block of one coordinate is the Dirac canary of Nasr et
  al. 2023 (arXiv:2302.07956 v1). Blocks of several coordinates behave the same
  under L2 clipping and also expose element-wise clipping, which leaves a Dirac
  canary unchanged.
* `InputCanaries` (black-box): inputs with labels that join the training set:
  mislabelled training examples, random inputs within the data's range, or
  "outlier" inputs far outside it (random directions at a norm many times the
  data's), each with a random label. An outlier's per-example gradient is far
  above any sane clipping norm and its neighbourhood holds no data, so a trainer
  that clips correctly hides it in the noise while one that does not clip (or
  adds too little noise) memorises it on its own.

numpy only: nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from privaudit import _validate
from privaudit.accounting import DpEvent

__all__ = [
    "AuditDataset",
    "GradientCanaries",
    "InputCanaries",
    "Trainer",
    "TrainerOutput",
    "draw_membership",
    "make_input_canaries",
]

INPUT_CANARY_KINDS = ("mislabeled", "random", "outlier")
#: Black-box scores (see `_blackbox`); "auto" is the ring for "outlier" canaries, else the scaled logit.
BLACKBOX_STATISTICS = ("auto", "scaled_logit", "scaled_logit-ring")
#: Norm of "outlier" canaries, in units of the training rows' root-mean-square norm.
OUTLIER_SCALE = 8.0


def draw_membership(count: int, *, seed: int) -> np.ndarray:
    """Independent fair coin flips, one per canary: True = included in training.

    >>> draw_membership(8, seed=0).astype(int).tolist()
    [0, 1, 1, 1, 0, 0, 0, 0]
    """
    _validate.integer(minimum=1, count=count)
    _validate.integer(minimum=0, seed=seed)
    return np.random.default_rng(seed).random(count) < 0.5


def _as_ids(included: Any, count: int) -> np.ndarray:
    ids = np.asarray(included)
    if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
        raise ValueError("Expected included to be a 1-D array of canary ids (integers).")
    ids = np.unique(ids.astype(np.int64))
    if ids.size and (ids[0] < 0 or ids[-1] >= count):
        raise ValueError(f"Expected included ids in [0, count={count}), got {ids[0]}..{ids[-1]}.")
    return ids


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class GradientCanaries:
    """White-box canaries: examples whose per-example gradient is ``norm * u_k``.

    The trainer treats each canary in `included` as one more training example:
    it is sampled like the others (Poisson with the trainer's rate, or shuffled
    into a batch), its gradient ``norm * u_k`` is clipped like the others', and
    it joins the sum that the noise is added to. Coordinates index the flat
    vector of the model's trainable parameters, in ``model.parameters()``
    order (``torch.nn.utils.parameters_to_vector``).

    Attributes:
        count: m, the number of canaries (included or not).
        included: sorted ids (in ``[0, count)``) of the canaries in training.
        norm: L2 norm of every canary gradient. It must exceed the clipping norm
            for clipping to act; the default is far above usual norms, so that a
            trainer that forgets to clip shows it.
        support: coordinates per canary; None takes the largest disjoint blocks,
            ``num_params // count`` (1 = Dirac canaries).
        seed: seed of the coordinate assignment and the signs.
    """

    count: int
    included: np.ndarray
    norm: float = 100.0
    support: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _validate.integer(minimum=1, count=self.count)
        _validate.positive(norm=self.norm)
        _validate.integer(minimum=0, seed=self.seed)
        if self.support is not None:
            _validate.integer(minimum=1, support=self.support)
        object.__setattr__(self, "included", _as_ids(self.included, self.count))

    def support_size(self, num_params: int) -> int:
        """Coordinates per canary for a model with `num_params` trainable parameters."""
        _validate.integer(minimum=1, num_params=num_params)
        s = num_params // self.count if self.support is None else self.support
        if s < 1 or s * self.count > num_params:
            raise ValueError(
                f"Expected canaries={self.count} (x support {self.support or 1}) <= the model's "
                f"{num_params} trainable parameters: each canary needs its own coordinates.")
        return s

    def directions(self, num_params: int) -> tuple[np.ndarray, np.ndarray]:
        """``(coords, values)``, both of shape (count, s): ``u_k[coords[k]] = values[k]``.

        Blocks are disjoint; values are ``+-1 / sqrt(s)``, so every ``u_k`` has norm 1.

        >>> c, v = GradientCanaries(count=3, included=[0, 2], seed=1).directions(7)
        >>> c.shape, sorted(set(c.ravel().tolist())) == sorted(c.ravel().tolist())
        ((3, 2), True)
        >>> bool(np.allclose((v ** 2).sum(1), 1.0))
        True
        """
        s = self.support_size(num_params)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, num_params, s]))
        coords = rng.permutation(num_params)[: self.count * s].reshape(self.count, s)
        signs = rng.integers(0, 2, size=(self.count, s)) * 2.0 - 1.0
        return coords.astype(np.int64), signs / math.sqrt(s)

    def dense(self, ids: Any, num_params: int) -> np.ndarray:
        """The gradients ``norm * u_k`` of canaries `ids`, as rows of a (len(ids), num_params) array."""
        coords, values = self.directions(num_params)
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.zeros((ids.size, num_params), dtype=np.float32)
        rows[np.arange(ids.size)[:, None], coords[ids]] = self.norm * values[ids]
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "included": int(self.included.size), "norm": self.norm,
                "support": self.support, "seed": self.seed}


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class InputCanaries:
    """Black-box canaries: inputs with labels, each added to the training set or not.

    Attributes:
        x: (m, *input_shape) canary inputs, float32.
        y: (m,) canary labels (int64); for "mislabeled" canaries never the true label.
        kind: "mislabeled" (training examples given a wrong label), "random"
            (uniform random inputs within the training data's range, random labels) or
            "outlier" (uniformly random directions at norm `norm`, random labels).
        source_indices: for "mislabeled", the rows of the training split they were
            taken from (those rows leave the base training set); empty otherwise.
        norm: for "outlier", the L2 norm of every canary input; None otherwise.
    """

    x: np.ndarray
    y: np.ndarray
    kind: str
    source_indices: np.ndarray
    norm: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in INPUT_CANARY_KINDS:
            raise ValueError(f"Expected canary_kind={self.kind!r} in {list(INPUT_CANARY_KINDS)}.")
        if self.x.shape[0] != self.y.shape[0] or self.y.ndim != 1 or self.y.size == 0:
            raise ValueError(f"Expected as many canary inputs as labels, got {self.x.shape[0]} and {self.y.shape}.")

    @property
    def count(self) -> int:
        return int(self.y.shape[0])


def make_input_canaries(
    x: np.ndarray, y: np.ndarray, *, num_classes: int, count: int, kind: str, seed: int,
    outlier_scale: float = OUTLIER_SCALE,
) -> tuple[InputCanaries, np.ndarray]:
    """Draws `count` black-box canaries from a training set; returns them and the rows left as base data.

    "mislabeled": `count` distinct training rows, each given a label drawn uniformly
    from the *other* classes; they leave the base set (so a canary that is OUT is not
    in training in any form). "random": inputs uniform between each feature's minimum
    and maximum over the training set, labels uniform; the base set is all of `x`.
    "outlier": inputs ``norm * u_k`` with ``u_k`` uniform on the unit sphere of the
    input space and ``norm = outlier_scale`` times the training rows' root-mean-square
    norm, labels uniform; the base set is all of `x`. In many dimensions the
    directions are nearly orthogonal to each other and to the data, and at that norm
    a hidden layer saturates: each outlier's gradient is large (far above a clipping
    norm of about 1) and touches what no data point does.

    >>> xs = np.random.default_rng(0).random((50, 16)).astype(np.float32)
    >>> c, keep = make_input_canaries(xs, np.arange(50) % 3, num_classes=3, count=4, kind="outlier", seed=1)
    >>> keep.size, c.x.shape, bool(np.allclose(np.linalg.norm(c.x, axis=1), c.norm))
    (50, (4, 16), True)

    Raises:
        ValueError: unknown kind, count < 1, (mislabeled) count >= the training size, or
            (outlier) training rows that are all zero.
    """
    if kind not in INPUT_CANARY_KINDS:
        raise ValueError(f"Expected canary_kind={kind!r} in {list(INPUT_CANARY_KINDS)}.")
    _validate.integer(minimum=1, count=count)
    _validate.integer(minimum=2, num_classes=num_classes)
    _validate.positive(outlier_scale=outlier_scale)
    rng = np.random.default_rng(seed)
    n = int(y.shape[0])
    if kind == "outlier":
        flat = np.asarray(x, dtype=np.float64).reshape(n, -1)
        rms = math.sqrt(float((flat**2).sum(1).mean()))
        if not rms > 0:
            raise ValueError("Expected training rows with a nonzero norm to scale canary_kind='outlier' by.")
        norm = float(outlier_scale * rms)
        u = rng.normal(size=(count, flat.shape[1]))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        inputs = (norm * u).reshape(count, *x.shape[1:]).astype(np.float32)
        labels = rng.integers(0, num_classes, size=count).astype(np.int64)
        canaries = InputCanaries(x=inputs, y=labels, kind=kind, source_indices=np.zeros(0, dtype=np.int64),
                                 norm=norm)
        return canaries, np.arange(n)
    if kind == "mislabeled":
        if count >= n:
            raise ValueError(f"Expected canaries={count} < {n}, the training examples they are drawn "
                             "from (or use canary_kind='random').")
        idx = np.sort(rng.choice(n, size=count, replace=False))
        shift = rng.integers(1, num_classes, size=count)
        labels = (y[idx] + shift) % num_classes
        keep = np.setdiff1d(np.arange(n), idx)
        canaries = InputCanaries(x=np.array(x[idx], dtype=np.float32), y=labels.astype(np.int64),
                                 kind=kind, source_indices=idx.astype(np.int64))
        return canaries, keep
    lo, hi = x.min(axis=0), x.max(axis=0)
    inputs = (lo + (hi - lo) * rng.random((count, *x.shape[1:]))).astype(np.float32)
    labels = rng.integers(0, num_classes, size=count).astype(np.int64)
    canaries = InputCanaries(x=inputs, y=labels, kind=kind, source_indices=np.zeros(0, dtype=np.int64))
    return canaries, np.arange(n)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class AuditDataset:
    """The training set a trainer under audit receives.

    Attributes:
        x: (n, *input_shape) float32 inputs: the base data plus the included input canaries.
        y: (n,) int64 labels in ``[0, num_classes)``.
        num_classes: number of labels.
        name: where the base data came from (e.g. "digits").
        gradient_canaries: white-box canaries the trainer must add to its clipped
            sums (see `GradientCanaries`), or None.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    name: str = ""
    gradient_canaries: GradientCanaries | None = None

    def __post_init__(self) -> None:
        _validate.integer(minimum=2, num_classes=self.num_classes)
        if self.x.ndim < 2 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0] or self.y.size == 0:
            raise ValueError(f"Expected x of shape (n, ...) and y of shape (n,) with n >= 1, got "
                             f"{self.x.shape} and {self.y.shape}.")

    @property
    def size(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class TrainerOutput:
    """What a trainer under audit returns.

    Attributes:
        model: the trained ``torch.nn.Module`` (black-box audits query it).
        event: the DP event the trainer claims it ran (e.g. ``dpsgd_event(sigma, T,
            sampling_rate=q)``); the auditor's accountant turns it into "epsilon claimed".
        delta: the delta of the trainer's claim.
        max_grad_norm: the clipping norm C it claims; white-box scores use it (optional).
        updates: with ``record_updates=True``, one row per step: the noisy sum of
            clipped per-example gradients (canaries included) *before* any division
            by the batch size, over the flat trainable parameters; (steps, num_params).
        info: anything else worth recording (noise multiplier, steps, ...), JSON-able.
    """

    model: Any
    event: DpEvent
    delta: float
    max_grad_norm: float | None = None
    updates: Any | None = None
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.event, DpEvent):
            raise ValueError(f"Expected event to be a DpEvent, got {type(self.event).__name__}.")
        _validate.in_range(0.0, 1.0, lo_open=True, hi_open=True, delta=self.delta)
        if self.max_grad_norm is not None:
            _validate.positive(max_grad_norm=self.max_grad_norm)


class Trainer(Protocol):
    """A training procedure to audit: ``train(dataset, *, epsilon, delta, seed, record_updates)``.

    It must train on every row of `dataset` (and, if `dataset.gradient_canaries` is
    set, on the included gradient canaries), claim (epsilon, delta)-DP through the
    event it returns, and, when `record_updates` is True, return the per-step noisy
    clipped sums (see `TrainerOutput.updates`).
    """

    def __call__(self, dataset: AuditDataset, *, epsilon: float, delta: float, seed: int,
                 record_updates: bool) -> TrainerOutput: ...
