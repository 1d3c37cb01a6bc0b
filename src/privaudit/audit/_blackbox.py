"""Black-box threat model: input canaries in the training set, scored on the final model only.

The auditor queries the trained model (never its parameters) and scores every
canary, higher = more likely IN. Two statistics:

* ``scaled_logit``: LiRA's scaled logit ``phi(x_k) = log(p_y / (1 - p_y))`` of the
  canary's own label at the canary (Carlini et al. 2022, arXiv:2112.03570 v2).
  Without reference models phi ranks canaries exactly as the LOSS attack's
  ``-loss`` does (both increase with p_y), so the bound is the same; phi keeps its
  resolution where ``p_y`` rounds to 1.
* ``scaled_logit-ring``: ``phi(x_k)`` minus the mean of ``phi`` over a ring of
  queries around the canary: ``|x_k| (cos(theta) u_k + sin(theta) v)`` for random
  unit directions ``v`` orthogonal to ``u_k = x_k / |x_k|``, drawn in antithetic
  pairs (v, -v). A canary with a random label that the model memorised raises its
  label at x_k more than a little way off (a peak at the canary); an OUT canary
  whose label the model happens to favour there (its neighbours, a class the model
  prefers far from the data) is favoured on the ring as much as at x_k, and the
  pairs cancel the linear part of that background. This is the default for
  "outlier" canaries, where the ring, like the canary, lies far from the data.

Both use only the model's outputs on inputs fixed by the canaries and a seed,
never the membership, so the one-run bound holds for them as for any guess made
from the trained model.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from privaudit.attacks import scaled_logit

from ._canaries import BLACKBOX_STATISTICS, InputCanaries

__all__ = ["BLACKBOX_STATISTICS", "RING_ANGLE_DEGREES", "RING_POINTS", "blackbox_scores", "default_statistic",
           "model_logits", "ring_inputs"]

#: Angle between a canary and the points of its ring.
RING_ANGLE_DEGREES = 30.0
#: Queries on each canary's ring (antithetic pairs, so even).
RING_POINTS = 32


def model_logits(model: nn.Module, x: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """The model's logits on `x`, in evaluation mode and without gradients, as float64."""
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        outs = []
        with torch.no_grad():
            for s in range(0, x.shape[0], batch_size):
                xb = torch.as_tensor(np.asarray(x[s:s + batch_size], dtype=np.float32), device=device)
                outs.append(model(xb).to("cpu", torch.float64).numpy())
    finally:
        model.train(was_training)
    return np.concatenate(outs)


def ring_inputs(x: np.ndarray, *, angle_degrees: float = RING_ANGLE_DEGREES, points: int = RING_POINTS,
                seed: int = 0) -> np.ndarray:
    """The ring of every canary: (points, m, *input_shape) inputs at `angle_degrees` from it, same norm.

    >>> x = np.eye(3, 5, dtype=np.float32) * 7.0
    >>> r = ring_inputs(x, angle_degrees=60.0, points=4, seed=0)
    >>> r.shape, bool(np.allclose(np.linalg.norm(r, axis=2), 7.0, atol=1e-5))
    ((4, 3, 5), True)
    >>> bool(np.allclose((r * x).sum(2) / 49.0, 0.5, atol=1e-5))   # cos 60 degrees
    True
    """
    if points < 2 or points % 2:
        raise ValueError(f"Expected an even number of ring points >= 2, got points={points}.")
    if not 0.0 < angle_degrees < 180.0:
        raise ValueError(f"Expected angle_degrees in (0, 180), got {angle_degrees}.")
    m = x.shape[0]
    flat = np.asarray(x, dtype=np.float64).reshape(m, -1)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    if flat.shape[1] < 2 or not (norm > 0).all():
        raise ValueError("Expected nonzero canary inputs with at least 2 features for the ring statistic.")
    u = flat / norm
    rng = np.random.default_rng(seed)
    theta = math.radians(angle_degrees)
    out = np.empty((points, *flat.shape), dtype=np.float32)
    for p in range(points // 2):
        v = rng.normal(size=flat.shape)
        v -= (v * u).sum(1, keepdims=True) * u
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out[2 * p] = norm * (math.cos(theta) * u + math.sin(theta) * v)
        out[2 * p + 1] = norm * (math.cos(theta) * u - math.sin(theta) * v)
    return out.reshape(points, *x.shape)


def _finite_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    logits = model_logits(model, x)
    if not np.isfinite(logits).all():
        raise ValueError("The trained model returned non-finite logits on the canaries (training diverged?).")
    return logits


def blackbox_scores(model: nn.Module, canaries: InputCanaries, *, statistic: str = "scaled_logit",
                    seed: int = 0) -> np.ndarray:
    """One score per canary (higher = more likely IN); see the module docstring.

    Args:
        statistic: "scaled_logit" or "scaled_logit-ring" ("auto" is resolved by the caller,
            see `default_statistic`).
        seed: seeds the ring's directions (never the membership).

    Raises:
        ValueError: an unknown statistic, or a model whose logits are not finite (a diverged model).
    """
    if statistic not in BLACKBOX_STATISTICS[1:]:
        raise ValueError(f"Expected statistic={statistic!r} in {list(BLACKBOX_STATISTICS[1:])} for a "
                         "black-box audit.")
    phi = scaled_logit(logits=_finite_logits(model, canaries.x), labels=canaries.y)
    if statistic == "scaled_logit":
        return phi
    ring = ring_inputs(canaries.x, seed=seed)
    logits = _finite_logits(model, ring.reshape(-1, *canaries.x.shape[1:]))
    labels = np.tile(canaries.y, ring.shape[0])
    around = scaled_logit(logits=logits, labels=labels).reshape(ring.shape[0], -1).mean(0)
    return phi - around


def default_statistic(kind: str) -> str:
    """The statistic "auto" stands for: the ring for "outlier" canaries, else the scaled logit."""
    return "scaled_logit-ring" if kind == "outlier" else "scaled_logit"
