"""The ``torch._foreach_*`` fast path of ``RMSpropODE``, equal to the kernels in float64."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from torch_opt._math import as_real, sum_of_squares
from torch_opt.rmsprop_ode.kernels import _bias, _denominator

# On the CPU, foreach ops loop over tensors, and each allocates its result list at once; for many
# (or large) tensors that means fresh, page-faulting memory every step. Running the pipeline over
# runs of about this many bytes (splitting large contiguous tensors into flat pieces) keeps every
# intermediate in the allocator's reuse range; benchmarks/README.md has the measurement.
# Elsewhere a (device, dtype) group is one run.
_CPU_CHUNK_BYTES = 1 << 20


def _pieces(tensors: list[Tensor], limit: int) -> list[list[Tensor]]:
    """Parallel tensors (same shape) as parallel flat pieces of at most ``limit`` bytes each,
    when all are contiguous and larger; else as they are."""
    first = tensors[0]
    if first.numel() * first.element_size() <= limit or not all(
        t.is_contiguous() and t.shape == first.shape for t in tensors
    ):
        return [tensors]
    size = max(1, limit // first.element_size())
    return [list(chunk) for chunk in zip(*(t.view(-1).split(size) for t in tensors), strict=True)]


def _chunks(lists: list[list[Tensor]], steps: list[Tensor] | None = None):
    """The (device, dtype) groups of the parallel ``lists`` (empty ones stay empty), in runs of
    about ``_CPU_CHUNK_BYTES`` on the CPU; each run ends with its ``steps`` (pieces of a tensor
    share its step counter)."""
    grouped = Optimizer._group_tensors_by_device_and_dtype([*lists, steps or []])
    for group, _ in grouped.values():
        if group[0][0].device.type != "cpu":
            yield group
            continue
        live = [k for k, x in enumerate(group[:-1]) if x]
        run, size = [[] for _ in group], 0
        for i in range(len(group[0])):
            for piece in _pieces([group[k][i] for k in live], _CPU_CHUNK_BYTES):
                for k, t in zip(live, piece, strict=True):
                    run[k].append(t)
                if steps:
                    run[-1].append(group[-1][i])
                size += piece[0].numel() * piece[0].element_size()
                if size >= _CPU_CHUNK_BYTES:
                    yield run
                    run, size = [[] for _ in group], 0
        if run[0]:
            yield run


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
    """The ``torch._foreach_*`` path, by (device, dtype) group and, on the CPU, by runs.

    Equal to the reference path in float64; with torch's own settings it runs torch's foreach
    operations in torch's order, so it equals ``torch.optim.RMSprop`` to the bit.
    """
    lr = float(lr)
    lists = [as_real(list(x)) for x in (params, grads, square_avgs, grad_avgs, momentum_bufs)]
    torch._foreach_add_(steps, torch.tensor(1.0), alpha=1.0)
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
    for ps, gs, nus, mus, bufs, run_steps in _chunks(lists, list(steps)):
        gs = _effective_grads(ps, gs, **wd)
        torch._foreach_mul_(nus, alpha)
        torch._foreach_addcmul_(nus, gs, gs, value=1 - alpha)  # (1)
        if centered:
            torch._foreach_lerp_(mus, gs, 1 - alpha)  # (2)
        if bias_correction:
            cs = [_bias(alpha, s, True) for s in run_steps]  # (3)
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
    """Two passes: the squared norms (and the gradient EMAs), then the update. The effective
    gradient is recomputed in the second pass rather than kept, so no pass holds more than a
    run of temporaries."""
    nu, count = global_state
    count += 1
    wd = {"maximize": maximize, "weight_decay": weight_decay}
    sq = torch.zeros((), dtype=nu.dtype, device=nu.device)
    mu_sq = torch.zeros((), dtype=nu.dtype, device=nu.device)
    for run_ps, run_gs, run_mus, _ in _chunks([ps, gs, mus]):
        run_gs = _effective_grads(run_ps, run_gs, **wd)
        sq += sum_of_squares(run_gs, like=nu)
        if centered:
            torch._foreach_lerp_(run_mus, run_gs, 1 - alpha)  # (2)
            mu_sq += sum_of_squares(run_mus, like=nu)
    nu.mul_(alpha).add_(sq, alpha=1 - alpha)  # (1)
    c = _bias(alpha, count, bias_correction)  # (3)
    v = nu / c
    if centered:
        v = v - mu_sq / c**2  # (4)
    s = _denominator(v, eps, eps_in_sqrt)  # (5)
    for run_ps, run_gs, run_bufs, _ in _chunks([ps, gs, bufs]):
        # (6), divided as the reference kernel divides, so the two paths agree to the bit
        d = torch._foreach_div(_effective_grads(run_ps, run_gs, **wd), s.to(run_ps[0].device))
        if momentum > 0:
            torch._foreach_mul_(run_bufs, momentum)
            torch._foreach_add_(run_bufs, d)
            d = run_bufs
        torch._foreach_add_(run_ps, d, alpha=-lr)  # (7)
