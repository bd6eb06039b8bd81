"""Momentum as a discretized damped ODE (math.md §1.2), shared by torch_opt and jax_opt.

The heavy-ball method ``v <- momentum * v - lr * grad; theta <- theta + v`` is the leapfrog
discretization, with ODE step ``step_size`` (gamma), of the damped Newtonian dynamics

.. math::

    \\ddot\\theta + \\lambda \\dot\\theta = -\\nabla L(\\theta)                      \\tag{1}

    \\beta = \\frac{1 - \\lambda\\gamma/2}{1 + \\lambda\\gamma/2}, \\qquad
    \\alpha = \\frac{\\gamma^2}{1 + \\lambda\\gamma/2}                                  \\tag{2}

with ``lr = alpha`` and ``momentum = beta`` (``friction = lambda``). Scaling the learning rate by
``r`` at fixed friction keeps the dynamics when the momentum is re-tuned as

.. math::

    \\beta_{new} = 1 - (1 - \\beta)\\sqrt{r}                                          \\tag{3}

The functions use only arithmetic operators, so they accept Python floats, NumPy arrays, torch
tensors and JAX arrays alike (and trace under ``jax.jit``); concrete numbers are validated.

References:
    Su Jianlin, "Optimization algorithms from a dynamics perspective (I): from SGD to momentum
    acceleration", kexue.fm/archives/5655, 2018.
"""

from __future__ import annotations

from typing import Any

from twinopt._checks import check_decay, check_nonnegative, check_positive, concrete, fail


def damped_ode_to_momentum(step_size: Any, friction: Any) -> tuple[Any, Any]:
    """Map the ODE step ``gamma`` and friction ``lambda`` of (1) to ``(lr, momentum)`` by (2).

    ``0 < momentum < 1`` exactly when ``0 < friction * step_size < 2``; as ``step_size -> 0``,
    ``momentum -> 1`` and ``lr -> step_size**2``.

    Args:
        step_size: The ODE time step ``gamma > 0``.
        friction: The friction coefficient ``lambda >= 0``.

    Returns:
        ``(lr, momentum)`` of the heavy-ball update ``v <- momentum * v - lr * g``, which is
        ``torch.optim.SGD(lr=lr, momentum=momentum)`` and ``optax.sgd(lr, momentum)`` at a
        constant learning rate.
    """
    check_positive("step_size", step_size)
    check_nonnegative("friction", friction)
    half = friction * step_size / 2
    momentum = (1 - half) / (1 + half)  # (2)
    lr = step_size * step_size / (1 + half)  # (2)
    return lr, momentum


def momentum_to_damped_ode(lr: Any, momentum: Any) -> tuple[Any, Any]:
    """Invert (2): the ``(step_size, friction)`` of the ODE that heavy ball with ``(lr, momentum)``
    discretizes.

    Args:
        lr: The learning rate ``alpha > 0``.
        momentum: The momentum ``beta`` in ``(-1, 1]`` (``1`` means no friction).

    Returns:
        ``(step_size, friction)``.
    """
    check_positive("lr", lr)
    m = concrete(momentum)
    if m is not None and not -1.0 < m <= 1.0:
        raise fail("momentum", m, "in (-1, 1]")
    step_size = (2 * lr / (1 + momentum)) ** 0.5
    friction = 2 * (1 - momentum) / ((1 + momentum) * step_size)
    return step_size, friction


def igr_coefficient(lr: Any, momentum: Any = 0.0) -> Any:
    """The coefficient ``mu`` of the implicit gradient regularization of (heavy-ball) descent.

    Gradient descent with step ``lr`` follows, to second order in ``lr``, the gradient flow of
    ``L + mu ||grad L||^2`` with ``mu = lr / 4`` (math.md §5.1); heavy ball with momentum
    ``beta`` follows, in the time ``t = n lr / (1 - beta)``, the flow of the same objective with
    ``mu = lr (1 + beta) / (4 (1 - beta)^2)`` (math.md §5.4), which is ``lr / 4`` at
    ``beta = 0``. Pass it as ``mu`` to an explicit penalty to reproduce (or double) the
    implicit one.

    Args:
        lr: The learning rate ``h >= 0``.
        momentum: The heavy-ball momentum ``beta`` in ``[0, 1)``.

    Returns:
        ``mu``.
    """
    check_nonnegative("lr", lr)
    check_decay("momentum", momentum)
    return lr * (1 + momentum) / (4 * (1 - momentum) ** 2)


def retune_momentum(momentum: Any, ratio: Any) -> Any:
    """Su's rule (3): the momentum that keeps the friction when the lr is scaled by ``ratio``.

    ``retune_momentum(m, 1) == m``.

    Args:
        momentum: The current momentum ``beta``.
        ratio: The factor ``r > 0`` applied to the learning rate.

    Returns:
        The new momentum ``1 - (1 - beta) * sqrt(r)``.
    """
    check_positive("ratio", ratio)
    return 1 - (1 - momentum) * ratio**0.5  # (3)
