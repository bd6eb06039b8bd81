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
