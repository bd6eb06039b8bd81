"""``RMSpropODE``'s default CPU path: equations (1)-(7) of torch_opt/rmsprop_ode in one native
pass per tensor (``kernels.c``), equal to the foreach path to the bit in float32 and to the
reference kernels in float64 (tests/torch_opt/test_native.py)."""

from __future__ import annotations

import ctypes

import torch

from torch_opt import _native as native
from torch_opt._math import as_real
from torch_opt.rmsprop_ode.kernels import _bias, _denominator


def _flags(*, maximize, weight_decay, centered, bias_correction, eps_in_sqrt, momentum) -> int:
    return (
        native.F_MAXIMIZE * bool(maximize)
        | native.F_WEIGHT_DECAY * (weight_decay != 0)
        | native.F_CENTERED * bool(centered)
        | native.F_BIAS * bool(bias_correction)
        | native.F_EPS_IN_SQRT * bool(eps_in_sqrt)
        | native.F_MOMENTUM * (momentum > 0)
    )


def native_rmsprop_ode(
    params,
    grads,
    square_avgs,
    grad_avgs,
    momentum_bufs,
    steps,
    global_state,
    *,
    lr,
    alpha,
    eps,
    weight_decay,
    momentum,
    centered,
    maximize,
    eps_in_sqrt,
    bias_correction,
) -> list[int]:
    """Step the tensors the native kernels can take; return the indices of the others (all of
    them where the kernels are unavailable, and for ``global`` unless every tensor qualifies,
    since the norm spans the group)."""
    everything = list(range(len(params)))
    lib = native.library()
    if lib is None:
        return everything
    elementwise = global_state is None
    lists = [
        as_real(list(params)),
        as_real(list(grads)),
        as_real(list(square_avgs)) if elementwise else None,
        as_real(list(grad_avgs)) if centered else None,
        as_real(list(momentum_bufs)) if momentum > 0 else None,
    ]
    taken, rest = [], []
    for i in everything:
        (taken if native.eligible([x[i] if x else None for x in lists]) else rest).append(i)
    if not taken or (not elementwise and (rest or len({lists[0][i].dtype for i in taken}) > 1)):
        return everything
    flags = _flags(
        maximize=maximize,
        weight_decay=weight_decay,
        centered=centered,
        bias_correction=bias_correction,
        eps_in_sqrt=eps_in_sqrt,
        momentum=momentum,
    )
    lr = float(lr)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i in taken:
        by_dtype.setdefault(lists[0][i].dtype, []).append(i)
    chosen_steps = [steps[i] for i in taken]
    torch._foreach_add_(chosen_steps, 1.0)
    for dtype, idx in by_dtype.items():
        ps, gs, nus, mus, bufs = ([x[i] for i in idx] if x else None for x in lists)
        n = len(idx)
        suffix = native.DTYPES[dtype]
        args = (native.pointers(ps, n), native.pointers(gs, n))
        if elementwise:
            bias = (ctypes.c_double * n)(
                *[_bias(alpha, steps[i], True) if bias_correction else 1.0 for i in idx]
            )
            getattr(lib, f"twinopt_rmsprop_{suffix}")(
                ctypes.c_int(flags),
                ctypes.c_int64(n),
                *args,
                native.pointers(nus, n),
                native.pointers(mus, n),
                native.pointers(bufs, n),
                native.numels(ps),
                bias,
                *(ctypes.c_double(x) for x in (alpha, lr, eps, weight_decay, momentum)),
                ctypes.c_int(native.threads(ps)),
            )
        else:
            _global(
                lib,
                suffix,
                flags,
                ps,
                gs,
                mus,
                bufs,
                global_state,
                n,
                args,
                lr=lr,
                alpha=alpha,
                eps=eps,
                weight_decay=weight_decay,
                momentum=momentum,
                centered=centered,
                eps_in_sqrt=eps_in_sqrt,
                bias_correction=bias_correction,
            )
        torch.autograd.graph.increment_version(ps)
    return rest


def _global(
    lib,
    suffix,
    flags,
    ps,
    gs,
    mus,
    bufs,
    global_state,
    n,
    args,
    *,
    lr,
    alpha,
    eps,
    weight_decay,
    momentum,
    centered,
    eps_in_sqrt,
    bias_correction,
) -> None:
    """Pass 1 (the squared norms, the gradient EMA), the scalar (1)-(5), pass 2 (6)-(7)."""
    nu, count = global_state
    count += 1
    numel = native.numels(ps)
    out = (ctypes.c_double * 2)()
    getattr(lib, f"twinopt_global_norms_{suffix}")(
        ctypes.c_int(flags),
        ctypes.c_int64(n),
        *args,
        native.pointers(mus, n),
        numel,
        ctypes.c_double(alpha),
        ctypes.c_double(weight_decay),
        out,
        ctypes.c_int(native.threads(ps)),
    )
    sq = torch.tensor(out[0], dtype=torch.float64).to(nu.dtype)
    nu.mul_(alpha).add_(sq, alpha=1 - alpha)  # (1)
    c = _bias(alpha, count, bias_correction)  # (3)
    v = nu / c
    if centered:
        v = v - torch.tensor(out[1], dtype=torch.float64).to(nu.dtype) / c**2  # (4)
    inv = float(_denominator(v, eps, eps_in_sqrt).reciprocal())  # (5)
    getattr(lib, f"twinopt_global_apply_{suffix}")(
        ctypes.c_int(flags),
        ctypes.c_int64(n),
        *args,
        native.pointers(bufs, n),
        numel,
        ctypes.c_double(inv),
        ctypes.c_double(lr),
        ctypes.c_double(weight_decay),
        ctypes.c_double(momentum),
        ctypes.c_int(native.threads(ps)),
    )


__all__ = ["native_rmsprop_ode"]
