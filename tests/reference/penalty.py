"""NumPy float64 oracle for math.md §5: implicit and explicit gradient regularization.

Equation tags as in ``torch_opt/penalty.py`` and ``jax_opt/penalty.py``::

    L_EGR          = L + mu ||grad L||^2                                          (1)
    grad L_EGR     = grad L + 2 mu H grad L                                       (2)
    grad L_EGR    ~= g + (2 mu / delta) (grad L(theta + delta g) - g),  g = grad L (3)
    mu_IGR         = h (1 + beta) / (4 (1 - beta)^2)       (h / 4 at beta = 0)     (4)

Backward error analysis (math.md §5.1, §5.4): gradient descent with step h is, to O(h^3) per
step, the gradient flow of L + (h/4) ||grad L||^2; heavy ball with momentum beta is, in the time
t = n h / (1 - beta), the flow of L + mu_IGR ||grad L||^2.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp

from tests.reference.flooding import gradient, hessian, objective


def penalized(theta, mu):
    g = gradient(theta)
    return objective(theta) + mu * g @ g  # (1)


def penalized_gradient(theta, mu):
    g = gradient(theta)
    return g + 2 * mu * hessian(theta) @ g  # (2)


def finite_difference_gradient(grad, shifted_grad, mu, delta):
    return grad + (2 * mu / delta) * (shifted_grad - grad)  # (3)


def finite_difference_step_gradient(theta, mu, delta):
    g = gradient(theta)
    return finite_difference_gradient(g, gradient(theta + delta * g), mu, delta)  # (3)


def igr_coefficient(lr, momentum=0.0):
    return lr * (1 + momentum) / (4 * (1 - momentum) ** 2)  # (4)


def flow(theta0, t_end, mu=0.0):
    """The gradient flow of L + mu ||grad L||^2 from theta0 to t_end (scipy DOP853)."""
    sol = solve_ivp(
        lambda _t, y: -penalized_gradient(y, mu),
        (0.0, t_end),
        theta0,
        method="DOP853",
        rtol=1e-12,
        atol=1e-14,
    )
    assert sol.success, sol.message
    return sol.y[:, -1]


def heavy_ball(theta0, h, beta, steps):
    """``v <- beta v - h grad L; theta <- theta + v``, started at its steady velocity
    ``-h grad L / (1 - beta)``: from rest, the velocity's start-up is an O(h) transient that
    hides the O(h^2) agreement with the modified flow."""
    theta = np.asarray(theta0, np.float64)
    v = -h * gradient(theta) / (1 - beta)
    for _ in range(steps):
        v = beta * v - h * gradient(theta)
        theta = theta + v
    return theta
