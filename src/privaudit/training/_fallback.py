"""Per-sample gradients of any other module with parameters, via `torch.func`.

The module is re-run on the stored inputs: per-sample norms come from
`vmap(grad(...))` over batch chunks (each sample seen as a batch of one, as in
Opacus' functorch mode), and the clipped sum from one ordinary vector-Jacobian
product over the whole batch with the output gradients scaled by the clip
factors, sum_i c_i J_i^T g_i = J^T (c * g), since no example's output depends
on another's (the module validator rejects modules for which it does).

Assumptions, checked where they can be: every tensor input and output whose
first dimension equals the batch size is batch-first; randomness inside the
module (dropout) is redrawn in the re-run, so the per-sample gradients are
those of an equally distributed but different dropout mask. Neither affects
the privacy guarantee (each example's contribution is still clipped), only
how close the update is to the forward pass that produced the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from ._per_sample import Call, UnitGrads, _chunks, sq_norm

__all__ = ["FallbackGrads", "unbatched_kwargs"]


def unbatched_kwargs(module: nn.Module) -> frozenset[str]:
    """Keyword arguments that never carry a batch dimension, even when sized like one."""
    if isinstance(module, nn.MultiheadAttention):
        return frozenset({"attn_mask"})
    return frozenset()


class _Split:
    """One call's inputs split into batched tensors (vmapped) and everything else (closed over)."""

    def __init__(self, call: Call, batch: int, skip: frozenset[str]) -> None:
        leaves, self.spec = tree_flatten((call.args, call.kwargs))
        kw_names = _kwarg_leaf_names(call)
        self.leaves = leaves
        self.batched_pos = [
            i for i, v in enumerate(leaves)
            if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == batch
            and kw_names.get(i) not in skip
        ]
        self.grads = list(call.grads or ())
        self.out_positions = call.out_positions

    def rebuild(self, batched: Sequence[torch.Tensor]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        leaves = list(self.leaves)
        for pos, t in zip(self.batched_pos, batched):
            leaves[pos] = t
        args, kwargs = tree_unflatten(leaves, self.spec)
        return args, kwargs


def _kwarg_leaf_names(call: Call) -> dict[int, str]:
    """Maps flat leaf positions to the keyword they came from (positional ones are absent)."""
    names: dict[int, str] = {}
    pos = len(tree_flatten(call.args)[0])
    for k, v in call.kwargs.items():
        n = len(tree_flatten(v)[0])
        for i in range(pos, pos + n):
            names[i] = k
        pos += n
    return names


class FallbackGrads(UnitGrads):
    """Any module owning parameters: per-sample gradients through `torch.func`."""

    def __init__(self, module: nn.Module, calls: Sequence[Call], params: Mapping[str, nn.Parameter],
                 recompute: Callable[[], Any]) -> None:
        super().__init__(params)
        self.m = module
        self.calls = [c for c in calls if c.grads is not None]
        self.recompute = recompute  # context manager that silences the capture hooks
        first = self.calls[0].grads if self.calls else None
        g0 = next((g for g in (first or ()) if g is not None), None)
        self.batch = int(g0.shape[0]) if g0 is not None else 0
        skip = unbatched_kwargs(module)
        self.splits = [_Split(c, self.batch, skip) for c in self.calls]
        self.materialized: dict[str, torch.Tensor] | None = None
        for c in self.calls:
            for g in c.grads:
                if g is not None and (g.dim() == 0 or g.shape[0] != self.batch):
                    raise ValueError(
                        f"{type(module).__name__} returned an output of shape {tuple(g.shape)} whose first "
                        f"dimension is not the batch size {self.batch}; per-sample gradients need batch-first "
                        "outputs (for nn.MultiheadAttention pass batch_first=True).")

    def _objective(self, params: dict[str, torch.Tensor], batched: list[list[torch.Tensor]],
                   grads: list[list[torch.Tensor | None]]) -> torch.Tensor:
        total = torch.zeros((), device=next(iter(params.values())).device)
        for split, b, gs in zip(self.splits, batched, grads):
            args, kwargs = split.rebuild(b)
            outs = tree_flatten(functional_call(self.m, params, args, kwargs))[0]
            for pos, g in zip(split.out_positions, gs):
                o = outs[pos]
                if g is not None:
                    total = total + (o * g).sum()
        return total

    def _inputs(self, s: int, e: int, unsqueeze: bool) -> tuple[list[list[torch.Tensor]], list[list[Any]]]:
        def cut(t: torch.Tensor) -> torch.Tensor:
            t = t[s:e]
            return t.unsqueeze(1) if unsqueeze else t
        batched = [[cut(sp.leaves[i]) for i in sp.batched_pos] for sp in self.splits]
        grads = [[None if g is None else cut(g) for g in sp.grads] for sp in self.splits]
        return batched, grads

    def sq_norms(self) -> dict[str, torch.Tensor]:
        if not self.calls:
            return {}
        params = {n: p.detach() for n, p in self.params.items()}
        try:
            return self._sq_norms(params, randomness="error")
        except RuntimeError as exc:
            if "randomness" not in str(exc):
                raise
        # The module draws random numbers (dropout): the re-run cannot reproduce the
        # forward pass, so keep the per-sample gradients themselves and take both the
        # norms and the sum from them; each clipped contribution then has norm <= C.
        return self._sq_norms(params, randomness="different", keep=True)

    def _sq_norms(self, params: dict[str, torch.Tensor], *, randomness: str,
                  keep: bool = False) -> dict[str, torch.Tensor]:
        size = sum(p.numel() for p in params.values())
        per_sample = vmap(grad(self._objective), in_dims=(None, 0, 0), randomness=randomness)
        sq: dict[str, list[torch.Tensor]] = {n: [] for n in params}
        kept: dict[str, list[torch.Tensor]] = {n: [] for n in params}
        with self.recompute():
            for s, e in _chunks(self.batch, 4 * size):
                batched, grads = self._inputs(s, e, unsqueeze=True)
                out = per_sample(params, batched, grads)
                for n, g in out.items():
                    sq[n].append(sq_norm(g))
                    if keep:
                        kept[n].append(g)
        if keep:
            self.materialized = {n: torch.cat(v) for n, v in kept.items()}
        return {n: torch.cat(v) for n, v in sq.items()}

    def weighted_sums(self, coef: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.calls:
            return {}
        if self.materialized is not None:
            return {n: torch.tensordot(coef[n].to(g.dtype), g, dims=1)
                    for n, g in self.materialized.items()}
        params = {n: p.detach() for n, p in self.params.items()}
        batched, grads = self._inputs(0, self.batch, unsqueeze=False)
        out: dict[str, torch.Tensor] = {}
        # One vector-Jacobian product per distinct coefficient vector (one for flat clipping).
        groups: dict[int, list[str]] = {}
        for n in params:
            groups.setdefault(id(coef[n]), []).append(n)
        with self.recompute():
            for names in groups.values():
                c = coef[names[0]]
                scaled = [[None if g is None else g * c.to(g.dtype).view(-1, *([1] * (g.dim() - 1)))
                           for g in gs] for gs in grads]
                res = grad(self._objective)(params, batched, scaled)
                out.update({n: res[n] for n in names})
        return out
