r"""The explicit gradient-norm penalty (math.md §5), exactly and by finite differences.

Twin of ``torch_opt/penalty.py``: the same kernel names, signatures and equation tags.

.. math::

    L_{EGR}(\theta) &= L(\theta) + \mu \lVert \nabla L(\theta) \rVert^2              \tag{1}

    \nabla L_{EGR} &= \nabla L + 2 \mu\, H \nabla L                                  \tag{2}

    \nabla L_{EGR} &\approx \nabla L(\theta) + \tfrac{2\mu}{\delta}
        \big(\nabla L(\theta + \delta \nabla L(\theta)) - \nabla L(\theta)\big)      \tag{3}

    \mu_{IGR} &= \frac{h (1 + \beta)}{4 (1 - \beta)^2}
        \quad (h/4 \text{ for gradient descent})                                     \tag{4}

(3) is the forward ("ascent") finite difference of the Hessian-vector product in (2), one
extra gradient evaluation per step; (4) is the penalty that a learning rate ``h`` (and
momentum ``beta``) imposes implicitly.

References:
    Barrett & Dherin, "Implicit Gradient Regularization", ICLR 2021. Su Jianlin,
    kexue.fm/archives/7787. Karakida et al., "Understanding Gradient Regularization in Deep
    Learning: Efficient Finite-Difference Computation and Implicit Bias", 2023.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
from optax import GradientTransformationExtraArgs

from jax_opt._math import stat_dtype, sum_of_squares
from twinopt._checks import check_nonnegative, check_positive, missing
from twinopt.dynamics import igr_coefficient

__all__ = [
    "FiniteDifferencePenaltyState",
    "finite_difference_gradient",
    "finite_difference_penalty",
    "igr_coefficient",
    "penalized",
]


def penalized(loss_fn: Callable[..., Any], mu: float, has_aux: bool = False) -> Callable[..., Any]:
    """``loss_fn`` with the gradient-norm penalty (1) added, exactly (double backprop).

    The result has ``loss_fn``'s signature (parameters first, then any further arguments) and
    returns ``L + mu ||grad_params L||^2``; differentiating it gives (2). The squared norm is
    accumulated in float32 at least.

    Args:
        loss_fn: ``loss_fn(params, *args, **kwargs)``; with ``has_aux`` it returns
            ``(loss, aux)``.
        mu: The penalty coefficient ``mu >= 0``.
        has_aux: Whether ``loss_fn`` returns ``(loss, aux)``; ``aux`` passes through.

    Returns:
        The penalized loss function.
    """
    check_nonnegative("mu", mu)

    @functools.wraps(loss_fn)
    def wrapped(params: Any, *args: Any, **kwargs: Any) -> Any:
        def at(p):
            return loss_fn(p, *args, **kwargs)

        value, grads = jax.value_and_grad(at, has_aux=has_aux)(params)
        leaves = jax.tree.leaves(grads)
        penalty = sum_of_squares(leaves, stat_dtype(leaves))
        if has_aux:
            loss, aux = value
            return loss + mu * penalty.astype(loss.dtype), aux  # (1)
        return value + mu * penalty.astype(value.dtype)  # (1)

    return wrapped


def finite_difference_gradient(
    grad: jax.Array, shifted_grad: jax.Array, *, mu: float, delta: float
) -> jax.Array:
    """(3) for one array: the penalized gradient from ``grad = grad L(theta)`` and
    ``shifted_grad = grad L(theta + delta * grad L(theta))``.

    Args:
        grad: The gradient at ``theta``.
        shifted_grad: The gradient at the ascent point ``theta + delta * grad``.
        mu: The penalty coefficient ``mu >= 0``.
        delta: The finite-difference step ``delta > 0``.

    Returns:
        ``grad + (2 mu / delta) (shifted_grad - grad)``.
    """
    return grad + (2 * mu / delta) * (shifted_grad - grad)  # (3)


class FiniteDifferencePenaltyState(NamedTuple):
    """State of :func:`finite_difference_penalty` (none)."""


def finite_difference_penalty(mu: float, delta: float = 1e-2) -> GradientTransformationExtraArgs:
    """Turn the gradient into the finite-difference penalized gradient (3).

    ``update(grads, state, params, grad_fn=grad_fn)`` evaluates ``grad_fn`` (``params ->
    gradient``, a pytree like ``params``) once, at the ascent point
    ``params + delta * grads``; ``grads`` must be the loss gradient at ``params``, so this goes
    first in a chain: ``optax.chain(finite_difference_penalty(mu), optax.sgd(lr))``. Unknown
    extra arguments are ignored.

    Args:
        mu: The penalty coefficient ``mu >= 0``. ``mu = igr_coefficient(lr)`` adds an explicit
            penalty as large as the one the learning rate already imposes implicitly, so the
            total is twice the implicit one.
        delta: The finite-difference step ``delta > 0``, in parameter units: the ascent point
            lies ``delta * ||grad L||`` away, so a large gradient wants a small ``delta``.

    Returns:
        An ``optax.GradientTransformationExtraArgs``.
    """
    check_nonnegative("mu", mu)
    check_positive("delta", delta)

    def init_fn(params):
        del params
        return FiniteDifferencePenaltyState()

    def update_fn(updates, state, params=None, *, grad_fn=None, **extra_args):
        del extra_args
        if params is None:
            raise missing(
                "params", "finite_difference_penalty", "the parameters", "pass params to update"
            )
        if grad_fn is None:
            raise missing(
                "grad_fn",
                "finite_difference_penalty",
                "the gradient function",
                "pass grad_fn=jax.grad(loss_fn) to update",
            )
        ascent = jax.tree.map(lambda p, g: p + delta * g, params, updates)
        shifted = grad_fn(ascent)
        out = jax.tree.map(
            lambda g, s: finite_difference_gradient(g, s, mu=mu, delta=delta).astype(g.dtype),
            updates,
            shifted,
        )
        return out, state

    return GradientTransformationExtraArgs(init_fn, update_fn)
