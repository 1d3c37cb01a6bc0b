"""Built-in trainers to audit: two real DP-SGD implementations and the classic mistakes.

Every trainer follows the `Trainer` protocol and calibrates its noise multiplier
with the PLD accountant so that the event it *claims* is worth exactly the
requested epsilon (up to the calibration's tolerance, never above it).

* ``privaudit``: the project's DP-SGD engine (`privaudit.training.make_private`).
* ``opacus``: Opacus' `PrivacyEngine` with Poisson sampling (a third-party implementation).
* ``reference``: a plain loop (per-example gradients with ``torch.func``, L2 clipping,
  N(0, sigma^2 C^2) noise, Poisson sampling): correct, the oracle for the broken ones.
* ``broken-no-clipping``: noise sigma*C is added, but gradients are never clipped.
* ``broken-clamp``: ``torch.clamp(g, -C, C)`` element-wise instead of per-example L2 clipping.
* ``broken-noise-sigma``: noise std sigma instead of sigma*C, with C = 0.5 < 1 by default.
  With C < 1 this *over*-noises (std sigma > sigma*C) and is in fact private: a negative
  control that must PASS. With C > 1 (``TrainingOptions(max_grad_norm=4.0)``) it leaks.
* ``broken-noise-batch``: the noise is divided by the batch size twice: std sigma*C/B on
  the clipped sum, i.e. sigma*C/B^2 on the mean gradient (Tramer et al. 2022,
  arXiv:2202.12219 v2, the noise "too small by a batch-size factor").
* ``broken-shuffle``: shuffled fixed-size batches while the claim assumes Poisson sampling.
* ``broken-no-noise``: claims the calibrated sigma, adds no noise at all.

In the broken loops the included gradient canaries are rows of the same index
space as the data: the sampler draws them and the same (broken) clipping code
clips them. In ``privaudit`` and ``opacus`` they enter the implementation's own
clipping code (see `_whitebox`).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from privaudit import _validate
from privaudit.accounting import calibrate_noise_multiplier, dpsgd_event, sampling_rate_and_steps

from ._canaries import AuditDataset, GradientCanaries, Trainer, TrainerOutput
from ._whitebox import CanaryInjector, append_opacus_canaries, flat_update, sample_canaries

__all__ = ["BUILTIN_TRAINERS", "BuiltinTrainer", "TrainingOptions", "load_trainer"]

_LOOP_VARIANTS: dict[str, tuple[str, str, str]] = {
    # name: (clipping, noise, sampler)
    "reference": ("l2", "sigma*C", "poisson"),
    "broken-no-clipping": ("none", "sigma*C", "poisson"),
    "broken-clamp": ("clamp", "sigma*C", "poisson"),
    "broken-noise-sigma": ("l2", "sigma", "poisson"),
    "broken-noise-batch": ("l2", "sigma*C/B", "poisson"),
    "broken-shuffle": ("l2", "sigma*C", "shuffle"),
    "broken-no-noise": ("l2", "zero", "poisson"),
}
BUILTIN_TRAINERS: tuple[str, ...] = ("privaudit", "opacus", *_LOOP_VARIANTS)
#: The clipping norm of broken-noise-sigma unless TrainingOptions.max_grad_norm says otherwise.
NOISE_SIGMA_DEFAULT_CLIP = 0.5
#: Largest per-chunk tensor of per-example gradients, in elements.
_CHUNK_ELEMENTS = 2**22


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingOptions:
    """The recipe every built-in trainer follows (only the noise multiplier depends on epsilon).

    Attributes:
        hidden: width of the MLP's hidden layer (tanh); 256 gives ~19k parameters on
            digits, room for 10,000 Dirac canaries.
        epochs: planned passes; steps = ceil(epochs / sampling_rate).
        sampling_rate: expected batch / dataset size; 1.0 is full-batch DP-GD.
        max_grad_norm: clipping norm C (None: 1.0, and 0.5 for broken-noise-sigma).
        lr: Adam's learning rate.
    """

    hidden: int = 256
    epochs: float = 10.0
    sampling_rate: float = 0.1
    max_grad_norm: float | None = None
    lr: float = 0.01

    def __post_init__(self) -> None:
        _validate.integer(minimum=1, hidden=self.hidden)
        _validate.positive(epochs=self.epochs, lr=self.lr)
        _validate.in_range(0.0, 1.0, lo_open=True, sampling_rate=self.sampling_rate)
        if self.max_grad_norm is not None:
            _validate.positive(max_grad_norm=self.max_grad_norm)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class BuiltinTrainer:
    """A built-in trainer by name (one of `BUILTIN_TRAINERS`), following the `Trainer` protocol."""

    name: str
    options: TrainingOptions = TrainingOptions()

    def __post_init__(self) -> None:
        if self.name not in BUILTIN_TRAINERS:
            raise ValueError(f"Expected trainer={self.name!r} in {list(BUILTIN_TRAINERS)} or 'module:function'.")

    def __call__(self, dataset: AuditDataset, *, epsilon: float, delta: float, seed: int,
                 record_updates: bool) -> TrainerOutput:
        _validate.positive(epsilon=epsilon)
        _validate.in_range(0.0, 1.0, lo_open=True, hi_open=True, delta=delta)
        _validate.integer(minimum=0, seed=seed)
        common = dict(epsilon=float(epsilon), delta=float(delta), seed=int(seed),
                      record_updates=bool(record_updates), options=self.options)
        if self.name == "privaudit":
            return _train_privaudit(dataset, **common)
        if self.name == "opacus":
            return _train_opacus(dataset, **common)
        return _train_loop(dataset, variant=self.name, **common)


def load_trainer(trainer: str | Callable[..., TrainerOutput], *,
                 options: TrainingOptions | None = None) -> tuple[str, Trainer]:
    """``(name, trainer)`` from a built-in name, ``"module:function"``, or a callable.

    Raises:
        ValueError: an unknown name, a module that cannot be imported, or an attribute
            that is missing or not callable (the message names `trainer`).
    """
    if callable(trainer):
        return str(getattr(trainer, "name", getattr(trainer, "__name__", type(trainer).__name__))), trainer
    if not isinstance(trainer, str) or not trainer.strip():
        raise ValueError(f"Expected trainer to be a name in {list(BUILTIN_TRAINERS)}, 'module:function' "
                         f"or a callable, got {trainer!r}.")
    spec = trainer.strip()
    if spec in BUILTIN_TRAINERS:
        return spec, BuiltinTrainer(spec, options or TrainingOptions())
    if ":" not in spec:
        raise ValueError(f"Expected trainer={spec!r} in {list(BUILTIN_TRAINERS)} or of the form 'module:function'.")
    if options is not None:
        raise ValueError("TrainingOptions apply to built-in trainers only, not to trainer='module:function'.")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import error of any kind is the user's module's problem
        raise ValueError(f"Cannot import the module of trainer={spec!r}: {type(exc).__name__}: {exc}") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"Module {module_name!r} has no attribute {attr!r} (trainer={spec!r}).")
    if not callable(fn):
        raise ValueError(f"Expected trainer={spec!r} to name a callable, got {type(fn).__name__}.")
    return spec, fn


# --------------------------------------------------------------------------------------
# Shared pieces


def _seeds(seed: int) -> dict[str, int]:
    """Independent seeds for model initialisation, sampler, noise and canary sampling."""
    state = np.random.SeedSequence(seed).generate_state(4, dtype=np.uint64)
    return dict(zip(("model", "sampler", "noise", "canary"), (int(s) % 2**62 for s in state)))


def _build_model(dataset: AuditDataset, options: TrainingOptions, seed: int) -> nn.Module:
    from privaudit.training import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model("mlp", input_shape=dataset.input_shape, num_classes=dataset.num_classes,
                           hidden=options.hidden, activation="tanh")


def _tensors(dataset: AuditDataset) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.as_tensor(np.asarray(dataset.x, dtype=np.float32)),
            torch.as_tensor(np.asarray(dataset.y, dtype=np.int64)))


def _batch_size(rate: float, n: int) -> int:
    return max(1, min(n, round(rate * n)))


def _stack_updates(updates: list[np.ndarray] | None) -> np.ndarray | None:
    return None if updates is None else np.stack(updates) if updates else None


# --------------------------------------------------------------------------------------
# privaudit's engine


def _train_privaudit(dataset: AuditDataset, *, epsilon: float, delta: float, seed: int, record_updates: bool,
                     options: TrainingOptions) -> TrainerOutput:
    from privaudit.training import make_private

    seeds = _seeds(seed)
    x, y = _tensors(dataset)
    c = 1.0 if options.max_grad_norm is None else options.max_grad_norm
    model = _build_model(dataset, options, seeds["model"])
    trainer = make_private(module=model, optimizer=torch.optim.Adam(model.parameters(), lr=options.lr),
                           data=(x, y), loss_fn=nn.CrossEntropyLoss(), epochs=options.epochs,
                           expected_batch_size=_batch_size(options.sampling_rate, dataset.size),
                           max_grad_norm=c, target_epsilon=epsilon, target_delta=delta, seed=seeds["sampler"])
    # The canaries join the clipped sum right before the engine's noise (public trainer hooks).
    noise = CanaryInjector(trainer=trainer, canaries=dataset.gradient_canaries,
                           generator=torch.Generator().manual_seed(seeds["canary"]), record=record_updates)
    try:
        trainer.run()
    finally:
        noise.remove()
        trainer.close()
    cfg = trainer.config
    return TrainerOutput(model=model, event=cfg.dp_event(), delta=delta, max_grad_norm=c,
                         updates=_stack_updates(noise.updates),
                         info={"implementation": "privaudit.training.make_private",
                               "noise_multiplier": cfg.noise_multiplier, "sampling_rate": cfg.sampling_rate,
                               "steps": cfg.steps, "max_grad_norm": c, "sampler": "poisson"})


# --------------------------------------------------------------------------------------
# Opacus


def _train_opacus(dataset: AuditDataset, *, epsilon: float, delta: float, seed: int, record_updates: bool,
                  options: TrainingOptions) -> TrainerOutput:
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    seeds = _seeds(seed)
    x, y = _tensors(dataset)
    c = 1.0 if options.max_grad_norm is None else options.max_grad_norm
    model = _build_model(dataset, options, seeds["model"])
    loader = DataLoader(TensorDataset(x, y), batch_size=_batch_size(options.sampling_rate, dataset.size),
                        generator=torch.Generator().manual_seed(seeds["sampler"]))
    # Opacus' Poisson loader samples with rate 1 / len(loader); claim exactly that.
    q = 1.0 / len(loader)
    steps = int(math.ceil(options.epochs * len(loader) - 1e-9))
    sigma = calibrate_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sampling_rate=q, steps=steps)
    canaries = dataset.gradient_canaries
    canary_gen = torch.Generator().manual_seed(seeds["canary"])
    updates: list[np.ndarray] | None = [] if record_updates else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure-RNG and hook notices: nothing the audit can act on
        engine = PrivacyEngine()
        gsm, optimizer, dp_loader = engine.make_private(
            module=model, optimizer=torch.optim.Adam(model.parameters(), lr=options.lr), data_loader=loader,
            noise_multiplier=sigma, max_grad_norm=c, poisson_sampling=True,
            noise_generator=torch.Generator().manual_seed(seeds["noise"]))
        params = [p for p in model.parameters() if p.requires_grad]
        taken = 0
        while taken < steps:
            for xb, yb in dp_loader:
                if taken == steps:
                    break
                optimizer.zero_grad()
                if xb.shape[0]:
                    F.cross_entropy(gsm(xb), yb).backward()
                for p in params:
                    if getattr(p, "grad_sample", None) is None:
                        p.grad_sample = torch.zeros(0, *p.shape, dtype=p.dtype, device=p.device)
                if canaries is not None:
                    ids = sample_canaries(canaries.included, q, canary_gen)
                    if ids.size:
                        append_opacus_canaries(params, canaries, ids)
                optimizer.step()
                if updates is not None:  # p.grad = noisy clipped sum / expected batch size
                    updates.append(flat_update([p.grad * optimizer.expected_batch_size for p in params]))
                taken += 1
        gsm._close()
    return TrainerOutput(model=model, event=dpsgd_event(sigma, steps, sampling_rate=q), delta=delta,
                         max_grad_norm=c, updates=_stack_updates(updates),
                         info={"implementation": "opacus.PrivacyEngine (poisson_sampling=True)",
                               "noise_multiplier": sigma, "sampling_rate": q, "steps": steps,
                               "max_grad_norm": c, "sampler": "poisson"})


# --------------------------------------------------------------------------------------
# The explicit loop (reference and broken variants)


def _clip(rows: torch.Tensor, how: str, c: float) -> torch.Tensor:
    if how == "l2":  # Abadi et al. 2016 (arXiv:1607.00133 v2), Algorithm 1, "Clip gradient"
        return rows * torch.clamp(c / (rows.norm(dim=1, keepdim=True) + 1e-6), max=1.0)
    if how == "clamp":  # the bug: each coordinate to [-C, C]; the row's norm can reach C sqrt(d)
        return rows.clamp(-c, c)
    return rows  # "none"


def _noise_std(how: str, sigma: float, c: float, batch: int) -> float:
    return {"sigma*C": sigma * c, "sigma": sigma, "sigma*C/B": sigma * c / batch, "zero": 0.0}[how]


class _FlatModel:
    """A module evaluated at a flat parameter vector, with per-example gradients by torch.func."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.sizes = [p.numel() for _, p in self.params]
        self.theta = torch.cat([p.detach().reshape(-1) for _, p in self.params]).clone()

        def loss(theta: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            out = torch.func.functional_call(self.module, self._unflatten(theta), (xi.unsqueeze(0),))
            return F.cross_entropy(out, yi.unsqueeze(0))

        self._per_example = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))

    def _unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for (name, p), k in zip(self.params, self.sizes):
            out[name] = theta[start:start + k].view(p.shape)
            start += k
        return out

    def per_example_grads(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._per_example(theta, x, y)

    def load(self, theta: torch.Tensor) -> nn.Module:
        with torch.no_grad():
            for (_, p), t in zip(self.params, self._unflatten(theta).values()):
                p.copy_(t)
        return self.module


def _train_loop(dataset: AuditDataset, *, variant: str, epsilon: float, delta: float, seed: int,
                record_updates: bool, options: TrainingOptions) -> TrainerOutput:
    from privaudit.training._sampler import PoissonSampler, ShuffleSampler

    clipping, noise, sampling = _LOOP_VARIANTS[variant]
    default_c = NOISE_SIGMA_DEFAULT_CLIP if variant == "broken-noise-sigma" else 1.0
    c = default_c if options.max_grad_norm is None else options.max_grad_norm
    seeds = _seeds(seed)
    x, y = _tensors(dataset)
    canaries: GradientCanaries | None = dataset.gradient_canaries
    included = canaries.included if canaries is not None else np.zeros(0, dtype=np.int64)
    n_data = dataset.size
    n = n_data + included.size  # canaries are examples: rows n_data.. of the index space
    batch = _batch_size(options.sampling_rate, n)
    q, steps = sampling_rate_and_steps(epochs=options.epochs, batch_size=batch, dataset_size=n)
    sigma = calibrate_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sampling_rate=q, steps=steps)
    std = _noise_std(noise, sigma, c, batch)
    gen = torch.Generator().manual_seed(seeds["sampler"])
    sampler: Any = (PoissonSampler(num_examples=n, sampling_rate=q, generator=gen) if sampling == "poisson"
                    else ShuffleSampler(num_examples=n, batch_size=batch, generator=gen))
    noise_gen = torch.Generator().manual_seed(seeds["noise"])
    flat = _FlatModel(_build_model(dataset, options, seeds["model"]))
    d = flat.theta.numel()
    theta = flat.theta.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=options.lr)
    chunk = max(1, _CHUNK_ELEMENTS // d)
    updates: list[np.ndarray] | None = [] if record_updates else None
    for _ in range(steps):
        idx = sampler.sample().numpy()
        data_idx, canary_ids = idx[idx < n_data], included[idx[idx >= n_data] - n_data]
        total = torch.zeros(d)
        point = theta.detach()
        for s in range(0, data_idx.size, chunk):
            part = torch.as_tensor(data_idx[s:s + chunk])
            total += _clip(flat.per_example_grads(point, x[part], y[part]), clipping, c).sum(0)
        for s in range(0, canary_ids.size, chunk):
            assert canaries is not None
            rows = torch.from_numpy(canaries.dense(canary_ids[s:s + chunk], d))
            total += _clip(rows, clipping, c).sum(0)
        if std > 0:
            total += std * torch.randn(d, generator=noise_gen)
        if updates is not None:
            updates.append(total.numpy().copy())
        theta.grad = total / (q * n)
        optimizer.step()
    model = flat.load(theta.detach())
    return TrainerOutput(model=model, event=dpsgd_event(sigma, steps, sampling_rate=q), delta=delta,
                         max_grad_norm=c, updates=_stack_updates(updates),
                         info={"implementation": f"explicit loop ({variant})", "noise_multiplier": sigma,
                               "sampling_rate": q, "steps": steps, "max_grad_norm": c, "clipping": clipping,
                               "noise_std_added": std, "sampler": sampling})
