"""Membership-inference attacks and their metrics, as numpy over (signals, membership).

Importing this package never imports torch: the attacks are numpy over
signals computed from logits. The torch parts (shadow models trained side by
side, logits of torch models, attacks on a privaudit run) are loaded on first
use of their names: `ShadowConfig`, `ShadowSet`, `assign_membership`,
`model_logits`, `shadow_seeds`, `stacked_model_logits`, `train_shadows`.
`run_attack` and `evaluate_attacks` are importable without torch and load it
only to attack a run directory.

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

import importlib as _importlib
from typing import Any as _Any

from ._base import MembershipAttack as MembershipAttack
from ._base import NotFittedError as NotFittedError
from ._job import ATTACK_NAMES as ATTACK_NAMES
from ._job import AttackInputs as AttackInputs
from ._job import AttackOptions as AttackOptions
from ._job import AttackReport as AttackReport
from ._job import AttackResult as AttackResult
from ._job import evaluate_attacks as evaluate_attacks
from ._job import run_attack as run_attack
from ._lira import LiraAttack as LiraAttack
from ._lira import LiraFit as LiraFit
from ._lira import LiraOptions as LiraOptions
from ._loss import LossAttack as LossAttack
from ._loss import LossOptions as LossOptions
from ._metrics import AttackMetrics as AttackMetrics
from ._metrics import EmpiricalEpsilon as EmpiricalEpsilon
from ._metrics import RocCurve as RocCurve
from ._metrics import attack_metrics as attack_metrics
from ._metrics import downsample_roc as downsample_roc
from ._metrics import empirical_epsilon as empirical_epsilon
from ._metrics import roc_auc as roc_auc
from ._metrics import roc_curve as roc_curve
from ._metrics import tpr_at_fpr as tpr_at_fpr
from ._plots import plot_roc as plot_roc
from ._rmia import RmiaAttack as RmiaAttack
from ._rmia import RmiaOptions as RmiaOptions
from ._signals import SIGNAL_KINDS as SIGNAL_KINDS
from ._signals import compute_signal as compute_signal
from ._signals import confidence as confidence
from ._signals import cross_entropy_loss as cross_entropy_loss
from ._signals import scaled_logit as scaled_logit

# Names whose modules import torch: loaded on first attribute access (PEP 562).
_LAZY = {
    "ShadowConfig": "._shadows",
    "ShadowSet": "._shadow_cache",
    "assign_membership": "._shadows",
    "model_logits": "._model_signals",
    "shadow_seeds": "._shadows",
    "stacked_model_logits": "._model_signals",
    "train_shadows": "._shadows",
}


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ATTACK_NAMES",
    "AttackInputs",
    "AttackMetrics",
    "AttackOptions",
    "AttackReport",
    "AttackResult",
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
    "ShadowConfig",
    "ShadowSet",
    "assign_membership",
    "attack_metrics",
    "compute_signal",
    "confidence",
    "cross_entropy_loss",
    "downsample_roc",
    "empirical_epsilon",
    "evaluate_attacks",
    "model_logits",
    "plot_roc",
    "roc_auc",
    "roc_curve",
    "run_attack",
    "scaled_logit",
    "shadow_seeds",
    "stacked_model_logits",
    "tpr_at_fpr",
    "train_shadows",
]
