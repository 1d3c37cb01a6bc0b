"""Per-sample gradients of nn.Conv1d / nn.Conv2d.

A convolution is a linear map applied at L positions of the unfolded input
(im2col), so the linear-layer formulas apply with T = L. Norms are computed in
batch chunks by the cheapest of three exact methods; the clipped sum is always
one weight-gradient convolution with the output gradients scaled by the clip
factors (book-keeping, Bu et al. 2022, arXiv 2210.00038, Alg. 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._per_sample import Call, UnitGrads, _batch_gram_inner, _cat2, _chunks, _trainable, _use_ghost, sq_norm

__all__ = ["ConvGrads"]


class ConvGrads(UnitGrads):
    """nn.Conv1d / nn.Conv2d: norms via unfold (in batch chunks); sums via the weight-gradient conv."""

    def __init__(self, module: nn.Conv1d | nn.Conv2d, calls: Sequence[Call], mode: str) -> None:
        super().__init__(_trainable(module, ("weight", "bias")))
        self.m = module
        self.mode = mode
        self.one_d = isinstance(module, nn.Conv1d)
        self.xs: list[torch.Tensor] = []
        self.gs = [c.grads[0] for c in calls]
        explicit_pad = isinstance(module.padding, str) or module.padding_mode != "zeros"
        for c in calls:
            x = c.args[0]
            if explicit_pad:
                pad_mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
                x = F.pad(x, module._reversed_padding_repeated_twice, mode=pad_mode)
            self.xs.append(x)
        self.padding = (0,) * len(module.kernel_size) if explicit_pad else tuple(module.padding)
        self.materialized: torch.Tensor | None = None  # (B, *weight.shape), when cheap to keep

    def _unfold(self, x: torch.Tensor) -> torch.Tensor:
        m = self.m
        if self.one_d:
            return F.unfold(x.unsqueeze(2), (1, m.kernel_size[0]), dilation=(1, m.dilation[0]),
                            padding=(0, self.padding[0]), stride=(1, m.stride[0]))
        return F.unfold(x, m.kernel_size, dilation=m.dilation, padding=self.padding, stride=m.stride)

    def sq_norms(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if "weight" in self.params:
            out["weight"] = self._weight_sq_norms()
        if "bias" in self.params:
            out["bias"] = sq_norm(sum(g.flatten(2).sum(2) for g in self.gs))
        return out

    def _weight_sq_norms(self) -> torch.Tensor:
        m = self.m
        groups = m.groups
        b = self.gs[0].shape[0]
        c_out = m.out_channels
        p = m.in_channels // groups * math.prod(m.kernel_size)
        length = sum(g[0].numel() // c_out for g in self.gs)
        if _use_ghost(self.mode, length, p, c_out // groups):
            method = "ghost"
        elif self.mode == "auto" and self.gs[0].device.type == "cpu" and len(self.xs) == 1:
            # Measured on CPU (bench/engine.py): one grouped weight-gradient convolution
            # with the batch as groups beats unfold + batched GEMM on large feature maps.
            method = "grouped"
        else:
            method = "unfold"
        per_sample = {"ghost": length * length * 2 * groups, "grouped": c_out * p,
                      "unfold": c_out * p + length * p * groups}[method]
        chunks = _chunks(b, per_sample)
        # When the whole batch of per-sample gradients fits in one chunk, keep it: the
        # clipped sum is then a cheap contraction instead of one more convolution.
        keep = method != "ghost" and len(chunks) == 1
        parts = []
        for s, e in chunks:
            if method == "grouped":
                w = self._grouped_grads(self.xs[0][s:e], self.gs[0][s:e])
                if keep:
                    self.materialized = w
                parts.append(sq_norm(w))
                continue
            # (b, G, L, p) and (b, G, L, c_out/G): G independent linear maps over L positions.
            a = _cat2([self._unfold(x[s:e]) for x in self.xs])
            a = a.view(e - s, groups, p, -1).transpose(2, 3)
            g = _cat2([g_[s:e].flatten(2) for g_ in self.gs])
            g = g.view(e - s, groups, c_out // groups, -1).transpose(2, 3)
            if method == "ghost":  # Li et al. 2021 (arXiv 2110.05679), Sec. 4, per group.
                aa = a.reshape(-1, *a.shape[2:])
                gg = g.reshape(-1, *g.shape[2:])
                parts.append(_batch_gram_inner(aa, gg).view(e - s, groups).sum(1))
            else:
                w = torch.matmul(g.transpose(2, 3), a)  # (b, G, c_out/G, p): the weight's layout
                if keep:
                    self.materialized = w.reshape(e - s, *m.weight.shape)
                parts.append(sq_norm(w))
        return torch.cat(parts)

    def _grouped_grads(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Per-sample weight gradients, (b, *weight.shape), as one convolution whose groups are the examples."""
        m = self.m
        b = x.shape[0]
        fn = torch.nn.grad.conv1d_weight if self.one_d else torch.nn.grad.conv2d_weight
        shape = (b * m.out_channels, *m.weight.shape[1:])
        w = fn(x.reshape(1, -1, *x.shape[2:]), shape, g.reshape(1, -1, *g.shape[2:]), stride=m.stride,
               padding=self.padding, dilation=m.dilation, groups=b * m.groups)
        return w.view(b, *m.weight.shape)

    def weighted_sums(self, coef: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        m = self.m
        out: dict[str, torch.Tensor] = {}
        if "weight" in self.params and self.materialized is not None:
            out["weight"] = torch.tensordot(coef["weight"].to(self.materialized.dtype), self.materialized, dims=1)
        elif "weight" in self.params:
            fn = torch.nn.grad.conv1d_weight if self.one_d else torch.nn.grad.conv2d_weight
            total = None
            for x, g in zip(self.xs, self.gs):
                c = coef["weight"].to(g.dtype).view(-1, *([1] * (g.dim() - 1)))
                w = fn(x, m.weight.shape, g * c, stride=m.stride, padding=self.padding,
                       dilation=m.dilation, groups=m.groups)
                total = w if total is None else total + w
            out["weight"] = total
        if "bias" in self.params:
            gb = sum(g.flatten(2).sum(2) for g in self.gs)
            out["bias"] = coef["bias"].to(gb.dtype) @ gb
        return out
