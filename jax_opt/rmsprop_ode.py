r"""RMSprop as an ODE (math.md §1.2-1.4): kernels, rmsprop_ode, loss_tied_ode, the vector field.

Twin of ``torch_opt/rmsprop_ode.py``: the same kernel names, signatures and equation tags.

.. math::

    \nu_i &\leftarrow \lambda \nu_i + (1-\lambda)\, g_i^2
        \quad\text{(elementwise)} \qquad
    \nu \leftarrow \lambda \nu + (1-\lambda) \textstyle\sum_i \lVert g_i\rVert^2
        \quad\text{(global)}                                                        \tag{1}

    \mu_i &\leftarrow \lambda \mu_i + (1-\lambda)\, g_i \quad\text{(centered)}     \tag{2}

    c &= 1 - \lambda^t \ \text{(bias correction)}, \quad 1 \ \text{otherwise}       \tag{3}

    v &= \nu / c - (\mu / c)^2
        \quad\text{(global: } \nu/c - \textstyle\sum_i \lVert \mu_i/c\rVert^2)      \tag{4}

    s &= \sqrt{v + \epsilon} \ \text{(eps\_in\_sqrt)}, \quad \sqrt{v} + \epsilon   \tag{5}

    d_i &= g_i / s                                                                  \tag{6}

    \theta_i &\leftarrow \theta_i - \gamma\, d_i \quad\text{(through momentum if any)} \tag{7}

The kernels compute (1)-(6) and return the direction ``d`` (the optax ``scale_by_*``
convention); the shells apply the learning rate and momentum in their framework's convention
(torch: ``b <- m b + d; theta <- theta - lr b``; optax: ``trace`` after the learning rate).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import GradientTransformation, GradientTransformationExtraArgs

from jax_opt._math import abs_sq, reject_sparse, stat_dtype, sum_of_squares
from twinopt._checks import check_choice, check_decay, check_nonnegative, missing_loss
from twinopt.dynamics import damped_ode_to_momentum, momentum_to_damped_ode, retune_momentum

__all__ = [
    "SCALES",
    "ScaleByLossTiedODEState",
    "ScaleByRmspropODEState",
    "damped_ode_to_momentum",
    "loss_tied_direction",
    "loss_tied_ode",
    "momentum_to_damped_ode",
    "retune_momentum",
    "rmsprop_ode",
    "rmsprop_ode_direction",
    "rmsprop_ode_global_direction",
    "rmsprop_vector_field",
    "scale_by_loss_tied_ode",
    "scale_by_rmsprop_ode",
]

SCALES = ("elementwise", "global")


# ------------------------------------------------------------------------------------- kernels


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
    grads: Sequence[jax.Array], loss: jax.Array | float, *, max_scale: float, min_loss: float
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


# -------------------------------------------------------------------------------------- shells


class ScaleByRmspropODEState(NamedTuple):
    """State of :func:`scale_by_rmsprop_ode`."""

    count: jax.Array  # int32, the number of updates so far
    nu: Any  # EMA of squared gradients: a pytree like params, or a scalar (scale="global")
    mu: Any  # EMA of gradients (centered), else None


def _check_rms(decay: Any, eps: Any, initial_scale: Any, scale: str) -> None:
    check_decay("decay", decay)
    check_nonnegative("eps", eps)
    check_nonnegative("initial_scale", initial_scale)
    check_choice("scale", scale, SCALES)


def scale_by_rmsprop_ode(
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    bias_correction: bool = False,
    *,
    scale: str = "elementwise",
) -> GradientTransformation:
    """Rescale updates by RMSprop's second moment: equations (1)-(6), the direction ``d``.

    With ``scale="elementwise"`` this equals ``optax.scale_by_rms`` (``centered=False``) or
    ``optax.scale_by_stddev`` (``centered=True``) with the same arguments. ``scale="global"``
    keeps one scalar second moment for the whole pytree: the EMA of the squared global norm,
    kept in the dtype of the statistics (float32 at least).

    Args:
        decay: The EMA decay ``lambda`` in ``[0, 1)``.
        eps: ``epsilon >= 0``.
        initial_scale: Initial value of the second moment.
        eps_in_sqrt: Place ``epsilon`` inside the square root (optax's default).
        centered: Divide by the variance estimate instead of the second moment.
        bias_correction: Divide every EMA by ``1 - decay**t``.
        scale: ``"elementwise"`` or ``"global"``.

    Returns:
        An ``optax.GradientTransformation``.
    """
    _check_rms(decay, eps, initial_scale, scale)
    hyper = {
        "decay": decay,
        "eps": eps,
        "eps_in_sqrt": eps_in_sqrt,
        "bias_correction": bias_correction,
    }

    def init_fn(params):
        reject_sparse(params, "scale_by_rmsprop_ode")
        if scale == "elementwise":
            nu = optax.tree.full_like(params, initial_scale)
        else:
            nu = jnp.full((), initial_scale, stat_dtype(jax.tree.leaves(params)))
        mu = optax.tree.zeros_like(params) if centered else None
        return ScaleByRmspropODEState(count=jnp.zeros([], jnp.int32), nu=nu, mu=mu)

    def update_fn(updates, state, params=None):
        del params
        reject_sparse(updates, "scale_by_rmsprop_ode")
        count = optax.safe_increment(state.count)
        leaves, treedef = jax.tree.flatten(updates)
        mus = treedef.flatten_up_to(state.mu) if centered else None
        if scale == "elementwise":
            out = [
                rmsprop_ode_direction(g, nu, mus[i] if centered else None, count=count, **hyper)
                for i, (g, nu) in enumerate(
                    zip(leaves, treedef.flatten_up_to(state.nu), strict=True)
                )
            ]
            directions = [d for d, _, _ in out]
            nu = treedef.unflatten([n for _, n, _ in out])
            mus = [m for _, _, m in out] if centered else None
        else:
            directions, nu, mus = rmsprop_ode_global_direction(
                leaves, state.nu, mus, count=count, **hyper
            )
        mu = treedef.unflatten(mus) if centered else None
        new_state = ScaleByRmspropODEState(count=count, nu=nu, mu=mu)
        return treedef.unflatten(directions), new_state

    return GradientTransformation(init_fn, update_fn)


def rmsprop_ode(
    learning_rate: optax.ScalarOrSchedule,
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: jax.typing.ArrayLike | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    scale: str = "elementwise",
) -> GradientTransformationExtraArgs:
    r"""RMSprop as an error-controlled ODE solver (math.md §1.3), a drop-in for ``optax.rmsprop``.

    With ``scale="elementwise"`` (the default) it equals ``optax.rmsprop`` with the same
    arguments. ``scale="global"`` is Su's global version: one second moment for the whole
    pytree, the EMA of the squared global norm of the gradient; the update keeps the gradient's
    direction, and ``centered`` subtracts the squared norm of the gradient EMA. Equations (1)-(7)
    of the module docstring; the chain is ``scale_by_rmsprop_ode``, ``scale_by_learning_rate``,
    then ``optax.trace(momentum, nesterov)`` when ``momentum`` is given.

    Args:
        learning_rate: The step ``gamma``, a scalar or a schedule of the update count.
        decay: The EMA decay ``lambda`` in ``[0, 1)``.
        eps: ``epsilon >= 0``.
        initial_scale: Initial value of the second moment (PyTorch uses 0, TF1 1).
        eps_in_sqrt: Place ``epsilon`` inside the square root (Su; optax's default).
        centered: Divide by the variance estimate instead of the second moment.
        momentum: Heavy-ball decay of ``optax.trace``, or ``None`` for none.
        nesterov: Nesterov momentum.
        bias_correction: Divide every EMA by ``1 - decay**t``.
        scale: ``"elementwise"`` or ``"global"``.

    Returns:
        An ``optax.GradientTransformationExtraArgs``.

    .. warning::
        ``eps_in_sqrt=True`` (optax's default) uses ``sqrt(v + eps)``; PyTorch (and
        ``torch_opt.RMSpropODE``'s default) use ``sqrt(v) + eps``. NaN and Inf gradients are not
        repaired: they propagate into the updates as in ``optax.rmsprop``.

    References:
        Su Jianlin, "Optimization algorithms from a dynamics perspective (II): adaptive learning
        rates", kexue.fm/archives/6234, 2018. Hinton, "Overview of mini-batch gradient descent",
        2012.
    """
    if not callable(learning_rate):
        check_nonnegative("learning_rate", learning_rate)
    if momentum is not None:
        check_nonnegative("momentum", momentum)
    return optax.chain(
        scale_by_rmsprop_ode(
            decay, eps, initial_scale, eps_in_sqrt, centered, bias_correction, scale=scale
        ),
        optax.scale_by_learning_rate(learning_rate),
        optax.trace(decay=momentum, nesterov=nesterov)
        if momentum is not None
        else optax.identity(),
    )


class ScaleByLossTiedODEState(NamedTuple):
    """State of :func:`scale_by_loss_tied_ode` (none: the step depends only on the loss)."""


def scale_by_loss_tied_ode(
    max_scale: jax.typing.ArrayLike = 1000.0, min_loss: jax.typing.ArrayLike = 0.0
) -> GradientTransformationExtraArgs:
    """Scale the gradient to Su's loss-tied direction (8); ``update`` needs ``value=loss``.

    Args:
        max_scale: The truncation ``M`` of ``1/||g||``.
        min_loss: The loss value taken as the minimum.

    Returns:
        An ``optax.GradientTransformationExtraArgs``; unknown extra arguments are ignored.
    """
    check_nonnegative("max_scale", max_scale)

    def init_fn(params):
        reject_sparse(params, "loss_tied_ode")
        return ScaleByLossTiedODEState()

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        if value is None:
            raise missing_loss("value", "loss_tied_ode", "pass value=loss to update")
        reject_sparse(updates, "loss_tied_ode")
        leaves, treedef = jax.tree.flatten(updates)
        directions = loss_tied_direction(leaves, value, max_scale=max_scale, min_loss=min_loss)
        return treedef.unflatten(directions), state

    return GradientTransformationExtraArgs(init_fn, update_fn)


def loss_tied_ode(
    learning_rate: optax.ScalarOrSchedule,
    max_scale: jax.typing.ArrayLike = 1000.0,
    min_loss: jax.typing.ArrayLike = 0.0,
) -> GradientTransformationExtraArgs:
    r"""Su's loss-tied ("Polyak-type") step (math.md §1.4), reading the loss from ``value=``.

    Euler steps of ``dtheta/dt = -(g/||g||) * L * min(1/||g||, M)`` so that ``dL/dt = -L``
    where untruncated: ``theta <- theta - learning_rate * d`` with ``d`` from
    :func:`loss_tied_direction` (8). The norm is over the whole pytree, the loss enters as
    ``max(L - min_loss, 0)``, and a zero gradient gives no step.

    Args:
        learning_rate: The Euler step ``h``, a scalar or a schedule of the update count.
        max_scale: The truncation ``M`` of ``1/||g||``.
        min_loss: The loss value taken as the minimum (Su assumes ``min L = 0``).

    Returns:
        An ``optax.GradientTransformationExtraArgs``: call
        ``update(grads, state, params, value=loss)``.

    References:
        Su Jianlin, "Optimization algorithms from a dynamics perspective (III): a more holistic
        view", kexue.fm/archives/6261, 2019.
    """
    if not callable(learning_rate):
        check_nonnegative("learning_rate", learning_rate)
    return optax.chain(
        scale_by_loss_tied_ode(max_scale, min_loss),
        optax.scale_by_learning_rate(learning_rate),
    )
