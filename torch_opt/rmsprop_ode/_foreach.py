"""The ``torch._foreach_*`` fast path of ``RMSpropODE``, equal to the kernels in float64."""

from __future__ import annotations

import torch

from torch_opt._math import as_real, by_device_and_dtype, sum_of_squares
from torch_opt.rmsprop_ode.kernels import _bias, _denominator


def _effective_grads(ps, gs, *, maximize, weight_decay):
    """(M) and (W), without touching ``p.grad``."""
    if maximize:
        gs = torch._foreach_neg(gs)
    if weight_decay != 0:
        if maximize:
            torch._foreach_add_(gs, ps, alpha=weight_decay)
        else:
            gs = torch._foreach_add(gs, ps, alpha=weight_decay)
    return gs


def _multi_tensor_rmsprop_ode(
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
):
    """The ``torch._foreach_*`` path, by (device, dtype) group.

    Equal to the reference path in float64; with torch's own settings it runs torch's foreach
    operations in torch's order, so it equals ``torch.optim.RMSprop`` to the bit.
    """
    lr = float(lr)
    lists = [as_real(list(x)) for x in (params, grads, square_avgs, grad_avgs, momentum_bufs)]
    torch._foreach_add_(list(steps), torch.tensor(1.0), alpha=1.0)
    wd = {"maximize": maximize, "weight_decay": weight_decay}
    if global_state is not None:
        ps, gs, _, mus, bufs = lists
        _multi_tensor_global(
            ps,
            gs,
            mus,
            bufs,
            global_state,
            lr=lr,
            alpha=alpha,
            eps=eps,
            momentum=momentum,
            centered=centered,
            eps_in_sqrt=eps_in_sqrt,
            bias_correction=bias_correction,
            **wd,
        )
        return
    for ps, gs, nus, mus, bufs, group_steps in by_device_and_dtype([*lists, list(steps)]):
        gs = _effective_grads(ps, gs, **wd)
        torch._foreach_mul_(nus, alpha)
        torch._foreach_addcmul_(nus, gs, gs, value=1 - alpha)  # (1)
        if centered:
            torch._foreach_lerp_(mus, gs, 1 - alpha)  # (2)
        if bias_correction:
            cs = [_bias(alpha, s, True) for s in group_steps]  # (3)
            v = torch._foreach_div(nus, cs)
            if centered:
                mu_hat = torch._foreach_div(mus, cs)
                torch._foreach_addcmul_(v, mu_hat, mu_hat, value=-1)  # (4)
        elif centered:
            v = torch._foreach_addcmul(nus, mus, mus, value=-1)  # (4)
        else:
            v = nus
        if eps_in_sqrt:
            denom = torch._foreach_add(v, eps)
            torch._foreach_sqrt_(denom)  # (5)
        else:
            denom = torch._foreach_sqrt(v)
            torch._foreach_add_(denom, eps)  # (5)
        if momentum > 0:
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_addcdiv_(bufs, gs, denom)  # (6)
            torch._foreach_add_(ps, bufs, alpha=-lr)  # (7)
        else:
            torch._foreach_addcdiv_(ps, gs, denom, value=-lr)  # (6), (7)


def _multi_tensor_global(
    ps,
    gs,
    mus,
    bufs,
    global_state,
    *,
    lr,
    alpha,
    eps,
    momentum,
    centered,
    eps_in_sqrt,
    bias_correction,
    maximize,
    weight_decay,
):
    """The squared norms (and the gradient EMAs) by (device, dtype) group, the scalar (1)-(5),
    then the update by group."""
    nu, count = global_state
    count += 1
    groups = by_device_and_dtype([ps, gs, mus, bufs])
    effective = [
        _effective_grads(p, g, maximize=maximize, weight_decay=weight_decay)
        for p, g, _, _ in groups
    ]
    sq = torch.zeros((), dtype=nu.dtype, device=nu.device)
    mu_sq = torch.zeros((), dtype=nu.dtype, device=nu.device)
    for (_, _, group_mus, _), group_gs in zip(groups, effective, strict=True):
        sq += sum_of_squares(group_gs, like=nu)
        if centered:
            torch._foreach_lerp_(group_mus, group_gs, 1 - alpha)  # (2)
            mu_sq += sum_of_squares(group_mus, like=nu)
    nu.mul_(alpha).add_(sq, alpha=1 - alpha)  # (1)
    c = _bias(alpha, count, bias_correction)  # (3)
    v = nu / c
    if centered:
        v = v - mu_sq / c**2  # (4)
    s = _denominator(v, eps, eps_in_sqrt)  # (5)
    for (group_ps, _, _, group_bufs), group_gs in zip(groups, effective, strict=True):
        # (6), divided as the reference kernel divides, so the two paths agree to the bit
        d = torch._foreach_div(group_gs, s.to(group_ps[0].device))
        if momentum > 0:
            torch._foreach_mul_(group_bufs, momentum)
            torch._foreach_add_(group_bufs, d)
            d = group_bufs
        torch._foreach_add_(group_ps, d, alpha=-lr)  # (7)
