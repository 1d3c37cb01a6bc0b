"""Membership-inference attacks and their metrics, as numpy over (signals, membership).

This package never imports torch: signals come from logits already computed,
and shadow-model training lives elsewhere.

>>> import numpy as np
>>> from privaudit.attacks import LiraAttack, attack_metrics
>>> rng = np.random.default_rng(0)
>>> k, n = 16, 2000
>>> difficulty = rng.normal(0, 3, size=n)                 # per-example hardness
>>> shadow_in = rng.random((k, n)) < 0.5
>>> shadow_phi = difficulty + 1.0 * shadow_in + rng.normal(size=(k, n))
>>> target_in = rng.random(n) < 0.5
>>> target_phi = difficulty + 1.0 * target_in + rng.normal(size=n)
>>> scores = LiraAttack(online=True).fit(shadow_signals=shadow_phi,
...                                      shadow_membership=shadow_in).score(target_phi)
>>> m = attack_metrics(scores=scores, membership=target_in)
>>> 0.65 < m.auc < 0.8, m.tpr_at_fpr[0.001] is None
(True, True)
"""

from ._base import MembershipAttack as MembershipAttack
from ._base import NotFittedError as NotFittedError
from ._lira import LiraAttack as LiraAttack
from ._lira import LiraFit as LiraFit
from ._lira import LiraOptions as LiraOptions
from ._loss import LossAttack as LossAttack
from ._loss import LossOptions as LossOptions
from ._metrics import AttackMetrics as AttackMetrics
from ._metrics import EmpiricalEpsilon as EmpiricalEpsilon
from ._metrics import RocCurve as RocCurve
from ._metrics import attack_metrics as attack_metrics
from ._metrics import empirical_epsilon as empirical_epsilon
from ._metrics import roc_auc as roc_auc
from ._metrics import roc_curve as roc_curve
from ._metrics import tpr_at_fpr as tpr_at_fpr
from ._rmia import RmiaAttack as RmiaAttack
from ._rmia import RmiaOptions as RmiaOptions
from ._signals import SIGNAL_KINDS as SIGNAL_KINDS
from ._signals import compute_signal as compute_signal
from ._signals import confidence as confidence
from ._signals import cross_entropy_loss as cross_entropy_loss
from ._signals import scaled_logit as scaled_logit

__all__ = [
    "AttackMetrics",
    "EmpiricalEpsilon",
    "LiraAttack",
    "LiraFit",
    "LiraOptions",
    "LossAttack",
    "LossOptions",
    "MembershipAttack",
    "NotFittedError",
    "RmiaAttack",
    "RmiaOptions",
    "RocCurve",
    "SIGNAL_KINDS",
    "attack_metrics",
    "compute_signal",
    "confidence",
    "cross_entropy_loss",
    "empirical_epsilon",
    "roc_auc",
    "roc_curve",
    "scaled_logit",
    "tpr_at_fpr",
]
