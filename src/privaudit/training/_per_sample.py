"""Per-sample gradient norms and clipped gradient sums from stored activations and backprops.

For a layer s = a W^T (+ b) that saw activations a_i and received output
gradients g_i = dL_i/ds_i, the per-sample weight gradient is g_i^T a_i. This
module never forms the batch of those gradients unless that is the cheapest
way to get their norms; the clipped *sum* sum_i c_i g_i^T a_i is always one
matrix product (or one weight-gradient convolution) over the whole batch, the
"book-keeping" trick of Bu et al. 2022 (arXiv 2210.00038, Alg. 1), unless
the per-sample gradients were materialised anyway for their norms.

Norms, per layer type:

* Linear on (B, d) inputs: ||g_i^T a_i||_F = ||a_i|| * ||g_i|| (Goodfellow 2015,
  arXiv 1510.01799, "Efficient per-example gradient computations").
* Linear with a sequence dim T, and Conv via unfold: either the ghost norm
  ||sum_t g_it a_it^T||_F^2 = <A_i A_i^T, G_i G_i^T>_F (Li et al. 2021,
  arXiv 2110.05679, Sec. 4, "ghost clipping"), costing T^2 (d_in + d_out) per sample,
  or the materialised per-sample gradient, costing T d_in d_out; the cheaper
  one is chosen per layer by flop count (the layer-wise choice of "mixed ghost
  clipping", Bu et al. 2022, arXiv 2205.10683), in batch chunks so that memory
  stays bounded; a materialised batch that fits in one chunk is kept and reused
  for the clipped sum.
* Embedding: the ghost norm with the Gram of one-hot rows, [idx_t == idx_s].
* LayerNorm / GroupNorm / RMSNorm: their per-sample gradients are small
  (one value per channel) and are materialised.

Convolutions are in `_conv.py`, nn.MultiheadAttention in `_attention.py`, and
every other module with parameters goes to the torch.func fallback (`_fallback.py`).

Every kernel exposes `sq_norms()` (per-sample squared norm of each parameter's
gradient) and `weighted_sums(coef)` (sum_i coef_i * per-sample gradient).
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
    "Call",
    "EmbeddingGrads",
    "LinearFactors",
    "LinearGrads",
    "UnitGrads",
    "norm_layer_grads",
    "sq_norm",
]

#: Upper bound on the temporaries a kernel allocates at once (in elements).
CHUNK_ELEMENTS = 2**24


class Call:
    """One forward call of a unit: its inputs, and the gradients its outputs received."""

    __slots__ = ("args", "grads", "kwargs", "out_positions", "versions")

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.args = args
        self.kwargs = kwargs
        self.versions = tuple(a._version if isinstance(a, torch.Tensor) else None for a in args)
        self.grads: tuple[torch.Tensor | None, ...] | None = None
        #: Positions, among the flattened outputs, of the tensors whose gradients are in `grads`.
        self.out_positions: tuple[int, ...] = (0,)


class UnitGrads:
    """Per-sample gradients of one layer, kept in factored form."""

    def __init__(self, params: Mapping[str, nn.Parameter]) -> None:
        self.params = dict(params)

    def sq_norms(self) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def weighted_sums(self, coef: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


def sq_norm(x: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of each row x[i] (one fused reduction, no squared copy)."""
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1).square()


def _chunks(batch: int, per_sample: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(1, per_sample))
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
    # Flop count per sample: ghost T^2 (d_in + d_out), materialised T d_in d_out.
    return t * (d_in + d_out) < d_in * d_out


class _Materialized(UnitGrads):
    """Per-sample gradients held as (B, *param.shape) tensors (small layers only)."""

    def __init__(self, params: Mapping[str, nn.Parameter], grads: Mapping[str, torch.Tensor]) -> None:
        super().__init__(params)
        self.grads = dict(grads)

    def sq_norms(self) -> dict[str, torch.Tensor]:
        return {n: sq_norm(g) for n, g in self.grads.items()}

    def weighted_sums(self, coef: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: torch.tensordot(coef[n].to(g.dtype), g, dims=1) for n, g in self.grads.items()}


class LinearFactors:
    """The factors (a, g) of a linear map's per-sample gradients g_i^T a_i, a: (B, T, d_in), g: (B, T, d_out)."""

    def __init__(self, a: torch.Tensor, g: torch.Tensor, mode: str) -> None:
        self.a, self.g, self.mode = a, g, mode
        self.materialized: torch.Tensor | None = None  # (B, d_out, d_in), when cheap to keep

    @classmethod
    def concat(cls, a: Sequence[torch.Tensor], g: Sequence[torch.Tensor], mode: str) -> LinearFactors:
        """Several calls of one layer: per-sample gradients add up, so positions concatenate."""
        a = [x.reshape(x.shape[0], -1, x.shape[-1]) for x in a]
        g = [x.reshape(x.shape[0], -1, x.shape[-1]) for x in g]
        return cls(a[0] if len(a) == 1 else torch.cat(a, 1), g[0] if len(g) == 1 else torch.cat(g, 1), mode)

    def weight_sq_norms(self) -> torch.Tensor:
        a, g = self.a, self.g
        b, t, d_in = a.shape
        d_out = g.shape[-1]
        if t == 1:  # Goodfellow 2015 (arXiv 1510.01799): ||g a^T||_F = ||a|| ||g||.
            return sq_norm(a) * sq_norm(g)
        if _use_ghost(self.mode, t, d_in, d_out):  # Li et al. 2021 (arXiv 2110.05679), Sec. 4.
            return torch.cat([_batch_gram_inner(a[s:e], g[s:e]) for s, e in _chunks(b, t * t * 2)])
        chunks = _chunks(b, d_in * d_out)
        if len(chunks) == 1:  # small enough to keep: the clipped sum becomes a contraction
            self.materialized = torch.bmm(g.transpose(1, 2), a)
            return sq_norm(self.materialized)
        return torch.cat([sq_norm(torch.bmm(g[s:e].transpose(1, 2), a[s:e])) for s, e in chunks])

    def bias_sq_norms(self) -> torch.Tensor:
        return sq_norm(self.g.sum(1))

    def weight_sum(self, coef: torch.Tensor) -> torch.Tensor:
        if self.materialized is not None:
            return torch.tensordot(coef.to(self.materialized.dtype), self.materialized, dims=1)
        # Book-keeping (Bu et al. 2022, arXiv 2210.00038, Alg. 1): sum_i c_i g_i^T a_i in one GEMM.
        d_in, d_out = self.a.shape[-1], self.g.shape[-1]
        cg = self.g * coef.to(self.g.dtype)[:, None, None]
        return cg.reshape(-1, d_out).t() @ self.a.reshape(-1, d_in)

    def bias_sum(self, coef: torch.Tensor) -> torch.Tensor:
        return coef.to(self.g.dtype) @ self.g.sum(1)


class LinearGrads(UnitGrads):
    """nn.Linear; inputs (B, *, d_in) are flattened to (B, T, d_in), calls concatenated along T."""

    def __init__(self, module: nn.Linear, calls: Sequence[Call], mode: str) -> None:
        super().__init__(_trainable(module, ("weight", "bias")))
        self.f = LinearFactors.concat([c.args[0] for c in calls], [c.grads[0] for c in calls], mode)

    def sq_norms(self) -> dict[str, torch.Tensor]:
        out = {}
        if "weight" in self.params:
            out["weight"] = self.f.weight_sq_norms()
        if "bias" in self.params:
            out["bias"] = self.f.bias_sq_norms()
        return out

    def weighted_sums(self, coef: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        if "weight" in self.params:
            out["weight"] = self.f.weight_sum(coef["weight"])
        if "bias" in self.params:
            out["bias"] = self.f.bias_sum(coef["bias"])
        return out


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

    def sq_norms(self) -> dict[str, torch.Tensor]:
        if "weight" not in self.params:
            return {}
        b, t, _ = self.g.shape
        if t == 1:
            return {"weight": sq_norm(self.g)}
        parts = []
        for s, e in _chunks(b, 2 * t * t):
            idx, g = self.idx[s:e], self.g[s:e]
            same = (idx.unsqueeze(2) == idx.unsqueeze(1)).to(g.dtype)
            parts.append((same * torch.bmm(g, g.transpose(1, 2))).sum((1, 2)))
        return {"weight": torch.cat(parts)}

    def weighted_sums(self, coef: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "weight" not in self.params:
            return {}
        d = self.g.shape[-1]
        cg = (self.g * coef["weight"].to(self.g.dtype)[:, None, None]).reshape(-1, d)
        w = torch.zeros(self.num_embeddings, d, dtype=self.g.dtype, device=self.g.device)
        return {"weight": w.index_add_(0, self.idx.reshape(-1), cg)}


def norm_layer_grads(module: nn.Module, calls: Sequence[Call], mode: str) -> UnitGrads:
    """LayerNorm / GroupNorm / RMSNorm: y = x_hat * w + b, so dL_i/dw = sum g_i * x_hat_i."""
    params = _trainable(module, ("weight", "bias"))
    grads: dict[str, torch.Tensor] = {}
    for c in calls:
        x, g = c.args[0], c.grads[0]
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
        parts = {"weight": (g * x_hat).sum(reduce) if reduce else g * x_hat,
                 "bias": g.sum(reduce) if reduce else g}
        for n in params:
            grads[n] = parts[n] if n not in grads else grads[n] + parts[n]
    return _Materialized(params, grads)
