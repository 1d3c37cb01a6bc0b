"""The LOSS attack: one global threshold on the target model's loss."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import numpy.typing as npt

from ._base import MembershipAttack, NotFittedError, as_real_array, check_shadow_inputs
from ._metrics import roc_curve

__all__ = ["LossAttack", "LossOptions"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossOptions:
    """Which signal the attack thresholds.

    Attributes:
        signal: "loss" (scored as -loss: low loss = member), or "confidence" /
            "scaled_logit" (scored as given: high = member).
    """

    signal: Literal["loss", "confidence", "scaled_logit"] = "loss"

    def __post_init__(self) -> None:
        if self.signal not in ("loss", "confidence", "scaled_logit"):
            raise ValueError(f"Expected signal={self.signal!r} in ('loss', 'confidence', 'scaled_logit').")


class LossAttack(MembershipAttack):
    """Yeom et al. 2018 (arXiv 1709.01604v5), the loss-threshold adversary: predict
    "member" when the target's loss is below one threshold shared by all examples.

    `score` needs no fit: it is -loss (or the signal itself for confidence and
    scaled logits), averaged over augmentations when given (n, A). `fit` is
    optional and only sets `threshold`, the global score threshold with the
    best balanced accuracy over all (shadow model, example) pairs, for `predict`.
    """

    def __init__(self, *, signal: Literal["loss", "confidence", "scaled_logit"] = "loss") -> None:
        self.options = LossOptions(signal=signal)
        self._threshold: float | None = None

    def _to_score(self, signals: np.ndarray) -> np.ndarray:
        return -signals if self.options.signal == "loss" else signals

    def fit(self, *, shadow_signals: npt.ArrayLike, shadow_membership: npt.ArrayLike) -> LossAttack:
        """Chooses the global threshold with the best balanced accuracy on shadow models."""
        signals, membership = check_shadow_inputs(shadow_signals, shadow_membership)
        if membership.all() or not membership.any():
            raise ValueError("Expected shadow_membership to contain both members and non-members.")
        scores = self._to_score(signals.mean(axis=2)).ravel()
        roc = roc_curve(scores=scores, membership=membership.ravel())
        best = int(np.argmax(roc.tpr - roc.fpr))
        self._threshold = float(roc.thresholds[best])
        return self

    @property
    def threshold(self) -> float:
        """Score threshold chosen by `fit`: `predict` says member where score >= threshold."""
        if self._threshold is None:
            raise NotFittedError("LossAttack.threshold needs fit(...) on shadow models first.")
        return self._threshold

    def score(self, target_signals: npt.ArrayLike) -> np.ndarray:
        """Returns -loss (or the signal) per example, shape (n,)."""
        signals = as_real_array("target_signals", target_signals, ndims=(1, 2))
        if signals.ndim == 2:
            signals = signals.mean(axis=1)
        return self._to_score(signals)

    def predict(self, target_signals: npt.ArrayLike) -> np.ndarray:
        """Bool (n,): score >= the fitted global threshold."""
        return self.score(target_signals) >= self.threshold
