"""The DP-SGD loop itself: `PrivateTrainer` (built by `make_private`).

One step (Abadi et al. 2016, arXiv 1607.00133v2, Algorithm 1):

1. draw a logical batch by Poisson sampling with rate q;
2. for each fixed-shape physical batch: one forward and one backward pass,
   per-example gradient norms, clip factors, and the clipped sum (`_clipping`);
3. add N(0, sigma^2 C^2) once to the clipped sum and divide by q * N;
4. record the step in the ledger, then `optimizer.step()` with that gradient.

Across the processes of a `torch.distributed` group (`make_private(distributed=...)`),
every rank draws the same batch in 1 and processes its own share of it in 2; in 3
rank 0 alone adds the noise to its partial sum, and the partial sums are
all-reduced before the division (see `_distributed`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import _validate
from ..accounting import PrivacyLedger, make_accountant
from ._adaptive import next_clipping_norm
from ._clipping import GradCapture, clip_and_accumulate
from ._config import DPConfig, PrivacyBudgetExhaustedError, StepStats
from ._distributed import DistContext
from ._noise import GaussianNoise, RngRecord
from ._sampler import physical_batches

__all__ = ["PrivateTrainer"]

STATE_FORMAT = "privaudit.trainer/1"
#: On CPU the last physical batch of a step is padded to a multiple of this many rows.
SHAPE_BUCKET_CPU = 8


class PrivateTrainer:
    """Runs DP-SGD (or, with `no_dp`, the same loop without clipping and noise). Build with `make_private`.

    Notes:
        The (epsilon, delta) guarantee covers the model's parameters after any
        number of steps up to `planned_steps`, provided that: the data passed
        in is the whole private dataset (one row per individual); nothing else
        reads the private data (StepStats' loss and norms are not private);
        the sampler and noise states (in `state_dict()`) stay secret; and the
        module does not mix examples within a batch (enforced by the validator).
    """

    def __init__(self, *, module: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                 targets: torch.Tensor, loss_fn: Callable[..., torch.Tensor], config: DPConfig | None,
                 planned_steps: int, physical_batch_size: int, sampler: Any, noise: GaussianNoise | None,
                 rng_record: RngRecord, ledger: PrivacyLedger, device: torch.device,
                 dist: DistContext | None = None) -> None:
        self.module = module
        self.optimizer = optimizer
        self.config = config
        self.planned_steps = planned_steps
        self.physical_batch_size = physical_batch_size
        self.rng_record = rng_record
        self.ledger = ledger
        self.device = device
        self._inputs, self._targets = inputs, targets
        self._loss_fn = loss_fn
        self._sampler = sampler
        self._noise = noise
        self.dist = dist
        if config is not None and noise is None and (dist is None or dist.is_main):
            raise ValueError("A private trainer needs a noise source (on rank 0 when distributed).")
        self._steps = 0
        self._params = [p for p in module.parameters() if p.requires_grad]
        self._capture = GradCapture(module) if config is not None else None
        self._acc = [torch.zeros_like(p) for p in self._params] if config is not None else []
        #: The clipping norm of the next step: fixed, or adapted after every step (`DPConfig.adaptive`).
        self.clipping_norm = math.nan if config is None else config.max_grad_norm
        self._sum_hooks: list[Callable[[list[torch.Tensor], float], None]] = []
        self._release_hooks: list[Callable[[list[torch.Tensor]], None]] = []

    # -- public -------------------------------------------------------------------
    @property
    def steps_taken(self) -> int:
        return self._steps

    @property
    def remaining_steps(self) -> int:
        return self.planned_steps - self._steps

    @property
    def is_private(self) -> bool:
        return self.config is not None

    @property
    def rank(self) -> int:
        """This process's rank (0 without distributed training)."""
        return 0 if self.dist is None else self.dist.rank

    @property
    def world_size(self) -> int:
        """Processes sharing each step (1 without distributed training)."""
        return 1 if self.dist is None else self.dist.world_size

    @property
    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters, in the order of every gradient list the hooks receive."""
        return list(self._params)

    @property
    def clipping_units(self) -> list[Any]:
        """The engine's clipping units (each a layer and its `params` dict); private runs only."""
        return [] if self._capture is None else list(self._capture.units)

    def add_sum_hook(self, hook: Callable[[list[torch.Tensor], float], None]) -> Callable[[], None]:
        """Calls `hook(clipped_sum, clipping_norm)` every private step, before the noise is added.

        `clipped_sum` is the list of per-parameter sums (in `parameters` order) that the noise
        is about to be added to; the hook may add to it in place (a privacy audit adds its
        canaries' clipped gradients here, as extra rows of the batch). Distributed, it runs on
        rank 0 only, where the noise is added. Returns a function that removes the hook.
        """
        self._sum_hooks.append(hook)
        return lambda: self._sum_hooks.remove(hook)

    def add_release_hook(self, hook: Callable[[list[torch.Tensor]], None]) -> Callable[[], None]:
        """Calls `hook(noisy_sum)` every private step with the noisy clipped sum (all ranks'), before
        the division by q*N: what DP-SGD releases. The hook must not modify it. Returns a remover."""
        self._release_hooks.append(hook)
        return lambda: self._release_hooks.remove(hook)

    def epsilon(self, delta: float | None = None) -> float:
        """Epsilon spent so far (everything in the ledger) at `delta` (default: the target delta).

        A run without DP (`no_dp=True`) has no finite epsilon: returns inf.
        """
        if self.config is None:
            return math.inf
        delta = self.config.target_delta if delta is None else delta
        _validate.in_range(0.0, 1.0, lo_open=True, hi_open=True, delta=delta)
        if self.ledger.total_count() == 0:
            return 0.0
        acct = make_accountant(self.config.accountant, neighboring_relation=self.ledger.neighboring_relation)
        return acct.compose(self.ledger.to_event()).get_epsilon(delta)

    def step(self) -> StepStats:
        """Takes one optimizer step; raises PrivacyBudgetExhaustedError past `planned_steps`."""
        if self._steps >= self.planned_steps:
            what = (f"the privacy budget was planned (sigma={self.config.noise_multiplier:.4g}) for "
                    if self.config is not None else "the run was planned for ")
            raise PrivacyBudgetExhaustedError(
                f"Refusing step {self._steps + 1}: {what}{self.planned_steps} steps. Build a new "
                "trainer (and account for both runs) to train further.")
        indices = self._sampler.sample()
        with torch.enable_grad():
            if self.config is None:
                stats = self._non_private_step(indices)
            else:
                stats = self._private_step(indices)
        return stats

    def run(self, *, steps: int | None = None,
            callback: Callable[[StepStats], None] | None = None) -> list[StepStats]:
        """Takes `steps` steps (default: all remaining planned steps)."""
        steps = self.remaining_steps if steps is None else steps
        _validate.integer(minimum=0, steps=steps)
        out = []
        for _ in range(steps):
            s = self.step()
            out.append(s)
            if callback is not None:
                callback(s)
        return out

    def close(self) -> None:
        """Removes the hooks this trainer put on the module."""
        if self._capture is not None:
            self._capture.remove()

    # -- the two kinds of step -------------------------------------------------------
    def _local_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """The rows of the global batch this process handles (all of them unless distributed)."""
        return indices if self.dist is None else self.dist.shard(indices)

    def _batches(self, indices: torch.Tensor) -> Any:
        # CPU: the last physical batch is padded to a multiple of 8 rows only (no per-shape kernel
        # tuning to lose); CUDA: every pass has exactly `physical_batch_size` rows (cuDNN re-tunes
        # per shape, which made variable shapes up to ~70x slower per step).
        round_to = SHAPE_BUCKET_CPU if self.device.type == "cpu" else None
        for pb in physical_batches(indices, physical_batch_size=self.physical_batch_size, round_to=round_to):
            idx = pb.indices.to(self._inputs.device)
            x = self._inputs[idx].to(self.device, non_blocking=True)
            y = self._targets[idx.to(self._targets.device)].to(self.device, non_blocking=True)
            yield x, y, pb.mask.to(self.device, non_blocking=True), pb.num_real

    def _per_example_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        losses = self._loss_fn(self.module(x), y)
        if not isinstance(losses, torch.Tensor) or losses.dim() == 0 or losses.shape[0] != x.shape[0]:
            shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
            raise ValueError(
                f"Expected loss_fn to return one loss per example, shape ({x.shape[0]},), got {shape}: "
                "pass a loss with reduction='none'.")
        return losses.reshape(losses.shape[0], -1).sum(1)

    def _private_step(self, indices: torch.Tensor) -> StepStats:
        cfg = self.config
        assert cfg is not None and self._capture is not None
        for a in self._acc:
            a.zero_()
        out = dict(zip(self._params, self._acc))
        num_layers = len(self._capture.units)
        # Statistics stay on the device until the end of the step (no per-batch sync).
        c = self.clipping_norm
        loss_sum = torch.zeros((), device=self.device)
        norm_sum = torch.zeros((), device=self.device)
        clipped = torch.zeros((), device=self.device)
        n_phys = 0
        for x, y, mask, _ in self._batches(self._local_indices(indices)):
            n_phys += 1
            with self._capture.capture(self.device):
                losses = self._per_example_loss(x, y)
                # Padding rows get loss weight 0, so their output gradients are exactly 0.
                loss = (losses * mask.to(losses.dtype)).sum()
            self._capture.backward(loss)
            res = clip_and_accumulate(self._capture.unit_grads(), max_grad_norm=c,
                                      clipping=cfg.clipping, num_layers=num_layers, mask=mask, out=out)
            self._capture.release()
            loss_sum += loss.detach()
            del losses, loss  # the graph (and the capture's calls it links to) ends with this physical batch
            norm_sum += (res.norms * mask).sum()
            clipped += ((res.norms > c) & mask).sum()
        # Gaussian noise N(0, sigma^2 C^2) added once to the clipped sum (Abadi et al. 2016,
        # arXiv 1607.00133v2, Alg. 1, "Add noise"), then division by the *expected* batch
        # size q*N rather than the realised one: the fixed-denominator estimator of
        # McMahan et al. 2018 (arXiv 1710.06963v3, Sec. 3), whose sensitivity is C / (qN)
        # whatever the batch size, which is itself private under Poisson sampling.
        # Distributed: only rank 0 holds a noise source, and it adds the noise to its
        # partial sum *before* the SUM over ranks, so the reduced sum, which every rank
        # then uses, holds the noise exactly once.
        b = int(indices.numel())
        count_noise = torch.zeros((), device=self.device)
        if self._noise is not None:
            for hook in self._sum_hooks:
                hook(self._acc, c)
            self._noise.add_(self._acc, std=cfg.noise_multiplier * c)
            if cfg.adaptive is not None:
                # Adaptive clipping (Andrew et al. 2021, arXiv 1905.03871, Alg. 1): the count of
                # unclipped examples, each counted as b_i - 1/2 (sensitivity 1/2), gets N(0, sigma_b^2).
                count_noise = torch.randn((), generator=self._noise.generator, device=self.device,
                                          dtype=torch.float64).to(loss_sum.dtype) * cfg.count_noise_std
        if self.dist is not None:
            stats = torch.stack([loss_sum, norm_sum, clipped.to(loss_sum.dtype), count_noise])
            self.dist.all_reduce_sum_([*self._acc, stats])
            loss_sum, norm_sum, clipped, count_noise = stats.unbind()
        for release in self._release_hooks:
            release(self._acc)
        noisy_fraction = None
        if cfg.adaptive is not None:
            assert cfg.count_noise_std is not None
            unclipped_minus_half = (b - float(clipped)) - 0.5 * b
            noisy_fraction = (unclipped_minus_half + float(count_noise)) / cfg.expected_batch_size + 0.5
            self.clipping_norm = next_clipping_norm(c, noisy_fraction, cfg.adaptive)
        scale = 1.0 / cfg.expected_batch_size
        for p, a in zip(self._params, self._acc):
            p.grad = a.mul_(scale)
        self.ledger.record(cfg.step_event())
        self.optimizer.step()
        for p in self._params:
            p.grad = None
        self._steps += 1
        return StepStats(step=self._steps, batch_size=b, physical_batches=n_phys,
                         loss=float(loss_sum) / b if b else math.nan,
                         grad_norm_mean=float(norm_sum) / b if b else math.nan,
                         clipped_fraction=float(clipped) / b if b else 0.0, noise_std=cfg.noise_multiplier * c,
                         clipping_norm=c, noisy_unclipped_fraction=noisy_fraction)

    def _non_private_step(self, indices: torch.Tensor) -> StepStats:
        b = int(indices.numel())
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, n_phys = 0.0, 0
        for x, y, mask, _ in self._batches(self._local_indices(indices)):
            n_phys += 1
            losses = self._per_example_loss(x, y)
            loss = (losses * mask.to(losses.dtype)).sum()
            (loss / b).backward()
            loss_sum += float(loss.detach())
        if self.dist is not None:  # the mean gradient is the sum of the ranks' shares
            for p in self._params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            stats = torch.tensor([loss_sum], device=self.device, dtype=torch.float64)
            self.dist.all_reduce_sum_([*(p.grad for p in self._params), stats])
            loss_sum = float(stats[0])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._steps += 1
        return StepStats(step=self._steps, batch_size=b, physical_batches=n_phys,
                         loss=loss_sum / b if b else math.nan, grad_norm_mean=math.nan,
                         clipped_fraction=0.0, noise_std=0.0)

    # -- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A deep-copied snapshot: model, optimizer, sampler and noise generator states,
        step count, configuration and ledger. Keep it as private as the data."""
        state = {
            "format": STATE_FORMAT,
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self._sampler.state_dict(),
            "noise": None if self._noise is None else self._noise.state_dict(),
            "steps_taken": self._steps,
            "planned_steps": self.planned_steps,
            "clipping_norm": self.clipping_norm,
            "config": None if self.config is None else self.config.to_dict(),
            "ledger": self.ledger.to_dict(),
        }
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a `state_dict()` so that training continues exactly where it stopped."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"Expected a trainer state of format {STATE_FORMAT!r}.")
        # The physical batch size only groups rows into passes (it changes nothing else,
        # and differs between runs on different numbers of processes): not compared.
        mine = None if self.config is None else _without_pbs(self.config.to_dict())
        theirs = None if state["config"] is None else _without_pbs(state["config"])
        if theirs != mine:
            diff = sorted(k for k in (mine or theirs or {}) if (mine or {}).get(k) != (theirs or {}).get(k))
            raise ValueError(f"The checkpoint was written under a different configuration (fields {diff}).")
        saved = PrivacyLedger.from_dict(state["ledger"])
        if self.ledger.entries != saved.entries:
            if len(self.ledger) != 0:
                raise ValueError("The trainer's ledger is neither empty nor equal to the checkpoint's ledger.")
            self.ledger.extend(saved)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._sampler.load_state_dict(state["sampler"])
        if self._noise is not None:
            if state["noise"] is None:
                raise ValueError("The checkpoint holds no noise generator state (written by a rank other "
                                 "than 0?); resume from rank 0's checkpoint.")
            self._noise.load_state_dict(state["noise"])
        self._steps = int(state["steps_taken"])
        if self.config is not None:
            self.clipping_norm = float(state.get("clipping_norm", self.config.max_grad_norm))


def _without_pbs(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "physical_batch_size"}
