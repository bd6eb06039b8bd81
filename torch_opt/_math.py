"""Small helpers shared by the torch_opt modules (twin: ``jax_opt/_math.py``)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from torch_opt._compat import foreach_supported
from twinopt._checks import check_positive, fail

# torch's wording for the arguments that torch.optim's classes also have ("Invalid learning
# rate: -0.1"); torch_opt's shells name these arguments so, and their own arguments as
# twinopt._checks does for both packages ("Invalid max_scale: -1.0 (must be >= 0)").
TORCH_WORDING = {
    "lr": "learning rate",
    "eps": "epsilon value",
    "momentum": "momentum value",
    "weight_decay": "weight_decay value",
    "alpha": "alpha value",
}

# Keys torch's own LR schedulers and wrappers write into param groups (LRScheduler,
# OneCycleLR, CyclicLR, SWALR): a group that carries them is accepted by every optimizer here.
SCHEDULER_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum", "swa_lr")


def stat_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    """The dtype of a statistic over ``tensors`` (a norm, a sum): float32 at least, float64 if any
    tensor is float64 (complex tensors count by their real dtype)."""
    dtype = torch.float32
    for t in tensors:
        real = t.real.dtype if t.is_complex() else t.dtype
        dtype = torch.promote_types(dtype, real)
    return dtype


def sum_of_squares(tensors: Sequence[Tensor], *, like: Tensor) -> Tensor:
    """``sum_i ||t_i||^2`` as a 0-d tensor with the dtype and device of ``like``.

    Each tensor's norm is taken in ``like.dtype`` (so bf16 inputs accumulate in float32), one
    ``_foreach_norm`` per (device, dtype) group; complex tensors count ``|z|^2``. DTensor
    shards (FSDP2) count as their full tensors: the sum is reduced across ranks.
    """
    total = torch.zeros((), dtype=like.dtype, device=like.device)
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for t in as_real(list(tensors)):
        groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        part = torch.stack(torch._foreach_norm(group, 2, dtype=like.dtype)).square().sum()
        total = total + whole(part).to(like.device)
    return total


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a ``DTensor`` (an FSDP2 shard), without importing torch.distributed."""
    return type(t).__name__ == "DTensor" and hasattr(t, "full_tensor")


def whole(t: Tensor) -> Tensor:
    """A DTensor (FSDP2) as the plain, whole tensor (a reduction over shards all-reduced); a
    plain tensor as it is. Take a reduction whole before any further op: torch 2.8's DTensor
    applies ``where`` to each rank's pending partial value."""
    if is_dtensor(t):
        return t.full_tensor()  # pyright: ignore[reportAttributeAccessIssue]
    return t


def as_real(tensors: list[Tensor]) -> list[Tensor]:
    """``tensors`` with every complex tensor replaced by its real view (shared memory)."""
    return [torch.view_as_real(t) if t.is_complex() else t for t in tensors]


def sparse_grad_error(owner: str, param_groups: list[dict], group: dict, index: int) -> TypeError:
    """The error for a sparse gradient, naming the parameter (by name when the group has names)."""
    group_index = next(k for k, g in enumerate(param_groups) if g is group)
    names = group.get("param_names")
    label = (
        f"parameter {names[index]!r}"
        if names is not None
        else f"parameter {index} of param group {group_index}"
    )
    return TypeError(f"{owner} does not support sparse gradients ({label} has a sparse gradient)")


def default_foreach(params: Sequence[Tensor], differentiable: bool) -> bool:
    """Whether ``foreach=None`` takes the ``torch._foreach_*`` path for the tensors the native
    kernels do not take: wherever it can run (every tensor of a type foreach supports, not
    ``differentiable``)."""
    return not differentiable and foreach_supported(list(params))


def scalar_dtype() -> torch.dtype:
    """The dtype of a ``step`` counter: float64 where the default dtype is float64, else float32
    (as torch.optim's optimizers create it)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def grad_mode_of_step(step: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate an optimizer's ``step``: gradients off, unless the optimizer was built with
    ``differentiable=True`` (then autograd records the step). Written as a ``with`` block, which
    TorchDynamo traces (``torch.compile(opt.step)``)."""

    @functools.wraps(step)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.set_grad_enabled(bool(self.defaults.get("differentiable", False))):
            return step(self, *args, **kwargs)

    return wrapper


def by_device_and_dtype(lists: Sequence[Sequence[Any]]) -> list[list[list[Any]]]:
    """Parallel ``lists`` (the first holds tensors; empty lists stay empty) split into groups
    of the same device and dtype of the first list's tensors, in order of first appearance."""
    order: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(lists[0]):
        order.setdefault((t.device, t.dtype), []).append(i)
    return [[[x[i] for i in idx] if x else [] for x in lists] for idx in order.values()]


def check_group_keys(owner: str, group: dict[str, Any], known: Iterable[str]) -> None:
    """Raise ``ValueError`` naming the first key of ``group`` that ``owner`` does not know:
    not ``params``/``param_names``, not one of its options ``known``, not a key torch's LR
    schedulers write (:data:`SCHEDULER_KEYS`). Nothing in a param group is silently ignored."""
    allowed = {"params", "param_names", *SCHEDULER_KEYS, *known}
    for key in group:
        if key not in allowed:
            options = ", ".join(sorted(k for k in known))
            raise fail("param group key", key, f"one of {owner}'s options: {options}")


def resolve_scale(arg: str, value: Any, fn: Any, name: str, param: Tensor) -> Any:
    """A per-parameter scale (Amos's ``eta``, Su's ``sigma``): ``value`` when given, else
    ``fn(name, param)`` (checked ``> 0``, the error naming ``arg``), else :func:`model_scale`."""
    if value is not None:
        return value
    if fn is not None:
        scale = fn(name, param)
        check_positive(arg, scale)
        return scale
    return model_scale(param)


def model_scale(param: Tensor) -> Tensor:
    """Amos's model-oriented scale of a tensor (math.md §2.4, §2.1 step 8): its RMS, or 0.5 when
    it is all zeros (a zero-initialized bias or shift). A 0-d float32 tensor (float64 for a
    float64 ``param``), on the tensor's device."""
    x = torch.view_as_real(param) if param.is_complex() else param
    dtype = stat_dtype([x])
    rms = whole(torch.linalg.vector_norm(x.detach(), dtype=dtype)) / max(x.numel(), 1) ** 0.5
    return torch.where(rms > 0, rms, torch.full_like(rms, 0.5))
