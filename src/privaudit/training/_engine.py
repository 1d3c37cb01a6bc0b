"""`make_private(...)`: DP-SGD for any `nn.Module`, returning a `PrivateTrainer` that owns the loop."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .. import _validate
from ..accounting import PrivacyLedger, calibrate_noise_multiplier, sampling_rate_and_steps
from ._adaptive import AdaptiveClipping, default_count_noise_std, update_noise_multiplier
from ._config import CLIPPING_MODES, DPConfig, auto_physical_batch_size
from ._distributed import DistContext, random_seed, tensor_digest
from ._noise import GaussianNoise, make_generators
from ._sampler import PoissonSampler, ShuffleSampler
from ._trainer import PrivateTrainer
from ._validator import validate_module

__all__ = ["PrivateTrainer", "make_private"]


def _unpack_data(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, TensorDataset):
        data = tuple(data.tensors)
    if (not isinstance(data, (tuple, list)) or len(data) != 2
            or not all(isinstance(t, torch.Tensor) for t in data)):
        raise ValueError("Expected data=(inputs, targets), two tensors, or a TensorDataset of two tensors.")
    x, y = data
    if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"Expected data tensors with the same non-zero first dimension, got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}.")
    return x, y


def _per_example_loss_fn(loss_fn: Any) -> Callable[..., torch.Tensor]:
    if not callable(loss_fn):
        raise ValueError(f"Expected loss_fn to be callable, got {type(loss_fn).__name__}.")
    if isinstance(loss_fn, nn.Module) and hasattr(loss_fn, "reduction"):
        loss_fn = copy.copy(loss_fn)  # nn losses: same loss, one value per example
        loss_fn.reduction = "none"
    return loss_fn


def make_private(
    *,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: tuple[torch.Tensor, torch.Tensor] | TensorDataset,
    loss_fn: Callable[..., torch.Tensor],
    epochs: float,
    expected_batch_size: int,
    max_grad_norm: float | None = None,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    target_delta: float = 1e-5,
    physical_batch_size: int | None = None,
    clipping: str = "flat",
    accountant: str = "pld",
    seed: int | None = None,
    secure_rng: bool = False,
    ledger: PrivacyLedger | None = None,
    device: str | torch.device | None = None,
    no_dp: bool = False,
    distributed: bool | None = None,
    adaptive_clipping: AdaptiveClipping | None = None,
) -> PrivateTrainer:
    """Wraps a module, its optimizer and its data into a DP-SGD trainer.

    Args:
        module: any `nn.Module` without cross-example interaction (see `validate_module`).
        optimizer: built over `module`'s parameters; it receives the noisy gradients.
        data: `(inputs, targets)`, the *whole* private dataset (N rows), or a TensorDataset.
        loss_fn: `loss_fn(outputs, targets)`; nn losses are switched to reduction='none',
            any other callable must return one loss per example.
        epochs: planned length; steps = ceil(epochs * N / expected_batch_size) (with `no_dp`,
            ceil(epochs * ceil(N / expected_batch_size)): whole shuffled epochs).
        expected_batch_size: q * N; each example joins each batch with probability q.
        max_grad_norm: C, the per-example clipping norm (required unless `no_dp`).
        noise_multiplier: sigma; or give `target_epsilon` and sigma is calibrated for the
            planned steps with `accountant` (exactly one of the two unless `no_dp`).
        target_delta: the delta of the guarantee (calibration and `epsilon()`).
        physical_batch_size: rows per forward pass; every pass has exactly this shape (default:
            the size minimising expected rows processed plus a per-pass overhead, at most 1024).
        clipping: 'flat' (one norm over all parameters) or 'per_layer' (C / sqrt(L) per layer).
        accountant: 'pld' (default), 'rdp' or 'gdp'.
        seed: seeds sampler and noise; None draws a random seed (recorded in `rng_record`).
        secure_rng: seed from the OS CSPRNG and withhold the seed from the record.
        ledger: where steps are recorded (default: a new one).
        device: where the module runs (default: where its parameters are).
        no_dp: plain mini-batch SGD (shuffled batches of `expected_batch_size`, mean loss),
            no clipping, no noise, nothing recorded. Not private.
        distributed: train across the processes of the initialised default
            `torch.distributed` group (None: whenever one with more than one process is
            initialised; True: require one; False: never). Every rank passes the same
            arguments and the whole dataset (checked); each processes a disjoint share of
            every global Poisson batch, the clipped sums are all-reduced and rank 0 alone
            adds the noise (see `privaudit.training._distributed`). Parameters and buffers
            are broadcast from rank 0 here, and every step keeps them identical.
        adaptive_clipping: let C follow a quantile of the per-example gradient norms
            (Andrew et al. 2021): `max_grad_norm` is the initial C; each step also releases
            the count of unclipped examples with noise N(0, sigma_b^2) (sigma_b: the
            setting's, or qN / 20, at least 5 z with a target epsilon of total multiplier z)
            and moves C geometrically. The update noise sigma
            (`noise_multiplier`, or calibrated) then costs, with the count, what one Gaussian
            mechanism of multiplier (sigma^-2 + (2 sigma_b)^-2)^(-1/2) costs; that is what
            the ledger records, and calibration to `target_epsilon` solves for it. Flat
            clipping only.

    Returns:
        A `PrivateTrainer`; `trainer.step()` takes one step, `trainer.epsilon()` reads the ledger.
        Distributed, every rank records every step in its own (in-memory) ledger; write
        it to disk from rank 0 only.

    Raises:
        ValueError: a bad argument (named), or a module the validator rejects
            (`ModuleValidationError`, listing every problem).

    Notes:
        The (epsilon, target_delta) guarantee, under the add/remove-one relation,
        holds for everything derived from the trained parameters only if `data`
        holds each individual in at most one row, nothing else touches the data
        (the loss and norms in `StepStats` are not private), the trainer's sampler
        and noise states stay secret (checkpoints hold them), and every step runs
        through `trainer.step()`. Tuning hyperparameters on the same data costs
        extra privacy that the ledger does not see (Papernot & Steinke 2022,
        arXiv 2110.03620). `no_dp=True` gives no guarantee at all.
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"Expected module to be an nn.Module, got {type(module).__name__}.")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"Expected optimizer to be a torch.optim.Optimizer, got {type(optimizer).__name__}.")
    inputs, targets = _unpack_data(data)
    n = int(inputs.shape[0])
    _validate.positive(epochs=epochs)
    _validate.integer(minimum=1, expected_batch_size=expected_batch_size)
    if expected_batch_size > n:
        raise ValueError(f"Expected expected_batch_size={expected_batch_size} in [1, {n}] (the dataset size).")
    if physical_batch_size is not None:
        _validate.integer(minimum=1, physical_batch_size=physical_batch_size)
    if clipping not in CLIPPING_MODES:
        raise ValueError(f"Expected clipping={clipping!r} in {list(CLIPPING_MODES)}.")
    if ledger is not None and not isinstance(ledger, PrivacyLedger):
        raise ValueError(f"Expected ledger to be a PrivacyLedger or None, got {type(ledger).__name__}.")
    if device is None:
        first = next(iter(module.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    loss = _per_example_loss_fn(loss_fn)
    ctx = _distributed_context(distributed)
    world = 1 if ctx is None else ctx.world_size
    q, steps = sampling_rate_and_steps(epochs=epochs, batch_size=expected_batch_size, dataset_size=n)
    sampler_gen, noise_gen, record = make_generators(seed=seed, secure_rng=bool(secure_rng), device=device,
                                                     draw_seed=None if ctx is None else random_seed(ctx))
    ledger = PrivacyLedger() if ledger is None else ledger
    module.to(device)
    if no_dp:
        if noise_multiplier is not None or target_epsilon is not None or adaptive_clipping is not None:
            raise ValueError("Expected noise_multiplier=None, target_epsilon=None and adaptive_clipping=None "
                             "with no_dp=True.")
        pbs = physical_batch_size or math.ceil(expected_batch_size / world)
        sampler = ShuffleSampler(num_examples=n, batch_size=expected_batch_size, generator=sampler_gen)
        # Whole shuffled epochs: ceil(epochs * ceil(N / B)) batches, the last of each epoch smaller.
        planned = int(math.ceil(epochs * sampler.batches_per_epoch - 1e-9))
        _join(ctx, module, optimizer, inputs, targets, sampler_gen, device,
              {"no_dp": True, "batch_size": expected_batch_size, "planned_steps": planned,
               "physical_batch_size": pbs})
        return PrivateTrainer(module=module, optimizer=optimizer, inputs=inputs, targets=targets, loss_fn=loss,
                              config=None, planned_steps=planned, physical_batch_size=pbs, sampler=sampler,
                              noise=None, rng_record=record, ledger=ledger, device=device, dist=ctx)
    if max_grad_norm is None:
        raise ValueError("Expected max_grad_norm in (0, inf) for DP training (got None).")
    _validate.positive(max_grad_norm=max_grad_norm)
    if (noise_multiplier is None) == (target_epsilon is None):
        raise ValueError("Expected exactly one of noise_multiplier and target_epsilon (got "
                         f"noise_multiplier={noise_multiplier!r}, target_epsilon={target_epsilon!r}).")
    _validate.in_range(0.0, 1.0, lo_open=True, hi_open=True, target_delta=target_delta)
    validate_module(module)
    if adaptive_clipping is not None and not isinstance(adaptive_clipping, AdaptiveClipping):
        raise ValueError("Expected adaptive_clipping to be privaudit.training.AdaptiveClipping or None, got "
                         f"{type(adaptive_clipping).__name__}.")
    total = None  # the calibrated multiplier of everything a step releases
    if target_epsilon is not None:
        _validate.positive(target_epsilon=target_epsilon)
        total = calibrate_noise_multiplier(target_epsilon=target_epsilon, target_delta=target_delta,
                                           sampling_rate=q, steps=steps, accountant=accountant)
    sigma_b = (None if adaptive_clipping is None
               else default_count_noise_std(adaptive_clipping, q * n, total_noise_multiplier=total))
    if total is not None:  # with adaptive clipping, the sum's share of `total` (the count takes the rest)
        noise_multiplier = total if sigma_b is None else update_noise_multiplier(total, sigma_b)
    # Distributed, each rank sees about 1/W of every batch: size its passes for that share.
    pbs = physical_batch_size or auto_physical_batch_size(expected_batch_size=q * n / world,
                                                          dataset_size=math.ceil(n / world), sampling_rate=q)
    config = DPConfig(noise_multiplier=float(noise_multiplier), max_grad_norm=float(max_grad_norm),
                      sampling_rate=q, dataset_size=n, steps=steps, clipping=clipping, physical_batch_size=pbs,
                      accountant=accountant, target_delta=float(target_delta),
                      target_epsilon=None if target_epsilon is None else float(target_epsilon),
                      adaptive=adaptive_clipping, count_noise_std=sigma_b)
    training_record = {
        "sampler": "poisson", "dataset_size": n, "sampling_rate": q, "noise_multiplier": config.noise_multiplier,
        "max_grad_norm": config.max_grad_norm, "clipping": clipping, "planned_steps": steps,
        "rng": record.to_dict()}
    if adaptive_clipping is not None:
        training_record["adaptive_clipping"] = {**dataclasses.asdict(adaptive_clipping), "count_noise_std": sigma_b,
                                                "accounted_noise_multiplier": config.accounted_noise_multiplier}
    ledger.metadata.setdefault("training", training_record)
    sampler = PoissonSampler(num_examples=n, sampling_rate=q, generator=sampler_gen)
    _join(ctx, module, optimizer, inputs, targets, sampler_gen, device, config.to_dict())
    # Distributed, rank 0 alone holds the noise source: the noise enters the all-reduced sum once.
    noise = GaussianNoise(std=config.noise_std, generator=noise_gen) if ctx is None or ctx.is_main else None
    return PrivateTrainer(module=module, optimizer=optimizer, inputs=inputs, targets=targets, loss_fn=loss,
                          config=config, planned_steps=steps, physical_batch_size=pbs, sampler=sampler,
                          noise=noise, rng_record=record, ledger=ledger, device=device, dist=ctx)


def _distributed_context(distributed: bool | None) -> DistContext | None:
    if distributed not in (None, True, False):
        raise ValueError(f"Expected distributed in [None, True, False], got {distributed!r}.")
    ctx = None if distributed is False else DistContext.current()
    if distributed is True and ctx is None:
        raise ValueError("distributed=True needs an initialised torch.distributed process group: launch "
                         "with torchrun and call privaudit.training.init_distributed() first.")
    if distributed is None and ctx is not None and ctx.world_size == 1:
        return None
    return ctx


def _join(ctx: DistContext | None, module: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
          targets: torch.Tensor, sampler_gen: torch.Generator, device: torch.device,
          settings: dict[str, Any]) -> None:
    """Distributed: checks that every rank runs the same job on the same data, then gives every
    rank rank 0's parameters and buffers (as DistributedDataParallel does)."""
    if ctx is None:
        return
    groups = [{k: repr(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    ctx.check_same("data, model and settings", {
        "data": tensor_digest(inputs, targets),
        "settings": settings,
        "sampler_seed": tensor_digest(sampler_gen.get_state()),
        "module": [(name, tuple(p.shape), str(p.dtype)) for name, p in module.named_parameters()],
        "optimizer": (type(optimizer).__name__, groups),
        "device_type": device.type,
    })
    ctx.broadcast_([*module.parameters(), *module.buffers()])
