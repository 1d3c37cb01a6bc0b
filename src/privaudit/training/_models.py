"""Small models that DP-SGD can train as they are (no BatchNorm, batch-first, no dropout by default)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .. import _validate

__all__ = ["ACTIVATIONS", "MODEL_NAMES", "build_model"]

MODEL_NAMES = ("cnn", "logreg", "mlp", "transformer")


def _shape(input_shape: Any) -> tuple[int, ...]:
    if isinstance(input_shape, int):
        input_shape = (input_shape,)
    if not isinstance(input_shape, (tuple, list)) or not input_shape:
        raise ValueError(f"Expected input_shape to be a non-empty tuple of positive integers, got {input_shape!r}.")
    for i, d in enumerate(input_shape):
        _validate.integer(minimum=1, **{f"input_shape[{i}]": d})
    return tuple(int(d) for d in input_shape)


def _groups(channels: int, max_groups: int = 16) -> int:
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
#: Accepted `activation=` values of the MLP and the CNN.
ACTIVATIONS: tuple[str, ...] = tuple(_ACTIVATIONS)


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"Expected activation={name!r} in {sorted(_ACTIVATIONS)}.") from None


def _logreg(shape: tuple[int, ...], k: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), k))


def _mlp(shape: tuple[int, ...], k: int, *, hidden: int | Sequence[int] = 256, activation: str = "relu") -> nn.Module:
    sizes = [hidden] if isinstance(hidden, int) else list(hidden)
    for i, h in enumerate(sizes):
        _validate.integer(minimum=1, **{f"hidden[{i}]": h})
    layers: list[nn.Module] = [nn.Flatten()]
    d = math.prod(shape)
    for h in sizes:
        layers += [nn.Linear(d, h), _activation(activation)]
        d = h
    layers.append(nn.Linear(d, k))
    return nn.Sequential(*layers)


def _cnn(shape: tuple[int, ...], k: int, *, channels: Sequence[int] = (32, 64, 64, 128),
         activation: str = "relu") -> nn.Module:
    """Pairs of 3x3 conv + GroupNorm + activation, 2x2 average pooling after each pair
    while the image is at least 4 pixels wide, global average pooling, linear head."""
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise ValueError(f"Expected input_shape=(C, H, W) or (H, W) for the cnn, got {shape!r}.")
    chans = list(channels)
    if not chans:
        raise ValueError("Expected channels to list at least one channel count.")
    for i, c in enumerate(chans):
        _validate.integer(minimum=1, **{f"channels[{i}]": c})
    layers: list[nn.Module] = []
    c_in, size = shape[0], min(shape[1], shape[2])
    for i, c in enumerate(chans):
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.GroupNorm(_groups(c), c), _activation(activation)]
        c_in = c
        if i % 2 == 1 and size >= 4:
            layers.append(nn.AvgPool2d(2))
            size //= 2
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, k)]
    return nn.Sequential(*layers)


class _Unflatten2d(nn.Module):
    """Reshapes flat inputs (B, C*H*W) to images (B, C, H, W)."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


class TokenTransformer(nn.Module):
    """Token embedding + learned positions + nn.TransformerEncoder + mean pooling + linear head."""

    def __init__(self, *, seq_len: int, num_classes: int, vocab_size: int, d_model: int = 64, nhead: int = 4,
                 num_layers: int = 2, dim_feedforward: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        _validate.integer(minimum=1, seq_len=seq_len, vocab_size=vocab_size, d_model=d_model, nhead=nhead,
                          num_layers=num_layers)
        _validate.in_range(0.0, 1.0, hi_open=True, dropout=dropout)
        if d_model % nhead:
            raise ValueError(f"Expected d_model={d_model} to be a multiple of nhead={nhead}.")
        ff = 4 * d_model if dim_feedforward is None else dim_feedforward
        _validate.integer(minimum=1, dim_feedforward=ff)
        self.seq_len = seq_len
        self.tokens = nn.Embedding(vocab_size, d_model)
        self.positions = nn.Embedding(seq_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead, ff, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, t = tokens.shape
        # Positions are indexed per example (B, T) so that each example's share
        # of the position embedding's gradient can be told apart.
        pos = torch.arange(t, device=tokens.device).expand(b, t)
        h = self.tokens(tokens.long()) + self.positions(pos)
        return self.head(self.encoder(h).mean(1))


def build_model(name: str, *, input_shape: int | Sequence[int], num_classes: int, **kwargs: Any) -> nn.Module:
    """Builds one of `MODEL_NAMES`, ready for DP-SGD.

    * 'logreg': flatten + linear.
    * 'mlp': flatten + hidden layers (`hidden=256`, an int or a sequence) with `activation='relu'`.
    * 'cnn': `channels=(32, 64, 64, 128)` 3x3 convolutions with GroupNorm; input (C, H, W),
      (H, W), or flat with `image_shape=(C, H, W)` given.
    * 'transformer': input (seq_len,) of token ids; needs `vocab_size`; `d_model=64`,
      `nhead=4`, `num_layers=2`, `dim_feedforward=4*d_model`, `dropout=0.0`.

    >>> m = build_model("mlp", input_shape=(64,), num_classes=10)
    >>> m(torch.zeros(2, 64)).shape
    torch.Size([2, 10])
    """
    shape = _shape(input_shape)
    _validate.integer(minimum=1, num_classes=num_classes)
    if name == "logreg":
        _no_extra(name, kwargs)
        return _logreg(shape, num_classes)
    if name == "mlp":
        _no_extra(name, kwargs, "hidden", "activation")
        return _mlp(shape, num_classes, **kwargs)
    if name == "cnn":
        _no_extra(name, kwargs, "channels", "activation", "image_shape")
        image = kwargs.pop("image_shape", None)
        if image is not None:
            image = _shape(image)
            if math.prod(image) != math.prod(shape):
                raise ValueError(f"Expected image_shape={image} to have {math.prod(shape)} values.")
            return nn.Sequential(_Unflatten2d(image if len(image) == 3 else (1, *image)),
                                 _cnn(image, num_classes, **kwargs))
        if len(shape) == 2:  # (H, W): one channel
            return nn.Sequential(_Unflatten2d((1, *shape)), _cnn(shape, num_classes, **kwargs))
        return _cnn(shape, num_classes, **kwargs)
    if name == "transformer":
        if len(shape) != 1:
            raise ValueError(f"Expected input_shape=(seq_len,) for the transformer, got {shape!r}.")
        _no_extra(name, kwargs, "vocab_size", "d_model", "nhead", "num_layers", "dim_feedforward", "dropout")
        if "vocab_size" not in kwargs:
            raise ValueError("Expected vocab_size (a positive integer) for the transformer.")
        return TokenTransformer(seq_len=shape[0], num_classes=num_classes, **kwargs)
    raise ValueError(f"Expected name={name!r} in {list(MODEL_NAMES)}.")


def _no_extra(name: str, kwargs: dict[str, Any], *allowed: str) -> None:
    extra = sorted(set(kwargs) - set(allowed))
    if extra:
        raise ValueError(f"Unexpected keyword(s) {extra} for model {name!r}; accepted: {sorted(allowed)}.")
