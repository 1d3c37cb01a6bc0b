"""Checks that a module can be trained with per-example clipping, listing every problem at once.

DP-SGD's sensitivity argument needs each example's gradient to depend on that
example alone. Batch normalisation breaks it twice: the batch statistics mix
examples inside a batch, and the running statistics (buffers, not gradients)
carry unclipped, un-noised information about the data into the released model.
"""

from __future__ import annotations

import copy
import dataclasses

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.nn.modules.lazy import LazyModuleMixin

__all__ = ["ModuleProblem", "ModuleValidationError", "find_module_problems", "fix_module", "validate_module"]


@dataclasses.dataclass(frozen=True)
class ModuleProblem:
    """One reason a (sub)module cannot be trained privately, and how to fix it."""

    path: str  # dotted submodule path ("" for the root)
    module_type: str
    reason: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path or '<root>'} ({self.module_type}): {self.reason} Fix: {self.fix}"


class ModuleValidationError(ValueError):
    """The module cannot be trained with DP-SGD; `problems` lists every reason."""

    def __init__(self, problems: tuple[ModuleProblem, ...]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"module is not compatible with DP-SGD ({len(problems)} problem(s)):\n{lines}")


def _group_count(channels: int) -> int:
    """Largest number of GroupNorm groups <= 32 that divides `channels`."""
    return max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)


def find_module_problems(module: nn.Module) -> tuple[ModuleProblem, ...]:
    """Every problem with `module`, in module order (empty when it can be trained privately)."""
    problems: list[ModuleProblem] = []
    owners: dict[int, str] = {}
    for path, m in module.named_modules():
        t = type(m).__name__
        if isinstance(m, _BatchNorm):
            c = m.num_features
            problems.append(ModuleProblem(
                path, t, "batch statistics mix the examples of a batch, and running statistics "
                "record the data without clipping or noise.",
                f"replace it by nn.GroupNorm({_group_count(c)}, {c}) (or nn.LayerNorm); "
                "fix_module() does this."))
        elif isinstance(m, _InstanceNorm) and m.track_running_stats:
            problems.append(ModuleProblem(
                path, t, "running statistics record the data without clipping or noise.",
                "pass track_running_stats=False, or use nn.GroupNorm; fix_module() does the former."))
        elif any(n.startswith("running_") for n, _ in m.named_buffers(recurse=False)):
            problems.append(ModuleProblem(
                path, t, "running statistics (buffers named running_*) are updated from the data "
                "without clipping or noise.", "use a normalisation without running statistics "
                "(nn.GroupNorm, nn.LayerNorm)."))
        if isinstance(m, nn.Embedding) and m.scale_grad_by_freq:
            problems.append(ModuleProblem(
                path, t, "scale_grad_by_freq scales gradients by word counts over the whole batch.",
                "pass scale_grad_by_freq=False."))
        if isinstance(m, nn.MultiheadAttention) and not m.batch_first:
            problems.append(ModuleProblem(
                path, t, "batch_first=False puts the batch in dimension 1; per-example gradients "
                "need batch-first inputs.", "pass batch_first=True (and batch-first inputs)."))
        if isinstance(m, (nn.RNNBase,)) and not m.batch_first:
            problems.append(ModuleProblem(
                path, t, "batch_first=False puts the batch in dimension 1.", "pass batch_first=True."))
        if isinstance(m, LazyModuleMixin) and m.has_uninitialized_params():
            problems.append(ModuleProblem(
                path, t, "has uninitialised (lazy) parameters.",
                "run one forward pass before make_private, or give the sizes explicitly."))
        for name, p in m.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            here = f"{path}.{name}" if path else name
            if id(p) in owners:
                problems.append(ModuleProblem(
                    path, t, f"parameter {here} is the same tensor as {owners[id(p)]} (tied weights); "
                    "its per-example gradient would miss the cross terms between the two uses.",
                    "untie the weights, or share them through one module called twice."))
            else:
                owners[id(p)] = here
    return tuple(problems)


def validate_module(module: nn.Module) -> None:
    """Raises ModuleValidationError listing every problem (each submodule path and its fix)."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"Expected module to be an nn.Module, got {type(module).__name__}.")
    problems = find_module_problems(module)
    if problems:
        raise ModuleValidationError(problems)


def fix_module(module: nn.Module) -> nn.Module:
    """Returns a copy of `module` with BatchNorm replaced by GroupNorm and instance norms
    stripped of running statistics. Other problems are left for `validate_module` to report.

    GroupNorm(G, C) with the largest G <= 32 dividing C (Wu & He 2018, arXiv
    1803.08494v3, use G = 32), keeping `affine`; the new layer starts from
    weight 1 and bias 0, so a trained BatchNorm's parameters are not carried over.
    """
    fixed = copy.deepcopy(module)
    if isinstance(fixed, _BatchNorm):
        return _group_norm_for(fixed)
    _fix_children(fixed)
    return fixed


def _group_norm_for(bn: _BatchNorm) -> nn.GroupNorm:
    c = bn.num_features
    gn = nn.GroupNorm(_group_count(c), c, eps=bn.eps, affine=bn.affine)
    if bn.affine and bn.weight is not None:
        gn.to(device=bn.weight.device, dtype=bn.weight.dtype)
    return gn


def _fix_children(m: nn.Module) -> None:
    for name, child in m.named_children():
        if isinstance(child, _BatchNorm):
            setattr(m, name, _group_norm_for(child))
        elif isinstance(child, _InstanceNorm) and child.track_running_stats:
            child.track_running_stats = False
            child.running_mean = None
            child.running_var = None
            child.num_batches_tracked = None
        else:
            _fix_children(child)

