"""``RMSpropODE``'s default CPU path: equations (1)-(7) of torch_opt/rmsprop_ode in one native
pass per tensor (``kernels.c``), equal to the foreach path to the bit in float32 and to the
reference kernels in float64 (tests/torch_opt/test_native.py)."""

from __future__ import annotations

import ctypes

import torch

from torch_opt import _native as native
from torch_opt._math import as_real
from torch_opt.rmsprop_ode.kernels import _bias, _denominator


def _flags(hyper: dict) -> int:
    return (
        native.F_MAXIMIZE * bool(hyper["maximize"])
        | native.F_WEIGHT_DECAY * (hyper["weight_decay"] != 0)
        | native.F_CENTERED * bool(hyper["centered"])
        | native.F_BIAS * bool(hyper["bias_correction"])
        | native.F_EPS_IN_SQRT * bool(hyper["eps_in_sqrt"])
        | native.F_MOMENTUM * (hyper["momentum"] > 0)
    )


def native_rmsprop_ode(
    params, grads, square_avgs, grad_avgs, momentum_bufs, steps, global_state, **hyper
) -> list[int]:
    """Step the tensors the native kernels can take; return the indices of the others (all of
    them where the kernels are unavailable, and for ``global`` unless every tensor qualifies,
    since the norm spans the group). ``hyper``: the group's ``lr``, ``alpha``, ``eps``,
    ``weight_decay``, ``momentum``, ``centered``, ``maximize``, ``eps_in_sqrt`` and
    ``bias_correction``."""
    everything = list(range(len(params)))
    lib = native.library()
    if lib is None:
        return everything
    elementwise = global_state is None
    lists = [
        as_real(list(params)),
        as_real(list(grads)),
        as_real(list(square_avgs)) if elementwise else None,
        as_real(list(grad_avgs)) if hyper["centered"] else None,
        as_real(list(momentum_bufs)) if hyper["momentum"] > 0 else None,
    ]
    taken, rest = [], []
    for i in everything:
        (taken if native.eligible([x[i] if x else None for x in lists]) else rest).append(i)
    if not taken or (not elementwise and (rest or len({lists[0][i].dtype for i in taken}) > 1)):
        return everything
    flags = _flags(hyper)
    alpha = hyper["alpha"]
    scalars = [float(hyper[k]) for k in ("lr", "eps", "weight_decay", "momentum")]
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i in taken:
        by_dtype.setdefault(lists[0][i].dtype, []).append(i)
    torch._foreach_add_([steps[i] for i in taken], 1.0)
    for dtype, idx in by_dtype.items():
        ps, gs, nus, mus, bufs = ([x[i] for i in idx] if x else None for x in lists)
        n = len(idx)
        suffix = native.DTYPES[dtype]
        head = (ctypes.c_int(flags), ctypes.c_int64(n), native.pointers(ps, n))
        head += (native.pointers(gs, n),)
        if elementwise:
            counts = [_bias(alpha, steps[i], hyper["bias_correction"]) for i in idx]  # (3)
            lr, eps, wd, momentum = scalars
            getattr(lib, f"twinopt_rmsprop_{suffix}")(
                *head,
                native.pointers(nus, n),
                native.pointers(mus, n),
                native.pointers(bufs, n),
                native.numels(ps),
                (ctypes.c_double * n)(*counts),
                *(ctypes.c_double(x) for x in (alpha, lr, eps, wd, momentum)),
                ctypes.c_int(native.threads(ps)),
            )
        else:
            _global(lib, suffix, head, ps, mus, bufs, global_state, hyper, scalars)
        torch.autograd.graph.increment_version(ps)
    return rest


def _global(lib, suffix, head, ps, mus, bufs, global_state, hyper, scalars) -> None:
    """Pass 1 (the squared norms, the gradient EMA), the scalar (1)-(5), pass 2 (6)-(7)."""
    lr, eps, wd, momentum = scalars
    alpha, n = hyper["alpha"], len(ps)
    nu, count = global_state
    count += 1
    numel = native.numels(ps)
    threads = ctypes.c_int(native.threads(ps))
    out = (ctypes.c_double * 2)()
    getattr(lib, f"twinopt_global_norms_{suffix}")(
        *head,
        native.pointers(mus, n),
        numel,
        ctypes.c_double(alpha),
        ctypes.c_double(wd),
        out,
        threads,
    )
    sq = torch.tensor(out[0], dtype=torch.float64).to(nu.dtype)
    nu.mul_(alpha).add_(sq, alpha=1 - alpha)  # (1)
    c = _bias(alpha, count, hyper["bias_correction"])  # (3)
    v = nu / c
    if hyper["centered"]:
        v = v - torch.tensor(out[1], dtype=torch.float64).to(nu.dtype) / c**2  # (4)
    denom = float(_denominator(v, eps, hyper["eps_in_sqrt"]))  # (5)
    getattr(lib, f"twinopt_global_apply_{suffix}")(
        *head,
        native.pointers(bufs, n),
        numel,
        *(ctypes.c_double(x) for x in (denom, lr, wd, momentum)),
        threads,
    )


__all__ = ["native_rmsprop_ode"]
