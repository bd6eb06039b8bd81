r"""Flooding (math.md §3): batch, individual (iFlood) and adaptive (AdaFlood) flooding.

Twin of ``torch_opt/flooding.py``: the same function names, signatures and equation tags.

.. math::

    \tilde L &= |L - b| + b                                                         \tag{1}

    \nabla \tilde L &= \operatorname{sign}(L - b)\, \nabla L
        \quad (0 \text{ at } L = b)                                                  \tag{2}

    L_{iFlood} &= \tfrac{1}{N} \textstyle\sum_i \big(|\ell_i - b| + b\big)         \tag{3}

    \theta_i &= -\log\big((1 - \gamma)\, e^{-(\alpha \ell^{aux}_i + \beta)} + \gamma\big)
                                                                                     \tag{4}

    L_{AdaFlood} &= \tfrac{1}{N} \textstyle\sum_i \big(|\ell_i - \theta_i| + \theta_i\big)
                                                                                     \tag{5}

The flooded loss is written as ``(L - b) sign(L - b) + b``: its value is (1), and since both
frameworks give ``sign`` a zero derivative, its gradient is (2) in both, zero at ``L = b`` (the
naive ``abs`` differs there: torch's derivative at 0 is 0, JAX's is 1).

References:
    Ishida et al., "Do We Need Zero Training Loss After Achieving Zero Training Error?", ICML
    2020. Xie et al., "iFlood: A Stable and Effective Regularizer", ICLR 2022. Bae et al.,
    "AdaFlood: Adaptive Flood Regularization", TMLR 2024. Su Jianlin, kexue.fm/archives/7643.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from optax import GradientTransformationExtraArgs

from twinopt._checks import (
    check_choice,
    check_fraction,
    check_nonnegative,
    check_same_shape,
    missing_loss,
)

__all__ = [
    "MODES",
    "FloodGradientsState",
    "adaflood",
    "adaflood_levels",
    "flood",
    "flood_gradients",
    "flooded",
    "iflood",
]

MODES = ("batch", "individual")


def flood(loss: jax.Array, level: jax.Array | float) -> jax.Array:
    """The flooded loss (1), element-wise, with gradient (2) (zero at ``loss == level``).

    Applied to the mini-batch mean loss this is the paper's flooding.

    Args:
        loss: The loss (any shape).
        level: The flood level ``b >= 0`` (a number or an array broadcastable to ``loss``).

    Returns:
        ``|loss - level| + level``.
    """
    if not isinstance(level, jax.Array):  # an array level is data: checking it would sync
        check_nonnegative("level", level)
    excess = loss - level
    return excess * jnp.sign(excess) + level  # (1), (2)


def iflood(losses: jax.Array, level: jax.Array | float) -> jax.Array:
    """Individual flooding (3): the mean of the flooded per-sample losses.

    Args:
        losses: Per-sample losses ``l_i``.
        level: The flood level ``b >= 0``.

    Returns:
        ``mean_i(|l_i - b| + b)``; at least the flooded mean loss, with equality when all
        ``l_i`` lie on one side of ``b``.
    """
    return jnp.mean(flood(losses, level))  # (3)


def adaflood_levels(
    aux_losses: jax.Array, gamma: float = 0.5, alpha: float = 1.0, beta: float = 0.0
) -> jax.Array:
    """AdaFlood's per-sample levels (4) from an auxiliary model's losses, as constants.

    ``gamma = 1`` gives levels 0 (no flooding); ``gamma = 0`` gives ``alpha * l_aux + beta``.
    For cross-entropy, ``exp(-l_aux)`` is the auxiliary model's probability of the label.

    Args:
        aux_losses: Per-sample losses of the auxiliary model (held-out fold).
        gamma: The mixing weight in ``[0, 1]``.
        alpha: Scale of the auxiliary loss, ``>= 0``.
        beta: Shift of the auxiliary loss, ``>= 0``.

    Returns:
        The levels ``theta_i``, under ``stop_gradient`` (no gradient flows into them).
    """
    check_fraction("gamma", gamma)
    check_nonnegative("alpha", alpha)
    check_nonnegative("beta", beta)
    x = alpha * jax.lax.stop_gradient(aux_losses) + beta
    gamma_a = jnp.asarray(gamma, x.dtype)
    return -jnp.logaddexp(jnp.log1p(-gamma_a) - x, jnp.log(gamma_a))  # (4)


def adaflood(losses: jax.Array, levels: jax.Array) -> jax.Array:
    """AdaFlood's loss (5): per-sample losses flooded at per-sample levels, averaged.

    Args:
        losses: Per-sample losses ``l_i``.
        levels: Per-sample levels ``theta_i`` (e.g. from :func:`adaflood_levels`), the shape
            of ``losses``; treated as constants.

    Returns:
        ``mean_i(|l_i - theta_i| + theta_i)``.
    """
    check_same_shape("levels", jnp.shape(levels), "losses", jnp.shape(losses))
    return jnp.mean(flood(losses, jax.lax.stop_gradient(levels)))  # (5)


def flooded(
    loss_fn: Callable[..., Any], level: float, mode: str = "batch", has_aux: bool = False
) -> Callable[..., Any]:
    """Wrap a loss function so that it returns the flooded loss (same signature).

    ``mode="batch"`` floods the mean of what ``loss_fn`` returns (its mini-batch loss) by (1);
    ``mode="individual"`` takes what it returns as per-sample losses (first axis the batch),
    averages each over the other axes and floods them one by one (3).

    Args:
        loss_fn: The loss function; with ``has_aux`` it returns ``(loss, aux)``.
        level: The flood level ``b >= 0``, in the units of ``loss_fn``'s loss.
        mode: ``"batch"`` (flooding) or ``"individual"`` (iFlood).
        has_aux: Whether ``loss_fn`` returns ``(loss, aux)``; ``aux`` passes through.

    Returns:
        A function with ``loss_fn``'s signature and the flooded loss in place of the loss.
    """
    check_nonnegative("level", level)
    check_choice("mode", mode, MODES)

    def reduce(loss: jax.Array) -> jax.Array:
        if mode == "batch":
            return flood(jnp.mean(loss), level)  # (1)
        if jnp.ndim(loss) == 0:
            raise ValueError(
                "Invalid loss_fn: it returned one loss (must return per-sample losses for "
                "mode='individual')"
            )
        return iflood(jnp.mean(jnp.reshape(loss, (jnp.shape(loss)[0], -1)), axis=1), level)

    @functools.wraps(loss_fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = loss_fn(*args, **kwargs)
        if has_aux:
            loss, aux = out
            return reduce(loss), aux
        return reduce(out)

    return wrapped


class FloodGradientsState(NamedTuple):
    """State of :func:`flood_gradients` (none: the step depends only on the loss)."""


def flood_gradients(level: float) -> GradientTransformationExtraArgs:
    """Multiply the incoming gradient by ``sign(value - level)``: the gradient (2) of the
    flooded loss, without rewriting the loss. ``update`` needs ``value=loss`` (the mini-batch
    loss whose gradient the updates are); unknown extra arguments are ignored, so it chains
    with any optax transformation: ``optax.chain(flood_gradients(0.05), optax.adam(1e-3))``.

    Args:
        level: The flood level ``b >= 0``.

    Returns:
        An ``optax.GradientTransformationExtraArgs``.
    """
    check_nonnegative("level", level)

    def init_fn(params):
        del params
        return FloodGradientsState()

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        if value is None:
            raise missing_loss("value", "flood_gradients", "pass value=loss to update")
        sign = jnp.sign(jnp.asarray(value) - level)  # (2)
        return jax.tree.map(lambda g: (g * sign).astype(g.dtype), updates), state

    return GradientTransformationExtraArgs(init_fn, update_fn)
