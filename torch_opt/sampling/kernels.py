"""The MGS kernels (math.md §4, equations (1)-(6) of ``torch_opt.sampling``): per-array
functions, the same names and signatures as the twin in ``jax_opt.sampling.kernels``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from torch_opt._math import stat_dtype, sum_of_squares

__all__ = [
    "clip_surrogate",
    "importance_weights",
    "log_proposal",
    "noise_scale",
    "perturbations",
    "weighted_direction",
]


# ------------------------------------------------------------------------------------- kernels


def clip_surrogate(grads: Sequence[Tensor | None], max_grad_norm: Any) -> list:
    """(1): the descent direction ``-g``, scaled so that its global norm (over every present
    tensor, accumulated in float32 at least) is at most ``max_grad_norm``.

    Args:
        grads: The surrogate gradient, one tensor per parameter; ``None`` where there is none.
        max_grad_norm: The clipping norm ``c > 0``, or ``None`` for no clipping.

    Returns:
        One tensor per parameter (``None`` stays ``None``), each in its gradient's dtype.
    """
    present = [g for g in grads if g is not None]
    if max_grad_norm is None or not present:
        return [None if g is None else -g for g in grads]
    dtype = stat_dtype(present)
    norm = sum_of_squares(present, like=torch.zeros((), dtype=dtype, device=present[0].device))
    norm = norm.sqrt()
    factor = torch.where(norm <= max_grad_norm, torch.ones_like(norm), max_grad_norm / norm)
    return [
        None if g is None else (-(factor.to(g.device) * g.to(dtype))).to(g.dtype) for g in grads
    ]


def noise_scale(guide: Tensor | None, *, noise: Any, noise_scale: str) -> Any:
    """(2): the noise scale ``s_P`` of one tensor.

    Args:
        guide: The tensor's clipped descent direction ``g_hat_P``, or ``None``.
        noise: The relative noise ``sigma > 0``.
        noise_scale: ``"grad"`` (``sigma mean|g_hat_P|``; ``sigma`` when ``g_hat_P`` is absent
            or all zero) or ``"constant"`` (``sigma``).

    Returns:
        ``float(noise)`` without a guide or for ``"constant"``; else a 0-d tensor, float32 at
        least (float64 for a float64 guide), on the guide's device (no host synchronization).
    """
    if guide is None or noise_scale == "constant":
        return float(noise)
    m = guide.abs().mean(dtype=stat_dtype([guide]))
    return torch.where(m > 0, noise * m, torch.full_like(m, float(noise)))  # (2)


_noise_scale = noise_scale  # the kernel, where an argument of the same name shadows it


def perturbations(
    guide: Tensor | None,
    normals: Tensor,
    mask: Any,
    *,
    scale: Any,
    antithetic: bool = False,
) -> Tensor:
    """(3): the perturbations ``eps_k`` of one tensor, ``(K, *shape)``.

    Args:
        guide: The tensor's ``g_hat_P``, or ``None`` (every centre 0).
        normals: Standard normals, ``(K, *shape)``, or ``(K // 2, *shape)`` under
            ``antithetic``.
        mask: ``K`` booleans (a sequence or a tensor; nonzero = guided, centred on ``guide``).
        scale: The noise scale ``s_P`` (a number or a 0-d tensor).
        antithetic: Pair the candidates: ``z_{2j} = n_j``, ``z_{2j+1} = -n_j``.

    Returns:
        ``mask_k guide + scale z_k``, computed in float32 at least and returned in the dtype of
        ``normals`` (promoted with ``guide``'s).
    """
    out = normals.dtype if guide is None else torch.promote_types(normals.dtype, guide.dtype)
    dtype = stat_dtype([normals] if guide is None else [normals, guide])
    z = normals.to(dtype)
    if antithetic:
        z = torch.stack([z, -z], dim=1).reshape(-1, *z.shape[1:])
    eps = torch.as_tensor(scale, dtype=dtype, device=z.device) * z
    if guide is not None:
        m = torch.as_tensor(mask, device=z.device).to(torch.bool)
        m = m.reshape(-1, *([1] * (z.dim() - 1)))
        eps = torch.where(m, guide.to(device=z.device, dtype=dtype), 0.0) + eps  # (3)
    return eps.to(out)


def log_proposal(
    eps: Sequence[Tensor],
    guides: Sequence[Tensor | None],
    scales: Sequence[Any],
    *,
    mix: Any,
    proposal_density: str,
) -> Tensor:
    """(4): the log density of each candidate under the two-component proposal, summed over
    every tensor, up to the normalising constant (common to every candidate, dropped).

    The squared norms are accumulated in float64 whatever the dtype of ``eps``: over millions
    of entries a float32 sum would blur the differences between candidates that (5) needs.

    Args:
        eps: One ``(K, *shape)`` tensor per parameter.
        guides: Each tensor's ``g_hat_P`` (the guided centre), or ``None`` (centre 0).
        scales: Each tensor's ``s_P`` (numbers or 0-d tensors).
        mix: The guided proportion ``lambda`` in ``[0, 1]``.
        proposal_density: ``"exact"`` (the sampling density) or ``"unit_variance"`` (every
            ``s_P = 1``, the reference code's approximation).

    Returns:
        ``(K,)``, float64, on the device of ``eps[0]``.
    """
    k, device = eps[0].shape[0], eps[0].device
    f64 = torch.float64
    a = torch.zeros(k, dtype=f64, device=device)
    b = torch.zeros(k, dtype=f64, device=device)
    for e, g, s in zip(eps, guides, scales, strict=True):
        x = e.reshape(k, -1).to(device=device, dtype=f64)
        s2 = (
            1.0
            if proposal_density == "unit_variance"
            else torch.as_tensor(s, dtype=f64, device=device) ** 2
        )
        a_p = -0.5 * x.square().sum(dim=1) / s2
        a = a + a_p
        if g is None:
            b = b + a_p
        else:
            centre = g.reshape(1, -1).to(device=device, dtype=f64)
            b = b - 0.5 * (x - centre).square().sum(dim=1) / s2
    mix = float(mix)
    log_zero = math.log1p(-mix) if mix < 1 else -math.inf
    log_guided = math.log(mix) if mix > 0 else -math.inf
    return torch.logaddexp(a + log_zero, b + log_guided)  # (4)


def importance_weights(losses: Any, loss0: Any, log_q: Any, *, temperature: Any) -> Tensor:
    """(5): the self-normalised importance weights, by a max-subtracted softmax in float64.

    The improvement ``-(d_k - d_0)`` is used directly (never ``exp(-d)``), so the weights hold
    at any loss magnitude. A candidate whose loss (or logit) is not finite gets weight exactly
    0, and when none is finite all weights are 0; a logit of ``+inf`` (a finite loss infinitely
    below ``d_0`` after the division, or ``log q = -inf``) takes all the weight, shared among
    such candidates. Never NaN.

    Args:
        losses: ``(K,)``, the task loss ``d_k`` of each candidate.
        loss0: The task loss ``d_0`` at ``theta`` (a number or a 0-d tensor).
        log_q: ``(K,)``, the log proposal density (4), up to a constant.
        temperature: ``alpha > 0``.

    Returns:
        ``(K,)`` float64 weights, summing to 1 (or all 0), on the device of ``losses``.
    """
    f64 = torch.float64
    d = torch.as_tensor(losses, dtype=f64)
    log_q = torch.as_tensor(log_q, dtype=f64, device=d.device)
    d0 = torch.as_tensor(loss0, dtype=f64, device=d.device)
    logits = -(d - d0) / temperature - log_q
    logits = torch.where(torch.isfinite(d) & ~torch.isnan(logits), logits, -math.inf)
    top = logits == math.inf
    finite = torch.isfinite(logits)
    peak = torch.where(finite, logits, -math.inf).max()
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    e = torch.where(finite, torch.exp(logits - peak), 0.0)
    total = e.sum()
    soft = e / torch.where(total > 0, total, torch.ones_like(total))  # (5)
    n_top = top.sum()
    return torch.where(n_top > 0, top.to(f64) / n_top.clamp_min(1), soft)


def weighted_direction(weights: Any, eps: Sequence[Tensor]) -> list:
    """(6): ``Delta_P = sum_k w_k eps_kP`` for each tensor.

    Args:
        weights: ``(K,)``, the weights (5).
        eps: One ``(K, *shape)`` tensor per parameter.

    Returns:
        One tensor per parameter, computed and returned in float32 at least (float64 for
        float64 ``eps``), so that a half-precision parameter is rounded once, by the update.
    """
    w = torch.as_tensor(weights, dtype=torch.float64)
    out = []
    for e in eps:
        dtype = stat_dtype([e])
        out.append(torch.tensordot(w.to(device=e.device, dtype=dtype), e.to(dtype), dims=1))  # (6)
    return out
