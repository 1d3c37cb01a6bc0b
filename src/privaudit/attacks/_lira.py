"""LiRA: per-example Gaussian likelihood-ratio test over shadow models.

Carlini, Chien, Nasr, Song, Terzis, Tramer 2022, "Membership Inference Attacks
From First Principles" (arXiv 2112.03570v2), Algorithm 1. The signal is the
scaled logit phi (see `scaled_logit`), one column per query augmentation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
from scipy.stats import norm

from ._base import MembershipAttack, NotFittedError, check_shadow_inputs, check_target_signals

__all__ = ["LiraAttack", "LiraFit", "LiraOptions"]

# Variances are floored here so that a constant signal (identical phi in every
# shadow model) gives a very sharp but finite Gaussian rather than 0/0.
_MIN_VARIANCE = 1e-12


@dataclasses.dataclass(frozen=True, kw_only=True)
class LiraOptions:
    """Attributes:
    online: compare the IN and OUT Gaussians (needs shadows trained on each
        target example); offline: a one-sided test against OUT only.
    fixed_variance: use one variance per side (IN, OUT) pooled across all
        examples (separately per augmentation) instead of per-example
        variances; better with few shadow models.
    """

    online: bool = True
    fixed_variance: bool = False

    def __post_init__(self) -> None:
        for name in ("online", "fixed_variance"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Expected {name}={getattr(self, name)!r} to be a bool.")


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class LiraFit:
    """The Gaussians LiRA fitted, after fallbacks (what `score` uses).

    Attributes:
        mu_in, var_in, mu_out, var_out: (n, A) means and variances of phi.
        n_in, n_out: (n,) number of shadow models that had each example IN / OUT.
        pooled_var_in, pooled_var_out: (A,) within-example variance pooled over
            examples, per augmentation: the sum of squared deviations from each
            example's own mean divided by the sum of (count - 1); None where no
            example had two shadows on that side.
        gap: (A,) mean of mu_in - mu_out over examples with both IN and OUT
            shadows (NaN where there are none), used for the missing side.
    """

    mu_in: np.ndarray
    var_in: np.ndarray
    mu_out: np.ndarray
    var_out: np.ndarray
    n_in: np.ndarray
    n_out: np.ndarray
    pooled_var_in: np.ndarray | None
    pooled_var_out: np.ndarray | None
    gap: np.ndarray


def _side_moments(signals: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-example count (n,), mean (n, A) and sum of squared deviations (n, A) over masked shadows."""
    count = mask.sum(axis=0)
    w = mask[:, :, None].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (w * signals).sum(axis=0) / count[:, None]
    # Two-pass sum of squares (deviations from the example's own mean) keeps precision for large phi.
    dev = np.where(w > 0, signals - np.nan_to_num(mean)[None], 0.0)
    ss = (dev * dev).sum(axis=0)
    return count, mean, ss


def _pooled(count: np.ndarray, ss: np.ndarray) -> np.ndarray | None:
    """(A,) pooled within-example variance, or None when no example has two observations."""
    dof = np.maximum(count - 1, 0).sum()
    return ss.sum(axis=0) / dof if dof > 0 else None


def _fit_gaussians(signals: np.ndarray, membership: np.ndarray, *, fixed_variance: bool) -> LiraFit:
    """Fits the IN/OUT Gaussians with the documented fallbacks; signals (K, n, A), membership (K, n).

    Fallbacks, for examples that lack shadows on one side:
      * mean: an example with no IN (OUT) shadows gets mu_in = mu_out + gap
        (mu_out = mu_in - gap), where gap is the average IN-minus-OUT shift over
        the examples that have both, so it keeps its own per-example difficulty;
      * variance: an example with fewer than two shadows on a side (and every
        example when `fixed_variance`) uses that side's pooled variance, or the
        other side's pooled variance when that side has none.
    """
    n_in, mu_in, ss_in = _side_moments(signals, membership)
    n_out, mu_out, ss_out = _side_moments(signals, ~membership)
    pooled_in, pooled_out = _pooled(n_in, ss_in), _pooled(n_out, ss_out)
    if pooled_in is None and pooled_out is None:
        raise ValueError(
            "Expected shadow_membership to put some example in at least two shadow models on the same side "
            "(IN or OUT): no variance can be estimated."
        )
    pooled_in_or = pooled_in if pooled_in is not None else pooled_out
    pooled_out_or = pooled_out if pooled_out is not None else pooled_in

    both = (n_in > 0) & (n_out > 0)
    gap = (mu_in[both] - mu_out[both]).mean(axis=0) if both.any() else np.full(signals.shape[2], np.nan)
    missing_in, missing_out = n_in == 0, n_out == 0
    if (missing_in.any() or missing_out.any()) and not both.any():
        raise ValueError(
            "Expected shadow_membership to have some example both IN and OUT of shadow models: "
            f"{int(missing_in.sum())} example(s) have no IN and {int(missing_out.sum())} no OUT shadows, "
            "and with no example having both there is no IN-OUT shift to fall back on."
        )
    mu_in = np.where(missing_in[:, None], mu_out + gap, mu_in)
    mu_out = np.where(missing_out[:, None], mu_in - gap, mu_out)

    # Algorithm 1 fits sigma^2 = var(phi) per example. The paper's fixed-variance variant (for few
    # shadow models) uses one global variance instead: here the pooled within-example variance, so the
    # spread of per-example means (example difficulty) does not inflate it.
    with np.errstate(invalid="ignore", divide="ignore"):
        var_in = ss_in / (n_in[:, None] - 1)
        var_out = ss_out / (n_out[:, None] - 1)
    var_in = np.where(fixed_variance | (n_in[:, None] < 2), pooled_in_or, var_in)
    var_out = np.where(fixed_variance | (n_out[:, None] < 2), pooled_out_or, var_out)
    return LiraFit(
        mu_in=mu_in,
        var_in=np.maximum(var_in, _MIN_VARIANCE),
        mu_out=mu_out,
        var_out=np.maximum(var_out, _MIN_VARIANCE),
        n_in=n_in,
        n_out=n_out,
        pooled_var_in=pooled_in,
        pooled_var_out=pooled_out,
        gap=gap,
    )


class LiraAttack(MembershipAttack):
    """Likelihood-ratio attack of Carlini et al. 2022 (arXiv 2112.03570v2), Algorithm 1.

    `fit` takes the scaled logits phi of K shadow models, (K, n) or (K, n, A),
    and which examples each was trained on; `score` takes the target model's
    phi, (n,) or (n, A). With A augmentations the per-augmentation scores are
    averaged, as the paper does.

    Scores (higher = more likely member):
      * online: log N(phi; mu_in, var_in) - log N(phi; mu_out, var_out);
      * offline: -log Pr[Z >= phi] with Z ~ N(mu_out, var_out) (`scipy.stats.norm.logsf`),
        i.e. minus the log p-value of the one-sided test against OUT. For one query
        this orders examples exactly as the paper's 1 - Pr[Z > phi]; logsf keeps
        resolution in the upper tail where the low-FPR decisions are made.

    Examples with no IN (or no OUT) shadows fall back as described in
    `_fit_gaussians`; `fitted.n_in` / `fitted.n_out` say which ones did.
    """

    def __init__(self, *, online: bool = True, fixed_variance: bool = False) -> None:
        self.options = LiraOptions(online=online, fixed_variance=fixed_variance)
        self._fit: LiraFit | None = None

    @property
    def fitted(self) -> LiraFit:
        """The fitted Gaussians."""
        if self._fit is None:
            raise NotFittedError("LiraAttack needs fit(...) on shadow models first.")
        return self._fit

    def fit(self, *, shadow_signals: npt.ArrayLike, shadow_membership: npt.ArrayLike) -> LiraAttack:
        """Fits per-example IN/OUT Gaussians to shadow models' phi."""
        signals, membership = check_shadow_inputs(shadow_signals, shadow_membership)
        if self.options.online and not membership.any():
            raise ValueError(
                "Expected shadow_membership to have IN entries: online LiRA needs them (use online=False)."
            )
        if not self.options.online and membership.all():
            raise ValueError("Expected shadow_membership to have OUT entries: offline LiRA needs them.")
        self._fit = _fit_gaussians(signals, membership, fixed_variance=self.options.fixed_variance)
        return self

    def score(self, target_signals: npt.ArrayLike) -> np.ndarray:
        """Returns the LiRA score per example, shape (n,)."""
        fit = self.fitted
        phi = check_target_signals(target_signals, n=fit.mu_in.shape[0], augmentations=fit.mu_in.shape[1])
        if self.options.online:
            # Algorithm 1, online: Lambda = p(phi | N(mu_in, var_in)) / p(phi | N(mu_out, var_out)), in logs;
            # the 1/sqrt(2 pi) factors cancel.
            log_in = -0.5 * (phi - fit.mu_in) ** 2 / fit.var_in - 0.5 * np.log(fit.var_in)
            log_out = -0.5 * (phi - fit.mu_out) ** 2 / fit.var_out - 0.5 * np.log(fit.var_out)
            per_query = log_in - log_out
        else:
            # Algorithm 1, offline: one-sided test against N(mu_out, var_out).
            per_query = -norm.logsf((phi - fit.mu_out) / np.sqrt(fit.var_out))
        return per_query.mean(axis=1)
