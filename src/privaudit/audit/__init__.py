"""Privacy audits: lower bounds (and estimates) of epsilon from canary outcomes.

Auditing a training procedure (`audit`; `privaudit audit` on the command line)::

    result = audit("privaudit", epsilon=2.0, delta=1e-5, canaries=1000, threat="whitebox")
    result.verdict, result.epsilon_claimed, result.epsilon_lower, result.gdp

Your own training is audited the same way: pass a function
``train(dataset: AuditDataset, *, epsilon, delta, seed, record_updates) -> TrainerOutput``
(the `Trainer` protocol), or ``"module:function"``. It trains on ``dataset.x, dataset.y``,
adds the included ``dataset.gradient_canaries`` to its clipped sums (white-box), returns
the model, the DP event it claims, and, when ``record_updates`` is True, every step's
noisy clipped sum.

The statistics, the canaries and `audit` itself import without torch; the
trainers (`BuiltinTrainer`, `TrainingOptions`, `load_trainer`) load torch on
first use, through the module's `__getattr__`.

A one-run audit of a DP-FedAvg run, with the one-shot estimate of Andrew et al. 2023::

    est = fed_oneshot_estimate(FederatedSettings(dp="client", ...), canaries=100)
    est.epsilon_claimed, est.epsilon_lower, est.verdict  # a rigorous lower bound at confidence 1 - alpha
    est.epsilon_estimate  # an estimate, not a bound

>>> from privaudit.audit import one_run_epsilon
>>> round(one_run_epsilon(m=1000, r=1000, v=1000, delta=0.0, alpha=0.05), 2)
5.81
"""

from typing import Any as _Any

from ._auditor import THREAT_MODELS as THREAT_MODELS
from ._auditor import AuditResult as AuditResult
from ._auditor import audit as audit
from ._auditor import one_run_two_sided as one_run_two_sided
from ._auditor import write_audit as write_audit
from ._bayes import BayesianEpsilon as BayesianEpsilon
from ._bayes import bayesian_epsilon_interval as bayesian_epsilon_interval
from ._bounds import Bonferroni as Bonferroni
from ._bounds import EpsilonBound as EpsilonBound
from ._bounds import Explicit as Explicit
from ._bounds import Split as Split
from ._bounds import ThresholdStrategy as ThresholdStrategy
from ._bounds import clopper_pearson_epsilon as clopper_pearson_epsilon
from ._bounds import epsilon_from_rates as epsilon_from_rates
from ._bounds import epsilon_lower_bound as epsilon_lower_bound
from ._canaries import AuditDataset as AuditDataset
from ._canaries import GradientCanaries as GradientCanaries
from ._canaries import InputCanaries as InputCanaries
from ._canaries import Trainer as Trainer
from ._canaries import TrainerOutput as TrainerOutput
from ._canaries import draw_membership as draw_membership
from ._canaries import make_input_canaries as make_input_canaries
from ._fed_oneshot import FedOneShotEstimate as FedOneShotEstimate
from ._fed_oneshot import fed_oneshot_estimate as fed_oneshot_estimate
from ._fed_oneshot import gaussian_pair_epsilon as gaussian_pair_epsilon
from ._fed_oneshot import write_fed_oneshot as write_fed_oneshot
from ._gdp_fit import GdpEstimate as GdpEstimate
from ._gdp_fit import gdp_fit as gdp_fit
from ._one_run import OneRunBound as OneRunBound
from ._one_run import one_run_epsilon as one_run_epsilon
from ._one_run import one_run_epsilon_from_scores as one_run_epsilon_from_scores
from ._one_run import one_run_p_value as one_run_p_value

__all__ = [
    "AuditDataset",
    "AuditResult",
    "BUILTIN_TRAINERS",
    "BayesianEpsilon",
    "Bonferroni",
    "BuiltinTrainer",
    "EpsilonBound",
    "Explicit",
    "FedOneShotEstimate",
    "GdpEstimate",
    "GradientCanaries",
    "InputCanaries",
    "OneRunBound",
    "Split",
    "THREAT_MODELS",
    "ThresholdStrategy",
    "Trainer",
    "TrainerOutput",
    "TrainingOptions",
    "audit",
    "bayesian_epsilon_interval",
    "clopper_pearson_epsilon",
    "draw_membership",
    "epsilon_from_rates",
    "epsilon_lower_bound",
    "fed_oneshot_estimate",
    "gaussian_pair_epsilon",
    "gdp_fit",
    "load_trainer",
    "make_input_canaries",
    "one_run_epsilon",
    "one_run_epsilon_from_scores",
    "one_run_p_value",
    "one_run_two_sided",
    "write_audit",
    "write_fed_oneshot",
]

#: Names served by `__getattr__` from `._trainers`, which imports torch.
_LAZY = ("BUILTIN_TRAINERS", "BuiltinTrainer", "TrainingOptions", "load_trainer")


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        from . import _trainers

        value = getattr(_trainers, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
