"""``scale_by_loss_tied_ode`` and ``loss_tied_ode``: Su's loss-tied step as optax transforms.

Twin of ``torch_opt/rmsprop_ode/loss_tied.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import optax
from optax import GradientTransformationExtraArgs

from jax_opt._math import reject_sparse
from jax_opt.rmsprop_ode.kernels import loss_tied_direction
from twinopt._checks import check_nonnegative, missing_loss


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
