"""``MGS``'s CPU proposal: the perturbations (3) of a block of parameters and the two sums of
the log density (4) in one native pass (``kernels.c``), instead of a few dozen small torch
operations and a flat copy of the block. The perturbations are bitwise those of
:func:`torch_opt.sampling.perturbations`; the sums equal those of
:func:`torch_opt.sampling.log_proposal` up to the order of summation
(tests/torch_opt/test_native.py)."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch
from torch import Tensor

from torch_opt import _native as native


def takes(dtype: torch.dtype, device: torch.device, guide: Tensor | None) -> bool:
    """Whether :func:`native_propose` can take a block of this dtype and device (and guide,
    laid end to end)."""
    if dtype not in native.DTYPES or device.type != "cpu":
        return False
    if (guide is not None and not native.eligible([guide])) or not native.available():
        return False
    return guide is None or guide.dtype == dtype


@torch.library.custom_op("twinopt::mgs_propose_", mutates_args=("eps",), device_types="cpu")
def mgs_propose_(
    normals: Tensor | None,
    eps: Tensor,
    guide: Tensor | None,
    numels: Sequence[int],
    scales: Tensor,
    weights: Tensor | None,
    mask: Sequence[bool],
    antithetic: bool,
) -> tuple[Tensor, Tensor]:
    """(3) into ``eps`` (from ``normals``, or in place where ``normals`` is ``None``) and the
    sums ``a``, ``b`` of (4). Each buffer is one flat tensor, its members end to end (``eps``:
    ``(K, n_P)`` each, ``normals``: ``(K // 2, n_P)`` under ``antithetic``, ``guide``:
    ``(n_P,)``): one mutated tensor, not a list of views of one buffer, whose writes Inductor
    in torch 2.6-2.10 loses (2.13 keeps them)."""
    k, count = len(mask), len(numels)
    rows = k // 2 if antithetic else k
    sums = torch.empty((2, k), dtype=torch.float64)
    for t in (scales, weights):
        if t is not None and not (t.dtype == torch.float64 and t.is_cpu and t.is_contiguous()):
            raise ValueError("native_propose: scales and weights must be contiguous float64 CPU")
    total = sum(numels)
    for name, t, size in (("eps", eps, k), ("normals", normals, rows), ("guide", guide, 1)):
        if t is not None and not (t.is_contiguous() and t.numel() == size * total):
            raise ValueError(f"native_propose: {name} must be contiguous, {size} x {total}")
    starts = [0]
    for n in numels[:-1]:
        starts.append(starts[-1] + n)
    getattr(native.library(), f"twinopt_mgs_propose_{native.DTYPES[eps.dtype]}")(
        k,
        count,
        int(antithetic),
        native.pointers_into(eps if normals is None else normals, [rows * i for i in starts]),
        native.pointers_into(eps, [k * i for i in starts]),
        None if guide is None else native.pointers_into(guide, starts),
        (ctypes.c_int64 * count)(*numels),
        scales.data_ptr(),
        None if weights is None else weights.data_ptr(),
        (ctypes.c_uint8 * k)(*(1 if m else 0 for m in mask)),
        sums[0].data_ptr(),
        sums[1].data_ptr(),
        min(k, native.threads([eps])),
    )
    return sums[0].clone(), sums[1].clone()


@mgs_propose_.register_fake
def _(normals, eps, guide, numels, scales, weights, mask, antithetic):
    k = len(mask)
    return scales.new_empty((k,), dtype=torch.float64), scales.new_empty((k,), dtype=torch.float64)


def native_propose(
    guide: Tensor | None,
    normals: Tensor | None,
    eps: Tensor,
    numels: Sequence[int],
    scales: Tensor,
    weights: Tensor | None,
    mask: Sequence[bool],
    *,
    antithetic: bool,
) -> tuple[Tensor, Tensor]:
    """(3) into ``eps`` and the sums of (4) for one block (:func:`takes` must hold).

    Args:
        guide: The block's clipped surrogate ``g_hat`` (flat, contiguous; zeros for a member
            without a surrogate), or ``None`` for a block without any.
        normals: The standard normals, contiguous, each member's ``(K // 2, n_P)`` end to end
            (under ``antithetic``), or ``None`` where they were drawn into ``eps`` itself.
        eps: The output, contiguous, each member's ``(K, n_P)`` end to end.
        numels: Each member's number of entries ``n_P``.
        scales: ``(P,)`` float64 CPU, each member's ``s_P``.
        weights: ``(P,)`` float64 CPU, the sampling density's ``-1/(2 s_P^2)``
            (``torch_opt.sampling.kernels._density_weights``), or ``None`` for the
            unit-variance form.
        mask: ``K`` booleans, guided candidates.
        antithetic: Pair the candidates (``+z``, ``-z``).

    Returns:
        ``a``, ``b`` (``(K,)`` float64): ``sum w eps^2`` and ``sum w (eps - g_hat)^2`` over
        the block.
    """
    return torch.ops.twinopt.mgs_propose_(
        normals, eps, guide, list(numels), scales, weights, list(mask), antithetic
    )


__all__ = ["native_propose", "takes"]
