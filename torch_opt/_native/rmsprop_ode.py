"""``RMSpropODE``'s default CPU path: equations (1)-(7) of torch_opt/rmsprop_ode in one native
pass per tensor (``kernels.c``), as the torch ops ``twinopt::rmsprop_ode_`` (element-wise) and
``twinopt::rmsprop_ode_global_`` (one second moment per group). Equal to the foreach path to the
bit in float32 but for the square root's last bit, and to the reference kernels in float64
(tests/torch_opt/test_native.py)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from torch_opt import _native as native
from torch_opt._math import as_real
from torch_opt.rmsprop_ode.kernels import _bias, _denominator

__all__ = ["native_rmsprop_ode"]

# The list arguments, in the order both ops take them; the ops step the ``steps`` counters.
_MUTATED = ("params", "square_avgs", "grad_avgs", "momentum_bufs", "steps")


_FLAG_KEYS = ("maximize", "weight_decay", "centered", "bias_correction", "eps_in_sqrt", "momentum")


def _flags(*, maximize, weight_decay, centered, bias_correction, eps_in_sqrt, momentum) -> int:
    return (
        native.F_MAXIMIZE * bool(maximize)
        | native.F_WEIGHT_DECAY * (weight_decay != 0)
        | native.F_CENTERED * bool(centered)
        | native.F_BIAS * bool(bias_correction)
        | native.F_EPS_IN_SQRT * bool(eps_in_sqrt)
        | native.F_MOMENTUM * (momentum > 0)
    )


@torch.library.custom_op("twinopt::rmsprop_ode_", mutates_args=_MUTATED, device_types="cpu")
def rmsprop_ode_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    square_avgs: Sequence[Tensor],
    grad_avgs: Sequence[Tensor],
    momentum_bufs: Sequence[Tensor],
    steps: Sequence[Tensor],
    lr: Tensor,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    flags: int,
) -> None:
    """One element-wise step of real tensors of one dtype, (1)-(7); ``grad_avgs`` (centered)
    and ``momentum_bufs`` empty where unused."""
    n = len(params)
    for s in steps:
        s.add_(1)
    bias = [_bias(alpha, s, bool(flags & native.F_BIAS)) for s in steps]  # (3)
    lib = native.library()
    getattr(lib, f"twinopt_rmsprop_{native.DTYPES[params[0].dtype]}")(
        flags,
        n,
        *(native.pointers(x, n) for x in (params, grads, square_avgs, grad_avgs, momentum_bufs)),
        native.numels(params),
        (native.C_TYPES[torch.float64] * n)(*bias),
        alpha,
        float(lr),
        eps,
        weight_decay,
        momentum,
        native.threads(params),
    )


@rmsprop_ode_.register_fake
def _(params, grads, square_avgs, grad_avgs, momentum_bufs, steps, lr, alpha, eps, wd, m, flags):
    return None


@torch.library.custom_op(
    "twinopt::rmsprop_ode_global_",
    mutates_args=("params", "grad_avgs", "momentum_bufs", "steps", "nu", "count"),
    device_types="cpu",
)
def rmsprop_ode_global_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    grad_avgs: Sequence[Tensor],
    momentum_bufs: Sequence[Tensor],
    steps: Sequence[Tensor],
    nu: Tensor,
    count: Tensor,
    lr: Tensor,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    flags: int,
) -> None:
    """One global-norm step of real tensors of one dtype: pass 1 (the squared norms, the
    gradient EMA), the scalar (1)-(5) in torch, pass 2 (6)-(7)."""
    n = len(params)
    for s in steps:
        s.add_(1)
    count.add_(1)
    lib = native.library()
    suffix = native.DTYPES[params[0].dtype]
    head = (flags, n, native.pointers(params, n), native.pointers(grads, n))
    numel, threads = native.numels(params), native.threads(params)
    out = (native.C_TYPES[torch.float64] * 2)()
    getattr(lib, f"twinopt_global_norms_{suffix}")(
        *head, native.pointers(grad_avgs, n), numel, alpha, weight_decay, out, threads
    )
    sq = torch.tensor(out[0], dtype=torch.float64).to(nu.dtype)
    nu.mul_(alpha).add_(sq, alpha=1 - alpha)  # (1)
    c = _bias(alpha, count, bool(flags & native.F_BIAS))  # (3)
    v = nu / c
    if flags & native.F_CENTERED:
        v = v - torch.tensor(out[1], dtype=torch.float64).to(nu.dtype) / c**2  # (4)
    denom = float(_denominator(v, eps, bool(flags & native.F_EPS_IN_SQRT)))  # (5)
    getattr(lib, f"twinopt_global_apply_{suffix}")(
        *head,
        native.pointers(momentum_bufs, n),
        numel,
        denom,
        float(lr),
        weight_decay,
        momentum,
        threads,
    )


@rmsprop_ode_global_.register_fake
def _(params, grads, grad_avgs, momentum_bufs, steps, nu, count, lr, alpha, eps, wd, m, flags):
    return None


def native_rmsprop_ode(
    params, grads, square_avgs, grad_avgs, momentum_bufs, steps, global_state, **hyper
) -> list[int]:
    """Step the (real) tensors the native kernels can take; return the indices of the others
    (all of them where the kernels are unavailable, and for ``global`` unless every tensor
    qualifies, since the norm spans the group). ``hyper``: the group's ``lr``, ``alpha``,
    ``eps``, ``weight_decay``, ``momentum``, ``centered``, ``maximize``, ``eps_in_sqrt`` and
    ``bias_correction``."""
    everything = list(range(len(params)))
    if not native.available():
        return everything
    elementwise = global_state is None
    lists = [as_real(list(x)) for x in (params, grads, square_avgs, grad_avgs, momentum_bufs)]
    params = lists[0]
    taken, rest = [], []
    for i in everything:
        (taken if native.eligible([x[i] for x in lists if x]) else rest).append(i)
    dtypes = {params[i].dtype for i in taken}
    if not taken or (not elementwise and (rest or len(dtypes) > 1)):
        return everything
    lr = hyper["lr"]
    lr = lr if isinstance(lr, Tensor) else torch.tensor(float(lr), dtype=torch.float64)
    scalars = (hyper["alpha"], hyper["eps"], hyper["weight_decay"], hyper["momentum"])
    flags = _flags(**{k: hyper[k] for k in _FLAG_KEYS})
    for dtype in dtypes:
        idx = [i for i in taken if params[i].dtype is dtype]
        ps, gs, nus, mus, bufs, sts = ([x[i] for i in idx] if x else [] for x in [*lists, steps])
        if elementwise:
            torch.ops.twinopt.rmsprop_ode_(ps, gs, nus, mus, bufs, sts, lr, *scalars, flags)
        else:
            nu, count = global_state
            torch.ops.twinopt.rmsprop_ode_global_(
                ps, gs, mus, bufs, sts, nu, count, lr, *scalars, flags
            )
    return rest
