"""NumPy float64 oracle for math.md §3: flooding, iFlood, AdaFlood, and Su's two-step analysis.

Equation tags as in ``torch_opt/flooding.py`` and ``jax_opt/flooding.py``::

    flood(L, b)        = |L - b| + b                                              (1)
    d flood / dL       = sign(L - b)      (0 at L = b, the convention we chose)   (2)
    iflood(l, b)       = mean_i (|l_i - b| + b)                                   (3)
    theta_i            = -log((1 - gamma) exp(-(alpha l_aux_i + beta)) + gamma)   (4)
    adaflood(l, theta) = mean_i (|l_i - theta_i| + theta_i)                       (5)

Su's two-step expansion (math.md §3.2): a descent step then an ascent step with lr eps,

    theta_{n+1} = theta_{n-1} - (eps^2 / 2) grad ||grad L||^2 + O(eps^3)          (6)

and with a descent step eps1 and an ascent step eps2 < eps1,

    theta_{n+1} = theta_{n-1} - (eps1 - eps2) grad[L + eps1 eps2 / (2 (eps1 - eps2)) ||grad L||^2]
                  + O(eps^3)                                                      (7)
"""

from __future__ import annotations

import numpy as np


def flood(loss, level):
    return np.abs(np.asarray(loss, np.float64) - level) + level  # (1)


def flood_slope(loss, level):
    """d flood / d loss (2)."""
    return np.sign(np.asarray(loss, np.float64) - level)


def iflood(losses, level) -> float:
    return float(np.mean(flood(losses, level)))  # (3)


def adaflood_levels(aux_losses, gamma=0.5, alpha=1.0, beta=0.0):
    x = alpha * np.asarray(aux_losses, np.float64) + beta
    return -np.log((1 - gamma) * np.exp(-x) + gamma)  # (4)


def adaflood(losses, levels) -> float:
    return float(np.mean(np.abs(np.asarray(losses) - levels) + levels))  # (5)


# A smooth test objective with closed-form gradient and Hessian.
A = np.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])


def objective(theta):
    return 0.5 * theta @ A @ theta + np.sum(np.cos(theta))


def gradient(theta):
    return A @ theta - np.sin(theta)


def hessian(theta):
    return A - np.diag(np.cos(theta))


def grad_of_grad_norm_sq(theta):
    """grad ||grad L||^2 = 2 H grad L."""
    return 2 * hessian(theta) @ gradient(theta)


def descent_then_ascent(theta, eps1, eps2=None):
    """One descent step (lr eps1) then one ascent step (lr eps2, default eps1)."""
    eps2 = eps1 if eps2 is None else eps2
    mid = theta - eps1 * gradient(theta)
    return mid + eps2 * gradient(mid)


def two_step_prediction(theta, eps1, eps2=None):
    """The right-hand sides of (6) and (7) without the O(eps^3) term."""
    eps2 = eps1 if eps2 is None else eps2
    if eps1 == eps2:
        return theta - 0.5 * eps1**2 * grad_of_grad_norm_sq(theta)  # (6)
    d = eps1 - eps2
    coef = eps1 * eps2 / (2 * d)
    return theta - d * (gradient(theta) + coef * grad_of_grad_norm_sq(theta))  # (7)
