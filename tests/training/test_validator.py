"""The module validator lists every problem at once, with paths and fixes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from privaudit.training import (
    ModuleValidationError,
    build_model,
    find_module_problems,
    fix_module,
    make_private,
    validate_module,
)


class RunningMean(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(3))

    def forward(self, x):
        return x


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight


def _bad_model():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.Sequential(nn.InstanceNorm2d(8, track_running_stats=True), RunningMean()),
        nn.Embedding(10, 4, scale_grad_by_freq=True),
        nn.MultiheadAttention(4, 2),  # batch_first=False
        Tied(),
        nn.BatchNorm1d(6),
    )


def test_every_problem_is_listed_in_one_error():
    with pytest.raises(ModuleValidationError) as info:
        validate_module(_bad_model())
    err = info.value
    paths = [p.path for p in err.problems]
    assert paths == ["1", "2.0", "2.1", "3", "4", "5.b", "6"]
    message = str(err)
    for needle in ["1 (BatchNorm2d)", "nn.GroupNorm(8, 8)", "2.0 (InstanceNorm2d)", "track_running_stats=False",
                   "2.1 (RunningMean)", "3 (Embedding)", "scale_grad_by_freq", "4 (MultiheadAttention)",
                   "batch_first=True", "5.b.weight is the same tensor as 5.a.weight", "6 (BatchNorm1d)", "7 problem(s)"]:
        assert needle in message
    assert isinstance(err, ValueError)


def test_fix_module_replaces_batchnorm_by_groupnorm_and_keeps_the_original():
    model = nn.Sequential(nn.Conv2d(3, 12, 3), nn.BatchNorm2d(12), nn.ReLU(),
                          nn.Sequential(nn.InstanceNorm2d(12, track_running_stats=True)))
    fixed = fix_module(model)
    assert isinstance(model[1], nn.BatchNorm2d)  # original untouched
    assert isinstance(fixed[1], nn.GroupNorm) and fixed[1].num_groups == 12 and fixed[1].num_channels == 12
    assert not fixed[3][0].track_running_stats
    validate_module(fixed)
    out = fixed(torch.randn(2, 3, 6, 6))
    assert out.shape == (2, 12, 4, 4)


def test_fix_module_on_a_bare_batchnorm():
    gn = fix_module(nn.BatchNorm1d(64))
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 32


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn", "transformer"])
def test_built_models_are_valid(name):
    shape = (6,) if name == "transformer" else (1, 8, 8)
    kw = {"vocab_size": 5} if name == "transformer" else {}
    assert find_module_problems(build_model(name, input_shape=shape, num_classes=3, **kw)) == ()


def test_make_private_lists_all_problems():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 6), nn.BatchNorm1d(6))
    with pytest.raises(ModuleValidationError) as info:
        make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     data=(torch.randn(10, 4), torch.zeros(10, dtype=torch.long)), loss_fn=nn.CrossEntropyLoss(),
                     epochs=1, expected_batch_size=5, max_grad_norm=1.0, noise_multiplier=1.0)
    assert [p.path for p in info.value.problems] == ["2", "4"]


def test_validate_module_rejects_non_modules():
    with pytest.raises(ValueError, match="module"):
        validate_module("not a module")
