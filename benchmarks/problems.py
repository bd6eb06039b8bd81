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


# The ``convergence`` study's toys. Each objective is written with arithmetic, ``@`` and
# indexing on the last axis, so it evaluates one parameter vector ``(d,)`` or a batch of them
# ``(G, d)`` (with data batched the same way) in NumPy, torch and JAX alike.


def rosenbrock(theta):
    """The n-D Rosenbrock function on the last axis,
    ``sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2`` (minimum 0 at all ones)."""
    x, y = theta[..., :-1], theta[..., 1:]
    return (100 * (y - x * x) ** 2 + (1 - x) ** 2).sum(-1)


def rotated_quadratic_matrix(d: int, condition: float, rng: np.random.Generator) -> np.ndarray:
    """A symmetric positive definite ``(d, d)`` matrix ``Q diag(lambda) Q^T``: eigenvalues
    log-spaced from 1 to ``condition``, eigenvectors a random rotation (so the problem is not
    diagonal: element-wise preconditioners cannot undo the conditioning)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    return (q * np.logspace(0, np.log10(condition), d)) @ q.T


def quadratic_loss(theta, a, center):
    """``(theta - center)^T a (theta - center) / 2`` on the last axis (minimum 0 at center)."""
    e = theta - center
    return 0.5 * (e * (a @ e[..., None])[..., 0]).sum(-1)


def logistic_data(n: int, d: int, rng: np.random.Generator):
    """Synthetic logistic-regression data: ``n`` points with ``d`` features of scales
    log-spaced from 0.1 to 10 plus a constant-1 column (the bias), labels in ``{-1, +1}`` drawn
    from a logistic model with random weights. Returns ``x`` ``(n, d + 1)`` and ``y`` ``(n,)``
    (float64)."""
    x = rng.standard_normal((n, d)) * np.logspace(-1, 1, d)
    x = np.hstack([x, np.ones((n, 1))])
    w = rng.standard_normal(d + 1) / np.sqrt(d) * np.append(np.logspace(1, -1, d), 1.0)
    y = np.where(rng.random(n) < 1 / (1 + np.exp(-x @ w)), 1.0, -1.0)
    return x, y


def logistic_loss(theta, x, y, l2, softplus):
    """The mean logistic loss ``mean(softplus(-y x.theta)) + l2 |theta|^2 / 2`` on the last
    axis; ``softplus`` is the framework's (``torch.nn.functional.softplus``,
    ``jax.nn.softplus``, or :func:`np_softplus`)."""
    z = (x @ theta[..., None])[..., 0]
    return softplus(-y * z).mean(-1) + 0.5 * l2 * (theta * theta).sum(-1)


def np_softplus(z):
    return np.logaddexp(0.0, z)


def logistic_minimum(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """The minimizer and minimum of :func:`logistic_loss` (strictly convex for ``l2 > 0``) by
    Newton's method with step halving, to machine precision."""
    theta = np.zeros(x.shape[1])
    loss = logistic_loss(theta, x, y, l2, np_softplus)
    for _ in range(100):
        s = 1 / (1 + np.exp(y * (x @ theta)))  # sigmoid(-y z)
        grad = -(x.T @ (y * s)) / len(y) + l2 * theta
        hess = (x.T * (s * (1 - s))) @ x / len(y) + l2 * np.eye(len(theta))
        step, t = np.linalg.solve(hess, grad), 1.0
        while t > 1e-12:
            new = theta - t * step
            new_loss = logistic_loss(new, x, y, l2, np_softplus)
            if new_loss <= loss:
                break
            t /= 2
        else:
            break  # no decrease left at machine precision
        theta, loss = new, new_loss
        if np.abs(grad).max() < 1e-14:
            break
    return theta, float(loss)


# The ``amos_mlp`` study's data: scikit-learn's bundled digits (no download).

DIGITS = (
    "scikit-learn's load_digits: 1797 8x8 images of the digits 0-9 (64 features in 0..16, "
    "scaled by 1/16), one stratified 70/30 train/test split (random_state 0)"
)


def digits_split(test_size: float = 0.3, random_state: int = 0):
    """scikit-learn's bundled ``load_digits`` (1797 images, 8x8, 10 classes), features divided
    by 16 (so in ``[0, 1]``), split once into train and test sets, stratified by class.

    Returns ``x_train, x_test, y_train, y_test`` (``x`` float32 ``(n, 64)``, ``y`` int64), the
    same arrays on every call. Needs scikit-learn (imported here, not at module import).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    return train_test_split(x, y, test_size=test_size, stratify=y, random_state=random_state)


# The ``sampling`` study's problems.

BIASED_QUADRATIC = (
    "Guided ES's biased quadratic: A (m x n) and b with N(0, 1) entries, loss "
    "|A x - b|^2 / (2 m), observed gradient = true gradient + |true gradient| u for a fixed "
    "random unit vector u"
)


def biased_quadratic(m: int, n: int, rng: np.random.Generator):
    """The perturbed quadratic of the Guided ES paper (Maheswaranathan et al., ICML 2019):
    ``A`` ``(m, n)`` and ``b`` ``(m,)`` with N(0, 1) entries, and a fixed random unit vector
    ``bias`` ``(n,)``, all float64. The loss is ``|A x - b|^2 / (2 m)``; the gradient one
    observes is :func:`biased_gradient` of the true one."""
    a = rng.standard_normal((m, n))
    b = rng.standard_normal(m)
    bias = rng.standard_normal(n)
    return a, b, bias / np.linalg.norm(bias)


def biased_gradient(grad, bias):
    """``grad + |grad| bias`` on the last axis (any framework): the true gradient plus a fixed
    direction scaled by the gradient's norm, so the bias never fades relative to the signal."""
    return grad + ((grad * grad).sum(-1) ** 0.5)[..., None] * bias


TWO_BLOBS = (
    "two Gaussian blobs: x ~ N(c +- mu, I) in d dimensions (c a random offset, |2 mu| the "
    "separation), labels +-1, a fixed fraction of labels flipped"
)


def two_blobs(
    n: int, d: int, rng: np.random.Generator, separation: float = 2.5, label_noise: float = 0.1
):
    """A linearly separable-but-noisy binary task: the class means are ``c + mu`` and
    ``c - mu`` with ``c ~ N(0, I_d)`` and ``|2 mu| = separation`` (a random direction), the
    points ``x ~ N(mean, I_d)``, labels in ``{-1, +1}`` with exactly ``int(n * label_noise)``
    of them flipped at random. Returns ``x`` ``(n, d)``, ``y`` ``(n,)`` (float32) and the clean
    labels."""
    u = rng.standard_normal(d)
    mu = 0.5 * separation * u / np.linalg.norm(u)
    centre = rng.standard_normal(d)
    clean = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    x = centre + clean[:, None] * mu + rng.standard_normal((n, d))
    y = clean.copy()
    flip = rng.permutation(n)[: int(n * label_noise)]
    y[flip] = -y[flip]
    return x.astype(np.float32), y.astype(np.float32), clean.astype(np.float32)


def with_bias_column(x: np.ndarray) -> np.ndarray:
    """``x`` with a constant-1 column appended (a linear classifier's bias as a weight)."""
    return np.hstack([x, np.ones((x.shape[0], 1), x.dtype)])


def zero_one_error(theta, x, y):
    """The 0-1 error of the linear classifier ``sign(x . theta)`` on labels ``y`` in
    ``{-1, +1}`` (a score of exactly 0 counts as an error), on the last axis of ``theta``: one
    ``(d,)`` vector or a batch ``(B, d)`` (any framework). Piecewise constant in ``theta``: its
    gradient is 0 wherever it exists."""
    z = (x @ theta[..., None])[..., 0]
    return ((y * z <= 0) * 1.0).mean(-1)
