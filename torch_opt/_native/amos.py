"""``Amos``'s default CPU path: equations (0)-(9) of torch_opt/amos.py in native passes
(``kernels.c``), as the torch op ``twinopt::amos_``: one pass for element-wise state, and, for
one ``v``, ``b`` per tensor, a mean square pass then an update pass. Equal to
:func:`torch_opt.amos.amos_update` in float64 up to rounding (tests/torch_opt/test_native.py)."""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from torch_opt import _native as native

__all__ = ["native_amos"]


@torch.library.custom_op(
    "twinopt::amos_",
    mutates_args=("params", "vs", "bs", "momentum_bufs", "steps"),
    device_types="cpu",
)
def amos_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    vs: Sequence[Tensor],
    bs: Sequence[Tensor],
    momentum_bufs: Sequence[Tensor],
    steps: Sequence[Tensor],
    etas: Sequence[Tensor],
    lr: Tensor,
    beta: float,
    eps: float,
    extra_l2: float,
    clip: float,
    momentum: float,
    c_coef: float,
    d_coef: float,
    full: bool,
) -> None:
    """One step of parameters of one dtype whose state ``v``, ``b`` is element-wise
    (``full``) or 0-d; ``momentum_bufs`` empty without momentum, ``clip`` 0 for none."""
    n, xi = len(params), float(lr)
    for s in steps:
        s.add_(1)
    h = native.AmosHyper(
        beta=beta,
        eps=eps,
        extra_l2=extra_l2,
        clip=clip,
        momentum=momentum,
        lr_sq=xi**2,
        c_sqrt_lr=c_coef * math.sqrt(xi),
    )
    per = (native.AmosTensor * n)()
    for k, (step, eta) in enumerate(zip(steps, etas, strict=True)):
        init_lr = xi * float(eta)
        per[k].bias = 1 - beta ** float(step)  # (3)
        per[k].init_lr = init_lr
        per[k].d_sqrt_init_lr = d_coef * math.sqrt(init_lr)  # (6)
    lib, suffix = native.library(), native.DTYPES[params[0].dtype]
    common = (
        int(bool(momentum_bufs)),
        n,
        *(native.pointers(x, n) for x in (params, grads, vs, bs, momentum_bufs)),
        native.numels(params),
        per,
        ctypes.byref(h),
    )
    threads = native.threads(params)
    if full:
        getattr(lib, f"twinopt_amos_full_{suffix}")(*common, threads)
    else:
        scratch = native.C_TYPES[params[0].dtype] * n
        getattr(lib, f"twinopt_amos_scalar_{suffix}")(
            *common, (ctypes.c_double * n)(), scratch(), scratch(), scratch(), threads
        )


@amos_.register_fake
def _(params, grads, vs, bs, bufs, steps, etas, lr, beta, eps, l2, clip, mu, c, d, full):
    return None


def native_amos(
    params: list[Tensor],
    states: list[dict],
    *,
    lr,
    clip,
    mu: float,
    beta: float,
    extra_l2: float,
    c_coef: float,
    d_coef: float,
    eps: float,
) -> list[int]:
    """Step the parameters the native kernels can take (plain contiguous float32/float64 CPU
    tensors whose state has their dtype, with element-wise state or state shape ``()``);
    return the indices of the others, untouched (all of them where the kernels are
    unavailable). ``clip``: the clipping bound or ``None``."""
    everything = list(range(len(params)))
    if not native.available():
        return everything
    kinds: dict[tuple[bool, torch.dtype], list[int]] = {}
    rest = []
    for i, (p, state) in enumerate(zip(params, states, strict=True)):
        v = state["v"]
        full = v.shape == p.shape
        if (
            not (full or (v.dim() == 0 and p.numel() > 0))
            or v.dtype != p.dtype
            or not native.eligible([p, p.grad, v, state["b"], state.get("momentum_buffer")])
        ):
            rest.append(i)
            continue
        kinds.setdefault((full, p.dtype), []).append(i)
    lr = lr if isinstance(lr, Tensor) else torch.tensor(float(lr), dtype=torch.float64)
    scalars = (beta, eps, extra_l2, 0.0 if clip is None else float(clip), mu, c_coef, d_coef)
    for (full, _), idx in kinds.items():
        ps, sts = [params[i] for i in idx], [states[i] for i in idx]
        lists = [[s[k] for s in sts] for k in ("v", "b")]
        bufs = [s["momentum_buffer"] for s in sts] if "momentum_buffer" in sts[0] else []
        torch.ops.twinopt.amos_(
            ps,
            [p.grad for p in ps],
            *lists,
            bufs,
            [s["step"] for s in sts],
            [s["eta"] for s in sts],
            lr,
            *scalars,
            full,
        )
    return rest
