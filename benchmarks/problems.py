"""Toy problems, defined once in NumPy so every framework starts from identical data.

Each objective ``f`` is written with arithmetic and indexing only, so the same function
evaluates NumPy arrays, torch tensors and JAX arrays (and differentiates under autograd /
``jax.grad``); ``grad`` is its closed-form gradient for NumPy arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Problem:
    """An objective ``f`` (framework-agnostic), its NumPy gradient ``grad`` and a start."""

    name: str
    f: Callable[[Any], Any]
    grad: Callable[[Any], Any]
    theta0: np.ndarray
    minimum: np.ndarray
    description: str


def _quadratic_f(theta, condition=1e3):
    return 0.5 * (theta[0] ** 2 + condition * theta[1] ** 2)


def _quadratic_grad(theta, condition=1e3):
    return theta * np.array([1.0, condition])


def _rosenbrock_f(theta):
    x, y = theta[0], theta[1]
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def _rosenbrock_grad(theta):
    x, y = theta[0], theta[1]
    return np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])


QUADRATIC_2D = Problem(
    name="quadratic2d",
    f=_quadratic_f,
    grad=_quadratic_grad,
    theta0=np.array([1.0, 1.0]),
    minimum=np.zeros(2),
    description="f = (x^2 + 1000 y^2) / 2 (condition number 1e3), from (1, 1)",
)

ROSENBROCK_2D = Problem(
    name="rosenbrock2d",
    f=_rosenbrock_f,
    grad=_rosenbrock_grad,
    theta0=np.array([-1.0, 1.0]),
    minimum=np.ones(2),
    description="f = (1 - x)^2 + 100 (y - x^2)^2, from (-1, 1)",
)

PROBLEMS = {p.name: p for p in (QUADRATIC_2D, ROSENBROCK_2D)}


def su_1d(x):
    """Su's 1-D example (math.md §1.4): a local minimum at x = 3 (f = 1.62276) and the global
    one at x* ~ 0.40693 (f ~ 5.5e-7)."""
    return x * (x - 1) * (x - 3) ** 2 + 1.62276


SU_1D_START = 4.0
SU_1D_GLOBAL_MIN = 0.40693
SU_1D_LOCAL_MIN = 3.0


def sinusoid2d(n: int, rng: np.random.Generator, label_noise: float = 0.0):
    """The flooding paper's ``sinusoid2d`` demo data (ref-code takashiishida/flooding).

    ``x`` is uniform in the disk of radius 2 (the first two coordinates of a uniform point on
    the unit sphere in R^4, scaled by 2), the clean label is ``1.5 x1 + sin(1.5 x2) > 0``
    (classes {0, 1}), and exactly ``int(n * label_noise)`` labels, chosen at random, are
    flipped. Returns ``x`` (float32, ``(n, 2)``), the labels and the clean labels (int64).
    """
    z = rng.standard_normal((n, 4))
    x = 2.0 * z[:, 2:] / np.linalg.norm(z, axis=1, keepdims=True)
    clean = (1.5 * x[:, 0] + np.sin(1.5 * x[:, 1]) > 0).astype(np.int64)
    y = clean.copy()
    flip = rng.permutation(n)[: int(n * label_noise)]
    y[flip] = 1 - y[flip]
    return x.astype(np.float32), y, clean


SINUSOID2D = (
    "sinusoid2d: x uniform in the radius-2 disk, label 1.5 x1 + sin(1.5 x2) > 0, "
    "a fixed fraction of labels flipped"
)


# The IGR paper's two-parameter model (math.md §5.6, Barrett & Dherin 2021, ICLR): a linear
# model y ~ a b x with one data point; the global minima form the hyperbola a b = y / x.
IGR_X, IGR_Y = 2.0, 1.5
IGR_START = np.array([2.8, 3.5])
IGR_MODEL = "E(a, b) = (y - a b x)^2 / 2, x = 2, y = 3/2: minima on the hyperbola a b = 0.75"


def igr_model(theta):
    """``E(a, b) = (y - a b x)^2 / 2`` at ``theta = (a, b)`` (any framework)."""
    return 0.5 * (IGR_Y - theta[0] * theta[1] * IGR_X) ** 2


def igr_model_grad(theta):
    """The NumPy gradient of :func:`igr_model`: ``r x (b, a)`` with ``r = a b x - y``."""
    a, b = theta[0], theta[1]
    r = a * b * IGR_X - IGR_Y
    return np.array([r * IGR_X * b, r * IGR_X * a])


def igr_model_penalty_grad(theta):
    """The NumPy gradient of ``||grad E||^2 = r^2 x^2 (a^2 + b^2)`` (so ``2 H grad E``)."""
    a, b = theta[0], theta[1]
    r, s = a * b * IGR_X - IGR_Y, a * a + b * b
    return np.array(
        [
            2 * r * IGR_X**3 * b * s + 2 * r * r * IGR_X**2 * a,
            2 * r * IGR_X**3 * a * s + 2 * r * r * IGR_X**2 * b,
        ]
    )


def smooth_regression(n: int, d: int, rng: np.random.Generator, noise: float = 0.1):
    """A smooth synthetic regression task: ``x ~ N(0, I_d)`` and
    ``y = sin(2 x.w1) + cos(3 x.w2) / 2 + noise * N(0, 1)`` with ``w1, w2 ~ N(0, I_d / d)``.
    Returns ``x`` (float32, ``(n, d)``) and ``y`` (float32, ``(n,)``).
    """
    x = rng.standard_normal((n, d))
    w = rng.standard_normal((d, 2)) / np.sqrt(d)
    y = np.sin(2 * x @ w[:, 0]) + 0.5 * np.cos(3 * x @ w[:, 1]) + noise * rng.standard_normal(n)
    return x.astype(np.float32), y.astype(np.float32)


def mlp_params(sizes, rng: np.random.Generator) -> list[np.ndarray]:
    """Dense-layer parameters ``[W1, b1, W2, b2, ...]`` (float32), ``W ~ N(0, 1 / fan_in)``,
    ``b = 0``, with ``W`` of shape ``(fan_in, fan_out)`` (so a layer is ``x @ W + b``)."""
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        params.append((rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32))
        params.append(np.zeros(fan_out, np.float32))
    return params
