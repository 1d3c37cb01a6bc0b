"""Per-sample gradients of nn.MultiheadAttention, decomposed into its two linear maps.

MultiheadAttention computes q, k, v = x W_in^T + b_in (one packed linear map),
attention per head, then out = ctx W_out^T + b_out. Its forward calls the
linear maps functionally, so no hook sees them; instead the layer's inputs
and output gradient are captured, and the attention is re-run once (the
projections and the attention only, like activation checkpointing) to recover
ctx and the gradients reaching q, k and v. Both linear maps then go through
the same ghost-norm / book-keeping code as nn.Linear (`LinearFactors`).

Handled natively: batch_first=True, packed projections (kdim = vdim =
embed_dim), no bias_k/bias_v, no add_zero_attn, dropout = 0. Anything else
goes to the torch.func fallback.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._per_sample import Call, LinearFactors, UnitGrads

__all__ = ["MultiheadAttentionGrads", "mha_is_native"]

_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)
_PARAMS = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")


def mha_is_native(m: nn.Module) -> bool:
    """True when `m` is a MultiheadAttention this module's kernel reproduces exactly."""
    return (isinstance(m, nn.MultiheadAttention) and type(m).forward is nn.MultiheadAttention.forward
            and m.batch_first and m._qkv_same_embed_dim and m.bias_k is None and not m.add_zero_attn
            and m.dropout == 0.0 and type(m.out_proj).forward is nn.Linear.forward)


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """MultiheadAttention's convention: a boolean True masks the position out (-inf)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


def _merged_mask(b: int, h: int, t: int, s: int, attn_mask: torch.Tensor | None,
                 key_padding_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    am = _additive(attn_mask, dtype)
    if am is not None:
        am = am.view(1, 1, t, s) if am.dim() == 2 else am.view(b, h, t, s)
    kpm = _additive(key_padding_mask, dtype)
    if kpm is not None:
        kpm = kpm.view(b, 1, 1, s)
        am = kpm if am is None else am + kpm
    return am


class MultiheadAttentionGrads(UnitGrads):
    """Per-sample gradients of a native-eligible nn.MultiheadAttention (see `mha_is_native`)."""

    def __init__(self, module: nn.MultiheadAttention, calls: Sequence[Call], mode: str) -> None:
        params = dict(module.named_parameters())
        super().__init__({n: params[n] for n in _PARAMS if n in params and params[n].requires_grad})
        self.m = module
        ins: list[list[torch.Tensor]] = [[], [], []]
        g_in: list[list[torch.Tensor]] = [[], [], []]
        ctxs, g_outs = [], []
        self_attention = True
        for c in calls:
            (q_in, k_in, v_in), (g_q, g_k, g_v), ctx, g_out = self._recompute(c)
            same = q_in.data_ptr() == k_in.data_ptr() == v_in.data_ptr() and q_in.shape == k_in.shape == v_in.shape
            self_attention = self_attention and same
            for lst, x in zip(ins, (q_in, k_in, v_in)):
                lst.append(x)
            for lst, x in zip(g_in, (g_q, g_k, g_v)):
                lst.append(x)
            ctxs.append(ctx)
            g_outs.append(g_out)
        self.out = LinearFactors.concat(ctxs, g_outs, mode)
        if self_attention:  # x W_in^T: one linear map with output gradient [g_q, g_k, g_v].
            self.blocks = [LinearFactors.concat(ins[0], [torch.cat(gs, -1) for gs in zip(*g_in)], mode)]
        else:  # three blocks of rows of W_in; squared norms add over blocks.
            self.blocks = [LinearFactors.concat(ins[j], g_in[j], mode) for j in range(3)]

    def _recompute(self, call: Call) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...],
                                              torch.Tensor, torch.Tensor]:
        m = self.m
        bound = _SIGNATURE.bind(m, *call.args, **call.kwargs)
        bound.apply_defaults()
        a = bound.arguments
        query, key, value = a["query"], a["key"], a["value"]
        grads = dict(zip(call.out_positions, call.grads))
        b, t, d = query.shape
        s = key.shape[1]
        h, hd = m.num_heads, d // m.num_heads
        w_in = m.in_proj_weight.detach()
        b_in = None if m.in_proj_bias is None else m.in_proj_bias.detach()
        with torch.no_grad():
            parts = []
            for j, x in enumerate((query, key, value)):
                bias = None if b_in is None else b_in[j * d:(j + 1) * d]
                parts.append(F.linear(x, w_in[j * d:(j + 1) * d], bias))
        q, k, v = (p.requires_grad_() for p in parts)
        mask = _merged_mask(b, h, t, s, a["attn_mask"], a["key_padding_mask"], q.dtype)
        need_weights = grads.get(1) is not None
        with torch.enable_grad():
            qh = q.view(b, t, h, hd).transpose(1, 2)
            kh = k.view(b, s, h, hd).transpose(1, 2)
            vh = v.view(b, s, h, hd).transpose(1, 2)
            if need_weights:
                scores = (qh * (1.0 / math.sqrt(hd))) @ kh.transpose(-2, -1)
                probs = torch.softmax(scores if mask is None else scores + mask, dim=-1)
                ctx_h = probs @ vh
            else:
                ctx_h = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
            ctx = ctx_h.transpose(1, 2).reshape(b, t, d)
            g_out = grads.get(0)
            if g_out is None:
                g_out = torch.zeros(b, t, d, dtype=q.dtype, device=q.device)
            outputs, cotangents = [ctx], [g_out @ m.out_proj.weight.detach()]
            if need_weights:
                outputs.append(probs.mean(1) if a["average_attn_weights"] else probs)
                cotangents.append(grads[1])
            g_qkv = torch.autograd.grad(outputs, (q, k, v), cotangents, allow_unused=True)
        g_qkv = tuple(torch.zeros_like(x) if g is None else g for x, g in zip((q, k, v), g_qkv))
        return (query, key, value), g_qkv, ctx.detach(), g_out

    def _factors(self) -> list[LinearFactors]:
        return [*self.blocks, self.out]

    def sq_norms(self, skip: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        for f in self._factors():
            f.budget = self.budget
        want = [n for n in self.params if n not in skip]
        out = {}
        if "in_proj_weight" in want:
            out["in_proj_weight"] = sum(f.weight_sq_norms() for f in self.blocks)
        if "in_proj_bias" in want:
            out["in_proj_bias"] = sum(f.bias_sq_norms() for f in self.blocks)
        if "out_proj.weight" in want:
            out["out_proj.weight"] = self.out.weight_sq_norms()
        if "out_proj.bias" in want:
            out["out_proj.bias"] = self.out.bias_sq_norms()
        return out

    def weighted_sums(self, coef: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        want = [n for n in self.params if n in coef]
        out = {}
        if "in_proj_weight" in want:
            out["in_proj_weight"] = torch.cat([f.weight_sum(coef["in_proj_weight"]) for f in self.blocks], 0)
        if "in_proj_bias" in want:
            out["in_proj_bias"] = torch.cat([f.bias_sum(coef["in_proj_bias"]) for f in self.blocks], 0)
        if "out_proj.weight" in want:
            out["out_proj.weight"] = self.out.weight_sum(coef["out_proj.weight"])
        if "out_proj.bias" in want:
            out["out_proj.bias"] = self.out.bias_sum(coef["out_proj.bias"])
        return out

    # -- chunked per-sample gradients (the linear maps whose method is 'materialize') ---
    def chunked(self) -> tuple[str, ...]:
        out = []
        if "in_proj_weight" in self.params and all(f.method == "materialize" for f in self.blocks):
            out.append("in_proj_weight")
        if "out_proj.weight" in self.params and self.out.method == "materialize":
            out.append("out_proj.weight")
        return tuple(out)

    def chunk_cost(self) -> tuple[int, int]:
        names = self.chunked()
        kept = sum(f.weight_elements for f in self.blocks) if "in_proj_weight" in names else 0
        kept += self.out.weight_elements if "out_proj.weight" in names else 0
        return kept, 0

    def chunk_grads(self, start: int, end: int) -> dict[str, torch.Tensor]:
        names = self.chunked()
        out = {}
        if "in_proj_weight" in names:
            out["in_proj_weight"] = torch.cat([f.chunk_weight(start, end) for f in self.blocks], 1)
        if "out_proj.weight" in names:
            out["out_proj.weight"] = self.out.chunk_weight(start, end)
        return out

    def demote(self) -> bool:
        if not self.chunked():
            return False
        # A block that stays 'materialize' alone (the others ghost) is fine: its norm
        # is then computed in sq_norms, and in_proj_weight's sum is book-keeping.
        return any([f.demote() for f in self._factors()])
