"""Gradients of K stacked models in one pass: batch gradients, and clipped sums of per-example gradients.

Two ways to the clipped sum sum_i c_i g_i (same result up to rounding):

* ``"materialize"`` (any architecture): per-example gradients by
  `vmap(grad)` over rows nested inside `vmap` over models, their flat norms,
  then the weighted sum. Memory: K x rows x parameters floats.
* ``"ghost"`` (models whose trainable parameters all sit in plain
  `nn.Linear` layers: logreg, mlp): one backward pass per model for the
  gradients delta_i of the loss with respect to each layer's output, the
  layer inputs a_i kept from the forward pass; then ||dW_i||^2 =
  ||a_i||^2 ||delta_i||^2 for (rows, features) inputs (Goodfellow 2015,
  arXiv 1510.01799v2, Sec. 4), the Gram-matrix form
  sum_{t,s} (a_it . a_is)(delta_it . delta_is) for (rows, T, features) inputs
  (Li et al. 2022, arXiv 2110.05679v6, Sec. 4, "ghost clipping"), and the
  clipped sum sum_i c_i delta_i a_i^T straight from the same tensors (Bu et
  al. 2022, arXiv 2210.00038v3, Alg. 1: no second backward pass). No
  per-example gradient is ever formed, which is what makes DP shadows cheap.

``"auto"`` takes ghost where it applies. Clip factors are the engine's:
c_i = min(1, C / (||g_i|| + 1e-6)) in flat L2, or per layer with C / sqrt(L).

Backends (`BACKENDS`): ``"vmap"`` runs the model through `torch.func`
(`vmap` over models of `functional_call`, autograd for the backward pass),
which works for any architecture. ``"bmm"`` is for plain MLPs, an
`nn.Sequential` of an optional leading `nn.Flatten`, then `nn.Linear` layers
with `nn.Tanh` or `nn.ReLU` between them (logreg, mlp): the forward pass is
one `torch.bmm` per layer over the K stacked models, and the backward
pass is written out, delta_{l-1} = (delta_l W_l) * act'(z_{l-1}) from
delta_L = (softmax(z_L) - onehot(y)) * w (the gradient of the weighted
cross-entropy), with dW_l = delta_l^T a_l as one `torch.bmm`. Under DP it
gives the ghost norms and the clipped sum from the same delta_l and a_l,
with no autograd graph and no per-model Python work. ``"auto"`` takes
``"bmm"`` where it applies (and ghost clipping is not ruled out by
``per_example="materialize"``). The backends differ in rounding only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..training._clipping import NORM_EPS, find_units

__all__ = ["BACKENDS", "PER_EXAMPLE_MODES", "StackedGrads", "mlp_layers"]

PER_EXAMPLE_MODES = ("auto", "ghost", "materialize")
BACKENDS = ("auto", "bmm", "vmap")
_BMM_ACTIVATIONS: dict[type[nn.Module], str] = {nn.Tanh: "tanh", nn.ReLU: "relu"}


def _plain(module: nn.Module, cls: type[nn.Module]) -> bool:
    return type(module) is cls and not module._forward_hooks and not module._forward_pre_hooks


def mlp_layers(template: nn.Module) -> tuple[bool, list[tuple[str, str | None, str | None]]] | None:
    """(flatten first?, [(weight name, bias name or None, activation after it or None)]) for a plain
    MLP (`nn.Sequential` of an optional leading `nn.Flatten()`, then Linear, act, Linear, ..., Linear with
    act in Tanh/ReLU), else None.

    >>> mlp_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)))
    (True, [('1.weight', '1.bias', 'tanh'), ('3.weight', '3.bias', None)])
    >>> mlp_layers(nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2))) is None
    True
    """
    if not _plain(template, nn.Sequential) or list(template.named_buffers()):
        return None
    children = list(template.named_children())
    flatten = False
    if children and type(children[0][1]) is nn.Flatten:
        f = children[0][1]
        if not _plain(f, nn.Flatten) or (f.start_dim, f.end_dim) != (1, -1):
            return None
        flatten, children = True, children[1:]
    layers: list[tuple[str, str | None, str | None]] = []
    expect_linear = True
    for name, child in children:
        if expect_linear:
            if not _plain(child, nn.Linear):
                return None
            layers.append((f"{name}.weight", f"{name}.bias" if child.bias is not None else None, None))
        else:
            act = next((a for cls, a in _BMM_ACTIVATIONS.items() if _plain(child, cls)), None)
            if act is None or (isinstance(child, nn.ReLU) and child.inplace):
                return None
            w, b, _ = layers[-1]
            layers[-1] = (w, b, act)
        expect_linear = not expect_linear
    if not layers or expect_linear:  # empty, or ending in an activation
        return None
    return flatten, layers


#: The bmm backend runs the K models in groups whose widest activation (models x rows x width) takes at
#: most this many bytes, so that each group's elementwise work stays in cache (one pass over all K models
#: at once measured ~25% slower on CPU for K = 64, 150 rows, width 256).
GROUP_BYTES = 2 * 2**20


class _BmmMlp:
    """Forward and backward of K stacked plain MLPs by batched matrix products (see the module docstring)."""

    def __init__(self, flatten: bool, layers: list[tuple[str, str | None, str | None]],
                 widths: list[int] | None = None) -> None:
        self.flatten, self.layers = flatten, layers
        self.widest = max(widths) if widths else 1
        self._workspace: dict[tuple[str, int], torch.Tensor] = {}

    def _buffer(self, key: tuple[str, int], shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A reused buffer for a per-layer intermediate (never returned to callers: only this pass reads it).

        On CPU, allocating these (MiB-sized, fresh every pass) left the time per step to the malloc heap's
        state: the same no-DP run of 16 MLPs measured 0.052-0.086 s per epoch from one process to the next.
        """
        numel = math.prod(shape)
        buf = self._workspace.get(key)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
            buf = torch.empty(numel, dtype=like.dtype, device=like.device)
            self._workspace[key] = buf
        return buf[:numel].view(shape)

    def accepts(self, x: torch.Tensor) -> bool:
        return self.flatten or x.dim() == 3

    def _grouped(self, fn: Callable[..., None], params: dict[str, torch.Tensor],
                 x: torch.Tensor, *rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """fn over groups of models (see `GROUP_BYTES`); fn(params, x, *rows, out) writes one gradient per
        parameter into `out` (views of one (K, ...) buffer per name, so no concatenation)."""
        k, r = x.shape[0], x.shape[1]
        group = max(1, GROUP_BYTES // max(1, r * self.widest * x.element_size()))
        out = {n: torch.empty_like(v, memory_format=torch.contiguous_format) for n, v in params.items()}
        for i in range(0, k, group):
            sl = slice(i, i + group)
            fn({n: v[sl] for n, v in params.items()}, x[sl], *(t[sl] for t in rows), {n: v[sl] for n, v in out.items()})
        return out

    def forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
        """[input a_0, a_1, ..., logits]: each layer's input, then the output; x (K, R, ...)."""
        h = x.reshape(x.shape[0], x.shape[1], -1) if self.flatten else x
        acts = [h]
        for w, b, act in self.layers:
            # Product, then the bias in place (as fast as torch.baddbmm over a whole training run on CPU, and
            # faster in isolation: 13 x 150 x 64 by 64 x 256, 1.05 vs 1.58 ms).
            if act is None:
                # A narrow output layer (e.g. 10 classes) as W h^T, (K, out, R), returned as its transposed view:
                # with a short inner-product dimension on the right, h W^T measured 2.2x slower on CPU.
                z = torch.bmm(params[w], h.transpose(1, 2))
                h = (z if b is None else z.add_(params[b].unsqueeze(2))).transpose(1, 2)
            else:
                wt = params[w].transpose(1, 2)
                z = torch.bmm(h, wt, out=self._buffer(("z", len(acts)), (h.shape[0], h.shape[1], wt.shape[2]), h))
                if b is not None:
                    z.add_(params[b].unsqueeze(1))
                # tanh(z) = 2 sigmoid(2z) - 1: on CPU torch's tanh kernel measured ~3.5x slower than its sigmoid
                # (614k floats: 2.1 ms vs 0.6 ms, AVX2, one thread). Differs from torch.tanh by rounding only.
                h = torch.sigmoid_(z.mul_(2.0)).mul_(2.0).sub_(1.0) if act == "tanh" else torch.relu_(z)
            acts.append(h)
        return acts

    def output_grads(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                     w: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(inputs a_l, output gradients delta_l) of every layer for the loss sum_i w_i CE(x_i, y_i)."""
        acts = self.forward(params, x)
        delta = torch.softmax(acts[-1], dim=-1)
        # d CE / d logits = softmax - onehot(y), scaled by the row's weight.
        delta.scatter_add_(2, y.unsqueeze(2), torch.full(y.shape + (1,), -1.0, dtype=delta.dtype, device=delta.device))
        delta.mul_(w.unsqueeze(2))
        deltas: list[torch.Tensor] = [delta]
        for i in range(len(self.layers) - 1, 0, -1):
            weight = params[self.layers[i][0]]
            d0 = deltas[0]
            back = torch.bmm(d0, weight, out=self._buffer(("back", i), (d0.shape[0], d0.shape[1], weight.shape[2]), d0))
            a, act = acts[i], self.layers[i - 1][2]
            # tanh' = 1 - tanh^2 and relu' = [z > 0], from the layer's output: autograd's own kernels, in place.
            if act == "tanh":
                torch.ops.aten.tanh_backward.grad_input(back, a, grad_input=back)
            else:
                torch.ops.aten.threshold_backward.grad_input(back, a, 0, grad_input=back)
            deltas.insert(0, back)
        return acts[:-1], deltas

    def batch_grad(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                   w: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._grouped(self._batch_grad, params, x, y, w)

    def _batch_grad(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                    w: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        acts, deltas = self.output_grads(params, x, y, w)
        for (wn, bn, _), a, d in zip(self.layers, acts, deltas):
            torch.bmm(d.transpose(1, 2), a, out=out[wn])
            if bn is not None:
                torch.sum(d, 1, out=out[bn])

    def ghost_clipped_sum(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                          mask: torch.Tensor, coefficients: Callable[..., dict[str, torch.Tensor]]
                          ) -> dict[str, torch.Tensor]:
        def one(p: dict[str, torch.Tensor], xs: torch.Tensor, ys: torch.Tensor, ms: torch.Tensor,
                out: dict[str, torch.Tensor]) -> None:
            self._ghost_clipped_sum(p, xs, ys, ms, coefficients, out)

        return self._grouped(one, params, x, y, mask)

    def _ghost_clipped_sum(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                           mask: torch.Tensor, coefficients: Callable[..., dict[str, torch.Tensor]],
                           out: dict[str, torch.Tensor]) -> None:
        acts, deltas = self.output_grads(params, x, y, mask)
        sq: dict[str, torch.Tensor] = {}
        for (wn, bn, _), a, d in zip(self.layers, acts, deltas):
            d_sq = d.pow(2).sum(-1)
            sq[wn] = a.pow(2).sum(-1) * d_sq  # ||delta_i a_i^T||^2 = ||a_i||^2 ||delta_i||^2
            if bn is not None:
                sq[bn] = d_sq
        coef = coefficients(sq, mask)
        for (wn, bn, _), a, d in zip(self.layers, acts, deltas):
            torch.bmm((d * coef[wn].unsqueeze(2)).transpose(1, 2), a, out=out[wn])
            if bn is not None:  # sum_r c_r delta_r, as (1 x R) (R x out) per model
                torch.bmm(coef[bn].unsqueeze(1), d, out=out[bn].unsqueeze(1))


def _plain_linears(template: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in template.named_modules()
            if isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward}


def ghost_applies(template: nn.Module) -> bool:
    """True when every trainable parameter belongs to a plain nn.Linear layer."""
    owned = set()
    for name, m in _plain_linears(template).items():
        owned.update(f"{name}.{p}" if name else p for p, _ in m.named_parameters(recurse=False))
    return owned == {n for n, _ in template.named_parameters()}


class _Taps:
    """Forward hooks on the Linear layers: record each input, add a zero perturbation to each output
    (the gradient with respect to that perturbation is the output gradient delta). Inactive unless `state` is set."""

    def __init__(self, layers: dict[str, nn.Linear]) -> None:
        self.state: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in layers.items()]

    def _hook(self, name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
            if self.state is None:
                return None
            inputs, perturb = self.state
            inputs[name] = args[0]
            return output + perturb[name]

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class StackedGrads:
    """Gradient computations over (K models, R rows) for one architecture (`template`).

    Call `close()` when done: the ghost mode puts hooks on the template's Linear layers.
    """

    def __init__(self, template: nn.Module, *, buffers: dict[str, torch.Tensor], max_grad_norm: float | None,
                 clipping: str, mode: str = "auto", backend: str = "auto", private: bool = True) -> None:
        if mode not in PER_EXAMPLE_MODES:
            raise ValueError(f"Expected per_example={mode!r} in {list(PER_EXAMPLE_MODES)}.")
        if backend not in BACKENDS:
            raise ValueError(f"Expected backend={backend!r} in {list(BACKENDS)}.")
        if mode == "ghost" and not ghost_applies(template):
            raise ValueError("per_example='ghost' needs a model whose parameters all sit in nn.Linear layers.")
        parsed = mlp_layers(template) if backend != "vmap" else None
        if backend == "bmm" and (parsed is None or (private and mode == "materialize")):
            raise ValueError("backend='bmm' needs a plain MLP (nn.Sequential of [Flatten], Linear and Tanh/ReLU "
                             "layers) and, under DP, ghost clipping (per_example 'auto' or 'ghost').")
        widths = [max(p.shape) for p in template.parameters()]
        self.bmm = None if parsed is None or (private and mode == "materialize") else _BmmMlp(*parsed, widths)
        self.max_grad_norm = max_grad_norm
        self.names = [n for n, _ in template.named_parameters()]
        self.ghost = mode == "ghost" or (mode == "auto" and ghost_applies(template))
        self.groups: list[list[str]] | None = None
        if clipping == "per_layer":
            self.groups = [[f"{u.name}.{n}" if u.name else n for n in u.params] for u in find_units(template)]
        self.template = template
        self._taps: _Taps | None = None

        def row_losses(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = functional_call(template, (p, buffers), (x,))
            losses = nn.functional.cross_entropy(out, y, reduction="none")
            return losses.reshape(losses.shape[0], -1).sum(1)

        def batch_loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                       w: torch.Tensor) -> torch.Tensor:
            return (row_losses(p, x, y) * w).sum()

        def example_loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return row_losses(p, x.unsqueeze(0), y.unsqueeze(0)).sum()

        # Gradient of each model's weighted batch loss (non-private steps).
        self._batch_grad = vmap(grad(batch_loss), in_dims=(0, 0, 0, 0))
        # Per-example gradients: vmap over rows inside vmap over models.
        self.example_grads = vmap(vmap(grad(example_loss), in_dims=(None, 0, 0)), in_dims=(0, 0, 0))
        if self.ghost:
            layers = _plain_linears(template)
            self.layers = {n: m for n, m in layers.items() if any(True for _ in m.parameters(recurse=False))}
            self._taps = _Taps(self.layers)
            taps = self._taps

            def tapped(perturb: dict[str, torch.Tensor], p: dict[str, torch.Tensor], x: torch.Tensor,
                       y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
                inputs: dict[str, torch.Tensor] = {}
                taps.state = (inputs, perturb)
                try:
                    loss = batch_loss(p, x, y, w)
                finally:
                    taps.state = None
                return loss, inputs

            self.output_grads = vmap(grad(tapped, argnums=0, has_aux=True), in_dims=(0, 0, 0, 0, 0))

    def close(self) -> None:
        if self._taps is not None:
            self._taps.remove()
            self._taps = None

    def batch_grad(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                   w: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gradient of sum_i w_i loss_i per model, {name: (K, ...)}; x (K, R, ...), y (K, R), w (K, R)."""
        if self.bmm is not None and self.bmm.accepts(x):
            return self.bmm.batch_grad(params, x, y, w)
        return self._batch_grad(params, x, y, w)

    # -- clipping -------------------------------------------------------------------
    def _coefficients(self, sq: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Clip factor per parameter name, (K, R), from squared per-example norms per name."""
        assert self.max_grad_norm is not None
        if self.groups is None:
            total = torch.sqrt(sum(sq.values(), torch.zeros_like(mask)))
            c = torch.clamp(self.max_grad_norm / (total + NORM_EPS), max=1.0) * mask
            return {n: c for n in self.names}
        # Per layer: C_l = C / sqrt(L), so the whole gradient still has norm <= C.
        c_layer = self.max_grad_norm / math.sqrt(max(1, len(self.groups)))
        coef = {}
        for group in self.groups:
            norm = torch.sqrt(sum((sq[n] for n in group), torch.zeros_like(mask)))
            c = torch.clamp(c_layer / (norm + NORM_EPS), max=1.0) * mask
            coef.update({n: c for n in group})
        return coef

    def clipped_sum(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                    mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """sum_i c_i g_i per model, {name: (K, ...)}; x (K, R, ...), y (K, R), mask (K, R) float."""
        if self.ghost and self.bmm is not None and self.bmm.accepts(x):
            return self.bmm.ghost_clipped_sum(params, x, y, mask, self._coefficients)
        if self.ghost:
            return self._ghost_clipped_sum(params, x, y, mask)
        g = self.example_grads(params, x, y)
        sq = {n: torch.linalg.vector_norm(g[n].flatten(2), dim=-1) ** 2 for n in self.names}
        coef = self._coefficients(sq, mask)
        return {n: torch.einsum("kr,kr...->k...", coef[n], g[n]) for n in self.names}

    def _ghost_clipped_sum(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                           mask: torch.Tensor) -> dict[str, torch.Tensor]:
        k, r = mask.shape
        shapes = self._output_shapes(params, x)
        perturb = {n: torch.zeros((k, r, *s), dtype=mask.dtype, device=mask.device) for n, s in shapes.items()}
        # Padding rows have weight 0, so their output gradients, norms and contributions are exactly 0.
        delta, acts = self.output_grads(perturb, params, x, y, mask)
        sq: dict[str, torch.Tensor] = {}
        for name, layer in self.layers.items():
            a, d = acts[name], delta[name]
            w_name = f"{name}.weight" if name else "weight"
            if a.dim() == 3:  # (K, R, features): ||delta_i a_i^T||^2 = ||a_i||^2 ||delta_i||^2
                d_sq = d.pow(2).sum(-1)
                sq[w_name] = a.pow(2).sum(-1) * d_sq
                b_sq = d_sq
            else:  # (K, R, T..., features): Gram matrices over the positions
                a3, d3 = a.flatten(2, -2), d.flatten(2, -2)
                sq[w_name] = (torch.einsum("krti,krsi->krts", a3, a3) * torch.einsum("krto,krso->krts", d3, d3)
                              ).sum((-1, -2))
                b_sq = d3.sum(2).pow(2).sum(-1)
            if layer.bias is not None:
                sq[f"{name}.bias" if name else "bias"] = b_sq
        coef = self._coefficients(sq, mask)
        out: dict[str, torch.Tensor] = {}
        for name, layer in self.layers.items():
            a, d = acts[name], delta[name]
            w_name = f"{name}.weight" if name else "weight"
            a3, d3 = (a[:, :, None], d[:, :, None]) if a.dim() == 3 else (a.flatten(2, -2), d.flatten(2, -2))
            out[w_name] = torch.einsum("kr,krto,krti->koi", coef[w_name], d3, a3)
            if layer.bias is not None:
                b_name = f"{name}.bias" if name else "bias"
                out[b_name] = torch.einsum("kr,kro->ko", coef[b_name], d3.sum(2))
        return out

    def _output_shapes(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, tuple[int, ...]]:
        """Each Linear layer's output shape per row (cached per input shape)."""
        key = tuple(x.shape[2:])
        cache = getattr(self, "_shape_cache", {})
        if key not in cache:
            seen: dict[str, tuple[int, ...]] = {}
            hooks = [m.register_forward_hook(lambda mod, args, out, n=n: seen.__setitem__(n, tuple(out.shape[1:])))
                     for n, m in self.layers.items()]
            try:
                with torch.no_grad():
                    functional_call(self.template, {n: v[0] for n, v in params.items()}, (x[0, :1],))
            finally:
                for h in hooks:
                    h.remove()
            cache[key] = seen
            self._shape_cache = cache
        return cache[key]
