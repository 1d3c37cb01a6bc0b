"""DP-SGD training for any PyTorch module: per-example clipping, Poisson sampling, noise, ledger.

>>> import torch
>>> from torch import nn
>>> from privaudit.training import build_model, make_private
>>> x, y = torch.randn(100, 8), torch.randint(0, 2, (100,))
>>> model = build_model("logreg", input_shape=(8,), num_classes=2)
>>> trainer = make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
...                        data=(x, y), loss_fn=nn.CrossEntropyLoss(), epochs=1,
...                        expected_batch_size=20, max_grad_norm=1.0, noise_multiplier=1.0, seed=0)
>>> stats = trainer.run()
>>> trainer.steps_taken == trainer.ledger.total_count() == 5
True
"""

from ._adaptive import AdaptiveClipping as AdaptiveClipping
from ._config import DPConfig as DPConfig
from ._config import PrivacyBudgetExhaustedError as PrivacyBudgetExhaustedError
from ._config import StepStats as StepStats
from ._data import DATASET_NAMES as DATASET_NAMES
from ._data import Dataset as Dataset
from ._data import load_dataset as load_dataset
from ._distributed import init_distributed as init_distributed
from ._engine import make_private as make_private
from ._models import MODEL_NAMES as MODEL_NAMES
from ._models import build_model as build_model
from ._noise import RngRecord as RngRecord
from ._recipe import DEFAULT_RECIPE as DEFAULT_RECIPE
from ._recipe import Recipe as Recipe
from ._rundir import RunDir as RunDir
from ._rundir import flatten_state as flatten_state
from ._rundir import unflatten_state as unflatten_state
from ._trainer import PrivateTrainer as PrivateTrainer
from ._validator import ModuleProblem as ModuleProblem
from ._validator import ModuleValidationError as ModuleValidationError
from ._validator import find_module_problems as find_module_problems
from ._validator import fix_module as fix_module
from ._validator import validate_module as validate_module

__all__ = [
    "AdaptiveClipping",
    "DATASET_NAMES",
    "DEFAULT_RECIPE",
    "DPConfig",
    "Dataset",
    "MODEL_NAMES",
    "ModuleProblem",
    "ModuleValidationError",
    "PrivacyBudgetExhaustedError",
    "PrivateTrainer",
    "Recipe",
    "RngRecord",
    "RunDir",
    "StepStats",
    "build_model",
    "find_module_problems",
    "fix_module",
    "flatten_state",
    "init_distributed",
    "load_dataset",
    "make_private",
    "unflatten_state",
    "validate_module",
]
