"""Per-sample gradient norms and clipped gradient sums from stored activations and backprops.

For a layer s = a W^T (+ b) that saw activations a_i and received output
gradients g_i = dL_i/ds_i, the per-sample weight gradient is g_i^T a_i. This
module never forms the batch of those gradients: either they are never formed
and the clipped *sum* sum_i c_i g_i^T a_i is one matrix product (or one
weight-gradient convolution) over the stored factors, the "book-keeping"
trick of Bu et al. 2022 (arXiv 2210.00038, Alg. 1), or they are formed a
chunk of examples at a time and each chunk gives both its norms and its
share of the clipped sum. No second backward pass either way.

Norms, per layer type:

* Linear on (B, d) inputs: ||g_i^T a_i||_F = ||a_i|| * ||g_i|| (Goodfellow 2015,
  arXiv 1510.01799, "Efficient per-example gradient computations").
* Linear with a sequence dim T, and Conv via unfold: either the ghost norm
  ||sum_t g_it a_it^T||_F^2 = <A_i A_i^T, G_i G_i^T>_F (Li et al. 2021,
  arXiv 2110.05679, Sec. 4, "ghost clipping"), costing T^2 (d_in + d_out) per
  sample plus the book-keeping contraction T d_in d_out for the clipped sum, or
  the materialised per-sample gradient, costing T d_in d_out once: its norm and
  its share of the clipped sum come from the same example chunk
  (`clip_and_accumulate` walks the batch in chunks of examples, so at most a
  chunk of per-sample gradients exists at once). The cheaper one is chosen per
  layer by flop count (the layer-wise choice of "mixed ghost clipping", Bu et
  al. 2022, arXiv 2205.10683): materialise when d_in d_out <= T^2 (d_in + d_out).
  When the materialised layers would leave chunks of fewer than `MIN_CHUNK`
  examples within the memory budget, the largest ones fall back to ghost norms
  (`UnitGrads.demote`).
* Embedding: the ghost norm with the Gram of one-hot rows, [idx_t == idx_s].
* LayerNorm / GroupNorm / RMSNorm: their per-sample gradients are small
  (one value per channel) and are materialised, in the backward pass itself
  (`Call.eager`), which then drops the layer's input and output gradient: with
  GroupNorm after every convolution that halves what a CNN's capture holds.

Convolutions are in `_conv.py`, nn.MultiheadAttention in `_attention.py`, and
every other module with parameters goes to the torch.func fallback (`_fallback.py`).

Every kernel exposes `sq_norms()` (per-sample squared norm of each parameter's
gradient) and `weighted_sums(coef)` (sum_i coef_i * per-sample gradient), and
kernels with materialised parameters also `chunked()` / `chunk_grads()` (see
`UnitGrads`), which `clip_and_accumulate` uses instead for those parameters.
With coef = e_i, `weighted_sums` returns example i's gradient, which is how
the tests compare every kernel with a micro-batch oracle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CHUNK_ELEMENTS",
    "CHUNK_FRACTION",
    "MIN_BUDGET_ELEMENTS",
    "MIN_CHUNK",
    "Call",
    "EmbeddingGrads",
    "LinearFactors",
    "LinearGrads",
    "UnitGrads",
    "chunk_budget",
    "norm_layer_grads",
    "sq_norm",
]

#: Upper bound on the temporaries a kernel allocates at once (in elements), unless
#: `clip_and_accumulate` sets a budget of its own (see `chunk_budget`).
CHUNK_ELEMENTS = 2**24
#: Memory budget of the per-sample work of one physical batch, as a fraction of the
#: activations and output gradients the capture holds anyway (`UnitGrads.stored`).
CHUNK_FRACTION = 0.125
#: ... but never below this many elements (1 MiB of float32).
MIN_BUDGET_ELEMENTS = 2**18
#: Fewest examples per chunk of materialised per-sample gradients before layers are demoted to ghost norms.
MIN_CHUNK = 2


class Call:
    """One forward call of a unit: its inputs, and the gradients its outputs received."""

    __slots__ = ("args", "eager", "grads", "kwargs", "out_positions", "reduced", "versions")

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.args = args
        self.kwargs = kwargs
        self.versions = tuple(a._version if isinstance(a, torch.Tensor) else None for a in args)
        self.grads: tuple[torch.Tensor | None, ...] | None = None
        #: Positions, among the flattened outputs, of the tensors whose gradients are in `grads`.
        self.out_positions: tuple[int, ...] = (0,)
        #: Called with this call as soon as `grads` arrive (in the backward pass), for layers
        #: whose per-sample gradients are small: it stores them in `reduced` and drops
        #: `args` and `grads`, so that the activations are freed as early as without DP.
        self.eager: Any = None
        self.reduced: dict[str, torch.Tensor] | None = None

    def modified(self) -> bool:
        """Whether an input was changed in place after the forward call used it."""
        return any(isinstance(a, torch.Tensor) and a._version != v for a, v in zip(self.args, self.versions))


class UnitGrads:
    """Per-sample gradients of one layer, kept in factored form.

    `sq_norms()` and `weighted_sums(coef)` cover every parameter. Kernels that
    materialise some per-sample gradients also name them in `chunked()`: for
    those, `clip_and_accumulate` takes each example chunk from `chunk_grads`
    once and gets both their norms and their share of the clipped sum from it,
    and calls `sq_norms(skip=chunked())` / `weighted_sums` for the rest.
    """

    #: Cap (in elements) on the temporaries of `sq_norms` / `weighted_sums`.
    budget: int = CHUNK_ELEMENTS
    #: Elements of the captured activations and output gradients behind this kernel
    #: (set by `GradCapture.unit_grads`; sizes the budget of `clip_and_accumulate`).
    stored: int = 0

    def __init__(self, params: Mapping[str, nn.Parameter]) -> None:
        self.params = dict(params)

    def sq_norms(self, skip: Sequence[str] = ()) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def weighted_sums(self, coef: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # pragma: no cover
        """sum_i coef[n]_i * (example i's gradient of n), for the parameters n in `coef`."""
        raise NotImplementedError

    def chunked(self) -> tuple[str, ...]:
        """Parameters whose per-sample gradients are materialised (in example chunks)."""
        return ()

    def chunk_cost(self) -> tuple[int, int]:
        """(elements kept, transient elements) per example of `chunk_grads`."""
        return 0, 0

    def chunk_grads(self, start: int, end: int) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        """Per-sample gradients (end - start, *shape) of examples start:end, for `chunked()`."""
        raise NotImplementedError

    def demote(self) -> bool:
        """Switches the `chunked()` parameters to ghost norms + book-keeping sums (mode 'auto'
        only); False when there is nothing to switch."""
        return False


def chunk_budget(stored: int) -> int:
    """The per-batch memory budget (elements) for per-sample work: `CHUNK_FRACTION` of what is stored."""
    return max(MIN_BUDGET_ELEMENTS, int(CHUNK_FRACTION * stored))


def sq_norm(x: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of each row x[i] (one fused reduction, no squared copy)."""
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1).square()


def _chunks(batch: int, per_sample: int, budget: int = CHUNK_ELEMENTS) -> list[tuple[int, int]]:
    step = max(1, budget // max(1, per_sample))
    return [(s, min(batch, s + step)) for s in range(0, batch, step)]


def _trainable(module: nn.Module, names: Sequence[str]) -> dict[str, nn.Parameter]:
    out = {}
    for n in names:
        p = getattr(module, n, None)
        if isinstance(p, nn.Parameter) and p.requires_grad:
            out[n] = p
    return out


def _batch_gram_inner(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """sum_{t,s} (a_t . a_s)(g_t . g_s) per sample, for a: (b, T, p), g: (b, T, d)."""
    return (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))


def _cat2(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenates along dim 2, without a copy when there is one part."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, 2)


def _use_ghost(mode: str, t: int, d_in: int, d_out: int) -> bool:
    if mode == "ghost":
        return True
    if mode == "materialize":
        return False
    # Flops per sample, norm and clipped sum together: ghost T^2 (d_in + d_out) for the
    # norm + T d_in d_out for the book-keeping sum; materialised T d_in d_out for the
    # per-sample gradient + d_in d_out for its share of the sum.
    return t * t * (d_in + d_out) < d_in * d_out


class _Materialized(UnitGrads):
    """Per-sample gradients held as (B, *param.shape) tensors (small layers only)."""

    def __init__(self, params: Mapping[str, nn.Parameter], grads: Mapping[str, torch.Tensor]) -> None:
        super().__init__(params)
        self.grads = dict(grads)

    def sq_norms(self, skip: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        return {n: sq_norm(g) for n, g in self.grads.items() if n not in skip}

    def weighted_sums(self, coef: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: torch.tensordot(coef[n].to(g.dtype), g, dims=1) for n, g in self.grads.items() if n in coef}


class LinearFactors:
    """The factors (a, g) of a linear map's per-sample gradients g_i^T a_i, a: (B, T, d_in), g: (B, T, d_out).

    `method`: 'outer' (T = 1), 'ghost' (Gram norms, book-keeping sum) or
    'materialize' (per-sample gradients in example chunks, `chunk_weight`).
    """

    def __init__(self, a: torch.Tensor, g: torch.Tensor, mode: str) -> None:
        self.a, self.g, self.mode = a, g, mode
        _, t, d_in = a.shape
        d_out = g.shape[-1]
        self.budget = CHUNK_ELEMENTS
        if t == 1:
            self.method = "outer"
        else:
            self.method = "ghost" if _use_ghost(mode, t, d_in, d_out) else "materialize"

    @classmethod
    def concat(cls, a: Sequence[torch.Tensor], g: Sequence[torch.Tensor], mode: str) -> LinearFactors:
        """Several calls of one layer: per-sample gradients add up, so positions concatenate."""
        a = [x.reshape(x.shape[0], -1, x.shape[-1]) for x in a]
        g = [x.reshape(x.shape[0], -1, x.shape[-1]) for x in g]
        return cls(a[0] if len(a) == 1 else torch.cat(a, 1), g[0] if len(g) == 1 else torch.cat(g, 1), mode)

    @property
    def weight_elements(self) -> int:
        return self.a.shape[-1] * self.g.shape[-1]

    def demote(self) -> bool:
        if self.method != "materialize" or self.mode != "auto":
            return False
        self.method = "ghost"
        return True

    def chunk_weight(self, start: int, end: int) -> torch.Tensor:
        """Per-sample weight gradients of examples start:end, (end - start, d_out, d_in)."""
        return torch.bmm(self.g[start:end].transpose(1, 2), self.a[start:end])

    def weight_sq_norms(self) -> torch.Tensor:
        a, g = self.a, self.g
        b, t, _ = a.shape
        if self.method == "outer":  # Goodfellow 2015 (arXiv 1510.01799): ||g a^T||_F = ||a|| ||g||.
            return sq_norm(a) * sq_norm(g)
        if self.method == "ghost":  # Li et al. 2021 (arXiv 2110.05679), Sec. 4.
            return torch.cat([_batch_gram_inner(a[s:e], g[s:e]) for s, e in _chunks(b, t * t * 2, self.budget)])
        return torch.cat([sq_norm(self.chunk_weight(s, e)) for s, e in _chunks(b, self.weight_elements, self.budget)])

    def bias_sq_norms(self) -> torch.Tensor:
        return sq_norm(self.g.sum(1))

    def weight_sum(self, coef: torch.Tensor) -> torch.Tensor:
        # Book-keeping (Bu et al. 2022, arXiv 2210.00038, Alg. 1): sum_i c_i g_i^T a_i in one GEMM.
        # The coefficients scale the narrower factor: a copy of B T min(d_in, d_out) elements.
        d_in, d_out = self.a.shape[-1], self.g.shape[-1]
        a, g = self.a, self.g
        if d_out <= d_in:
            g = g * coef.to(g.dtype)[:, None, None]
        else:
            a = a * coef.to(a.dtype)[:, None, None]
        return g.reshape(-1, d_out).t() @ a.reshape(-1, d_in)

    def bias_sum(self, coef: torch.Tensor) -> torch.Tensor:
        return coef.to(self.g.dtype) @ self.g.sum(1)


class LinearGrads(UnitGrads):
    """nn.Linear; inputs (B, *, d_in) are flattened to (B, T, d_in), calls concatenated along T."""

    def __init__(self, module: nn.Linear, calls: Sequence[Call], mode: str) -> None:
        super().__init__(_trainable(module, ("weight", "bias")))
        self.f = LinearFactors.concat([c.args[0] for c in calls], [c.grads[0] for c in calls], mode)

    def sq_norms(self, skip: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        self.f.budget = self.budget
        out = {}
        if "weight" in self.params and "weight" not in skip:
            out["weight"] = self.f.weight_sq_norms()
        if "bias" in self.params and "bias" not in skip:
            out["bias"] = self.f.bias_sq_norms()
        return out

    def weighted_sums(self, coef: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        if "weight" in self.params and "weight" in coef:
            out["weight"] = self.f.weight_sum(coef["weight"])
        if "bias" in self.params and "bias" in coef:
            out["bias"] = self.f.bias_sum(coef["bias"])
        return out

    def chunked(self) -> tuple[str, ...]:
        return ("weight",) if "weight" in self.params and self.f.method == "materialize" else ()

    def chunk_cost(self) -> tuple[int, int]:
        return (self.f.weight_elements, 0) if self.chunked() else (0, 0)

    def chunk_grads(self, start: int, end: int) -> dict[str, torch.Tensor]:
        return {"weight": self.f.chunk_weight(start, end)}

    def demote(self) -> bool:
        return bool(self.chunked()) and self.f.demote()


class EmbeddingGrads(UnitGrads):
    """nn.Embedding: row idx_t of example i's gradient is the sum of g_it over its positions t."""

    def __init__(self, module: nn.Embedding, calls: Sequence[Call], mode: str) -> None:
        super().__init__(_trainable(module, ("weight",)))
        idx = [c.args[0].reshape(c.args[0].shape[0], -1) for c in calls]
        g = [c.grads[0].reshape(c.grads[0].shape[0], -1, c.grads[0].shape[-1]) for c in calls]
        self.idx = idx[0] if len(idx) == 1 else torch.cat(idx, 1)
        g_all = g[0] if len(g) == 1 else torch.cat(g, 1)
        if module.padding_idx is not None:  # torch's backward ignores the padding row.
            g_all = g_all * (self.idx != module.padding_idx).unsqueeze(-1).to(g_all.dtype)
        self.g = g_all
        self.num_embeddings = module.num_embeddings

    def sq_norms(self, skip: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        if "weight" not in self.params or "weight" in skip:
            return {}
        b, t, _ = self.g.shape
        if t == 1:
            return {"weight": sq_norm(self.g)}
        parts = []
        for s, e in _chunks(b, 2 * t * t, self.budget):
            idx, g = self.idx[s:e], self.g[s:e]
            same = (idx.unsqueeze(2) == idx.unsqueeze(1)).to(g.dtype)
            parts.append((same * torch.bmm(g, g.transpose(1, 2))).sum((1, 2)))
        return {"weight": torch.cat(parts)}

    def weighted_sums(self, coef: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "weight" not in self.params or "weight" not in coef:
            return {}
        d = self.g.shape[-1]
        cg = (self.g * coef["weight"].to(self.g.dtype)[:, None, None]).reshape(-1, d)
        w = torch.zeros(self.num_embeddings, d, dtype=self.g.dtype, device=self.g.device)
        return {"weight": w.index_add_(0, self.idx.reshape(-1), cg)}


def _norm_layer_parts(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample gradients of a norm layer's affine parameters for one call: (B, *param.shape)."""
    if isinstance(module, nn.GroupNorm):
        x_hat = F.group_norm(x, module.num_groups, eps=module.eps)
        reduce = tuple(range(2, x.dim()))  # per channel: dims after (B, C)
    else:
        shape = tuple(module.normalized_shape)
        if isinstance(module, nn.LayerNorm):
            x_hat = F.layer_norm(x, shape, eps=module.eps)
        else:
            x_hat = F.rms_norm(x, shape, eps=module.eps)
        reduce = tuple(range(1, x.dim() - len(shape)))  # the dims between B and normalized_shape
    return {"weight": (g * x_hat).sum(reduce) if reduce else g * x_hat,
            "bias": g.sum(reduce) if reduce else g}


def _reduce_norm_call(module: nn.Module, call: Call) -> None:
    """`Call.eager` of norm layers: per-sample gradients right in the backward pass."""
    if call.modified() or call.grads is None or call.grads[0] is None:
        return  # left as is: `GradCapture.unit_grads` reports the in-place change
    call.reduced = _norm_layer_parts(module, call.args[0], call.grads[0])
    call.args, call.versions, call.grads = (), (), ()


def norm_layer_grads(module: nn.Module, calls: Sequence[Call], mode: str) -> UnitGrads:
    """LayerNorm / GroupNorm / RMSNorm: y = x_hat * w + b, so dL_i/dw = sum g_i * x_hat_i."""
    params = _trainable(module, ("weight", "bias"))
    grads: dict[str, torch.Tensor] = {}
    for c in calls:
        parts = c.reduced if c.reduced is not None else _norm_layer_parts(module, c.args[0], c.grads[0])
        for n in params:
            grads[n] = parts[n] if n not in grads else grads[n] + parts[n]
    return _Materialized(params, grads)


norm_layer_grads.eager = _reduce_norm_call  # type: ignore[attr-defined]
