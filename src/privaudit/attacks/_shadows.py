"""Shadow (reference) models for LiRA and RMIA, trained side by side in one vectorised computation.

K models of one architecture, each trained on its own half of a population,
are held as stacked parameters {name: (K, ...)} and trained together, not as a
Python loop of K trainings: for plain MLPs (logreg, mlp) one batched matrix
product per layer with a hand-written backward pass, else one `torch.func.vmap`
over models of `functional_call` per pass (`ShadowConfig.backend`, see
`_shadow_grads`). Each model still follows exactly the loop that `make_private`'s
trainer would run on its own training set, with its own seed:

* non-private (`no_dp`): shuffled epochs of `batch_size` examples, mean loss,
  ceil(epochs * ceil(N_k / B)) steps;
* DP-SGD: Poisson sampling with q_k = B / N_k for ceil(epochs * N_k / B) steps;
  per-example gradients (`vmap(grad)` nested inside the vmap over models),
  each clipped to C in flat L2 (or C / sqrt(L) per layer); N(0, sigma^2 C^2)
  added once per model per step to the clipped sum; division by q_k * N_k
  (Abadi et al. 2016, arXiv 1607.00133v2, Algorithm 1, with the fixed
  denominator of McMahan et al. 2018, arXiv 1710.06963v3, Sec. 3);
* SGD with momentum or Adam, as the target's optimizer.

Model k's initialisation, sampler and noise come from `seeds[k]` alone (the
seed is used as `train_job` uses a run's seed: `torch.manual_seed` before
building the model, `make_generators` for the sampler and noise streams), so
training any subset of the models gives the same result for each of them:
shards can be trained apart and merged. Logical batches of different sizes
are padded to one shape and masked, and split into fixed-size chunks to bound
the memory taken by per-example gradients.

The IN/OUT assignment follows the LiRA reference code (Carlini et al. 2022,
arXiv 2112.03570v2): every example is IN for exactly K/2 models (K even; for
odd K, floor or ceil), so each model trains on about half the population.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from .. import _validate
from ..accounting import sampling_rate_and_steps
from ..training._config import auto_physical_batch_size
from ..training._noise import make_generators
from ..training._sampler import PoissonSampler, ShuffleSampler
from ._model_signals import stack_models
from ._shadow_grads import BACKENDS, PER_EXAMPLE_MODES, StackedGrads

__all__ = ["ShadowConfig", "assign_membership", "shadow_seeds", "train_shadows"]

_SEED_BITS = 62
SHADOW_OPTIMIZERS = ("sgd", "adam")
#: torch.optim.Adam's defaults (betas, eps), which the engine's Adam uses.
_ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8
#: `chunk` value meaning "one pass per step, padded only to that step's largest batch".
_PER_STEP = -1
#: Per-example gradients held at once, in bytes, when `chunk_size` is automatic.
DEFAULT_MEMORY_BUDGET = 256 * 2**20


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShadowConfig:
    """How every shadow model is trained (the target run's settings).

    Attributes:
        epochs, batch_size, lr, momentum: as `TrainSettings` (batch_size is the expected
            logical batch q * N_k under DP, the mini-batch size without).
        sampling_rate: if given, each model's batch is round(sampling_rate * N_k) instead of
            `batch_size` (the target's rate, as `TrainSettings(batch_size=None)` trains).
        optimizer: "sgd" (momentum) or "adam" (torch.optim.Adam's defaults), as the target.
        no_dp: plain mini-batch SGD, no clipping or noise.
        max_grad_norm: C (DP only).
        noise_multiplier: sigma (DP only; the target's resolved value).
        clipping: "flat" or "per_layer", as the engine.
        chunk_size: rows per model in one vectorised pass; None picks the largest that keeps
            K x rows x parameters within `memory_budget` bytes (DP) or the whole batch (no DP);
            for DP by ghost norms on the bmm backend on CPU, None means one pass per step padded
            to that step's largest batch. Changes rounding only, not the result.
        memory_budget: bytes of per-example gradients per pass when `chunk_size` is None.
        per_example: how DP clips (`_shadow_grads`): "auto" (ghost norms for all-Linear
            models, else materialised per-example gradients), "ghost" or "materialize".
            Changes speed and rounding only.
        backend: how the stacked models are run (`_shadow_grads.BACKENDS`): "auto" (batched
            matrix products with a hand-written backward pass for plain MLPs, else
            `torch.func.vmap`), "bmm" or "vmap". Changes speed and rounding only.
    """

    epochs: float
    batch_size: int
    lr: float
    momentum: float = 0.9
    sampling_rate: float | None = None
    optimizer: str = "sgd"
    no_dp: bool = False
    max_grad_norm: float | None = None
    noise_multiplier: float | None = None
    clipping: str = "flat"
    chunk_size: int | None = None
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    per_example: str = "auto"
    backend: str = "auto"

    def __post_init__(self) -> None:
        _validate.positive(epochs=self.epochs, lr=self.lr)
        _validate.integer(minimum=1, batch_size=self.batch_size, memory_budget=self.memory_budget)
        _validate.in_range(0.0, 1.0, hi_open=True, momentum=self.momentum)
        if self.sampling_rate is not None:
            _validate.in_range(0.0, 1.0, lo_open=True, sampling_rate=self.sampling_rate)
        if self.optimizer not in SHADOW_OPTIMIZERS:
            raise ValueError(f"Expected optimizer={self.optimizer!r} in {list(SHADOW_OPTIMIZERS)}.")
        if not isinstance(self.no_dp, bool):
            raise ValueError(f"Expected no_dp={self.no_dp!r} to be a bool.")
        if self.chunk_size is not None:
            _validate.integer(minimum=1, chunk_size=self.chunk_size)
        if self.backend not in BACKENDS:
            raise ValueError(f"Expected backend={self.backend!r} in {list(BACKENDS)}.")
        if self.per_example not in PER_EXAMPLE_MODES:
            raise ValueError(f"Expected per_example={self.per_example!r} in {list(PER_EXAMPLE_MODES)}.")
        if self.clipping not in ("flat", "per_layer"):
            raise ValueError(f"Expected clipping={self.clipping!r} in ['flat', 'per_layer'].")
        if self.no_dp:
            if self.noise_multiplier is not None:
                raise ValueError("Expected noise_multiplier=None with no_dp=True.")
        else:
            if self.max_grad_norm is None or self.noise_multiplier is None:
                raise ValueError("Expected max_grad_norm and noise_multiplier for DP shadows (or no_dp=True).")
            _validate.positive(max_grad_norm=self.max_grad_norm)
            _validate.non_negative(noise_multiplier=self.noise_multiplier)

    def training_dict(self) -> dict[str, Any]:
        """The fields that determine the trained models (not chunk_size, memory_budget, per_example, backend)."""
        out = dataclasses.asdict(self)
        del out["chunk_size"], out["memory_budget"], out["per_example"], out["backend"]
        if self.sampling_rate is None:  # caches written before these fields existed stay valid
            del out["sampling_rate"]
        if self.optimizer == "sgd":
            del out["optimizer"]
        else:
            del out["momentum"]
        if self.no_dp:
            out["max_grad_norm"] = None
        return out


def assign_membership(*, num_models: int, num_examples: int, seed: int) -> np.ndarray:
    """Bool (K, n): True where example i is in model k's training set.

    Each column has exactly K/2 True entries (K even; floor(K/2) or ceil(K/2)
    for odd K), placed uniformly at random: the LiRA reference code's
    `keep = rng.uniform(size=(K, n)).argsort(0) < K / 2`. Rows (model sizes)
    are about n/2.

    >>> m = assign_membership(num_models=4, num_examples=6, seed=0)
    >>> m.sum(axis=0).tolist()
    [2, 2, 2, 2, 2, 2]
    """
    _validate.integer(minimum=1, num_models=num_models, num_examples=num_examples)
    _validate.integer(minimum=0, seed=seed)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1A55]))
    ranks = rng.uniform(size=(num_models, num_examples)).argsort(axis=0).argsort(axis=0)
    keep = ranks < num_models // 2
    if num_models % 2:
        # The middle rank goes IN for a random half of the examples, so sizes stay ~n/2.
        keep |= (ranks == num_models // 2) & (rng.random(num_examples) < 0.5)[None, :]
    return keep


def shadow_seeds(*, num_models: int, seed: int) -> list[int]:
    """K per-model seeds derived from one seed (model k's seed does not depend on K)."""
    _validate.integer(minimum=1, num_models=num_models)
    _validate.integer(minimum=0, seed=seed)
    return [int(np.random.SeedSequence([int(seed), k]).generate_state(2, np.uint64)[0] >> (64 - _SEED_BITS))
            for k in range(num_models)]


# --------------------------------------------------------------------------- per-model plans


@dataclasses.dataclass(eq=False)
class _Plan:
    """One model's training set, sampler, noise generator and step count."""

    rows: torch.Tensor  # population rows of this model's training set (int64, ascending)
    sampler: Any
    noise_gen: torch.Generator | None
    steps: int
    denominator: float  # q_k * N_k under DP

    def next_batch(self) -> torch.Tensor:
        """Population rows of this model's next batch."""
        if isinstance(self.sampler, ShuffleSampler):
            return self.sampler.sample_from(self.rows)
        return self.rows[self.sampler.sample()]


def _plan(rows: np.ndarray, seed: int, cfg: ShadowConfig, device: torch.device) -> _Plan:
    n = int(rows.shape[0])
    if n == 0:
        raise ValueError("Expected every shadow model to have at least one training example.")
    # As train_job: expected_batch_size = min(batch_size, N), or the run's sampling rate times N.
    batch = (max(1, min(n, round(cfg.sampling_rate * n))) if cfg.sampling_rate is not None
             else min(cfg.batch_size, n))
    sampler_gen, noise_gen, _ = make_generators(seed=seed, secure_rng=False, device=device)
    if cfg.no_dp:
        sampler = ShuffleSampler(num_examples=n, batch_size=batch, generator=sampler_gen)
        steps = int(math.ceil(cfg.epochs * sampler.batches_per_epoch - 1e-9))
        return _Plan(torch.from_numpy(rows), sampler, None, steps, float(batch))
    q, steps = sampling_rate_and_steps(epochs=cfg.epochs, batch_size=batch, dataset_size=n)
    sampler = PoissonSampler(num_examples=n, sampling_rate=q, generator=sampler_gen)
    return _Plan(torch.from_numpy(rows), sampler, noise_gen, steps, q * n)


def _chunk_size(cfg: ShadowConfig, num_models: int, num_params: int, plans: list[_Plan], steps: StackedGrads,
                device: torch.device) -> int:
    """Rows per model in one vectorised pass, or `_PER_STEP`."""
    if cfg.chunk_size is not None:
        return cfg.chunk_size
    if cfg.no_dp:
        return max(int(p.denominator) for p in plans)
    if steps.ghost and steps.bmm is not None and device.type == "cpu":
        # Ghost clipping by batched matrix products holds no per-example gradients, so one pass per step
        # fits; on CPU, padding each step only to its largest Poisson batch (not to the mean + 4 standard
        # deviations that a fixed shape needs) saves the padded rows' arithmetic.
        return _PER_STEP
    # Poisson batches: room for the expected size plus 4 standard deviations (the engine's automatic
    # physical batch), so that almost every step is one pass rather than a second, mostly padded one.
    largest = max(auto_physical_batch_size(expected_batch_size=p.denominator, dataset_size=int(p.rows.numel()),
                                           sampling_rate=p.denominator / int(p.rows.numel())) for p in plans)
    if steps.ghost:  # no per-example gradients are formed
        return largest
    per_row = num_models * num_params * 4
    return max(1, min(largest, cfg.memory_budget // per_row))


def train_shadows(
    *,
    model_fn: Callable[[int], nn.Module],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    membership: np.ndarray,
    seeds: Sequence[int],
    config: ShadowConfig,
    models: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Trains the selected shadow models side by side; returns (template, stacked parameters).

    Args:
        model_fn: `model_fn(seed)` builds a freshly initialised model. It is called
            under `torch.manual_seed(seed)` (inside `torch.random.fork_rng`, so the
            caller's global RNG is left alone) with each model's seed.
        inputs, targets: the whole population (n, ...) and its int64 labels (n,).
        membership: bool (K, n), model k trains on the rows where membership[k] is True
            (in ascending order, as its own dataset); see `assign_membership`.
        seeds: K per-model seeds; see `shadow_seeds`.
        config: the training settings shared by every model.
        models: which of the K models to train (default: all), e.g. one shard.
        device: where to train.
        on_step: called with (step, total steps) after each vectorised step.

    Returns:
        A template module of the architecture (in CPU memory) and {name: (len(models), ...)}
        parameters on CPU, in the order of `models`.
    """
    membership = np.asarray(membership)
    if membership.dtype != bool or membership.ndim != 2:
        raise ValueError(f"Expected membership to be a bool array (K, n), got {membership.dtype} {membership.shape}.")
    k_all, n = membership.shape
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise ValueError("Expected inputs and targets to be torch tensors.")
    if inputs.shape[0] != n or targets.shape != (n,):
        raise ValueError(f"Expected inputs (n, ...) and targets (n,) with n={n} (membership's columns), "
                         f"got {tuple(inputs.shape)} and {tuple(targets.shape)}.")
    if len(seeds) != k_all:
        raise ValueError(f"Expected one seed per model ({k_all}), got {len(seeds)}.")
    selected = list(range(k_all)) if models is None else [int(m) for m in models]
    if not selected or any(not 0 <= m < k_all for m in selected) or len(set(selected)) != len(selected):
        raise ValueError(f"Expected models to be distinct indices in [0, {k_all}), got {selected}.")
    device = torch.device(device)
    cfg = config

    modules = []
    for m in selected:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seeds[m]))
            modules.append(model_fn(int(seeds[m])))
    template = modules[0]
    frozen = [name for name, p in template.named_parameters() if not p.requires_grad]
    if frozen:
        raise ValueError(f"Expected every parameter to be trainable (the target trains them all), got frozen {frozen}.")
    params = {k: v.to(device) for k, v in stack_models(modules).items()}
    buffers = {k: b.to(device) for k, b in template.named_buffers()}

    plans = [_plan(np.flatnonzero(membership[m]), int(seeds[m]), cfg, device) for m in selected]
    num_params = sum(int(v[0].numel()) for v in params.values())
    steps = StackedGrads(template, buffers=buffers, max_grad_norm=cfg.max_grad_norm, clipping=cfg.clipping,
                         mode="materialize" if cfg.no_dp else cfg.per_example, backend=cfg.backend,
                         private=not cfg.no_dp)
    chunk = _chunk_size(cfg, len(selected), num_params, plans, steps, device)
    update = _SGD(cfg, params) if cfg.optimizer == "sgd" else _Adam(cfg, params)
    x_all, y_all = inputs.to(device), targets.to(device)
    total = max(p.steps for p in plans)
    try:
        with torch.no_grad():
            for t in range(total):
                live = [i for i, p in enumerate(plans) if t < p.steps]
                if len(live) == len(plans):
                    grads = _gradients(steps, cfg, params, [p.next_batch() for p in plans], plans,
                                       x_all, y_all, chunk)
                    update.apply(params, grads, t + 1)
                else:
                    # Models that took all their steps (e.g. 6 batches per epoch when others have 7) are left out
                    # of the computation and of the update: their parameters and states stay as they are.
                    idx = torch.tensor(live, device=device)
                    grads = _gradients(steps, cfg, {n: v.index_select(0, idx) for n, v in params.items()},
                                       [plans[i].next_batch() for i in live],
                                       [plans[i] for i in live], x_all, y_all, chunk)
                    update.apply(params, grads, t + 1, models=idx)
                if on_step is not None:
                    on_step(t + 1, total)
    finally:
        steps.close()
    return template.cpu(), {k: v.detach().cpu() for k, v in params.items()}


class _Stacked:
    """An optimizer over stacked parameters {name: (K, ...)}; `state` holds its per-name tensors."""

    state: list[dict[str, torch.Tensor]]

    def step_all(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], t: int) -> bool:
        """One fused update of every tensor in place; False (nothing done) where there is none."""
        return False

    def step(self, name: str, p: torch.Tensor, g: torch.Tensor, t: int) -> None:
        raise NotImplementedError

    def apply(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], t: int,
              models: torch.Tensor | None = None) -> None:
        """Step t of the given models (default: all) in place; the others, parameters and state, are untouched."""
        if models is None:
            if not self.step_all(params, grads, t):
                for n in params:
                    self.step(n, params[n], grads[n], t)
            return
        full = [dict(s) for s in self.state]
        for s in self.state:  # the models' rows of the state, updated as a K' model stack, then written back
            for n in s:
                s[n] = s[n].index_select(0, models)
        sub = {n: v.index_select(0, models) for n, v in params.items()}
        try:
            self.apply(sub, grads, t)
        finally:
            for s, whole in zip(self.state, full):
                for n in s:
                    s[n] = whole[n].index_copy_(0, models, s[n])
        for n, v in params.items():
            v.index_copy_(0, models, sub[n])


class _SGD(_Stacked):
    """torch.optim.SGD with momentum (dampening 0) on stacked parameters: buf = m * buf + g; p -= lr * buf."""

    def __init__(self, cfg: ShadowConfig, params: dict[str, torch.Tensor]) -> None:
        self.lr, self.momentum = cfg.lr, cfg.momentum
        self.buf = {k: torch.zeros_like(v) for k, v in params.items()}
        self.state = [self.buf]

    def step(self, name: str, p: torch.Tensor, g: torch.Tensor, t: int) -> None:
        # torch.optim.SGD's update, in place on the stacked tensors (two elementwise ops: nothing to fuse).
        buf = self.buf[name].mul_(self.momentum).add_(g)
        p.add_(buf, alpha=-self.lr)


class _Adam(_Stacked):
    """torch.optim.Adam (betas 0.9/0.999, eps 1e-8, no weight decay) on stacked parameters.

    Kingma & Ba 2015 (arXiv:1412.6980 v9), Algorithm 1, in torch's arrangement:
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). Every model that is
    still training has taken the same t steps, so one t serves them all.
    """

    def __init__(self, cfg: ShadowConfig, params: dict[str, torch.Tensor]) -> None:
        self.lr = cfg.lr
        self.m = {k: torch.zeros_like(v) for k, v in params.items()}
        self.v = {k: torch.zeros_like(v) for k, v in params.items()}
        self.state = [self.m, self.v]
        device = next(iter(params.values())).device
        # torch.optim.Adam(fused=True)'s kernel: one pass over all the tensors instead of seven per tensor
        # (CPU, 16 stacked 64-256-10 MLPs: 0.18 ms vs 0.55 ms a step). Same update, other rounding.
        self.fused = hasattr(torch, "_fused_adam_") and device.type in ("cpu", "cuda")

    def step_all(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], t: int) -> bool:
        if not self.fused:
            return False
        names = list(params)
        # The kernel walks each tensor's memory as if contiguous: a strided gradient (e.g. an einsum's output)
        # is silently misread, so everything goes in contiguous.
        if not all(t_.is_contiguous() for n in names for t_ in (params[n], self.m[n], self.v[n])):
            return False
        b1, b2 = _ADAM_BETAS
        step = torch.tensor(float(t), device=params[names[0]].device)
        torch._fused_adam_([params[n] for n in names], [grads[n].contiguous() for n in names],
                           [self.m[n] for n in names], [self.v[n] for n in names], [], [step] * len(names),
                           lr=self.lr, beta1=b1, beta2=b2, weight_decay=0.0, eps=_ADAM_EPS, amsgrad=False,
                           maximize=False)
        return True

    def step(self, name: str, p: torch.Tensor, g: torch.Tensor, t: int) -> None:
        # torch.optim.Adam's single-tensor update, op for op, in place on the stacked tensors.
        b1, b2 = _ADAM_BETAS
        m, v = self.m[name], self.v[name]
        m.lerp_(g, 1.0 - b1)
        v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        denom = (v.sqrt() / math.sqrt(1.0 - b2 ** t)).add_(_ADAM_EPS)
        p.addcdiv_(m, denom, value=-self.lr / (1.0 - b1 ** t))


def _gradients(steps: StackedGrads, cfg: ShadowConfig, params: dict[str, torch.Tensor], batches: list[torch.Tensor],
               plans: list[_Plan], x_all: torch.Tensor, y_all: torch.Tensor, chunk: int) -> dict[str, torch.Tensor]:
    """Each model's gradient for this step, {name: (K, ...)} (noised and scaled under DP); every model given
    here takes this step."""
    device = x_all.device
    sizes = torch.tensor([int(b.numel()) for b in batches])
    if chunk == _PER_STEP:  # one pass, as wide as this step's largest batch (rounded up to a multiple of 8)
        chunk = max(8, math.ceil(int(sizes.max()) / 8) * 8)
    width = max(1, math.ceil(int(sizes.max()) / chunk)) * chunk  # fixed-shape chunks of `chunk` rows
    # Padding rows point at row 0 with mask 0 and contribute exactly nothing (as in `physical_batches`).
    idx = nn.functional.pad(pad_sequence(batches, batch_first=True), (0, width - int(sizes.max())))
    mask = (torch.arange(width)[None, :] < sizes[:, None]).to(torch.float32)
    idx, mask = idx.to(device), mask.to(device)
    # Non-private: mean loss over the real rows (the engine: (sum of masked losses) / b, then backward).
    weights = mask / sizes.clamp(min=1).to(device=device, dtype=torch.float32)[:, None]
    acc: dict[str, torch.Tensor] | None = None
    for start in range(0, width, chunk):
        sl = slice(start, start + chunk)
        if start > 0 and not bool(mask[:, sl].any()):
            continue
        x, y = x_all[idx[:, sl]], y_all[idx[:, sl]]
        with torch.enable_grad():
            part = (steps.batch_grad(params, x, y, weights[:, sl]) if cfg.no_dp
                    else steps.clipped_sum(params, x, y, mask[:, sl]))
        if acc is None:  # each pass returns fresh tensors (no views of parameters or state): summed in place
            acc = {n: part[n].detach() for n in params}
        else:
            for n in acc:
                acc[n] += part[n]
    assert acc is not None
    if cfg.no_dp:
        return acc
    assert cfg.noise_multiplier is not None and cfg.max_grad_norm is not None
    std = cfg.noise_multiplier * cfg.max_grad_norm
    scale = torch.tensor([1.0 / p.denominator for p in plans], device=device)
    for n in steps.names:
        shape = acc[n].shape[1:]
        view = scale.view(-1, *([1] * len(shape))).to(acc[n].dtype)
        if std > 0.0:
            # N(0, sigma^2 C^2) once per model per step, each model's from its own generator in parameter
            # order (what GaussianNoise.add_ does in the engine), drawn straight into its slot of one buffer;
            # models that took all their steps are not here and draw nothing.
            # Contiguous, so that each model's slot is filled in the order the engine's tensor would be.
            z = torch.empty(acc[n].shape, dtype=acc[n].dtype, device=device)
            for i, p in enumerate(plans):
                assert p.noise_gen is not None
                torch.randn(shape, generator=p.noise_gen, out=z[i])
            acc[n].add_(z, alpha=std)
        acc[n].mul_(view)  # / (q_k N_k), the expected batch size
    return acc
