"""Per-example signals from a model's logits: loss, confidence and LiRA's scaled logit.

Logits come as (n, C), or as (A, n, C) when each example was queried under A
augmentations (flips, crops). With `aggregate="mean"` the signal is averaged
over the augmentation axis and comes back as (n,); with `aggregate="none"` it
comes back as (n, A) (augmentation axis last, the layout the attacks take) so
that LiRA can fit one Gaussian per augmentation. 2-D logits give (n,) either way.

All three are computed from log-softmax values (log-sum-exp), never from
probabilities that underflow, so logits of +-1000 give finite results.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy.special import logsumexp

from ._base import as_real_array

__all__ = ["SIGNAL_KINDS", "compute_signal", "confidence", "cross_entropy_loss", "scaled_logit"]

Aggregate = Literal["mean", "none"]
SignalKind = Literal["loss", "confidence", "scaled_logit"]

SIGNAL_KINDS: tuple[str, ...] = ("confidence", "loss", "scaled_logit")


def _check(logits: Any, labels: Any, aggregate: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns logits as (A, n, C) float64 and labels as (n,) int64."""
    if aggregate not in ("mean", "none"):
        raise ValueError(f"Expected aggregate={aggregate!r} in ('mean', 'none').")
    z = as_real_array("logits", logits, ndims=(2, 3))
    if z.ndim == 2:
        z = z[None]
    n, num_classes = z.shape[1], z.shape[2]
    if num_classes < 2:
        raise ValueError(f"Expected logits with at least 2 classes on the last axis, got shape {np.shape(logits)}.")
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"Expected labels of shape ({n},) to match logits {np.shape(logits)}, got {y.shape}.")
    if not np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
        raise ValueError(f"Expected labels to be integers, got dtype {y.dtype}.")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise ValueError(f"Expected labels in [0, {num_classes - 1}], found {int(y[bad][0])}.")
    return z, y.astype(np.int64)


def _true_class_log_prob(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log p_y = z_y - logsumexp_j z_j, shape (A, n)."""
    z_y = np.take_along_axis(z, y[None, :, None], axis=2)[..., 0]
    return z_y - logsumexp(z, axis=2)


def _finish(values: np.ndarray, aggregate: str) -> np.ndarray:
    """(A, n) -> (n,) for "mean" or 2-D input; (n, A) otherwise."""
    if aggregate == "mean":
        return values.mean(axis=0)
    if values.shape[0] == 1:
        return values[0]
    return np.ascontiguousarray(values.T)


def cross_entropy_loss(*, logits: npt.ArrayLike, labels: npt.ArrayLike, aggregate: Aggregate = "mean") -> np.ndarray:
    """Per-example cross-entropy -log p_y (the LOSS attack's signal; lower = more member-like).

    >>> cross_entropy_loss(logits=[[0.0, 0.0]], labels=[1]).round(4)
    array([0.6931])
    """
    z, y = _check(logits, labels, aggregate)
    return _finish(-_true_class_log_prob(z, y), aggregate)


def confidence(*, logits: npt.ArrayLike, labels: npt.ArrayLike, aggregate: Aggregate = "mean") -> np.ndarray:
    """Per-example softmax probability of the true class, p_y (RMIA's Pr(x | theta)).

    With augmentations and `aggregate="mean"` this is the mean of p_y over them.
    """
    z, y = _check(logits, labels, aggregate)
    return _finish(np.exp(_true_class_log_prob(z, y)), aggregate)


def scaled_logit(*, logits: npt.ArrayLike, labels: npt.ArrayLike, aggregate: Aggregate = "mean") -> np.ndarray:
    """LiRA's scaled logit phi = log p_y - log sum_{j != y} p_j (higher = more member-like).

    Carlini et al. 2022 (arXiv 2112.03570v2), "logit scaling", phi(p) = log(p / (1 - p)).
    The softmax normaliser cancels, so phi = z_y - logsumexp_{j != y} z_j exactly;
    that form never forms 1 - p (which rounds to 0 once p_y > 1 - 1e-16).

    >>> scaled_logit(logits=[[1000.0, -1000.0, 0.0]], labels=[0]).round(6)
    array([1000.])
    """
    z, y = _check(logits, labels, aggregate)
    onehot = np.arange(z.shape[2])[None, None, :] == y[None, :, None]
    z_y = np.take_along_axis(z, y[None, :, None], axis=2)[..., 0]
    others = np.where(onehot, -np.inf, z)
    return _finish(z_y - logsumexp(others, axis=2), aggregate)


_KINDS = {"confidence": confidence, "loss": cross_entropy_loss, "scaled_logit": scaled_logit}


def compute_signal(
    *, kind: SignalKind, logits: npt.ArrayLike, labels: npt.ArrayLike, aggregate: Aggregate = "mean"
) -> np.ndarray:
    """Dispatches to the signal named `kind` (one of `SIGNAL_KINDS`)."""
    if kind not in _KINDS:
        raise ValueError(f"Expected kind={kind!r} in {SIGNAL_KINDS}.")
    return _KINDS[kind](logits=logits, labels=labels, aggregate=aggregate)
