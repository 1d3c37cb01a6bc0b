"""Logits of torch models on data: one model, or K stacked models at once (`torch.func.vmap`).

The attacks themselves are numpy (`compute_signal` turns logits into phi, loss or
confidence); this module only queries models, batched and without gradients.

Query augmentations (Carlini et al. 2022, arXiv 2112.03570v2, Sec. VI.A: query
each example under the augmentations seen in training, fit LiRA per
augmentation):

* ``"none"``: the example as it is (A = 1); the only choice for tabular and token data;
* ``"hflip"``: the example and its horizontal mirror (A = 2), for images
  (N, C, H, W) whose last axis is the width;
* ``"auto"``: ``"hflip"`` for 4-d image inputs, ``"none"`` otherwise.

Logits come back as float32 numpy arrays, (A, n, C) for one model and
(K, A, n, C) for K stacked models: the layout `compute_signal` takes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .. import _validate

__all__ = ["AUGMENTATIONS", "model_logits", "resolve_augment", "stack_models", "stacked_model_logits"]

AUGMENTATIONS: tuple[str, ...] = ("auto", "hflip", "none")

_VIEWS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], ...]] = {
    "none": (lambda x: x,),
    "hflip": (lambda x: x, lambda x: torch.flip(x, dims=(-1,))),
}


def resolve_augment(augment: str, *, input_ndim: int) -> str:
    """The concrete augmentation ("none" or "hflip") for inputs with `input_ndim` axes (batch included)."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"Expected augment={augment!r} in {list(AUGMENTATIONS)}.")
    if augment == "auto":
        return "hflip" if input_ndim == 4 else "none"
    if augment == "hflip" and input_ndim != 4:
        raise ValueError(f"augment='hflip' needs image inputs (N, C, H, W), got {input_ndim}-d inputs.")
    return augment


def _check(x: torch.Tensor, batch_size: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"Expected inputs to be a tensor (n, ...) with n >= 1, got {shape}.")
    _validate.integer(minimum=1, batch_size=batch_size)


@torch.no_grad()
def model_logits(
    module: nn.Module,
    inputs: torch.Tensor,
    *,
    augment: str = "none",
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Logits of one model, float32 (A, n, C); the module is put in eval mode and restored.

    >>> m = nn.Linear(3, 2)
    >>> model_logits(m, torch.zeros(5, 3)).shape
    (1, 5, 2)
    """
    _check(inputs, batch_size)
    views = _VIEWS[resolve_augment(augment, input_ndim=inputs.dim())]
    device = torch.device(device)
    was_training = module.training
    module.eval()
    try:
        out = []
        for view in views:
            parts = [module(view(inputs[i:i + batch_size].to(device))).float().cpu()
                     for i in range(0, inputs.shape[0], batch_size)]
            out.append(torch.cat(parts))
    finally:
        module.train(was_training)
    return torch.stack(out).numpy()


def stack_models(modules: list[nn.Module]) -> dict[str, torch.Tensor]:
    """The parameters of K same-architecture modules stacked on a new leading axis (K, ...)."""
    if not modules:
        raise ValueError("Expected at least one module to stack.")
    params, _ = stack_module_state(modules)
    return {k: v.detach() for k, v in params.items()}


@torch.no_grad()
def stacked_model_logits(
    template: nn.Module,
    params: Mapping[str, torch.Tensor],
    inputs: torch.Tensor,
    *,
    augment: str = "none",
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Logits of K models that share `template`'s architecture, float32 (K, A, n, C).

    Args:
        template: a module of the architecture (its own parameter values are not used;
            its buffers are, shared by all K models).
        params: {parameter name: (K, ...)} as from `stack_models`.
        inputs: (n, ...) examples.
        augment: see the module docstring.
        batch_size: examples per vectorised forward pass (each pass runs all K models).
        device: where the forward passes run.
    """
    _check(inputs, batch_size)
    views = _VIEWS[resolve_augment(augment, input_ndim=inputs.dim())]
    device = torch.device(device)
    names = [n for n, _ in template.named_parameters()]
    if sorted(names) != sorted(params):
        raise ValueError(f"Expected params for the template's parameters {names}, got {sorted(params)}.")
    sizes = {int(p.shape[0]) for p in params.values()}
    if len(sizes) != 1:
        raise ValueError(f"Expected every stacked parameter to have the same leading size K, got {sorted(sizes)}.")
    stacked = {k: v.to(device) for k, v in params.items()}
    buffers = {k: b.to(device) for k, b in template.named_buffers()}
    was_training = template.training
    template.eval()

    def forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(template, (p, buffers), (x,))

    batched = vmap(forward, in_dims=(0, None))
    try:
        out = []
        for view in views:
            parts = [batched(stacked, view(inputs[i:i + batch_size].to(device))).float().cpu()
                     for i in range(0, inputs.shape[0], batch_size)]
            out.append(torch.cat(parts, dim=1))
    finally:
        template.train(was_training)
    return torch.stack(out, dim=1).numpy()
