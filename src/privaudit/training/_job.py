"""A whole training run: data -> model -> DP-SGD -> run directory (resumable).

`train_job(settings)` is what `privaudit train` calls. It writes everything the
accountant, the attacks and the audits need into `runs/<name>/` (see `RunDir`):
the resolved config, the member/non-member split and seeds, the privacy ledger,
per-epoch metrics, the weights (safetensors) and a summary.

Resume semantics: a checkpoint (model, optimizer, sampler and noise generator
states, step count and ledger) is written atomically after every epoch and when
the run is interrupted (SIGINT/SIGTERM are caught and honoured between steps).
`resume=True` continues from the last checkpoint. Steps taken after that
checkpoint by the interrupted process are replayed with the *same* sampler and
noise generator states, so they release exactly the same outputs and are
recorded once: the resumed ledger equals the ledger of an uninterrupted run.

Under `torchrun` (WORLD_SIZE > 1), every process joins the process group (gloo on
CPU, nccl on CUDA, one GPU per process) and trains its share of every batch
(`make_private(distributed=True)`); rank 0 alone writes the run directory, which
is the same as a single-process run's (plus `resolved.distributed` in the config).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _validate, __version__
from ..accounting import ACCOUNTANT_NAMES
from ._adaptive import AdaptiveClipping
from ._data import Dataset, load_dataset
from ._distributed import DistContext, init_distributed, launched_by_torchrun
from ._engine import PrivateTrainer, make_private
from ._models import ACTIVATIONS, MODEL_NAMES, build_model
from ._recipe import DEFAULT_RECIPE as _RECIPE
from ._recipe import OPTIMIZERS, make_optimizer
from ._rundir import RunDir, flatten_state, unflatten_state

__all__ = ["EpochRecord", "TrainResult", "TrainSettings", "train_job"]

_RECIPE_MODEL = dict(_RECIPE.model_kwargs)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """Everything `privaudit train` accepts. Defaults are `DEFAULT_RECIPE` (chosen once on digits).

    MLP with `hidden` units and `activation` (the CNN uses `activation` too), Adam,
    expected batch size N/6 unless `batch_size` is given, C = 0.5; the same at every
    epsilon (only the noise multiplier changes). Exactly one of `noise_multiplier`
    and `target_epsilon` is given unless `no_dp`.
    """

    data: str = "digits"
    target: str | None = None
    model: str = _RECIPE.model
    hidden: int = _RECIPE_MODEL["hidden"]
    activation: str = _RECIPE_MODEL["activation"]
    epochs: float = _RECIPE.epochs
    batch_size: int | None = None
    optimizer: str = _RECIPE.optimizer
    lr: float = _RECIPE.lr
    momentum: float = 0.9
    max_grad_norm: float = _RECIPE.max_grad_norm
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    no_dp: bool = False
    clipping: str = "flat"
    adaptive_clip: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    count_noise_std: float | None = None
    accountant: str = "pld"
    physical_batch_size: int | None = None
    seed: int = 0
    split_seed: int = 0
    test_fraction: float = 0.2
    secure_rng: bool = False
    device: str = "auto"
    name: str | None = None
    out: str = "runs"

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ValueError(f"Expected model={self.model!r} in {list(MODEL_NAMES)}.")
        if self.accountant not in ACCOUNTANT_NAMES:
            raise ValueError(f"Expected accountant={self.accountant!r} in {list(ACCOUNTANT_NAMES)}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Expected optimizer={self.optimizer!r} in {list(OPTIMIZERS)}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Expected activation={self.activation!r} in {list(ACTIVATIONS)}.")
        _validate.positive(epochs=self.epochs, lr=self.lr, max_grad_norm=self.max_grad_norm)
        _validate.in_range(0.0, 1.0, hi_open=True, momentum=self.momentum)
        _validate.integer(minimum=1, hidden=self.hidden)
        if self.batch_size is not None:
            _validate.integer(minimum=1, batch_size=self.batch_size)
        _validate.integer(minimum=0, seed=self.seed, split_seed=self.split_seed)
        _validate.in_range(0.0, 1.0, lo_open=True, hi_open=True, delta=self.delta,
                           test_fraction=self.test_fraction)
        if self.physical_batch_size is not None:
            _validate.integer(minimum=1, physical_batch_size=self.physical_batch_size)
        if self.no_dp:
            if self.noise_multiplier is not None or self.target_epsilon is not None:
                raise ValueError("--no-dp trains without noise: drop --noise-multiplier/--target-epsilon.")
        elif (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("Give exactly one of noise_multiplier and target_epsilon (or no_dp).")
        if self.noise_multiplier is not None:
            _validate.positive(noise_multiplier=self.noise_multiplier)
        if self.target_epsilon is not None:
            _validate.positive(target_epsilon=self.target_epsilon)
        _validate.device_name(device=self.device)
        self.adaptive_clipping()  # validates target_quantile, clip_learning_rate, count_noise_std
        if self.adaptive_clip and (self.no_dp or self.clipping != "flat"):
            raise ValueError("adaptive_clip needs DP training with clipping='flat'.")

    def adaptive_clipping(self) -> AdaptiveClipping | None:
        """The adaptive clipping rule (Andrew et al. 2021) when `adaptive_clip`, else None."""
        rule = AdaptiveClipping(target_quantile=self.target_quantile, learning_rate=self.clip_learning_rate,
                                count_noise_std=self.count_noise_std)
        return rule if self.adaptive_clip else None

    def expected_batch_size(self, n_train: int) -> int:
        """The expected (logical) batch q*N: `batch_size`, or the recipe's sampling rate times N."""
        if self.batch_size is not None:
            return min(self.batch_size, n_train)
        return _RECIPE.expected_batch_size(n_train)

    def make_optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """Adam(lr) or SGD(lr, momentum), as `optimizer` says."""
        return make_optimizer(self.optimizer, params, lr=self.lr, momentum=self.momentum)

    def run_name(self) -> str:
        if self.name:
            return self.name
        budget = "nodp" if self.no_dp else (
            f"eps{self.target_epsilon:g}" if self.target_epsilon is not None else f"sigma{self.noise_multiplier:g}")
        data = Path(self.data).stem if ("/" in self.data or "." in self.data) else self.data
        return f"{data}-{self.model}-{budget}-seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TrainSettings:
        return _validate.settings_from_mapping(cls, data, what="training")


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    """One line of `metrics.jsonl`."""

    epoch: int
    step: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    epsilon: float
    seconds: float


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a finished (or interrupted) run reports."""

    run_dir: Path
    steps: int
    planned_steps: int
    epsilon: float
    delta: float
    noise_multiplier: float | None
    test_accuracy: float
    seconds: float
    interrupted: bool


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} was asked for but no CUDA device is available.")
    return dev


def _load_data(s: TrainSettings) -> Dataset:
    return load_dataset(s.data, seed=s.split_seed, test_fraction=s.test_fraction, target=s.target,
                        image_shape=(s.model == "cnn"))


def _tensors(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))

    return t(ds.x_train), t(ds.y_train).long(), t(ds.x_test), t(ds.y_test).long()


def build_for(s: TrainSettings, ds: Dataset) -> nn.Module:
    """The model of `s` for dataset `ds` (seeded by `s.seed`)."""
    torch.manual_seed(s.seed)
    kwargs: dict[str, Any] = {}
    if s.model == "transformer":
        if ds.kind != "tokens" or ds.vocab_size is None:
            raise ValueError(f"model='transformer' needs a token dataset (e.g. synthetic-tokens), got {ds.name!r}.")
        kwargs["vocab_size"] = ds.vocab_size
    elif ds.kind == "tokens":
        raise ValueError(f"Token dataset {ds.name!r} needs model='transformer', got {s.model!r}.")
    if s.model == "mlp":
        kwargs["hidden"] = s.hidden
    if s.model in ("mlp", "cnn"):
        kwargs["activation"] = s.activation
    return build_model(s.model, input_shape=ds.input_shape, num_classes=ds.num_classes, **kwargs)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: torch.device,
             batch_size: int = 2048) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on (x, y)."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        out = model(xb)
        loss_sum += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    model.train(was_training)
    n = max(1, x.shape[0])
    return loss_sum / n, correct / n


@contextmanager
def _stop_requests() -> Iterator[list[int]]:
    """Turns SIGINT/SIGTERM into a flag checked between steps (a step is never cut in half)."""
    flag: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        flag.append(signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: no signal handling, still correct
            pass
    try:
        yield flag
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def _checkpoint(rd: RunDir, trainer: PrivateTrainer, epoch: int) -> None:
    tensors, skeleton = flatten_state(trainer.state_dict())
    rd.save_checkpoint(tensors=tensors, state={"trainer": skeleton, "epoch": epoch})
    rd.write_ledger(trainer.ledger)


def train_job(
    settings: TrainSettings,
    *,
    resume: bool = False,
    on_step: Callable[[PrivateTrainer, Any], None] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    max_steps: int | None = None,
) -> TrainResult:
    """Trains as `settings` says and writes the run directory.

    Args:
        settings: the run's settings.
        resume: continue `out/name` from its last checkpoint (the stored config wins;
            `settings` must describe the same run).
        on_step / on_epoch: progress callbacks.
        max_steps: stop (as if interrupted, with a checkpoint) after this many steps
            in total; used to test resumption.

    Raises:
        ValueError: bad settings, an existing run without `resume`, or a resume whose
            settings differ from the stored ones.
    """
    s = settings
    # Under torchrun: join the process group; rank 0 alone touches the run directory.
    owns_group = False
    if launched_by_torchrun() or DistContext.current() is not None:
        device, owns_group = init_distributed(s.device)
    else:
        device = _device(s.device)
    dist_ctx = DistContext.current()
    if dist_ctx is not None and dist_ctx.world_size == 1:
        dist_ctx = None
    try:
        return _train_job(s, resume=resume, on_step=on_step, on_epoch=on_epoch, max_steps=max_steps,
                          dist_ctx=dist_ctx, device=device)
    finally:
        if owns_group:
            torch.distributed.destroy_process_group()


def _open_run_dir(s: TrainSettings, name: str, resume: bool) -> RunDir:
    out = Path(s.out)
    if resume:
        rd = RunDir.open(out / name)
        stored = rd.read_config().get("settings", {})
        mine = {k: v for k, v in s.to_dict().items() if v is not None}
        diff = sorted(k for k in set(stored) | set(mine) if k not in ("out", "device") and stored.get(k) != mine.get(k))
        if diff:
            raise ValueError(f"--resume: the settings differ from the stored run in {diff}.")
    else:
        if (out / name).exists():
            raise ValueError(f"Run directory {str(out / name)!r} exists: use --resume, or another --name.")
        rd = RunDir.create(out, name)
    return rd


def _train_job(s: TrainSettings, *, resume: bool, on_step: Callable[[PrivateTrainer, Any], None] | None,
               on_epoch: Callable[[EpochRecord], None] | None, max_steps: int | None,
               dist_ctx: DistContext | None, device: torch.device) -> TrainResult:
    name = s.run_name()
    main = dist_ctx is None or dist_ctx.is_main
    rd: Any = None
    error = None
    if main:
        try:
            rd = _open_run_dir(s, name, resume)
        except ValueError as exc:
            if dist_ctx is None:
                raise
            error = str(exc)
    if dist_ctx is not None:  # every rank fails alike (no rank left waiting in a collective)
        error = dist_ctx.broadcast_object(error)
        if error is not None:
            raise ValueError(error)
    try:
        ds = _load_data(s)
        model = build_for(s, ds)
        x_tr, y_tr, x_te, y_te = _tensors(ds)
        optimizer = s.make_optimizer(model.parameters())
        batch = s.expected_batch_size(ds.n_train)
        trainer = make_private(
            module=model, optimizer=optimizer, data=(x_tr, y_tr), loss_fn=nn.CrossEntropyLoss(),
            epochs=s.epochs, expected_batch_size=batch,
            max_grad_norm=None if s.no_dp else s.max_grad_norm,
            noise_multiplier=s.noise_multiplier, target_epsilon=s.target_epsilon, target_delta=s.delta,
            physical_batch_size=s.physical_batch_size, clipping=s.clipping, accountant=s.accountant,
            seed=None if s.secure_rng else s.seed, secure_rng=s.secure_rng, device=device, no_dp=s.no_dp,
            adaptive_clipping=s.adaptive_clipping(),
            distributed=dist_ctx is not None)
    except BaseException:
        # A run that could not start (bad data, a budget that cannot be met, ...) leaves no empty
        # run directory behind that would block the next attempt under the same name.
        if rd is not None and not resume and not rd.config_path.exists():
            shutil.rmtree(rd.path, ignore_errors=True)
        raise
    start_epoch = 0
    if resume:
        ckpt = rd.load_checkpoint() if main else None
        if dist_ctx is not None:  # rank 0's checkpoint, on every rank
            ckpt = dist_ctx.broadcast_object(ckpt)
        if ckpt is not None:
            tensors, state = ckpt
            trainer.load_state_dict(unflatten_state(state["trainer"], tensors))
            start_epoch = int(state["epoch"])
    elif main:
        config = {
            "privaudit_version": __version__,
            "torch_version": torch.__version__,
            "settings": {k: v for k, v in s.to_dict().items() if v is not None},
            "resolved": {
                "run_name": name,
                "device": str(device),
                "dataset": ds.describe(),
                "planned_steps": trainer.planned_steps,
                "expected_batch_size": batch,
                "dp": None if trainer.config is None else trainer.config.to_dict(),
                "rng": trainer.rng_record.to_dict(),
                "neighboring_relation": trainer.ledger.neighboring_relation,
                "sampler": "shuffle" if s.no_dp else "poisson",
            },
        }
        if dist_ctx is not None:
            config["resolved"]["distributed"] = {"world_size": dist_ctx.world_size, "backend": dist_ctx.backend}
        rd.write_config(config)
        rd.write_split(ds.split_record(), {
            "training_seed": s.seed, "noise_seed": trainer.rng_record.seed,
            "secure_rng": trainer.rng_record.secure_rng, "model_init_seed": s.seed})
        rd.write_ledger(trainer.ledger)
    # Epoch boundaries (where metrics and checkpoints are written): every ceil(N / B) steps.
    steps_per_epoch = max(1, math.ceil(ds.n_train / batch))
    t0 = time.perf_counter()
    interrupted = False
    epoch = start_epoch
    with _stop_requests() as stop:
        while trainer.remaining_steps > 0:
            boundary = min(trainer.planned_steps, (epoch + 1) * steps_per_epoch)
            todo = max(1, boundary - trainer.steps_taken)
            for _ in range(todo):
                halt = bool(stop) or (max_steps is not None and trainer.steps_taken >= max_steps)
                if dist_ctx is not None:  # all ranks stop at the same step
                    halt = dist_ctx.any_true(halt, device)
                if halt:
                    interrupted = True
                    break
                st = trainer.step()
                if on_step is not None:
                    on_step(trainer, st)
            if interrupted:
                if main:
                    _checkpoint(rd, trainer, epoch)
                break
            epoch += 1
            if not main:
                continue
            tr_loss, tr_acc = evaluate(model, x_tr, y_tr, device=device)
            te_loss, te_acc = evaluate(model, x_te, y_te, device=device)
            eps = trainer.epsilon(s.delta)
            rec = EpochRecord(epoch=epoch, step=trainer.steps_taken, train_loss=tr_loss, train_accuracy=tr_acc,
                              test_loss=te_loss, test_accuracy=te_acc, epsilon=eps,
                              seconds=time.perf_counter() - t0)
            rd.append_metrics(dataclasses.asdict(rec))
            rd.save_weights(model.state_dict(), metadata={"steps": str(trainer.steps_taken)})
            _checkpoint(rd, trainer, epoch)
            if on_epoch is not None:
                on_epoch(rec)
    te_acc = evaluate(model, x_te, y_te, device=device)[1] if main else math.nan
    eps = trainer.epsilon(s.delta)
    seconds = time.perf_counter() - t0
    trainer.close()
    result = TrainResult(run_dir=Path(s.out) / name if rd is None else rd.path, steps=trainer.steps_taken, planned_steps=trainer.planned_steps,
                         epsilon=eps, delta=s.delta,
                         noise_multiplier=None if trainer.config is None else trainer.config.noise_multiplier,
                         test_accuracy=te_acc, seconds=seconds, interrupted=interrupted)
    if not interrupted and main:
        rd.save_weights(model.state_dict(), metadata={"steps": str(trainer.steps_taken)})
        rd.write_ledger(trainer.ledger)
        rd.write_summary({
            "status": "complete", "steps": result.steps, "planned_steps": result.planned_steps,
            "epsilon": eps if math.isfinite(eps) else None, "delta": s.delta,
            "private": not s.no_dp, "noise_multiplier": result.noise_multiplier,
            "max_grad_norm": None if s.no_dp else s.max_grad_norm,
            **({"final_clipping_norm": trainer.clipping_norm} if s.adaptive_clip else {}),
            "sampling_rate": None if trainer.config is None else trainer.config.sampling_rate,
            "accountant": s.accountant, "test_accuracy": te_acc, "train_seconds": seconds,
            "n_train": ds.n_train, "n_test": ds.n_test})
    return result
