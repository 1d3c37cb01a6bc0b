"""Privacy audits: lower bounds (and estimates) of epsilon from canary outcomes.

Pure numpy/scipy: the statistics here never import torch.

>>> from privaudit.audit import one_run_epsilon
>>> round(one_run_epsilon(m=1000, r=1000, v=1000, delta=0.0, alpha=0.05), 2)
5.81
"""

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
from ._gdp_fit import GdpEstimate as GdpEstimate
from ._gdp_fit import gdp_fit as gdp_fit
from ._one_run import OneRunBound as OneRunBound
from ._one_run import one_run_epsilon as one_run_epsilon
from ._one_run import one_run_epsilon_from_scores as one_run_epsilon_from_scores
from ._one_run import one_run_p_value as one_run_p_value

__all__ = [
    "BayesianEpsilon",
    "Bonferroni",
    "EpsilonBound",
    "Explicit",
    "GdpEstimate",
    "OneRunBound",
    "Split",
    "ThresholdStrategy",
    "bayesian_epsilon_interval",
    "clopper_pearson_epsilon",
    "epsilon_from_rates",
    "epsilon_lower_bound",
    "gdp_fit",
    "one_run_epsilon",
    "one_run_epsilon_from_scores",
    "one_run_p_value",
]
