"""White-box threat model: gradient canaries in the clipped sum, scored on every step's noisy update.

The auditor sees ``y_t = sum_i clip(g_i) + N(0, sigma^2 C^2 I)`` at every step t
(the privatised clipped sum, before division by the batch size) and projects
it on each canary's direction, ``x_tk = <y_t, u_k>``. Without canary k,
``x_tk`` is noise plus the other examples' share of that direction; with it,
``C`` is added at every step where the canary was sampled (Nasr et al. 2023,
arXiv:2302.07956 v1, gradient canaries seen through all intermediate updates).

Three scores, higher = more likely IN:

* ``"sum"``: ``sum_t x_tk``; optimal for full-batch DP-GD, whose canary is in every step,
  when nothing but the noise is added.
* ``"lda"`` (the default under a claimed q = 1): ``sum_t w_t x_tk`` with Fisher's weights
  ``w = S^-1 1``, S the steps' covariance pooled over all canaries. The other examples'
  share of each direction drifts coherently over the steps (large early in training);
  the weights learn that drift from the canaries themselves and discount it.
* ``"lr"``: the log-likelihood ratio of "Poisson-sampled with rate q into a
  Gaussian mechanism" against "absent", under the *claimed* q, sigma and C:
  ``sum_t log(1 - q + q exp((C x_tk - C^2/2) / (sigma C)^2))``. It equals the
  sum (up to an increasing map) when q = 1 and weighs each step on its own
  when q < 1. Any score is valid for the bound; the claim only makes it powerful.
* ``"lr-centered"`` (q < 1 only): the same after subtracting each canary's median
  over steps, with the noise scale estimated from the projections instead of
  claimed. The other examples add a slowly drifting share to ``x_tk``; when a
  broken trainer adds little noise, that share is what hides the canary, and the
  median removes it. With sigma*C >> C the median moves with the canary too and
  this score loses its signal, so ``"auto"`` uses it only when the projections
  show far less noise than claimed.

This module also puts the canaries into two real DP-SGD implementations
(privaudit's engine and Opacus) at the point where their per-example gradients
are clipped, so that the implementation's own clipping code clips them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from privaudit.accounting import DpEvent, GaussianEvent, PoissonSampledEvent, flatten_event

from ._canaries import GradientCanaries

__all__ = [
    "CanaryInjector",
    "WHITEBOX_STATISTICS",
    "append_opacus_canaries",
    "canary_projections",
    "claim_statistic",
    "claimed_dpsgd",
    "flat_update",
    "num_trainable",
    "sample_canaries",
    "whitebox_scores",
]

WHITEBOX_STATISTICS = ("auto", "lda", "lr", "lr-centered", "sum")
#: Longer runs get one Fisher weight per block of consecutive steps (a covariance of at most this size).
_MAX_LDA_STEPS = 1000


def num_trainable(model: nn.Module) -> int:
    """Length of the flat vector of trainable parameters (the canaries' coordinate space)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def flat_update(tensors: Sequence[torch.Tensor]) -> np.ndarray:
    """One step's update as a flat float32 numpy vector, in parameter order."""
    return torch.cat([t.detach().reshape(-1) for t in tensors]).to("cpu", torch.float32).numpy()


def claimed_dpsgd(event: DpEvent) -> tuple[float, float, int] | None:
    """``(q, sigma, steps)`` if `event` is T identical Poisson-sampled Gaussian steps, else None.

    >>> from privaudit.accounting import dpsgd_event
    >>> claimed_dpsgd(dpsgd_event(1.5, 100, sampling_rate=0.1))
    (0.1, 1.5, 100)
    """
    leaves = flatten_event(event)
    if len(leaves) != 1:
        return None
    leaf, steps = leaves[0]
    if isinstance(leaf, GaussianEvent):
        return 1.0, leaf.noise_multiplier, steps
    if isinstance(leaf, PoissonSampledEvent) and isinstance(leaf.event, GaussianEvent):
        return leaf.sampling_rate, leaf.event.noise_multiplier, steps
    return None


def canary_projections(updates: Any, canaries: GradientCanaries) -> np.ndarray:
    """``x[t, k] = <updates[t], u_k>`` for every step t and canary k; shape (steps, count).

    Raises:
        ValueError: unless `updates` is a non-empty 2-D array of finite numbers.
    """
    u = np.asarray(updates, dtype=np.float64 if np.asarray(updates).dtype == np.float64 else np.float32)
    if u.ndim != 2 or u.shape[0] == 0:
        raise ValueError(f"Expected updates of shape (steps, num_params) with steps >= 1, got {u.shape}.")
    if not np.isfinite(u).all():
        raise ValueError("Expected finite updates; the trainer recorded NaN or infinity.")
    coords, values = canaries.directions(u.shape[1])
    return np.einsum("tks,ks->tk", u[:, coords], values.astype(u.dtype), optimize=True).astype(np.float64)


def whitebox_scores(
    projections: np.ndarray, *, event: DpEvent, max_grad_norm: float | None, statistic: str = "auto"
) -> tuple[str, np.ndarray]:
    """One score per canary from its projections (steps, count); returns ``(statistic, scores)``.

    ``"auto"`` picks, from the output alone (never the membership):

    * ``"lda"`` under a claimed full batch (q = 1);
    * under a claimed q < 1 with a known clipping norm, ``"lr-centered"`` when the
      projections' robust spread is below half the claimed noise std sigma*C (the
      trainer adds far less noise than it claims), ``"lr"`` otherwise;
    * ``"sum"`` when the claim is not DP-SGD or the clipping norm is unknown.
    """
    if statistic not in WHITEBOX_STATISTICS:
        raise ValueError(f"Expected statistic={statistic!r} in {list(WHITEBOX_STATISTICS)}.")
    claim = claimed_dpsgd(event)
    if statistic == "auto":
        if claim is not None and claim[0] >= 1.0:
            statistic = "lda"
        elif claim is None or max_grad_norm is None:
            statistic = "sum"
        else:
            statistic = "lr-centered" if _spread(projections) < 0.5 * claim[1] * max_grad_norm else "lr"
    if statistic == "sum":
        return statistic, projections.sum(axis=0)
    if statistic == "lda":
        return statistic, _fisher_weights(projections) @ projections
    if claim is None or max_grad_norm is None:
        raise ValueError(f"statistic={statistic!r} needs a claimed DP-SGD event and the trainer's "
                         "max_grad_norm.")
    q, sigma, _ = claim
    c = float(max_grad_norm)
    if statistic == "lr":
        return statistic, _log_lr(projections, q=q, c=c, std=sigma * c)
    if q >= 1.0:
        raise ValueError("statistic='lr-centered' needs a claimed sampling rate q < 1.")
    # The other examples' share of x_tk drifts slowly; a canary sampled with rate q < 1 is in a
    # minority of steps, so its median over steps estimates that share when the noise is small
    # next to C. The noise scale is then taken from the projections, not from the claim.
    x = projections - np.median(projections, axis=0, keepdims=True)
    return statistic, _log_lr(x, q=q, c=c, std=max(_spread(projections), 1e-12 * c))


def claim_statistic(event: DpEvent, max_grad_norm: float | None) -> str:
    """What ``"auto"`` means when the choice may depend on the claim only, not on the output:
    in a multi-run audit every run must use the same score, fixed before any run is seen."""
    claim = claimed_dpsgd(event)
    if claim is None or max_grad_norm is None or claim[0] >= 1.0:
        return "sum"
    return "lr"


def _spread(x: np.ndarray) -> float:
    """Noise scale of the projections: normalised median absolute deviation from each
    canary's median, pooled over steps and canaries (a sampled canary moves few of them)."""
    return 1.4826 * float(np.median(np.abs(x - np.median(x, axis=0, keepdims=True))))


def _fisher_weights(x: np.ndarray) -> np.ndarray:
    """Weights over steps ``(S + lam I)^-1 1``, with S the covariance of the steps' projections
    pooled over all canaries and a ridge ``lam = (T/m) tr(S)/T`` that matters only when m is
    not much larger than T.

    Fisher's discriminant of "IN" (mean C per step) against "OUT" (mean 0) under a common
    covariance: pooling over canaries of both kinds adds ``(C^2/4) 1 1^T`` to that
    covariance, which leaves the direction ``S^-1 1`` unchanged (Sherman-Morrison), so
    the weights need no membership.
    """
    steps, m = x.shape
    if steps > _MAX_LDA_STEPS:  # weights per block of consecutive steps, shared inside the block
        blocks = np.array_split(np.arange(steps), _MAX_LDA_STEPS)
        w = _fisher_weights(np.stack([x[b].sum(axis=0) for b in blocks]))
        return np.concatenate([np.full(b.size, wb) for b, wb in zip(blocks, w)])
    cov = np.atleast_2d(np.cov(x)) if m > 1 else np.eye(steps)
    ridge = (steps / m) * float(np.trace(cov)) / steps
    return np.linalg.solve(cov + ridge * np.eye(steps), np.ones(steps))


def _log_lr(x: np.ndarray, *, q: float, c: float, std: float) -> np.ndarray:
    # Log-likelihood ratio of N(C, std^2) against N(0, std^2) at x, mixed with probability q
    # (Poisson sampling): log(1 - q + q e^z), z = (C x - C^2/2) / std^2, summed over steps.
    z = (c * x - 0.5 * c * c) / std**2
    if q >= 1.0:
        return z.sum(axis=0)
    return np.logaddexp(math.log1p(-q), math.log(q) + z).sum(axis=0)


def sample_canaries(ids: np.ndarray, rate: float, generator: torch.Generator) -> np.ndarray:
    """Poisson sampling of canaries: each of `ids` joins the step independently with probability `rate`."""
    if ids.size == 0:
        return ids
    u = torch.rand(ids.size, generator=generator, dtype=torch.float64).numpy()
    return ids[u < rate]


def _locate(flat: np.ndarray, sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Parameter index and offset inside it of each flat coordinate."""
    ends = np.cumsum(sizes)
    which = np.searchsorted(ends, flat, side="right")
    starts = ends - np.asarray(sizes)
    return which, flat - starts[which]


# --------------------------------------------------------------------------------------
# privaudit's engine: canaries enter clip_and_accumulate, then the engine adds its noise.


class _SparseCanaryGrads:
    """Canary gradients on one unit's parameters, kept sparse (the engine's UnitGrads interface)."""

    def __init__(self, params: Mapping[str, nn.Parameter],
                 entries: Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], batch: int) -> None:
        self.params = dict(params)
        self._entries = dict(entries)  # name -> (row, offset inside the parameter, value)
        self._batch = batch

    def sq_norms(self) -> dict[str, torch.Tensor]:
        out = {}
        for n, (row, _, val) in self._entries.items():
            out[n] = torch.zeros(self._batch, dtype=val.dtype, device=val.device).index_add_(0, row, val * val)
        return out

    def weighted_sums(self, coef: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for n, (row, off, val) in self._entries.items():
            p = self.params[n]
            flat = torch.zeros(p.numel(), dtype=val.dtype, device=val.device)
            out[n] = flat.index_add_(0, off, coef[n].to(val.dtype)[row] * val).view_as(p)
        return out


class CanaryInjector:
    """Puts gradient canaries into privaudit's DP-SGD through the trainer's public hooks.

    Before the engine adds its noise (`add_sum_hook`), the canaries sampled for the step
    (each with probability q, if included) go through the engine's `clip_and_accumulate`
    with the step's clipping norm and mode, as if they were rows of the batch; after it
    (`add_release_hook`), the noisy sum is recorded for the white-box auditor.
    """

    def __init__(self, *, trainer: Any, canaries: GradientCanaries | None, generator: torch.Generator,
                 record: bool) -> None:
        from privaudit.training._clipping import clip_and_accumulate

        self._clip = clip_and_accumulate
        self._cfg = trainer.config
        if self._cfg is not None and self._cfg.adaptive is not None:
            # Canaries would join the clipped sum but not the noisy unclipped count that adaptive clipping
            # releases: a weaker mechanism than canaries as rows of the batch.
            raise ValueError("Gradient canaries need a fixed clipping norm (the trainer uses adaptive clipping).")
        self._params: list[nn.Parameter] = trainer.parameters
        self._units = trainer.clipping_units
        self._canaries = canaries
        self._gen = generator
        self.updates: list[np.ndarray] | None = [] if record else None
        sizes = [p.numel() for p in self._params]
        self._sizes = sizes
        owner = {}
        for ui, unit in enumerate(self._units):
            for name, p in unit.params.items():
                owner[id(p)] = (ui, name)
        missing = [i for i, p in enumerate(self._params) if id(p) not in owner]
        if missing:
            raise RuntimeError(f"Trainable parameters {missing} belong to no clipping unit of the engine.")
        self._owner = [owner[id(p)] for p in self._params]
        if canaries is not None:
            self._coords, self._values = canaries.directions(sum(sizes))
        self._removers = [trainer.add_sum_hook(self._before_noise), trainer.add_release_hook(self._after_noise)]

    def remove(self) -> None:
        """Detaches the hooks from the trainer."""
        for remove in self._removers:
            remove()
        self._removers = []

    def _before_noise(self, tensors: list[torch.Tensor], clipping_norm: float) -> None:
        if self._canaries is not None:
            ids = sample_canaries(self._canaries.included, self._cfg.sampling_rate, self._gen)
            if ids.size:
                self._add_canaries(ids, tensors, clipping_norm)

    def _after_noise(self, tensors: list[torch.Tensor]) -> None:
        if self.updates is not None:
            self.updates.append(flat_update(tensors))

    def _add_canaries(self, ids: np.ndarray, tensors: list[torch.Tensor], clipping_norm: float) -> None:
        assert self._canaries is not None
        coords, values = self._coords[ids], self._values[ids] * self._canaries.norm
        rows = np.repeat(np.arange(ids.size), coords.shape[1])
        which, offset = _locate(coords.ravel(), self._sizes)
        device, dtype = tensors[0].device, tensors[0].dtype
        per_unit: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        vals = values.ravel()
        for pi in np.unique(which):
            sel = which == pi
            ui, name = self._owner[pi]
            per_unit.setdefault(ui, {})[name] = (
                torch.as_tensor(rows[sel], device=device), torch.as_tensor(offset[sel], device=device),
                torch.as_tensor(vals[sel], dtype=dtype, device=device))
        grads = [_SparseCanaryGrads(self._units[ui].params, ent, ids.size) for ui, ent in per_unit.items()]
        out = dict(zip(self._params, tensors))
        self._clip(grads, max_grad_norm=clipping_norm, clipping=self._cfg.clipping,
                   num_layers=len(self._units), mask=torch.ones(ids.size, dtype=torch.bool, device=device),
                   out=out)


# --------------------------------------------------------------------------------------
# Opacus: canary rows are appended to every parameter's per-sample gradients before step().


def append_opacus_canaries(params: Sequence[nn.Parameter], canaries: GradientCanaries, ids: np.ndarray) -> None:
    """Appends the gradients of canaries `ids` as extra rows of each ``p.grad_sample``.

    Opacus' `DPOptimizer.step()` then clips them with the batch, sums, and adds its noise.
    """
    sizes = [p.numel() for p in params]
    dense = torch.from_numpy(canaries.dense(ids, sum(sizes)))
    start = 0
    for p, k in zip(params, sizes):
        rows = dense[:, start:start + k].reshape(ids.size, *p.shape).to(p.device, p.dtype)
        start += k
        gs = getattr(p, "grad_sample", None)
        if gs is None:
            p.grad_sample = rows
        elif isinstance(gs, list):
            p.grad_sample = [*gs, rows]
        else:
            p.grad_sample = torch.cat([gs, rows])
