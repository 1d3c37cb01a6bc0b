"""Multi-process DP-SGD over `torch.distributed` (one process per GPU, or gloo on CPU).

Every rank holds the whole dataset and the same model, optimizer and sampler
seed. At each step:

1. every rank draws the *same* global Poisson batch (the same Bernoulli mask
   over the N examples, from the same sampler seed), so the sampling the
   accountant assumes is unchanged;
2. rank r processes its own share, every `world_size`-th sampled row starting
   at row r (disjoint shares whose union is the batch, sizes differing by at
   most one), in the usual fixed-shape padded physical batches, and sums its
   clipped per-example gradients;
3. rank 0, and only rank 0, adds the Gaussian noise N(0, sigma^2 C^2) to its
   partial sum; the partial sums are then all-reduced (SUM), so the reduced
   sum holds the noise exactly once;
4. every rank divides the same reduced tensor by q * N and takes the same
   optimizer step, so the models stay identical.

Why rank 0 adds the noise before the sum (rather than every rank drawing the
same noise after it): the reduced tensor is then the single source of truth,
identical on every rank by construction of the collective, and the noise
stream lives in one place. Nothing depends on the ranks' noise generators
staying in lock-step, and the noise state that rank 0 checkpoints is the only
one there is (the other ranks hold no noise generator at all). Drawn from the
same seeded generator as in a single-process run, the noise is the same: a
2-process step equals the 1-process step with the same seed, up to the
floating-point order of the sum.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from ._noise import _SEED_BITS

__all__ = ["DistContext", "init_distributed", "launched_by_torchrun", "tensor_digest"]


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by `torchrun` (WORLD_SIZE > 1 in the environment)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def env_rank() -> int:
    """This process's rank as torchrun announces it (0 outside torchrun); readable before any init."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def init_distributed(
    device: str | torch.device = "auto",
    *,
    backend: str | None = None,
    timeout_s: float | None = None,
) -> tuple[torch.device, bool]:
    """Joins the process group that `torchrun` describes in the environment (env://).

    Args:
        device: 'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'. With
            CUDA and no index, each process takes GPU `LOCAL_RANK`.
        backend: default 'nccl' for CUDA, 'gloo' for CPU.
        timeout_s: collective timeout (default: torch's).

    Returns:
        (this rank's device, whether this call initialised the group; if so, the caller
        should `torch.distributed.destroy_process_group()` at the end).
    """
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} was asked for but no CUDA device is available.")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_available():
        raise ValueError("torch.distributed is not available in this build of torch.")
    if dist.is_initialized():
        return dev, False
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    kwargs: dict[str, Any] = {}
    if timeout_s is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=float(timeout_s))
    dist.init_process_group(backend=backend, init_method="env://", **kwargs)
    return dev, True


def tensor_digest(*tensors: torch.Tensor) -> str:
    """A digest of the tensors' shapes, dtypes and bytes (to check that every rank holds the same data)."""
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}|{t.dtype};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class DistContext:
    """This process's place in an initialised default process group, and the few collectives DP-SGD needs.

    Every method is a collective: all ranks must call it, in the same order.
    """

    rank: int
    world_size: int
    backend: str

    @classmethod
    def current(cls) -> DistContext | None:
        """The default group's context, or None when torch.distributed is not initialised."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), backend=str(dist.get_backend()))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch: rows rank, rank + W, rank + 2W, ... (disjoint across ranks)."""
        return indices[self.rank :: self.world_size]

    def all_reduce_sum_(self, tensors: Iterable[torch.Tensor]) -> None:
        """Sums each tensor over the ranks, in place; one collective per (device, dtype) group."""
        groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.device, t.dtype), []).append(t)
        for ts in groups.values():
            flat = torch.cat([t.reshape(-1) for t in ts]) if len(ts) > 1 else ts[0].reshape(-1).clone()
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for t in ts:
                n = t.numel()
                t.copy_(flat[offset : offset + n].view_as(t))
                offset += n

    def broadcast_(self, tensors: Iterable[torch.Tensor], src: int = 0) -> None:
        """Overwrites each tensor with rank `src`'s value."""
        with torch.no_grad():
            for t in tensors:
                if t.is_contiguous():
                    dist.broadcast(t.detach(), src=src)  # a view of t's memory: received in place
                else:
                    buf = t.detach().contiguous()
                    dist.broadcast(buf, src=src)
                    t.copy_(buf)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s (picklable) `obj`, on every rank."""
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def any_true(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if `flag` is true on any rank."""
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def shared_seed(self, local: int) -> int:
        """Rank 0's `local` seed on every rank (for seeds drawn at random: all ranks need the same)."""
        return int(self.broadcast_object(int(local)))

    def check_same(self, what: str, values: Mapping[str, Any]) -> None:
        """Raises ValueError, on every rank, unless `values` is equal on all ranks (naming the keys that differ)."""
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, dict(values))
        ref = gathered[0]
        bad = sorted({k for g in gathered[1:] for k in set(ref) | set(g) if ref.get(k) != g.get(k)})
        if bad:
            ranks = [r for r, g in enumerate(gathered) if g != ref]
            raise ValueError(f"Distributed DP-SGD needs the same {what} on every rank; {bad} differ between "
                             f"rank 0 and rank(s) {ranks}. Pass the whole dataset, the same model, optimizer "
                             "and settings, and the same seed to every rank.")


def random_seed(ctx: DistContext | None) -> Callable[[], int]:
    """A seed drawer for `make_generators`: the OS CSPRNG, agreed across ranks (rank 0's draw) in a group."""

    def draw() -> int:
        seed = secrets.randbits(_SEED_BITS)
        return seed if ctx is None else ctx.shared_seed(seed)

    return draw
