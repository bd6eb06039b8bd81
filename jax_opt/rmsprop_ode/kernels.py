"""Kernels of RMSprop as an ODE: equations (1)-(9) of ``jax_opt.rmsprop_ode``, on arrays.

Twin of ``torch_opt/rmsprop_ode/kernels.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jax_opt._math import abs_sq, stat_dtype, sum_of_squares
from twinopt._checks import check_choice, check_nonnegative

SCALES = ("elementwise", "global")


def _corrected(x: jax.Array, decay: Any, count: Any, bias_correction: bool) -> jax.Array:
    """(3): ``x / (1 - decay**count)`` (``count`` is 1-based), computed as optax computes it."""
    return optax.tree.bias_correction(x, decay, count) if bias_correction else x


def _scaling(v: jax.Array, eps: Any, eps_in_sqrt: bool) -> jax.Array:
    """``1 / s`` of (5), written as optax writes it."""
    return jax.lax.rsqrt(v + eps) if eps_in_sqrt else 1 / (jnp.sqrt(v) + eps)


def rmsprop_ode_direction(
    grad: jax.Array,
    nu: jax.Array,
    mu: jax.Array | None,
    *,
    decay: float,
    eps: float,
    eps_in_sqrt: bool,
    bias_correction: bool,
    count: int | jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Element-wise RMSprop for one array: equations (1)-(6).

    Args:
        grad: The gradient ``g``.
        nu: The EMA of squared gradients before this step.
        mu: The EMA of gradients before this step (centered), or ``None`` (not centered).
        decay: ``lambda``.
        eps: ``epsilon``.
        eps_in_sqrt: Whether ``epsilon`` goes inside the square root (5).
        bias_correction: Whether to divide the EMAs by ``1 - decay**count`` (3).
        count: The 1-based number of this step.

    Returns:
        ``(direction, nu, mu)``: ``d = g / s`` and the updated EMAs.
    """
    nu = (1 - decay) * abs_sq(grad) + decay * nu  # (1)
    if mu is not None:
        mu = (1 - decay) * grad + decay * mu  # (2)
    v = _corrected(nu, decay, count, bias_correction)  # (3)
    if mu is not None:
        v = v - abs_sq(_corrected(mu, decay, count, bias_correction))  # (4)
    return _scaling(v, eps, eps_in_sqrt) * grad, nu, mu  # (5), (6)


def rmsprop_ode_global_direction(
    grads: Sequence[jax.Array],
    nu: jax.Array,
    mus: Sequence[jax.Array] | None,
    *,
    decay: float,
    eps: float,
    eps_in_sqrt: bool,
    bias_correction: bool,
    count: int | jax.Array,
) -> tuple[list[jax.Array], jax.Array, list[jax.Array] | None]:
    """Global-norm RMSprop for a list of arrays: equations (1)-(6) with one scalar ``nu``.

    The direction of every array is its gradient divided by the same scalar, so the update
    keeps the direction of the gradient (Su's "more principled" multi-dimensional version).

    Args:
        grads: The gradients (the leaves of the pytree).
        nu: The 0-d EMA of the squared global norm before this step; its dtype is the dtype of
            the statistics (see :func:`jax_opt._math.stat_dtype`).
        mus: The per-array gradient EMAs (centered), or ``None``.
        decay, eps, eps_in_sqrt, bias_correction, count: As in :func:`rmsprop_ode_direction`.

    Returns:
        ``(directions, nu, mus)``.
    """
    nu = (1 - decay) * sum_of_squares(grads, nu.dtype) + decay * nu  # (1)
    if mus is not None:
        mus = [(1 - decay) * g + decay * m for m, g in zip(mus, grads, strict=True)]  # (2)
    v = _corrected(nu, decay, count, bias_correction)  # (3)
    if mus is not None:
        mu_hat = [_corrected(m, decay, count, bias_correction) for m in mus]
        v = v - sum_of_squares(mu_hat, nu.dtype)  # (4)
    scaling = _scaling(v, eps, eps_in_sqrt)  # (5)
    return [(scaling * g).astype(g.dtype) for g in grads], nu, mus  # (6)


def loss_tied_direction(
    grads: Sequence[jax.Array],
    loss: jax.Array | float,
    *,
    max_scale: jax.typing.ArrayLike,
    min_loss: jax.typing.ArrayLike,
) -> list[jax.Array]:
    r"""Su's truncated loss-tied direction (math.md §1.4) for a list of arrays.

    .. math::

        n = \lVert g\rVert, \qquad L_+ = \max(L - L_{min}, 0), \qquad
        d = g\, L_+ \min(1/n, M) / n \quad (d = 0 \text{ where } n = 0)            \tag{8}

    so ``theta - lr * d`` is one Euler step of ``dtheta/dt = -(g/||g||) L min(1/||g||, M)``.

    Args:
        grads: The gradients; the norm ``n`` is over all of them.
        loss: The current loss ``L``.
        max_scale: The truncation ``M`` of ``1/n``.
        min_loss: ``L_min``, the loss value taken as the minimum.

    Returns:
        The directions ``d``; a zero gradient gives a zero direction.
    """
    dtype = stat_dtype(grads)
    n = jnp.sqrt(sum_of_squares(grads, dtype))
    excess = jnp.maximum(jnp.asarray(loss, dtype) - min_loss, 0)
    safe_n = jnp.where(n > 0, n, jnp.ones_like(n))
    factor = jnp.where(n > 0, excess * jnp.minimum(1 / safe_n, max_scale) / safe_n, 0)
    return [(g * factor).astype(g.dtype) for g in grads]  # (8)


def rmsprop_vector_field(
    grad_fn: Callable[[jax.Array], jax.Array],
    *,
    rate: float,
    lr: float = 0.0,
    eps: float,
    eps_in_sqrt: bool,
    scale: str = "elementwise",
) -> Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    r"""The vector field of RMSprop in ODE time (math.md §1.3).

    .. math::

        \dot G = \rho\,(g(\theta)^2 - G), \qquad
        \tilde G = G + \gamma \dot G, \qquad
        \dot\theta = -g(\theta) / s(\tilde G)                                        \tag{9}

    with ``s`` as in (5) and ``g^2`` replaced by ``||g||^2`` (a scalar ``G``) when
    ``scale="global"``. Time is scaled so that one explicit Euler step of size ``dt = lr`` is
    exactly one RMSprop step with ``decay = 1 - rate * lr`` (no momentum, not centered, no bias
    correction): the look-ahead ``G~`` is the optimizer's updated second moment. ``lr = 0``
    gives the limit ODE that RMSprop tracks to first order in ``lr`` at a fixed ``rate``.

    Args:
        grad_fn: ``theta -> g(theta)`` for one array ``theta``.
        rate: The relaxation rate ``rho = (1 - decay) / lr`` of the second moment.
        lr: The Euler step the field is matched to (0: the limit ODE).
        eps: ``epsilon``.
        eps_in_sqrt: Placement of ``epsilon`` as in (5).
        scale: ``"elementwise"`` (``G`` shaped like ``theta``) or ``"global"`` (0-d ``G``).

    Returns:
        ``field(theta, G) -> (dtheta/dt, dG/dt)``, jit-able.
    """
    check_nonnegative("rate", rate)
    check_nonnegative("lr", lr)
    check_nonnegative("eps", eps)
    check_choice("scale", scale, SCALES)

    def field(theta: jax.Array, G: jax.Array) -> tuple[jax.Array, jax.Array]:
        g = grad_fn(theta)
        sq = g * g if scale == "elementwise" else jnp.sum(g * g)
        dG = rate * (sq - G)
        s = jnp.sqrt(G + lr * dG + eps) if eps_in_sqrt else jnp.sqrt(G + lr * dG) + eps  # (9)
        return -g / s, dG

    return field
