"""The MGS kernels (math.md §4, equations (1)-(6) of ``torch_opt.sampling``): per-array
functions, the same names and signatures as the twin in ``jax_opt.sampling.kernels``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

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
    if len(present) == 1:  # e.g. every parameter laid end to end: one reduction
        norm = torch.linalg.vector_norm(present[0], dtype=dtype)
    else:
        like = torch.zeros((), dtype=dtype, device=present[0].device)
        norm = sum_of_squares(present, like=like).sqrt()
    factor = torch.where(norm <= max_grad_norm, 1.0, max_grad_norm / norm).neg()  # -min(1, c/|g|)
    return [None if g is None else _times(g, factor, dtype) for g in grads]


def _times(g: Tensor, factor: Tensor, dtype: torch.dtype) -> Tensor:
    """``factor * g`` computed in ``dtype``, returned in ``g``'s dtype (no-op casts skipped)."""
    if factor.device != g.device:
        factor = factor.to(g.device)
    if g.dtype == dtype:
        return g * factor
    return (g.to(dtype) * factor).to(g.dtype)


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


def _noise_scales(
    guides: Sequence[Tensor | None], noises: Sequence[float], modes: Sequence[str], device: Any
) -> Tensor:
    """(2) for several tensors at once, a few ops whatever their number: ``(P,)`` float64 on
    ``device``, entry ``i`` the value of ``noise_scale(guides[i], noise=noises[i],
    noise_scale=modes[i])`` (converted exactly; ``mean|g_hat_P|`` taken as the L1 norm over
    ``numel``, which may round differently). The guides that are not ``None`` share one
    dtype and ``device``."""
    f64 = torch.float64
    picked = [
        i
        for i, (g, mode) in enumerate(zip(guides, modes, strict=True))
        if g is not None and mode != "constant"
    ]
    if not picked:
        return torch.tensor([float(v) for v in noises], dtype=f64, device=device)
    chosen = [g for g in (guides[i] for i in picked) if g is not None]  # all of them
    dtype = stat_dtype(chosen)
    l1 = torch.stack(torch._foreach_norm(chosen, 1, dtype=dtype))
    noise, count = torch.tensor(
        [[float(noises[i]) for i in picked], [g.numel() for g in chosen]],
        dtype=dtype,
        device=device,
    )  # float(noise) rounded to dtype, as `noise * m` rounds it in noise_scale
    m = l1 / count
    scaled = torch.where(m > 0, noise * m, noise).to(f64)  # (2)
    if len(picked) == len(guides):
        return scaled
    out = torch.tensor([float(v) for v in noises], dtype=f64, device=device)
    out[picked] = scaled
    return out


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
        scale: The noise scale ``s_P``: a number, a 0-d tensor, or a tensor of per-entry
            scales that broadcasts against one candidate (``shape``), e.g. several tensors
            laid end to end in one flat array, each entry carrying its own tensor's ``s_P``.
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
        if not isinstance(mask, Tensor):  # torch 2.6-2.8 cannot read a list of numpy.bool_
            mask = [bool(flag) for flag in mask]
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
    ``||eps_kP - g_hat_P||^2`` is summed from the differences themselves (never expanded into
    ``||eps||^2 - 2 <eps, g_hat> + ||g_hat||^2``, which cancels catastrophically for a guided
    candidate with small noise). All tensors are reduced together, in column blocks of a
    bounded size (the float64 copies stay small for a large model).

    Args:
        eps: One ``(K, *shape)`` tensor per parameter (or several parameters laid end to end
            in one ``(K, n)`` tensor).
        guides: Each tensor's ``g_hat_P`` (the guided centre), or ``None`` (centre 0).
        scales: Each tensor's ``s_P``: a number, a 0-d tensor, or a tensor of per-entry
            scales broadcasting against ``shape`` (see :func:`perturbations`).
        mix: The guided proportion ``lambda`` in ``[0, 1]``.
        proposal_density: ``"exact"`` (the sampling density) or ``"unit_variance"`` (every
            ``s_P = 1``, the reference code's approximation).

    Returns:
        ``(K,)``, float64, on the device of ``eps[0]``.
    """
    a, b = _proposal_sums(eps, guides, scales, proposal_density)
    return _mixture_log_density(a, b, mix)


def _proposal_sums(
    eps: Sequence[Tensor], guides: Sequence[Tensor | None], scales: Sequence[Any], density: str
) -> tuple[Tensor, Tensor]:
    """The two sums of (4) (see :func:`log_proposal`): ``a_k = -1/2 sum ||eps_kP||^2 / s_P^2``
    and ``b_k`` the same of ``eps_kP - g_hat_P`` (every ``s_P = 1`` for ``"unit_variance"``),
    ``(K,)`` float64."""
    k, device = eps[0].shape[0], eps[0].device
    f64 = torch.float64
    x = [e.reshape(k, e[0].numel()).to(device) for e in eps]
    x = x[0] if len(x) == 1 else torch.cat(x, dim=1)  # (K, N), promoted to the widest dtype
    centre = None
    if any(g is not None for g in guides):
        centre = _flat_f64(
            [torch.zeros((), dtype=f64, device=device) if g is None else g for g in guides],
            [e[0].shape for e in eps],
            device,
        )
    weight = None  # -1 / (2 s^2) per entry; -1/2 for "unit_variance"
    if density != "unit_variance":
        s = _flat_f64(
            [torch.as_tensor(s, dtype=f64, device=device) for s in scales],
            [e[0].shape for e in eps],
            device,
        )
        weight = _density_weights(s)
    return _weighted_square_sums(x, centre, weight)


def _density_weights(s: Tensor) -> Tensor:
    """``-1 / (2 s^2)`` of (4) for float64 scales ``s``, computed as ``(1 / s^2) * -0.5``
    (exact: -0.5 is a power of 2; IEEE's ``1 / 0 = inf`` where ``s^2`` underflows)."""
    return s.square().reciprocal_().mul_(-0.5)


def _mixture_log_density(a: Tensor, b: Tensor, mix: Any) -> Tensor:
    """(4) from its two sums: ``logaddexp(log(1 - mix) + a, log(mix) + b)``, a component of
    weight 0 dropped exactly (``a``: the zero-centred component's ``-1/2 sum w eps^2``, ``b``
    the guided one's)."""
    mix = float(mix)
    log_zero = math.log1p(-mix) if mix < 1 else -math.inf
    log_guided = math.log(mix) if mix > 0 else -math.inf
    return torch.logaddexp(a + log_zero, b + log_guided)  # (4)


# Columns of x per float64 block in _weighted_square_sums: 2^15 entries (256 KiB) a block.
# Whole (K, n) float64 temporaries of a large model are fresh memory mapped at every step on
# CPU, and their page faults cost more than the arithmetic (measured: 9x on a (16, 9610)
# array); blocks this small are served from the heap's free lists and stay in cache.
_BLOCK = 1 << 15


def _flat_f64(parts: Sequence[Tensor], shapes: Sequence[torch.Size], device: Any) -> Tensor:
    """Per-tensor values (each broadcasting against its ``shape``) laid end to end, float64."""
    flat = [
        p.to(device=device, dtype=torch.float64).expand(shape).reshape(-1)
        for p, shape in zip(parts, shapes, strict=True)
    ]
    return flat[0] if len(flat) == 1 else torch.cat(flat)


def _weighted_square_sums(
    x: Tensor, centre: Tensor | None, weight: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``sum_n w_n x_kn^2`` and ``sum_n w_n (x_kn - c_n)^2`` per row ``k`` of ``x`` (``(K, N)``,
    any real dtype), accumulated in float64, a block of columns at a time (``w = weight``, or
    ``-1/2`` when ``None``; ``c = centre``, or 0 when ``None``: then the two are the same)."""
    k, n = x.shape
    f64 = torch.float64
    step = max(1, _BLOCK // max(k, 1))
    whole = n <= step  # one block: no slicing

    def block(v: Tensor, j: int) -> Tensor:
        return v if whole else v[..., j : j + step]

    a = b = None
    for j in range(0, max(n, 1), step):
        xj = block(x, j).to(f64)  # a view of x when x is float64: not to be written
        wj = None if weight is None else block(weight, j)
        if centre is not None:
            b = _add_row_sums(b, torch.sub(xj, block(centre, j)).square_(), wj)
        a = _add_row_sums(a, xj.square() if x.dtype == f64 else xj.square_(), wj)
    a = cast(Tensor, a)  # the loop runs at least once
    return a, a if centre is None else cast(Tensor, b)


def _add_row_sums(acc: Tensor | None, sq: Tensor, weight: Tensor | None) -> Tensor:
    """``acc + sq @ weight`` (``acc`` updated in place, ``sq`` overwritten; ``-1/2`` row sums
    without weights). Not ``torch.mv``: MKL's result depends on the address of ``sq`` (its
    alignment), and ranks of a distributed run must agree bitwise."""
    rows = sq.sum(dim=1).mul_(-0.5) if weight is None else sq.mul_(weight).sum(dim=1)
    return rows if acc is None else acc.add_(rows)


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
    logits = (d0 - d) / temperature - log_q
    logits = torch.where(torch.isfinite(d) & ~torch.isnan(logits), logits, -math.inf)
    top = logits == math.inf
    n_top = top.sum()
    # The max-subtracted softmax; NaN only where no logit is finite (all -inf: weights 0)
    # or where some is +inf (then the +inf candidates share the weight).
    soft = torch.softmax(logits, dim=0).nan_to_num_(nan=0.0)  # (5)
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
