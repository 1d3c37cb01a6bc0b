"""Privacy accounting: events describe what ran, accountants turn them into (epsilon, delta).

numpy/scipy only: this package never imports torch.

>>> from privaudit.accounting import PLDAccountant, dpsgd_event
>>> acct = PLDAccountant().compose(dpsgd_event(1.0, 1000, sampling_rate=0.01))
>>> round(acct.get_epsilon(1e-5), 2)
1.83
"""

from ._accountant import NeighboringRelation as NeighboringRelation
from ._accountant import PrivacyAccountant as PrivacyAccountant
from ._accountant import UnsupportedEventError as UnsupportedEventError
from ._calibration import calibrate_noise_multiplier as calibrate_noise_multiplier
from ._calibration import epsilon_for as epsilon_for
from ._calibration import sampling_rate_and_steps as sampling_rate_and_steps
from ._events import ComposedEvent as ComposedEvent
from ._events import DpEvent as DpEvent
from ._events import GaussianEvent as GaussianEvent
from ._events import LaplaceEvent as LaplaceEvent
from ._events import NoOpEvent as NoOpEvent
from ._events import PoissonSampledEvent as PoissonSampledEvent
from ._events import SampledWithoutReplacementEvent as SampledWithoutReplacementEvent
from ._events import SelfComposedEvent as SelfComposedEvent
from ._events import dpsgd_event as dpsgd_event
from ._events import event_from_dict as event_from_dict
from ._events import flatten_event as flatten_event
from ._ledger import LedgerEntry as LedgerEntry
from ._ledger import PrivacyLedger as PrivacyLedger
from ._registry import ACCOUNTANT_NAMES as ACCOUNTANT_NAMES
from ._registry import make_accountant as make_accountant
from .gdp import GDPAccountant as GDPAccountant
from .pld import PLDAccountant as PLDAccountant
from .rdp import RDPAccountant as RDPAccountant

__all__ = [
    "ACCOUNTANT_NAMES",
    "ComposedEvent",
    "DpEvent",
    "GDPAccountant",
    "GaussianEvent",
    "LaplaceEvent",
    "LedgerEntry",
    "NeighboringRelation",
    "NoOpEvent",
    "PLDAccountant",
    "PoissonSampledEvent",
    "PrivacyAccountant",
    "PrivacyLedger",
    "RDPAccountant",
    "SampledWithoutReplacementEvent",
    "SelfComposedEvent",
    "UnsupportedEventError",
    "calibrate_noise_multiplier",
    "dpsgd_event",
    "epsilon_for",
    "event_from_dict",
    "flatten_event",
    "make_accountant",
    "sampling_rate_and_steps",
]
