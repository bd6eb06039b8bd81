"""``scale_by_rmsprop_ode`` and ``rmsprop_ode``: the optax shells around the kernels.

Twin of ``torch_opt/rmsprop_ode/shells.py``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import GradientTransformationExtraArgs

from jax_opt._math import increment, reject_sparse, stat_dtype
from jax_opt.rmsprop_ode.kernels import (
    SCALES,
    rmsprop_ode_direction,
    rmsprop_ode_global_direction,
)
from twinopt._checks import check_choice, check_decay, check_nonnegative


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
) -> GradientTransformationExtraArgs:
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
        An ``optax.GradientTransformationExtraArgs``; unknown extra arguments are ignored.
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

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        reject_sparse(updates, "scale_by_rmsprop_ode")
        count = increment(state.count)
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

    return GradientTransformationExtraArgs(init_fn, update_fn)


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
