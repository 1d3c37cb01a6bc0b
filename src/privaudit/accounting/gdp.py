"""Placeholder: being written."""
from ._accountant import PrivacyAccountant


class GDPAccountant(PrivacyAccountant):  # pragma: no cover - placeholder
    name = "gdp"

    def _supports_leaf(self, leaf):
        return False

    def _compose_leaf(self, leaf, count):
        raise NotImplementedError

    def _epsilon(self, delta):
        raise NotImplementedError

    def _delta(self, epsilon):
        raise NotImplementedError
