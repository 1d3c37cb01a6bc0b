"""Placeholder: being written."""
from ._accountant import PrivacyAccountant


class PLDAccountant(PrivacyAccountant):  # pragma: no cover - placeholder
    name = "pld"

    def _supports_leaf(self, leaf):
        return False

    def _compose_leaf(self, leaf, count):
        raise NotImplementedError

    def _epsilon(self, delta):
        raise NotImplementedError

    def _delta(self, epsilon):
        raise NotImplementedError
