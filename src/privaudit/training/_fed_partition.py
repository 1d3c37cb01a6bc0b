"""Splitting a training set among federated clients: IID, Dirichlet label skew, or by owner.

A `Partition` maps each client to the row positions (in the training part of a
`Dataset`) it holds. Every client holds at least one row, no row belongs to two
clients, and together the clients hold every row. Partitions are seeded and
go into the run record (`federation.json`), so the same arguments give the
same clients on every machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import _validate

__all__ = ["PARTITION_METHODS", "Partition", "partition_by_owner", "partition_dirichlet", "partition_iid"]

PARTITION_METHODS = ("iid", "dirichlet", "owner")


@dataclasses.dataclass(frozen=True, eq=False)
class Partition:
    """Which training rows each client holds.

    Attributes:
        clients: `clients[k]` is a sorted int64 array of row positions held by client k.
        method: 'iid', 'dirichlet' or 'owner'.
        seed: the seed that drew it (None for 'owner', which is not random).
        alpha: the Dirichlet concentration ('dirichlet' only).
        owners: `owners[k]` names client k ('owner' only).
    """

    clients: tuple[np.ndarray, ...]
    method: str
    seed: int | None = None
    alpha: float | None = None
    owners: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        clients = tuple(np.sort(np.asarray(c, dtype=np.int64)) for c in self.clients)
        object.__setattr__(self, "clients", clients)
        if self.method not in PARTITION_METHODS:
            raise ValueError(f"Expected method={self.method!r} in {list(PARTITION_METHODS)}.")
        if not clients:
            raise ValueError("Expected at least one client.")
        empty = [k for k, c in enumerate(clients) if c.size == 0]
        if empty:
            raise ValueError(f"Every client must hold at least one example; clients {empty[:10]} hold none.")
        rows = np.concatenate(clients)
        n = rows.size
        if rows.min() < 0 or rows.max() >= n or np.bincount(rows, minlength=n).max() > 1:
            raise ValueError("Expected the clients' rows to be disjoint and to cover range(num_examples).")
        if self.owners and len(self.owners) != len(clients):
            raise ValueError(f"Expected one owner name per client, got {len(self.owners)} for {len(clients)}.")

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    @property
    def num_examples(self) -> int:
        return int(sum(c.size for c in self.clients))

    @property
    def sizes(self) -> np.ndarray:
        """Examples per client (int64, one entry per client)."""
        return np.array([c.size for c in self.clients], dtype=np.int64)

    def client_of(self) -> np.ndarray:
        """`client_of()[row]` is the client holding `row`."""
        out = np.empty(self.num_examples, dtype=np.int64)
        for k, c in enumerate(self.clients):
            out[c] = k
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (for federation.json); `from_dict` inverts it."""
        return {"method": self.method, "seed": self.seed, "alpha": self.alpha, "num_clients": self.num_clients,
                "sizes": self.sizes.tolist(), "owners": list(self.owners),
                "clients": [c.tolist() for c in self.clients]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Partition:
        try:
            return cls(clients=tuple(np.asarray(c, dtype=np.int64) for c in data["clients"]),
                       method=str(data["method"]), seed=data.get("seed"), alpha=data.get("alpha"),
                       owners=tuple(data.get("owners") or ()))
        except KeyError as exc:
            raise ValueError(f"Partition record lacks the field {exc.args[0]!r}.") from None


def _check_clients(num_clients: int, num_examples: int) -> None:
    _validate.integer(minimum=1, num_clients=num_clients)
    if num_clients > num_examples:
        raise ValueError(f"Expected num_clients={num_clients} in [1, {num_examples}] (the number of training "
                         "examples): every client must hold at least one example.")


def partition_iid(num_examples: int, *, num_clients: int, seed: int) -> Partition:
    """A uniformly random split into `num_clients` parts whose sizes differ by at most one.

    >>> p = partition_iid(10, num_clients=3, seed=0)
    >>> p.sizes.tolist()
    [4, 3, 3]
    """
    _validate.integer(minimum=1, num_examples=num_examples)
    _check_clients(num_clients, num_examples)
    _validate.integer(minimum=0, seed=seed)
    perm = np.random.default_rng(seed).permutation(num_examples)
    return Partition(clients=tuple(np.array_split(perm, num_clients)), method="iid", seed=int(seed))


def partition_dirichlet(labels: np.ndarray, *, num_clients: int, alpha: float, seed: int) -> Partition:
    """Label skew: for each class, its examples are shared among the clients in proportions
    drawn from Dirichlet(alpha, ..., alpha) (Hsu, Qi, Brown 2019, arXiv 1909.06335, Sec. 3).

    Small `alpha` (0.1) gives clients that hold one or two classes; large `alpha`
    (100) approaches the IID split. A client left empty by the draw receives one
    random example from the currently largest client (repeated until none is
    empty), which always terminates because `num_clients <= len(labels)`; this
    nudges the drawn proportions slightly when `alpha` is small and clients many.

    >>> y = np.repeat(np.arange(3), 20)
    >>> p = partition_dirichlet(y, num_clients=5, alpha=0.5, seed=0)
    >>> (p.num_clients, p.num_examples, bool(p.sizes.min() >= 1))
    (5, 60, True)
    """
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"Expected labels to be a non-empty 1-d array, got shape {y.shape}.")
    _check_clients(num_clients, y.size)
    _validate.positive(alpha=alpha)
    _validate.integer(minimum=0, seed=seed)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        p = rng.dirichlet(np.full(num_clients, float(alpha)))
        if not np.all(np.isfinite(p)):
            raise ValueError(f"Dirichlet draw with alpha={alpha!r} is numerically degenerate; use alpha >= 1e-3.")
        cuts = np.minimum(np.floor(np.cumsum(p)[:-1] * idx.size).astype(np.int64), idx.size)
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k].append(chunk)
    clients = [np.concatenate(p) if p else np.zeros(0, np.int64) for p in parts]
    for k in range(num_clients):
        if clients[k].size == 0:
            donor = int(np.argmax([c.size for c in clients]))
            j = int(rng.integers(clients[donor].size))
            clients[k] = clients[donor][j:j + 1]
            clients[donor] = np.delete(clients[donor], j)
    return Partition(clients=tuple(clients), method="dirichlet", seed=int(seed), alpha=float(alpha))


def partition_by_owner(owners: Sequence[Any] | np.ndarray) -> Partition:
    """One client per distinct owner (a CSV column, `Dataset.owner_train`), in sorted order of the names.

    >>> partition_by_owner(["b", "a", "b"]).clients
    (array([1]), array([0, 2]))
    """
    names = np.asarray(owners).astype(str)
    if names.ndim != 1 or names.size == 0:
        raise ValueError(f"Expected owners to be a non-empty 1-d sequence, got shape {names.shape}.")
    uniq, inverse = np.unique(names, return_inverse=True)
    clients = tuple(np.flatnonzero(inverse == k) for k in range(uniq.size))
    return Partition(clients=clients, method="owner", owners=tuple(str(u) for u in uniq))
