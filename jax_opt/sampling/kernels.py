"""The MGS kernels (math.md §4, equations (1)-(6) of ``jax_opt.sampling``): per-array
functions, the same names and signatures as the twin in ``torch_opt.sampling.kernels``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jax_opt._math import stat_dtype, sum_of_squares

_HIGHEST = jax.lax.Precision.HIGHEST

__all__ = [
    "clip_surrogate",
    "importance_weights",
    "log_proposal",
    "noise_scale",
    "perturbations",
    "weighted_direction",
]


# ------------------------------------------------------------------------------------- kernels


def clip_surrogate(grads: Sequence[jax.Array | None], max_grad_norm: Any) -> list:
    """(1): the descent direction ``-g``, scaled so that its global norm (over every present
    array, accumulated in float32 at least) is at most ``max_grad_norm``.

    Args:
        grads: The surrogate gradient, one array per tensor; ``None`` for a tensor without one.
        max_grad_norm: The clipping norm ``c > 0``, or ``None`` for no clipping.

    Returns:
        One array per tensor (``None`` stays ``None``), each in its gradient's dtype.
    """
    present = [g for g in grads if g is not None]
    if max_grad_norm is None or not present:
        return [None if g is None else -g for g in grads]
    dtype = stat_dtype(present)
    norm = jnp.sqrt(sum_of_squares(present, dtype))
    c = jnp.asarray(max_grad_norm, dtype)
    factor = jnp.where(norm <= c, jnp.ones((), dtype), c / jnp.where(norm > 0, norm, 1))
    return [None if g is None else (-factor * g.astype(dtype)).astype(g.dtype) for g in grads]


def noise_scale(guide: jax.Array | None, *, noise: Any, noise_scale: str) -> jax.Array:
    """(2): the noise scale ``s_P`` of one tensor.

    Args:
        guide: The tensor's clipped descent direction ``g_hat_P``, or ``None``.
        noise: The relative noise ``sigma > 0``.
        noise_scale: ``"grad"`` (``sigma mean|g_hat_P|``; ``sigma`` when ``g_hat_P`` is absent
            or all zero) or ``"constant"`` (``sigma``).

    Returns:
        A 0-d array, float32 at least (float64 for a float64 ``guide``).
    """
    if guide is None or noise_scale == "constant":
        dtype = jnp.result_type(float) if guide is None else stat_dtype([guide])
        return jnp.asarray(noise, dtype)
    dtype = stat_dtype([guide])
    m = jnp.mean(jnp.abs(guide.astype(dtype)))
    return jnp.where(m > 0, noise * m, jnp.asarray(noise, dtype))  # (2)


_noise_scale = noise_scale  # the kernel, where an argument of the same name shadows it


def perturbations(
    guide: jax.Array | None,
    normals: jax.Array,
    mask: jax.Array,
    *,
    scale: Any,
    antithetic: bool = False,
) -> jax.Array:
    """(3): the perturbations ``eps_k`` of one tensor, ``(K, *shape)``.

    Args:
        guide: The tensor's ``g_hat_P``, or ``None`` (every centre 0).
        normals: Standard normals, ``(K, *shape)``, or ``(K // 2, *shape)`` under
            ``antithetic``.
        mask: ``(K,)``, true (nonzero) for a guided candidate (centred on ``guide``).
        scale: The noise scale ``s_P``: a number, a 0-d array, or an array of per-entry
            scales that broadcasts against one candidate (``shape``), e.g. several tensors
            laid end to end in one flat array, each entry carrying its own tensor's ``s_P``.
        antithetic: Pair the candidates: ``z_{2j} = n_j``, ``z_{2j+1} = -n_j``.

    Returns:
        ``mask_k guide + scale z_k``, computed in float32 at least, in the dtype of ``normals``
        and ``guide``.
    """
    out = normals.dtype if guide is None else jnp.promote_types(normals.dtype, guide.dtype)
    dtype = stat_dtype([normals] if guide is None else [normals, guide])
    z = normals.astype(dtype)
    if antithetic:
        z = jnp.stack([z, -z], axis=1).reshape(-1, *z.shape[1:])
    eps = jnp.asarray(scale, dtype) * z
    if guide is not None:
        m = jnp.asarray(mask).astype(bool).reshape(-1, *([1] * (z.ndim - 1)))
        eps = jnp.where(m, guide.astype(dtype), jnp.zeros((), dtype)) + eps  # (3)
    return eps.astype(out)


def log_proposal(
    eps: Sequence[jax.Array],
    guides: Sequence[jax.Array | None],
    scales: Sequence[Any],
    *,
    mix: Any,
    proposal_density: str,
) -> jax.Array:
    """(4): the log density of each candidate under the two-component proposal, summed over
    every tensor; the normalising constant, common to every candidate, is dropped.

    Args:
        eps: One ``(K, *shape)`` array per tensor (or several tensors laid end to end in one
            ``(K, n)`` array).
        guides: Each tensor's ``g_hat_P`` (the guided centre), or ``None`` (centre 0).
        scales: Each tensor's ``s_P``: a number, a 0-d array, or an array of per-entry scales
            broadcasting against ``shape`` (see :func:`perturbations`).
        mix: The guided proportion ``lambda`` in ``[0, 1]``.
        proposal_density: ``"exact"`` (the sampling density) or ``"unit_variance"`` (every
            ``s_P = 1``, the reference code's approximation).

    Returns:
        ``(K,)``, float32 at least (float64 if any ``eps`` is float64).
    """
    dtype = stat_dtype(list(eps))
    k = eps[0].shape[0]
    a = b = jnp.zeros((k,), dtype)
    for e, g, s in zip(eps, guides, scales, strict=True):
        e = e.astype(dtype)
        axes = tuple(range(1, e.ndim))  # no reshape: it would need an explicit sharding
        s = jnp.ones((), dtype) if proposal_density == "unit_variance" else jnp.asarray(s, dtype)
        a_p = -0.5 * jnp.sum(jnp.square(e / s), axis=axes)
        a = a + a_p
        b = b + (
            a_p if g is None else -0.5 * jnp.sum(jnp.square((e - g.astype(dtype)) / s), axis=axes)
        )
    mix = jnp.asarray(mix, dtype)
    return jnp.logaddexp(jnp.log1p(-mix) + a, jnp.log(mix) + b)  # (4)


def importance_weights(
    losses: jax.Array, loss0: Any, log_q: jax.Array, *, temperature: Any
) -> jax.Array:
    """(5): the self-normalised importance weights, by a max-subtracted softmax.

    The improvement ``-(d_k - d_0)`` is used directly (never ``exp(-d)``), so the weights hold
    at any loss magnitude. A candidate whose loss (or logit) is not finite gets weight exactly
    0, and when none is finite all weights are 0; a logit of ``+inf`` (a loss infinitely below
    ``d_0``) takes all the weight, shared among such candidates. Never NaN.

    Args:
        losses: ``(K,)``, the task loss ``d_k`` of each candidate.
        loss0: The task loss ``d_0`` at ``theta``.
        log_q: ``(K,)``, the log proposal density (4), up to a constant.
        temperature: ``alpha > 0``.

    Returns:
        ``(K,)`` weights, float32 at least, summing to 1 (or all 0).
    """
    arrays = [losses, log_q] + ([loss0] if hasattr(loss0, "dtype") else [])
    dtype = stat_dtype(arrays)
    d = jnp.asarray(losses).astype(dtype)
    improvement = -(d - jnp.asarray(loss0, dtype)) / jnp.asarray(temperature, dtype)
    logits = improvement - jnp.asarray(log_q).astype(dtype)
    logits = jnp.where(jnp.isfinite(d) & ~jnp.isnan(logits), logits, -jnp.inf)
    top = logits == jnp.inf
    finite = jnp.isfinite(logits)
    peak = jnp.max(jnp.where(finite, logits, -jnp.inf))
    e = jnp.exp(jnp.where(finite, logits - peak, -jnp.inf))
    total = jnp.sum(e)
    soft = e / jnp.where(total > 0, total, 1)  # (5)
    n_top = jnp.sum(top)
    return jnp.where(n_top > 0, top / jnp.maximum(n_top, 1), soft).astype(dtype)


def weighted_direction(weights: jax.Array, eps: Sequence[jax.Array]) -> list:
    """(6): ``Delta_P = sum_k w_k eps_kP`` for each tensor, accumulated in float32 at least.

    Args:
        weights: ``(K,)``, the weights (5).
        eps: One ``(K, *shape)`` array per tensor.

    Returns:
        One array per tensor, in the dtype of its ``eps``.
    """
    out = []
    for e in eps:
        dtype = stat_dtype([e, weights])
        out.append(
            jnp.tensordot(
                weights.astype(dtype), e.astype(dtype), axes=1, precision=_HIGHEST
            ).astype(e.dtype)  # (6)
        )
    return out
