"""One default training recipe (model, length, batch, clipping, optimizer) for every epsilon.

The same recipe is used at every privacy level: only the noise multiplier,
calibrated from the target epsilon, changes. Tuning hyperparameters per
epsilon on data that matters leaks privacy (Papernot & Steinke 2022, arXiv
2110.03620v2), so the recipe was chosen once, on a validation split carved
out of the digits training set, and is reported on the test split (see
`bench/utility.py` and `reports/utility.md`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .. import _validate
from ..accounting import PrivacyLedger
from ._engine import PrivateTrainer, make_private
from ._models import MODEL_NAMES, build_model

__all__ = ["DEFAULT_RECIPE", "Recipe"]

OPTIMIZERS = ("adam", "sgd")


def make_optimizer(name: str, params: Iterable[nn.Parameter], *, lr: float, momentum: float) -> torch.optim.Optimizer:
    """torch.optim.Adam(lr) (its default betas and eps) or torch.optim.SGD(lr, momentum), by `name`."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    raise ValueError(f"Expected optimizer={name!r} in {list(OPTIMIZERS)}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """How to train: `make_trainer` turns it, plus data and a target epsilon, into a trainer.

    `sampling_rate` is the fraction of the dataset in each (expected) batch; it is
    kept as a fraction so that the recipe carries over between dataset sizes.
    """

    model: str
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    epochs: float
    sampling_rate: float
    max_grad_norm: float
    optimizer: str
    lr: float
    momentum: float = 0.9  # SGD only
    target_delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ValueError(f"Expected model={self.model!r} in {list(MODEL_NAMES)}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Expected optimizer={self.optimizer!r} in {list(OPTIMIZERS)}.")
        _validate.positive(epochs=self.epochs, max_grad_norm=self.max_grad_norm, lr=self.lr)
        _validate.in_range(0.0, 1.0, lo_open=True, sampling_rate=self.sampling_rate)
        _validate.in_range(0.0, 1.0, hi_open=True, momentum=self.momentum)
        _validate.in_range(0.0, 1.0, lo_open=True, hi_open=True, target_delta=self.target_delta)
        object.__setattr__(self, "model_kwargs", tuple((str(k), v) for k, v in self.model_kwargs))

    def expected_batch_size(self, dataset_size: int) -> int:
        """round(sampling_rate * N), at least 1."""
        _validate.integer(minimum=1, dataset_size=dataset_size)
        return max(1, min(dataset_size, round(self.sampling_rate * dataset_size)))

    def build_model(self, *, input_shape: int | Sequence[int], num_classes: int) -> nn.Module:
        return build_model(self.model, input_shape=input_shape, num_classes=num_classes, **dict(self.model_kwargs))

    def make_optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return make_optimizer(self.optimizer, params, lr=self.lr, momentum=self.momentum)

    def make_trainer(
        self,
        *,
        data: tuple[torch.Tensor, torch.Tensor],
        num_classes: int,
        target_epsilon: float | None = None,
        no_dp: bool = False,
        seed: int | None = None,
        secure_rng: bool = False,
        accountant: str = "pld",
        ledger: PrivacyLedger | None = None,
        device: str | torch.device | None = None,
        module: nn.Module | None = None,
    ) -> PrivateTrainer:
        """Builds the model (unless `module` is given), its optimizer and the trainer.

        Exactly one of `target_epsilon` and `no_dp=True`. With a `seed`, model
        initialisation is seeded too (from `torch.manual_seed(seed)`).
        """
        if (target_epsilon is None) != bool(no_dp):
            raise ValueError("Expected exactly one of target_epsilon and no_dp=True "
                             f"(got target_epsilon={target_epsilon!r}, no_dp={no_dp!r}).")
        x, _ = data
        n = int(x.shape[0])
        if module is None:
            if seed is not None:
                torch.manual_seed(seed)
            module = self.build_model(input_shape=tuple(x.shape[1:]), num_classes=num_classes)
        common: dict[str, Any] = dict(
            module=module, optimizer=self.make_optimizer(module.parameters()), data=data,
            loss_fn=nn.CrossEntropyLoss(), epochs=self.epochs, expected_batch_size=self.expected_batch_size(n),
            seed=seed, secure_rng=secure_rng, ledger=ledger, device=device)
        if no_dp:
            return make_private(**common, no_dp=True)
        return make_private(**common, target_epsilon=target_epsilon, target_delta=self.target_delta,
                            max_grad_norm=self.max_grad_norm, accountant=accountant)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model_kwargs"] = dict(self.model_kwargs)
        return out


#: Chosen on a validation split of digits (`bench/utility.py --select 1` and `--select 2`,
#: scored by the worst of acc/target at eps = 1, eps = 8 and without DP); the same at every epsilon.
DEFAULT_RECIPE = Recipe(
    model="mlp",
    model_kwargs=(("hidden", 256), ("activation", "tanh")),
    epochs=40,
    sampling_rate=1 / 6,
    max_grad_norm=0.5,
    optimizer="adam",
    lr=0.02,
)
