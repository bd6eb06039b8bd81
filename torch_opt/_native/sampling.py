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
    normals: Sequence[Tensor],
    eps: Sequence[Tensor],
    guides: Sequence[Tensor],
    scales: Tensor,
    weights: Tensor | None,
    mask: Sequence[bool],
    antithetic: bool,
) -> tuple[Tensor, Tensor]:
    """(3) into ``eps`` (from ``normals``, or in place where ``normals`` is empty) and the
    sums ``a``, ``b`` of (4); ``guides`` empty for a block without a surrogate."""
    k, count = len(mask), len(eps)
    sums = torch.empty((2, k), dtype=torch.float64)
    for t in (scales, weights):
        if t is not None and not (t.dtype == torch.float64 and t.is_cpu and t.is_contiguous()):
            raise ValueError("native_propose: scales and weights must be contiguous float64 CPU")
    getattr(native.library(), f"twinopt_mgs_propose_{native.DTYPES[eps[0].dtype]}")(
        k,
        count,
        int(antithetic),
        native.pointers(normals or eps, count),
        native.pointers(eps, count),
        native.pointers(guides, count) if guides else None,
        native.numels([e[0] for e in eps]),  # each parameter's number of entries
        scales.data_ptr(),
        None if weights is None else weights.data_ptr(),
        (ctypes.c_uint8 * k)(*(1 if m else 0 for m in mask)),
        sums[0].data_ptr(),
        sums[1].data_ptr(),
        min(k, native.threads(eps)),
    )
    return sums[0].clone(), sums[1].clone()


@mgs_propose_.register_fake
def _(normals, eps, guides, scales, weights, mask, antithetic):
    k = len(mask)
    return scales.new_empty((k,), dtype=torch.float64), scales.new_empty((k,), dtype=torch.float64)


def native_propose(
    guides: list[Tensor] | None,
    normals: list[Tensor],
    eps: list[Tensor],
    scales: Tensor,
    weights: Tensor | None,
    mask: list[bool],
    *,
    antithetic: bool,
) -> tuple[Tensor, Tensor]:
    """(3) into ``eps`` and the sums of (4) for one block (:func:`takes` must hold).

    Args:
        guides: Each parameter's clipped surrogate ``g_hat_P`` (contiguous; zeros for one
            without a surrogate), or ``None`` for a block without any.
        normals: Each parameter's standard normals, contiguous, ``(K, *shape)`` or
            ``(K // 2, *shape)`` under ``antithetic``.
        eps: Each parameter's output, contiguous ``(K, *shape)``; may be ``normals`` itself
            when not ``antithetic``.
        scales: ``(P,)`` float64 CPU, each parameter's ``s_P``.
        weights: ``(P,)`` float64 CPU, the sampling density's ``-1/(2 s_P^2)``
            (``torch_opt.sampling.kernels._density_weights``), or ``None`` for the
            unit-variance form.
        mask: ``K`` booleans, guided candidates.
        antithetic: Pair the candidates (``+z``, ``-z``).

    Returns:
        ``a``, ``b`` (``(K,)`` float64): ``sum w eps^2`` and ``sum w (eps - g_hat)^2`` over
        the block.
    """
    in_place = all(z is e for z, e in zip(normals, eps, strict=True))
    return torch.ops.twinopt.mgs_propose_(
        [] if in_place else list(normals),
        list(eps),
        [] if guides is None else list(guides),
        scales,
        weights,
        list(mask),
        antithetic,
    )


__all__ = ["native_propose", "takes"]
