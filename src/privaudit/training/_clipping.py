"""Hooks that capture activations and output gradients, and per-sample clipping of their sum.

One physical batch costs one forward and one backward pass. The backward pass
computes only the gradients with respect to the outputs of the hooked layers
(`torch.autograd.grad` towards a zero "anchor" that every tap touches), not
the parameter gradients autograd would otherwise sum over the batch; those are
rebuilt, clipped, from the stored activations (Bu et al. 2022, arXiv
2210.00038, Alg. 1: one backward pass, no second back-propagation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from . import _per_sample
from ._attention import MultiheadAttentionGrads, mha_is_native
from ._conv import ConvGrads
from ._fallback import FallbackGrads
from ._per_sample import (Call, EmbeddingGrads, LinearGrads, UnitGrads, _chunks, chunk_budget, norm_layer_grads,
                          sq_norm)

__all__ = ["ClipResult", "GradCapture", "Unit", "clip_and_accumulate", "find_units", "native_kernel_for",
           "plan_chunks"]

#: Added to per-sample norms before dividing (Opacus' convention), so a zero gradient gets factor 1.
NORM_EPS = 1e-6


class _Tap(torch.autograd.Function):
    """Identity on a layer's outputs whose backward stores their gradients in `call`."""

    @staticmethod
    def forward(ctx: Any, anchor: torch.Tensor, call: Call, *xs: torch.Tensor) -> Any:  # noqa: ARG004
        ctx.call = call
        views = [x._is_view() for x in xs]
        dirty = [x for x, v in zip(xs, views) if not v]
        if dirty:  # In place: no copy of the output, and later in-place ops stay legal.
            ctx.mark_dirty(*dirty)
        out = tuple(x.clone() if v else x for x, v in zip(xs, views))
        return out if len(out) > 1 else out[0]

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> Any:
        # The call's tensors are dropped by `Capture.release` (the trainer calls it after every
        # physical batch), not here: a second backward pass through a retained graph still works.
        call = ctx.call
        call.grads = tuple(g.detach() for g in grads)
        if call.eager is not None:
            call.eager(call)
        return (None, None, *grads)


@dataclasses.dataclass(eq=False)
class Unit:
    """A layer whose per-sample gradients are computed together: a supported
    module, or the whole subtree below a module that needs the fallback."""

    name: str
    module: nn.Module
    params: dict[str, nn.Parameter]  # names relative to `module`
    native: Any | None  # kernel constructor, or None for the torch.func fallback
    calls: list[Call] = dataclasses.field(default_factory=list)

    @property
    def kind(self) -> str:
        return type(self.module).__name__ if self.native is not None else f"fallback:{type(self.module).__name__}"


def _standard_forward(module: nn.Module, base: type[nn.Module]) -> bool:
    return isinstance(module, base) and type(module).forward is base.forward


def native_kernel_for(module: nn.Module) -> Any | None:
    """The kernel constructor for `module`, or None when it needs the vmap fallback.

    Only modules whose class keeps the base class's `forward` qualify: a subclass
    of nn.Linear that overrides `forward` (a LoRA layer, say) is not a linear map
    of its input any more and goes to the fallback.
    """
    for base, kernel in _KERNELS:
        if _standard_forward(module, base):
            return kernel
    return None


_KERNELS: list[tuple[type[nn.Module], Any]] = [
    (nn.Linear, LinearGrads),
    (nn.Conv2d, ConvGrads),
    (nn.Conv1d, ConvGrads),
    (nn.Embedding, EmbeddingGrads),
    (nn.LayerNorm, norm_layer_grads),
    (nn.GroupNorm, norm_layer_grads),
]
if hasattr(nn, "RMSNorm"):
    _KERNELS.append((nn.RMSNorm, norm_layer_grads))


def find_units(module: nn.Module) -> list[Unit]:
    """Partitions the trainable parameters of `module` into units (see `Unit`)."""
    units: list[Unit] = []

    def walk(m: nn.Module, prefix: str) -> None:
        own = {n: p for n, p in m._parameters.items() if p is not None and p.requires_grad}
        if mha_is_native(m):
            params = {n: p for n, p in m.named_parameters() if p.requires_grad}
            if params:
                units.append(Unit(prefix, m, params, MultiheadAttentionGrads))
            return
        child_params = any(p.requires_grad for c in m.children() for p in c.parameters())
        kernel = native_kernel_for(m)
        if kernel is not None and own and not child_params:
            units.append(Unit(prefix, m, own, kernel))
        elif own or isinstance(m, nn.MultiheadAttention):
            params = {n: p for n, p in m.named_parameters() if p.requires_grad}
            if params:
                units.append(Unit(prefix, m, params, None))
        else:
            for name, child in m.named_children():
                walk(child, f"{prefix}.{name}" if prefix else name)

    walk(module, "")
    return units


@dataclasses.dataclass(frozen=True)
class ClipResult:
    """Per-sample gradient norms (before clipping) and clip factors of one physical batch."""

    norms: torch.Tensor  # (B,), flat L2 norm over all parameters
    factors: torch.Tensor  # (B,), or (B,) of the first layer under per-layer clipping


class GradCapture:
    """Registers the capture hooks on every unit of `module` (inactive until `capture()`)."""

    def __init__(self, module: nn.Module, *, mode: str = "auto") -> None:
        if mode not in ("auto", "ghost", "materialize"):
            raise ValueError(f"Expected mode={mode!r} in ['auto', 'ghost', 'materialize'].")
        self.module = module
        self.mode = mode
        self.units = find_units(module)
        self._active = False
        self._anchor: torch.Tensor | None = None
        self._handles = [
            u.module.register_forward_hook(self._make_hook(u), with_kwargs=True) for u in self.units
        ]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _make_hook(self, unit: Unit) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
            if not self._active or not torch.is_grad_enabled():
                return None
            call = Call(tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args),
                        {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})
            leaves, spec = tree_flatten(output)
            pos = tuple(i for i, v in enumerate(leaves) if isinstance(v, torch.Tensor) and v.requires_grad)
            if not pos:
                return None
            call.out_positions = pos
            eager = getattr(unit.native, "eager", None)
            if eager is not None and pos == (0,):
                call.eager = functools.partial(eager, module)
            unit.calls.append(call)
            tapped = _Tap.apply(self._anchor, call, *(leaves[i] for i in pos))
            tapped = tapped if isinstance(tapped, tuple) else (tapped,)
            for i, t in zip(pos, tapped):
                leaves[i] = t
            return tree_unflatten(leaves, spec)

        return hook

    @contextlib.contextmanager
    def capture(self, device: torch.device) -> Iterator[None]:
        """Within this block, forward calls of the units are recorded and tapped."""
        for u in self.units:
            u.calls.clear()
        self._anchor = torch.zeros((), device=device, requires_grad=True)
        self._active = True
        try:
            yield
        finally:
            self._active = False

    @contextlib.contextmanager
    def _silenced(self) -> Iterator[None]:
        was, self._active = self._active, False
        try:
            yield
        finally:
            self._active = was

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagates `loss` to the layer outputs only (no parameter gradients)."""
        if self._anchor is None:
            raise RuntimeError("backward() called outside capture().")
        if loss.requires_grad:
            torch.autograd.grad(loss, self._anchor, allow_unused=True)

    def unit_grads(self) -> list[UnitGrads]:
        """Per-sample gradient objects of every unit that took part in the last capture."""
        out: list[UnitGrads] = []
        for u in self.units:
            calls = [c for c in u.calls if c.grads is not None]
            if not calls:
                continue
            for c in calls:
                if c.modified():
                    raise RuntimeError(
                        f"The input of layer {u.name or '<root>'} ({type(u.module).__name__}) was "
                        "modified in place after the layer used it; per-sample gradients would be "
                        "wrong. Remove the in-place operation (e.g. inplace=True) that follows it.")
            if u.native is not None:
                ug = u.native(u.module, calls, self.mode)
            else:
                ug = FallbackGrads(u.module, calls, u.params, self._silenced)
            held = {id(t): t for c in calls for t in (*c.args, *(c.grads or ())) if isinstance(t, torch.Tensor)}
            ug.stored = sum(t.numel() for t in held.values())
            out.append(ug)
        return out

    def release(self) -> None:
        """Drops every stored activation and gradient."""
        for u in self.units:
            for c in u.calls:  # also when a graph that was not back-propagated still holds the call
                c.args, c.kwargs, c.grads, c.reduced = (), {}, None, None
            u.calls.clear()
        self._anchor = None


def _chunked(ug: Any) -> tuple[str, ...]:
    # Objects outside this package may implement only sq_norms / weighted_sums.
    fn = getattr(ug, "chunked", None)
    return tuple(fn()) if fn is not None else ()


def plan_chunks(grads: list[UnitGrads], batch: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Sets every kernel's memory budget, and returns the kernels whose per-sample
    gradients are materialised (indices into `grads`) and the example chunks to walk.

    The budget is `CHUNK_FRACTION` of the activations and output gradients held for
    the batch; when the materialised layers would leave chunks of fewer than
    `MIN_CHUNK` examples within it, the largest is demoted to ghost norms, repeatedly.
    """
    budget = chunk_budget(sum(getattr(ug, "stored", 0) for ug in grads))
    for ug in grads:
        if isinstance(ug, UnitGrads):
            ug.budget = budget
    floor = min(batch, _per_sample.MIN_CHUNK)
    while True:
        fused = [i for i, ug in enumerate(grads) if _chunked(ug)]
        costs = {i: grads[i].chunk_cost() for i in fused}
        per_example = sum(k for k, _ in costs.values()) + max((t for _, t in costs.values()), default=0)
        step = max(1, budget // max(1, per_example))
        if not fused or step >= floor:
            break
        # Demote the kernel keeping the most per example (ties: the later layer).
        order = sorted(fused, key=lambda i: (costs[i][0], i), reverse=True)
        if not any(grads[i].demote() for i in order):  # any() stops at the first demoted
            break
    return fused, _chunks(batch, per_example, budget) if fused else []


def clip_and_accumulate(
    grads: list[UnitGrads],
    *,
    max_grad_norm: float,
    clipping: str,
    num_layers: int,
    mask: torch.Tensor,
    out: Mapping[nn.Parameter, torch.Tensor],
) -> ClipResult:
    """Adds sum_i c_i * grad_i to `out` (keyed by parameter) and returns the norms.

    Flat clipping: c_i = min(1, C / (||grad_i|| + 1e-6)), the norm over all
    parameters (Abadi et al. 2016, arXiv 1607.00133v2, Alg. 1, "Clip gradient").
    Per-layer clipping: each of the `num_layers` units l is clipped on its own
    to C_l = C / sqrt(num_layers), so that ||grad_i|| <= sqrt(sum_l C_l^2) = C
    and the sensitivity, hence the noise, is unchanged (McMahan et al. 2018,
    arXiv 1710.06963v3, Sec. 3, per-layer clipping). Rows with mask False get
    c_i = 0 (padding).

    Order of work: the norms of every factored parameter over the whole batch;
    then, chunk of examples by chunk, the materialised per-sample gradients of
    every `chunked()` parameter, whose norms complete those examples' norms, so
    that their clip factors are known and the chunk's clipped gradients are
    added to `out` at once (the chunk is then dropped); finally the book-keeping
    sums of the factored parameters with the factors of the whole batch.
    """
    m = mask.to(torch.float32)
    fused, chunks = plan_chunks(grads, int(m.shape[0]))
    names = [_chunked(ug) for ug in grads]
    sq = [ug.sq_norms(skip=n) if n else ug.sq_norms() for ug, n in zip(grads, names)]
    base = [sum(d.values(), torch.zeros_like(m)) if d else torch.zeros_like(m) for d in sq]
    base_total = sum(base, torch.zeros_like(m))
    c_layer = max_grad_norm / math.sqrt(max(1, num_layers))

    def factors(layer_sq: list[torch.Tensor], total_sq: torch.Tensor, mk: torch.Tensor) -> list[torch.Tensor]:
        if clipping == "flat":
            c = torch.clamp(max_grad_norm / (torch.sqrt(total_sq) + NORM_EPS), max=1.0) * mk
            return [c] * len(layer_sq)
        return [torch.clamp(c_layer / (torch.sqrt(s) + NORM_EPS), max=1.0) * mk for s in layer_sq]

    parts: dict[int, list[torch.Tensor]] = {i: [] for i in fused}
    for s, e in chunks:
        chunk = {i: grads[i].chunk_grads(s, e) for i in fused}
        extra = {i: sum((sq_norm(g) for g in chunk[i].values()), torch.zeros_like(m[s:e])) for i in fused}
        layer_sq = [b[s:e] + extra[i] if i in extra else b[s:e] for i, b in enumerate(base)]
        total_sq = base_total[s:e]
        for i in fused:
            total_sq = total_sq + extra[i]
        coefs = factors(layer_sq, total_sq, m[s:e])
        for i in fused:
            parts[i].append(extra[i])
            for n, g in chunk[i].items():
                acc = out[grads[i].params[n]]
                acc.add_(torch.tensordot(coefs[i].to(g.dtype), g, dims=1).to(acc.dtype))
        del chunk
    # The same sums in the same order as in the chunks: the factors below are bitwise
    # those the chunks used.
    layer_sq = [b + torch.cat(parts[i]) if i in parts else b for i, b in enumerate(base)]
    total_sq = base_total
    for i in fused:
        total_sq = total_sq + torch.cat(parts[i])
    coefs = factors(layer_sq, total_sq, m)
    for ug, c, skip in zip(grads, coefs, names):
        sums = ug.weighted_sums({n: c for n in ug.params if n not in skip})
        for n, g in sums.items():
            acc = out[ug.params[n]]
            acc.add_(g.to(acc.dtype))
    first = coefs[0] if coefs else m
    return ClipResult(norms=torch.sqrt(total_sq).detach(), factors=first.detach())
