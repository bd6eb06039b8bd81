"""``Amos``'s default CPU path: equations (0)-(9) of torch_opt/amos.py in native passes
(``kernels.c``): one pass for element-wise state, and, for one ``v``, ``b`` per tensor, a mean
square pass then an update pass. Equal to :func:`torch_opt.amos.amos_update` in float64
(tests/torch_opt/test_native.py)."""

from __future__ import annotations

import ctypes
import math

import torch
from torch import Tensor

from torch_opt import _native as native


def native_amos(
    params: list[Tensor], states: list[dict], *, xi: float, clip, mu: float, hyper: dict
) -> list[int]:
    """Step the parameters the native kernels can take (plain contiguous float32/float64 CPU
    tensors whose state has their dtype, with element-wise state or state shape ``()``);
    return the indices of the others, untouched (all of them where the kernels are
    unavailable)."""
    everything = list(range(len(params)))
    lib = native.library()
    if lib is None:
        return everything
    kinds: dict[tuple[str, torch.dtype], list[int]] = {}
    rest = []
    for i, (p, state) in enumerate(zip(params, states, strict=True)):
        v = state["v"]
        kind = "full" if v.shape == p.shape else "scalar" if v.dim() == 0 else None
        if (
            kind is None
            or v.dtype != p.dtype
            or not native.eligible([p, p.grad, v, state["b"], state.get("momentum_buffer")])
        ):
            rest.append(i)
            continue
        if kind == "scalar" and p.numel() == 0:
            rest.append(i)
            continue
        kinds.setdefault((kind, p.dtype), []).append(i)
    if not kinds:
        return everything
    h = native.AmosHyper(
        beta=hyper["beta"],
        eps=hyper["eps"],
        extra_l2=hyper["extra_l2"],
        clip=float(clip) if clip is not None and clip > 0 else 0.0,
        momentum=mu,
        lr_sq=xi**2,
        c_sqrt_lr=hyper["c_coef"] * math.sqrt(xi),
    )
    beta, d_coef = hyper["beta"], hyper["d_coef"]
    for (kind, dtype), idx in kinds.items():
        ps = [params[i] for i in idx]
        sts = [states[i] for i in idx]
        steps = [s["step"] for s in sts]
        if all(isinstance(x, Tensor) for x in steps):
            torch._foreach_add_(steps, 1.0)
        else:  # a checkpoint stored Python-number steps
            for s in sts:
                s["step"] += 1
            steps = [s["step"] for s in sts]
        per = (native.AmosTensor * len(idx))()
        for k, (s, step) in enumerate(zip(sts, steps, strict=True)):
            init_lr = xi * float(s["eta"])
            per[k].bias = 1 - beta ** float(step)  # (3)
            per[k].init_lr = init_lr
            per[k].d_sqrt_init_lr = d_coef * math.sqrt(init_lr)  # (6)
        momentum = mu > 0 or any("momentum_buffer" in s for s in sts)
        if momentum:
            for s, p in zip(sts, ps, strict=True):
                if "momentum_buffer" not in s:
                    s["momentum_buffer"] = torch.zeros_like(p, dtype=s["v"].dtype)
        n = len(idx)
        common = (
            ctypes.c_int(int(momentum)),
            ctypes.c_int64(n),
            native.pointers(ps, n),
            native.pointers([p.grad for p in ps], n),
            native.pointers([s["v"] for s in sts], n),
            native.pointers([s["b"] for s in sts], n),
            native.pointers([s["momentum_buffer"] for s in sts] if momentum else None, n),
            native.numels(ps),
            per,
            ctypes.byref(h),
        )
        suffix = native.DTYPES[dtype]
        if kind == "full":
            getattr(lib, f"twinopt_amos_full_{suffix}")(*common, ctypes.c_int(native.threads(ps)))
        else:
            scratch = native.C_TYPES[dtype] * n
            getattr(lib, f"twinopt_amos_scalar_{suffix}")(
                *common,
                (ctypes.c_double * n)(),
                scratch(),
                scratch(),
                scratch(),
                ctypes.c_int(native.threads(ps)),
            )
        torch.autograd.graph.increment_version(ps)
    return rest


__all__ = ["native_amos"]
