"""The one place where torch_opt reads a private name of torch, each with a public fallback.

Every use here is feature-detected: where a torch release lacks the name, the fallback (public
API only) takes over, so a change in torch's internals degrades a detail, never an import or a
step. ``tests/torch_opt/test_core.py`` checks that no other module of the library reads a
private name.
"""

from __future__ import annotations

import sys

import torch
import torch.optim.optimizer as _optimizer_module
from torch import Tensor

__all__ = ["foreach_supported"]

_PLAIN = (Tensor, torch.nn.Parameter)


def _supported_types() -> tuple[type, ...]:
    """The tensor types torch's ``_foreach_*`` kernels accept.

    torch keeps the list in ``torch.optim.optimizer._foreach_supported_types`` (tensor
    subclasses such as DTensor append themselves to it when their module is imported). The
    fallback: plain tensors and parameters, and DTensor once ``torch.distributed.tensor`` is
    imported (its public class).
    """
    types = getattr(_optimizer_module, "_foreach_supported_types", None)
    if isinstance(types, (list, tuple)):
        return tuple(types)
    dtensor = sys.modules.get("torch.distributed.tensor")
    extra = (dtensor.DTensor,) if dtensor is not None and hasattr(dtensor, "DTensor") else ()
    return _PLAIN + extra


def foreach_supported(tensors: list[Tensor]) -> bool:
    """Whether every tensor is of a type the ``torch._foreach_*`` kernels accept."""
    types = _supported_types()
    return all(type(t) in types for t in tensors)
