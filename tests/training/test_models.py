"""Model builders: shapes, sizes, validity, argument errors, and the default recipe."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from privaudit.training import MODEL_NAMES, build_model


def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_logreg_and_default_mlp_sizes():
    assert _count(build_model("logreg", input_shape=(64,), num_classes=10)) == 64 * 10 + 10
    mlp = build_model("mlp", input_shape=(64,), num_classes=10)
    assert _count(mlp) == 64 * 256 + 256 + 256 * 10 + 10
    deep = build_model("mlp", input_shape=64, num_classes=10, hidden=(512, 512))
    assert _count(deep) == 64 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10


@pytest.mark.parametrize("shape", [(1, 8, 8), (8, 8), (3, 32, 32)])
def test_cnn_handles_digits_and_cifar_shapes(shape):
    m = build_model("cnn", input_shape=shape, num_classes=10)
    assert m(torch.randn(2, *shape)).shape == (2, 10)
    assert any(isinstance(x, nn.GroupNorm) for x in m.modules())
    assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())


def test_cnn_on_flat_inputs_with_image_shape():
    m = build_model("cnn", input_shape=(64,), num_classes=10, image_shape=(1, 8, 8))
    assert m(torch.randn(3, 64)).shape == (3, 10)


def test_transformer_is_batch_first_without_dropout():
    m = build_model("transformer", input_shape=(12,), num_classes=4, vocab_size=20)
    assert m(torch.randint(0, 20, (3, 12))).shape == (3, 4)
    layer = m.encoder.layers[0]
    assert layer.self_attn.batch_first and layer.self_attn.dropout == 0.0
    assert all(not isinstance(x, nn.Dropout) or x.p == 0.0 for x in m.modules())


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        (("resnet",), {"input_shape": (4,), "num_classes": 2}, "name"),
        (("mlp",), {"input_shape": (4,), "num_classes": 0}, "num_classes"),
        (("mlp",), {"input_shape": (0,), "num_classes": 2}, r"input_shape\[0\]"),
        (("mlp",), {"input_shape": (4,), "num_classes": 2, "hidden": (8, -1)}, r"hidden\[1\]"),
        (("mlp",), {"input_shape": (4,), "num_classes": 2, "activation": "swish"}, "activation"),
        (("mlp",), {"input_shape": (4,), "num_classes": 2, "width": 3}, "width"),
        (("cnn",), {"input_shape": (4,), "num_classes": 2}, "input_shape"),
        (("transformer",), {"input_shape": (4,), "num_classes": 2}, "vocab_size"),
        (("transformer",), {"input_shape": (4,), "num_classes": 2, "vocab_size": 5, "d_model": 6,
                            "nhead": 4}, "d_model"),
    ],
)
def test_bad_arguments_name_themselves(args, kwargs, name):
    with pytest.raises(ValueError, match=name):
        build_model(*args, **kwargs)


def test_model_names_are_all_buildable():
    for name in MODEL_NAMES:
        kw = {"vocab_size": 3} if name == "transformer" else {}
        shape = (5,) if name == "transformer" else (1, 4, 4)
        assert isinstance(build_model(name, input_shape=shape, num_classes=2, **kw), nn.Module)


def test_default_recipe_is_frozen_and_builds_a_trainer():
    import dataclasses

    from privaudit.training import DEFAULT_RECIPE, Recipe

    assert isinstance(DEFAULT_RECIPE, Recipe)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_RECIPE.lr = 1.0
    x, y = torch.rand(60, 64), torch.randint(0, 10, (60,))
    trainer = DEFAULT_RECIPE.make_trainer(data=(x, y), num_classes=10, target_epsilon=1.0, seed=0)
    assert trainer.config.sampling_rate == pytest.approx(DEFAULT_RECIPE.expected_batch_size(60) / 60)
    assert trainer.config.max_grad_norm == DEFAULT_RECIPE.max_grad_norm
    with pytest.raises(ValueError, match="target_epsilon"):
        DEFAULT_RECIPE.make_trainer(data=(x, y), num_classes=10)
    with pytest.raises(ValueError, match="optimizer"):
        dataclasses.replace(DEFAULT_RECIPE, optimizer="lion")


@pytest.mark.slow
def test_default_recipe_reaches_the_epsilon_8_anchor_on_digits():
    """One seed of the reported protocol (bench/utility.py); the report has 3 seeds."""
    np = pytest.importorskip("numpy")
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    from privaudit.training import DEFAULT_RECIPE

    x, y = datasets.load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = model_selection.train_test_split(x / 16.0, y, test_size=0.2, stratify=y,
                                                              random_state=0)
    t = lambda a, d: torch.tensor(np.asarray(a), dtype=d)  # noqa: E731
    trainer = DEFAULT_RECIPE.make_trainer(data=(t(x_tr, torch.float32), t(y_tr, torch.long)), num_classes=10,
                                          target_epsilon=8.0, seed=0)
    trainer.run()
    assert trainer.epsilon() <= 8.0 + 1e-6
    with torch.no_grad():
        acc = (trainer.module(t(x_te, torch.float32)).argmax(1) == t(y_te, torch.long)).float().mean().item()
    assert acc >= 0.92
