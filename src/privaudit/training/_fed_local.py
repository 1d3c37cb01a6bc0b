"""Local training of the sampled clients: vectorised over clients, or one client after another.

Every sampled client starts the round from the global model and takes the same
number of local steps (`LocalTraining.steps`) of SGD with momentum (the
momentum buffer starts at zero every round). At each step a client uses
min(batch_size, n_k) of its own examples: it walks through a fresh random
permutation of its data, drawing the next permutation when one is used up, so
a client with n_k <= batch_size does full-batch gradient descent. Its loss is
the mean cross-entropy over the examples of the step.

The batches of a round are drawn once (`batch_plan`) as fixed-shape index and
mask tensors (clients x steps x batch), padded with masked rows where a client
holds fewer examples than the batch. `train_vectorised` then trains all
clients at once with `torch.func.functional_call` + `vmap` over the stacked
client parameters; `train_sequential` is the plain loop (a fresh
`torch.optim.SGD` per client), kept as the reference the tests compare with;
`train_dp_sgd` runs the engine's DP-SGD on each client (sample-level DP).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .. import _validate
from ..accounting import PrivacyLedger

__all__ = ["BatchPlan", "FlatParams", "LocalTraining", "batch_plan", "train_dp_sgd", "train_sequential",
           "train_vectorised"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalTraining:
    """What each sampled client does in a round.

    Args:
        steps: local SGD steps per round.
        batch_size: examples per local step (clients with fewer use all of theirs).
        lr: local learning rate.
        momentum: local momentum in [0, 1), reset to zero every round.
    """

    steps: int
    batch_size: int
    lr: float
    momentum: float = 0.0

    def __post_init__(self) -> None:
        _validate.integer(minimum=1, steps=self.steps, batch_size=self.batch_size)
        _validate.positive(lr=self.lr)
        _validate.in_range(0.0, 1.0, hi_open=True, momentum=self.momentum)

    @staticmethod
    def steps_for_epochs(epochs: float, *, sizes: Sequence[int], batch_size: int) -> int:
        """Local steps that make `epochs` passes over the data of the *average* client:
        ceil(epochs * mean(n_k) / batch_size). Larger clients then see less than
        `epochs` passes and smaller ones more (all clients take the same steps)."""
        _validate.positive(epochs=epochs)
        _validate.integer(minimum=1, batch_size=batch_size)
        return max(1, math.ceil(epochs * float(np.mean(sizes)) / batch_size - 1e-9))


class FlatParams:
    """Moves a module's trainable parameters to and from one flat vector (in `named_parameters` order)."""

    def __init__(self, module: nn.Module) -> None:
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("Expected a module with trainable parameters.")
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.size = int(sum(self.numels))

    def flatten(self, module: nn.Module) -> torch.Tensor:
        params = dict(module.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of `flat` (shape (..., P)) as a name -> (..., *shape) dict."""
        lead = flat.shape[:-1]
        parts = torch.split(flat, self.numels, dim=-1)
        return {n: t.reshape(*lead, *s) for n, t, s in zip(self.names, parts, self.shapes)}

    @torch.no_grad()
    def load(self, module: nn.Module, flat: torch.Tensor) -> None:
        params = dict(module.named_parameters())
        for n, t in self.unflatten(flat).items():
            params[n].copy_(t)


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """Row indices (into the training set) and masks of every local step of a round.

    `indices` and `mask` have shape (clients, steps, batch); masked rows point at
    one of the client's own rows and carry loss weight 0.
    """

    indices: torch.Tensor
    mask: torch.Tensor


def batch_plan(clients: Sequence[np.ndarray], *, steps: int, batch_size: int,
               seeds: Sequence[Sequence[int]]) -> BatchPlan:
    """Draws the local batches of `clients` (each an array of its row positions) for one round.

    Client j draws from its own generator `np.random.default_rng(seeds[j])`, so its
    batches do not depend on which other clients were sampled, and a client running
    elsewhere (a Flower SuperNode) draws the same batches from the same seed.
    """
    _validate.integer(minimum=1, steps=steps, batch_size=batch_size)
    if len(seeds) != len(clients):
        raise ValueError(f"Expected one seed per client, got {len(seeds)} for {len(clients)}.")
    k = len(clients)
    width = min(batch_size, max((c.size for c in clients), default=1))
    idx = np.zeros((k, steps, width), dtype=np.int64)
    mask = np.zeros((k, steps, width), dtype=bool)
    for j, rows in enumerate(clients):
        n = rows.size
        b = min(batch_size, n)
        need = steps * b
        rng = np.random.default_rng(list(seeds[j]))
        order = np.concatenate([rng.permutation(n) for _ in range(-(-need // n))])[:need]
        idx[j, :, :b] = rows[order].reshape(steps, b)
        idx[j, :, b:] = rows[0]
        mask[j, :, :b] = True
    return BatchPlan(torch.from_numpy(idx), torch.from_numpy(mask))


def _mean_ce(out: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    losses = nn.functional.cross_entropy(out, y, reduction="none")
    return (losses * m).sum() / m.sum()


def train_vectorised(module: nn.Module, layout: FlatParams, global_flat: torch.Tensor, x: torch.Tensor,
                     y: torch.Tensor, plan: BatchPlan, cfg: LocalTraining, *,
                     max_clients: int = 1024) -> torch.Tensor:
    """Trains every client of `plan` at once and returns their updates, shape (clients, P).

    Clients are processed in chunks of at most `max_clients` (memory grows with
    clients x batch x activations). `module` must be usable under `vmap`
    (no in-place buffer updates such as BatchNorm's running statistics).
    """
    _validate.integer(minimum=1, max_clients=max_clients)
    device = global_flat.device
    buffers = {n: b.to(device) for n, b in module.named_buffers()}

    def loss_one(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, mb: torch.Tensor) -> torch.Tensor:
        out = functional_call(module, (p, buffers), (xb,))
        return _mean_ce(out, yb, mb)

    grad_fn = vmap(grad(loss_one))
    k = plan.indices.shape[0]
    start = layout.unflatten(global_flat)
    out = torch.empty(k, layout.size, dtype=global_flat.dtype, device=device)
    for s in range(0, k, max_clients):
        idx, mask = plan.indices[s:s + max_clients].to(device), plan.mask[s:s + max_clients].to(device)
        c = idx.shape[0]
        # Stacked parameters, one tensor per parameter (no flat vector inside the loop: cheaper).
        p = {n: t.expand(c, *t.shape).clone() for n, t in start.items()}
        ps = list(p.values())
        bufs = [torch.zeros_like(t) for t in ps] if cfg.momentum else None
        for t in range(cfg.steps):
            it, mt = idx[:, t], mask[:, t]
            g = list(grad_fn(p, x[it], y[it], mt.to(global_flat.dtype)).values())
            if bufs is not None:  # torch.optim.SGD: buf = momentum * buf + g (buf starts at 0)
                torch._foreach_mul_(bufs, cfg.momentum)
                torch._foreach_add_(bufs, g)
                g = bufs
            torch._foreach_add_(ps, g, alpha=-cfg.lr)
        out[s:s + c] = torch.cat([t.reshape(c, -1) for t in ps], dim=1) - global_flat
    return out


def train_sequential(module: nn.Module, layout: FlatParams, global_flat: torch.Tensor, x: torch.Tensor,
                     y: torch.Tensor, plan: BatchPlan, cfg: LocalTraining) -> torch.Tensor:
    """The reference loop: each client in turn, `torch.optim.SGD` on a copy of the model."""
    worker = copy.deepcopy(module).to(global_flat.device)
    k = plan.indices.shape[0]
    out = torch.empty(k, layout.size, dtype=global_flat.dtype, device=global_flat.device)
    for j in range(k):
        layout.load(worker, global_flat)
        opt = torch.optim.SGD([p for p in worker.parameters() if p.requires_grad], lr=cfg.lr,
                              momentum=cfg.momentum)
        for t in range(cfg.steps):
            rows = plan.indices[j, t][plan.mask[j, t]].to(x.device)
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(worker(x[rows]), y[rows]).backward()
            opt.step()
        out[j] = layout.flatten(worker) - global_flat
    return out


def train_dp_sgd(module: nn.Module, layout: FlatParams, global_flat: torch.Tensor, x: torch.Tensor,
                 y: torch.Tensor, clients: Sequence[np.ndarray], cfg: LocalTraining, *,
                 noise_multiplier: float, max_grad_norm: float, seeds: Sequence[int],
                 ledgers: Sequence[PrivacyLedger], clipping: str = "flat",
                 accountant: str = "pld") -> torch.Tensor:
    """Sample-level DP: each client runs `cfg.steps` steps of the engine's DP-SGD on its own data.

    Client k samples its batches by Poisson sampling with rate min(batch_size, n_k) / n_k,
    clips each example's gradient to `max_grad_norm`, adds noise with `noise_multiplier`,
    and records every step in `ledgers[k]` (its own guarantee, over its own examples).
    """
    from ._engine import make_private

    out = torch.empty(len(clients), layout.size, dtype=global_flat.dtype, device=global_flat.device)
    worker = copy.deepcopy(module).to(global_flat.device)
    for j, rows in enumerate(clients):
        layout.load(worker, global_flat)
        n, b = int(rows.size), min(cfg.batch_size, int(rows.size))
        opt = torch.optim.SGD([p for p in worker.parameters() if p.requires_grad], lr=cfg.lr,
                              momentum=cfg.momentum)
        r = torch.from_numpy(rows).to(x.device)
        trainer = make_private(module=worker, optimizer=opt, data=(x[r], y[r]), loss_fn=nn.CrossEntropyLoss(),
                               epochs=cfg.steps * b / n, expected_batch_size=b, max_grad_norm=max_grad_norm,
                               noise_multiplier=noise_multiplier, seed=int(seeds[j]), ledger=ledgers[j],
                               clipping=clipping, accountant=accountant, device=global_flat.device,
                               distributed=False)  # one client's local training, in this process
        if trainer.planned_steps != cfg.steps:  # pragma: no cover - guards the epochs conversion
            raise RuntimeError(f"DP-SGD planned {trainer.planned_steps} local steps, expected {cfg.steps}.")
        try:
            trainer.run()
        finally:
            trainer.close()
        out[j] = layout.flatten(worker) - global_flat
    return out
