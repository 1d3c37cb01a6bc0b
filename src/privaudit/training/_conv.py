"""Per-sample gradients of nn.Conv1d / nn.Conv2d.

A convolution is a linear map applied at L positions of the unfolded input
(im2col), so the linear-layer formulas apply with T = L and d_in = C_in/G * k
per group. Per layer, by flop count (`_per_sample._use_ghost`, on (L, C_in/G * k, C_out/G)):

* materialised (the usual choice: L^2 (d_in + d_out) > d_in d_out unless the
  feature map is tiny): per-sample weight gradients of a chunk of examples at a
  time, whose norms and clipped share `clip_and_accumulate` takes from the same
  chunk; no per-sample gradient of the whole batch is ever stored. On CPU, for
  large feature maps (L >= 3 C_out / G), they come from one grouped
  weight-gradient convolution with the examples as groups (no unfolded copy of
  the input; oneDNN's temporaries are ~3x its output); otherwise, on other
  devices, or for a layer called more than once, from unfold + batched GEMM.
* ghost: Gram norms of the unfolded activations and output gradients (Li et al.
  2021, arXiv 2110.05679, Sec. 4), in chunks; the clipped sum is then one
  weight-gradient convolution per example chunk with the output gradients scaled
  by the clip factors (book-keeping, Bu et al. 2022, arXiv 2210.00038, Alg. 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._per_sample import Call, UnitGrads, _batch_gram_inner, _cat2, _chunks, _trainable, _use_ghost, sq_norm

__all__ = ["ConvGrads"]

#: Temporaries of the grouped weight-gradient convolution on CPU, as a multiple of its
#: output (measured with oneDNN: about 3x, for its blocked layouts and reorders).
_GROUPED_TRANSIENT = 3


class ConvGrads(UnitGrads):
    """nn.Conv1d / nn.Conv2d: norms and sums per example chunk (see the module docstring)."""

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
        groups = module.groups
        self.p = module.in_channels // groups * math.prod(module.kernel_size)  # d_in per group
        self.length = sum(g[0].numel() // module.out_channels for g in self.gs)  # L, all calls
        if _use_ghost(mode, self.length, self.p, module.out_channels // groups):
            self.method = "ghost"
        elif (mode == "auto" and self.gs[0].device.type == "cpu" and len(self.xs) == 1
              and _GROUPED_TRANSIENT * module.out_channels <= self.length * groups):
            # Grouped needs ~3x the per-sample gradient in temporaries, unfold the unfolded
            # input, L p G: the one with fewer temporaries (on the CNN of bench/engine.py,
            # also the faster one per layer, within the noise of a shared CPU).
            self.method = "grouped"
        else:
            self.method = "unfold"

    def _unfold(self, x: torch.Tensor) -> torch.Tensor:
        m = self.m
        if self.one_d:
            return F.unfold(x.unsqueeze(2), (1, m.kernel_size[0]), dilation=(1, m.dilation[0]),
                            padding=(0, self.padding[0]), stride=(1, m.stride[0]))
        return F.unfold(x, m.kernel_size, dilation=m.dilation, padding=self.padding, stride=m.stride)

    def _factors(self, s: int, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Unfolded activations (b, G, L, p) and output gradients (b, G, L, C_out/G) of examples s:e."""
        groups, c_out = self.m.groups, self.m.out_channels
        a = _cat2([self._unfold(x[s:e]) for x in self.xs])
        a = a.view(e - s, groups, self.p, -1).transpose(2, 3)
        g = _cat2([g_[s:e].flatten(2) for g_ in self.gs])
        g = g.view(e - s, groups, c_out // groups, -1).transpose(2, 3)
        return a, g

    # -- chunked per-sample gradients -------------------------------------------------
    def chunked(self) -> tuple[str, ...]:
        return ("weight",) if "weight" in self.params and self.method != "ghost" else ()

    def chunk_cost(self) -> tuple[int, int]:
        if not self.chunked():
            return 0, 0
        kept = self.m.weight.numel()
        if self.method == "grouped":
            return kept, _GROUPED_TRANSIENT * kept
        return kept, self.length * self.p * self.m.groups  # the unfolded input

    def chunk_grads(self, start: int, end: int) -> dict[str, torch.Tensor]:
        if self.method == "grouped":
            return {"weight": self._grouped_grads(self.xs[0][start:end], self.gs[0][start:end])}
        a, g = self._factors(start, end)
        w = torch.matmul(g.transpose(2, 3), a)  # (b, G, C_out/G, p): the weight's layout
        return {"weight": w.reshape(end - start, *self.m.weight.shape)}

    def demote(self) -> bool:
        if not self.chunked() or self.mode != "auto":
            return False
        self.method = "ghost"
        return True

    def _grouped_grads(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Per-sample weight gradients, (b, *weight.shape), as one convolution whose groups are the examples."""
        m = self.m
        b = x.shape[0]
        fn = torch.nn.grad.conv1d_weight if self.one_d else torch.nn.grad.conv2d_weight
        shape = (b * m.out_channels, *m.weight.shape[1:])
        w = fn(x.reshape(1, -1, *x.shape[2:]), shape, g.reshape(1, -1, *g.shape[2:]), stride=m.stride,
               padding=self.padding, dilation=m.dilation, groups=b * m.groups)
        return w.view(b, *m.weight.shape)

    # -- whole-batch norms and sums ----------------------------------------------------
    def sq_norms(self, skip: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if "weight" in self.params and "weight" not in skip:
            out["weight"] = self._weight_sq_norms()
        if "bias" in self.params and "bias" not in skip:
            out["bias"] = sq_norm(sum(g.flatten(2).sum(2) for g in self.gs))
        return out

    def _weight_sq_norms(self) -> torch.Tensor:
        b = self.gs[0].shape[0]
        if self.method != "ghost":
            kept, transient = self.chunk_cost()
            return torch.cat([sq_norm(self.chunk_grads(s, e)["weight"])
                              for s, e in _chunks(b, kept + transient, self.budget)])
        groups, length = self.m.groups, self.length
        per_sample = length * length * 2 * groups + length * (self.p + self.m.out_channels // groups) * groups
        parts = []
        for s, e in _chunks(b, per_sample, self.budget):
            a, g = self._factors(s, e)  # Li et al. 2021 (arXiv 2110.05679), Sec. 4, per group.
            aa = a.reshape(-1, *a.shape[2:])
            gg = g.reshape(-1, *g.shape[2:])
            parts.append(_batch_gram_inner(aa, gg).view(e - s, groups).sum(1))
        return torch.cat(parts)

    def weighted_sums(self, coef: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        m = self.m
        out: dict[str, torch.Tensor] = {}
        if "weight" in self.params and "weight" in coef:
            # Book-keeping: one weight-gradient convolution of the coefficient-scaled output
            # gradients per example chunk (the chunks bound its temporaries).
            fn = torch.nn.grad.conv1d_weight if self.one_d else torch.nn.grad.conv2d_weight
            b = self.gs[0].shape[0]
            per_sample = 2 * sum(x[0].numel() + g[0].numel() for x, g in zip(self.xs, self.gs))
            total = None
            for s, e in _chunks(b, per_sample, self.budget):
                for x, g in zip(self.xs, self.gs):
                    c = coef["weight"][s:e].to(g.dtype).view(-1, *([1] * (g.dim() - 1)))
                    w = fn(x[s:e], m.weight.shape, g[s:e] * c, stride=m.stride, padding=self.padding,
                           dilation=m.dilation, groups=m.groups)
                    total = w if total is None else total.add_(w)
            out["weight"] = total if total is not None else torch.zeros_like(m.weight)
        if "bias" in self.params and "bias" in coef:
            gb = sum(g.flatten(2).sum(2) for g in self.gs)
            out["bias"] = coef["bias"].to(gb.dtype) @ gb
        return out
