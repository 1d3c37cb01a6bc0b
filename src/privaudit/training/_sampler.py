"""Batch samplers and the split of a logical batch into fixed-shape physical batches.

DP-SGD's accounting (`privaudit.accounting.dpsgd_event`) assumes *Poisson
sampling*: at every step each of the N examples joins the logical batch
independently with probability q, so the batch size is Binomial(N, q) and may
be zero. `PoissonSampler` implements exactly that; any other sampler (shuffling,
fixed-size batches) voids the stated guarantee.

A logical batch of varying size is then cut into physical batches of one fixed
size, the last one padded with a placeholder row and masked out, so the model
only ever sees one input shape (memory stays flat; cuDNN never re-tunes).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from .. import _validate

__all__ = ["PhysicalBatch", "PoissonSampler", "ShuffleSampler", "physical_batches"]


class PoissonSampler:
    """Each example joins each logical batch independently with probability `sampling_rate`.

    Args:
        num_examples: N, the size of the private dataset.
        sampling_rate: q in (0, 1]; the expected batch size is q * N.
        generator: a CPU `torch.Generator`, the only source of randomness.

    Notes:
        The privacy guarantee assumes the batch membership stays secret: whoever
        knows the generator's state (it is in the trainer's checkpoints) knows
        which examples were used at each step.
    """

    kind = "poisson"

    def __init__(self, *, num_examples: int, sampling_rate: float, generator: torch.Generator) -> None:
        _validate.integer(minimum=1, num_examples=num_examples)
        _validate.in_range(0.0, 1.0, lo_open=True, sampling_rate=sampling_rate)
        self.num_examples = int(num_examples)
        self.sampling_rate = float(sampling_rate)
        self.generator = generator

    @property
    def expected_batch_size(self) -> float:
        return self.sampling_rate * self.num_examples

    def sample(self) -> torch.Tensor:
        """Indices (int64, sorted) of the next logical batch; possibly empty."""
        # Independent Bernoulli(q) membership per example (Abadi et al. 2016,
        # arXiv 1607.00133v2, Sec. 3.1 "lots ... sampling each example independently
        # with probability q"); float64 uniforms keep q exact down to ~1e-16.
        u = torch.rand(self.num_examples, generator=self.generator, dtype=torch.float64)
        return torch.nonzero(u < self.sampling_rate, as_tuple=False).flatten()

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, self.kind)
        self.generator.set_state(state["generator"])


class ShuffleSampler:
    """Epochs of a random permutation cut into batches of `batch_size` (the last may be smaller).

    This is the usual non-private data loader (`DataLoader(shuffle=True)`); it
    has no privacy-amplification analysis in privaudit and is used only with
    `no_dp=True`.
    """

    kind = "shuffle"

    def __init__(self, *, num_examples: int, batch_size: int, generator: torch.Generator) -> None:
        _validate.integer(minimum=1, num_examples=num_examples, batch_size=batch_size)
        self.num_examples = int(num_examples)
        self.batch_size = int(batch_size)
        self.generator = generator
        self._perm: torch.Tensor | None = None
        self._pos = 0
        # sample_from's (permutation, values, values[permutation]) for the current epoch.
        self._mapped: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def sample(self) -> torch.Tensor:
        """Indices of the next batch of the current epoch (a new permutation each epoch)."""
        if self._perm is None or self._pos >= self.num_examples:
            self._perm = torch.randperm(self.num_examples, generator=self.generator)
            self._pos = 0
        out = self._perm[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return out

    def sample_from(self, values: torch.Tensor) -> torch.Tensor:
        """`values[self.sample()]`, with each epoch's permutation mapped through `values` once (the batches
        are then slices of it): one indexing per epoch instead of one per batch."""
        batch = self.sample()
        assert self._perm is not None
        cache = self._mapped
        if cache is None or cache[0] is not self._perm or cache[1] is not values:
            cache = self._mapped = (self._perm, values, values[self._perm])
        start = self._pos - self.batch_size
        return cache[2][start : start + batch.numel()]

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "generator": self.generator.get_state(),
            "perm": None if self._perm is None else self._perm.clone(),
            "pos": self._pos,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, self.kind)
        self.generator.set_state(state["generator"])
        self._perm = None if state["perm"] is None else state["perm"].clone()
        self._pos = int(state["pos"])


def _check_kind(state: dict[str, Any], kind: str) -> None:
    if not isinstance(state, dict) or state.get("kind") != kind:
        got = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"Expected a {kind!r} sampler state, got {got!r}.")


class PhysicalBatch:
    """Row indices of one fixed-shape physical batch and the mask of its real rows."""

    __slots__ = ("indices", "mask", "num_real")

    def __init__(self, indices: torch.Tensor, mask: torch.Tensor, num_real: int) -> None:
        self.indices = indices
        self.mask = mask
        self.num_real = num_real


def physical_batches(indices: torch.Tensor, *, physical_batch_size: int,
                     round_to: int | None = None) -> Iterator[PhysicalBatch]:
    """Splits a logical batch into ceil(len / size) physical batches of exactly `size` rows.

    Padding rows point at example 0 and have mask False: the engine gives them
    loss weight 0 and clip factor 0, so they contribute exactly nothing. An
    empty logical batch yields no physical batch (the step still adds noise).

    With `round_to`, the last (partial) batch is padded only up to a multiple of
    `round_to` rows instead of the full size: a few distinct shapes instead of one,
    which costs nothing on CPU and saves the padded rows (on GPU fixed shapes avoid
    re-tuning kernels per shape, so the engine keeps `round_to=None` there).

    >>> [int(b.mask.numel()) for b in physical_batches(torch.arange(21), physical_batch_size=16, round_to=8)]
    [16, 8]
    """
    _validate.integer(minimum=1, physical_batch_size=physical_batch_size)
    if round_to is not None:
        _validate.integer(minimum=1, round_to=round_to)
    n = int(indices.numel())
    for start in range(0, n, physical_batch_size):
        chunk = indices[start : start + physical_batch_size]
        real = int(chunk.numel())
        size = physical_batch_size
        if round_to is not None and real < physical_batch_size:
            size = min(physical_batch_size, -(-real // round_to) * round_to)
        mask = torch.ones(size, dtype=torch.bool)
        if real < size:
            pad = torch.zeros(size - real, dtype=indices.dtype)
            chunk = torch.cat([chunk, pad])
            mask[real:] = False
        yield PhysicalBatch(chunk, mask, real)
