"""Seeded randomness for DP-SGD: the Gaussian noise source and the generators behind it."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .. import _validate

__all__ = ["GaussianNoise", "RngRecord", "make_generators"]

_SEED_BITS = 63


@dataclasses.dataclass(frozen=True)
class RngRecord:
    """What the run record says about its randomness.

    `seed` is the integer the sampler and noise generators were derived from,
    or None when it came from the operating system's CSPRNG (`secure_rng=True`)
    and is withheld on purpose: publishing it would let anyone regenerate, and
    subtract, the noise.
    """

    seed_source: str  # "user", "random" or "csprng"
    seed: int | None
    generator: str  # e.g. "torch.Generator(cpu, mt19937)"
    secure_rng: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def make_generators(
    *, seed: int | None, secure_rng: bool, device: torch.device, draw_seed: Callable[[], int] | None = None
) -> tuple[torch.Generator, torch.Generator, RngRecord]:
    """Returns (sampler generator on CPU, noise generator on `device`, record).

    Without `secure_rng` the seed is `seed` (or a fresh random one that is
    recorded, so the run can be replayed). With `secure_rng=True` the seed is
    drawn from `secrets` (the OS CSPRNG) and not recorded; `seed` must be None.
    `draw_seed` replaces `secrets` as the source of drawn seeds (distributed training:
    every rank must use rank 0's draw).
    """
    if secure_rng and seed is not None:
        raise ValueError(f"Expected seed=None when secure_rng=True (got seed={seed!r}): a "
                         "user-chosen seed makes the noise reproducible by whoever knows it.")
    if seed is not None:
        _validate.integer(minimum=0, seed=seed)
        source = "user"
    else:
        seed = secrets.randbits(_SEED_BITS) if draw_seed is None else int(draw_seed())
        source = "csprng" if secure_rng else "random"
    # Two streams derived from one root so that changing the batch composition
    # never shifts the noise stream, and vice versa.
    root = torch.Generator().manual_seed(int(seed) % (2**64))
    sampler_seed, noise_seed = (int(v) for v in torch.randint(0, 2**62, (2,), generator=root))
    sampler_gen = torch.Generator().manual_seed(sampler_seed)
    noise_gen = torch.Generator(device=device).manual_seed(noise_seed)
    algo = "philox" if device.type == "cuda" else "mt19937"
    record = RngRecord(
        seed_source=source,
        seed=None if secure_rng else int(seed),
        generator=f"torch.Generator({device.type}, {algo}) seeded from {source}",
        secure_rng=bool(secure_rng),
    )
    return sampler_gen, noise_gen, record


class GaussianNoise:
    """Adds N(0, std^2) to every coordinate, drawn from one seeded generator.

    Notes:
        With `secure_rng=True` only the *seed* comes from a CSPRNG; the stream
        itself is torch's Mersenne Twister (CPU) or Philox (CUDA), which is not
        cryptographically secure, and floating-point Gaussian samples are open
        to the attack of Mironov 2012 (CCS, "On significance of the least
        significant bits for differential privacy"). The generator state is part
        of the trainer's `state_dict`: whoever holds a checkpoint can reproduce
        the noise, so checkpoints must be kept as private as the data.
    """

    def __init__(self, *, std: float, generator: torch.Generator) -> None:
        _validate.non_negative(std=std)
        self.std = float(std)
        self.generator = generator

    def add_(self, tensors: Iterable[torch.Tensor], *, std: float | None = None) -> None:
        """Adds fresh noise in place to each tensor (one draw per coordinate); `std` overrides
        the configured std for this call (adaptive clipping scales it with the current C)."""
        std = self.std if std is None else float(std)
        if std == 0.0:
            return
        for t in tensors:
            z = torch.randn(t.shape, generator=self.generator, device=t.device, dtype=t.dtype)
            t.add_(z, alpha=std)

    def state_dict(self) -> dict[str, Any]:
        return {"std": self.std, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if float(state["std"]) != self.std:
            raise ValueError(f"Expected a noise state with std={self.std}, got std={state['std']}.")
        self.generator.set_state(state["generator"])
