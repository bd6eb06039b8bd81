"""Problems and data, defined once in NumPy so every framework starts from identical data.

Each objective is written with arithmetic, ``@`` and indexing on the last axis only, so it
evaluates NumPy arrays, torch tensors and JAX arrays (and differentiates under autograd or
``jax.grad``), one parameter vector ``(d,)`` or a batch of them ``(B, d)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Problem:
    """An objective ``f`` (any framework), its NumPy gradient ``grad`` and a start."""

    name: str
    f: Callable[[Any], Any]
    grad: Callable[[Any], Any]
    theta0: np.ndarray
    description: str


QUADRATIC_2D = Problem(
    "quadratic2d", lambda t: 0.5 * (t[0] ** 2 + 1e3 * t[1] ** 2),
    lambda t: t * np.array([1.0, 1e3]), np.array([1.0, 1.0]),
    "f = (x^2 + 1000 y^2) / 2 (condition number 1e3), from (1, 1)",
)  # fmt: skip
ROSENBROCK_2D = Problem(
    "rosenbrock2d", lambda t: (1 - t[0]) ** 2 + 100 * (t[1] - t[0] * t[0]) ** 2,
    lambda t: np.array([-2 * (1 - t[0]) - 400 * t[0] * (t[1] - t[0]**2), 200 * (t[1] - t[0]**2)]),
    np.array([-1.0, 1.0]), "f = (1 - x)^2 + 100 (y - x^2)^2, from (-1, 1)",
)  # fmt: skip

# Su's 1-D example (math.md §1.4): a local minimum at x = 3 (f = 1.62276), the global one at
# x* ~ 0.40693 (f ~ 5.5e-7).
SU_1D_START, SU_1D_GLOBAL_MIN, SU_1D_LOCAL_MIN = 4.0, 0.40693, 3.0


def su_1d(x):
    return x * (x - 1) * (x - 3) ** 2 + 1.62276


def sinusoid2d(n: int, rng: np.random.Generator, label_noise: float = 0.0):
    """The flooding paper's ``sinusoid2d`` demo: ``x`` uniform in the disk of radius 2, clean
    label ``1.5 x1 + sin(1.5 x2) > 0`` (classes {0, 1}), ``int(n * label_noise)`` labels flipped
    at random. Returns ``x`` (float32, ``(n, 2)``), the labels and the clean labels (int64)."""
    z = rng.standard_normal((n, 4))
    x = 2.0 * z[:, 2:] / np.linalg.norm(z, axis=1, keepdims=True)
    clean = (1.5 * x[:, 0] + np.sin(1.5 * x[:, 1]) > 0).astype(np.int64)
    y = clean.copy()
    flip = rng.permutation(n)[: int(n * label_noise)]
    y[flip] = 1 - y[flip]
    return x.astype(np.float32), y, clean


# The IGR paper's two-parameter model (math.md §5.6): E(a, b) = (y - a b x)^2 / 2 with one data
# point; the global minima form the hyperbola a b = y / x.
IGR_X, IGR_Y, IGR_START = 2.0, 1.5, np.array([2.8, 3.5])


def igr_model(theta):
    return 0.5 * (IGR_Y - theta[0] * theta[1] * IGR_X) ** 2


def igr_model_grad(theta):
    r = theta[0] * theta[1] * IGR_X - IGR_Y
    return np.array([r * IGR_X * theta[1], r * IGR_X * theta[0]])


def igr_model_penalty_grad(theta):
    """The gradient of ``|grad E|^2 = r^2 x^2 (a^2 + b^2)``, ``r = a b x - y``."""
    a, b = theta
    r, s = a * b * IGR_X - IGR_Y, a * a + b * b
    return 2 * r * IGR_X**2 * np.array([IGR_X * b * s + r * a, IGR_X * a * s + r * b])


def smooth_regression(n: int, d: int, rng: np.random.Generator, noise: float = 0.1):
    """``x ~ N(0, I_d)``, ``y = sin(2 x.w1) + cos(3 x.w2) / 2 + noise N(0, 1)`` (float32)."""
    x = rng.standard_normal((n, d))
    w = rng.standard_normal((d, 2)) / np.sqrt(d)
    y = np.sin(2 * x @ w[:, 0]) + 0.5 * np.cos(3 * x @ w[:, 1]) + noise * rng.standard_normal(n)
    return x.astype(np.float32), y.astype(np.float32)


def mlp_params(sizes, rng: np.random.Generator) -> list[np.ndarray]:
    """Dense layers ``[W1, b1, W2, b2, ...]`` (float32), ``W ~ N(0, 1/fan_in)`` of shape
    ``(fan_in, fan_out)`` (a layer is ``x @ W + b``), ``b = 0``."""
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        params.append((rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32))
        params.append(np.zeros(fan_out, np.float32))
    return params


def rosenbrock(theta):
    """``sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2`` on the last axis (minimum 0 at ones)."""
    x, y = theta[..., :-1], theta[..., 1:]
    return (100 * (y - x * x) ** 2 + (1 - x) ** 2).sum(-1)


def rotated_quadratic_matrix(d: int, condition: float, rng: np.random.Generator) -> np.ndarray:
    """``Q diag(lambda) Q^T``: eigenvalues log-spaced from 1 to ``condition``, ``Q`` a random
    rotation (so element-wise preconditioners cannot undo the conditioning)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    return (q * np.logspace(0, np.log10(condition), d)) @ q.T


def quadratic_loss(theta, a, center):
    e = theta - center
    return 0.5 * (e * (a @ e[..., None])[..., 0]).sum(-1)


def logistic_data(n: int, d: int, rng: np.random.Generator):
    """``n`` points with ``d`` features of scales 0.1 to 10 plus a constant-1 column, labels in
    {-1, +1} from a logistic model with random weights (float64)."""
    x = np.hstack([rng.standard_normal((n, d)) * np.logspace(-1, 1, d), np.ones((n, 1))])
    w = rng.standard_normal(d + 1) / np.sqrt(d) * np.append(np.logspace(1, -1, d), 1.0)
    return x, np.where(rng.random(n) < 1 / (1 + np.exp(-x @ w)), 1.0, -1.0)


def logistic_loss(theta, x, y, l2, softplus):
    """``mean(softplus(-y x.theta)) + l2 |theta|^2 / 2`` with the framework's ``softplus``."""
    z = (x @ theta[..., None])[..., 0]
    return softplus(-y * z).mean(-1) + 0.5 * l2 * (theta * theta).sum(-1)


def logistic_minimum(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """The minimizer and minimum of :func:`logistic_loss` by Newton's method with step halving,
    to machine precision."""

    def loss(t):
        return logistic_loss(t, x, y, l2, lambda z: np.logaddexp(0.0, z))

    theta = np.zeros(x.shape[1])
    value = loss(theta)
    for _ in range(100):
        s = 1 / (1 + np.exp(y * (x @ theta)))
        grad = -(x.T @ (y * s)) / len(y) + l2 * theta
        hess = (x.T * (s * (1 - s))) @ x / len(y) + l2 * np.eye(len(theta))
        step, t = np.linalg.solve(hess, grad), 1.0
        while t > 1e-12 and loss(theta - t * step) > value:
            t /= 2
        if t <= 1e-12:
            break  # no decrease left at machine precision
        theta = theta - t * step
        value = loss(theta)
        if np.abs(grad).max() < 1e-14:
            break
    return theta, float(value)


def mlp_apply(params, x, act):
    """The dense layers of :func:`mlp_params` applied to ``x`` (any framework): ``act(x @ W +
    b)`` per hidden layer, the last layer linear; stacked models (a leading run axis on every
    tensor) broadcast."""
    for w, b in zip(params[:-2:2], params[1:-2:2], strict=True):
        x = act(x @ w + b)
    return x @ params[-2] + params[-1]


def digits_split(*sizes: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's bundled ``load_digits`` (1797 8x8 images, 10 classes, no download),
    features divided by 16, split once, stratified: a set of each size in ``sizes`` (a count,
    or a fraction of what is left), then the rest, each ``(x, y)`` (``x`` float32 ``(n, 64)``,
    ``y`` int64)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x, y, sets = (x / 16.0).astype(np.float32), y.astype(np.int64), []
    for size in sizes:
        x_set, x, y_set, y = train_test_split(x, y, train_size=size, stratify=y, random_state=0)
        sets.append((x_set, y_set))
    return [*sets, (x, y)]


def biased_gradient(grad, bias):
    """``grad + |grad| bias`` on the last axis: the bias never fades relative to the signal."""
    return grad + ((grad * grad).sum(-1) ** 0.5)[..., None] * bias


def two_blobs(n, d, rng: np.random.Generator, separation=2.5, label_noise=0.1):
    """Class means ``c +- mu`` (``c ~ N(0, I_d)``, ``|2 mu| = separation``), points
    ``x ~ N(mean, I_d)``, labels in {-1, +1} with ``int(n * label_noise)`` flipped: ``x``,
    ``y`` (float32) and the clean labels."""
    u = rng.standard_normal(d)
    mu, centre = 0.5 * separation * u / np.linalg.norm(u), rng.standard_normal(d)
    clean = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    x = centre + clean[:, None] * mu + rng.standard_normal((n, d))
    y = clean.copy()
    flip = rng.permutation(n)[: int(n * label_noise)]
    y[flip] = -y[flip]
    return x.astype(np.float32), y.astype(np.float32), clean.astype(np.float32)


def zero_one_error(theta, x, y):
    """The 0-1 error of ``sign(x . theta)`` on labels in {-1, +1} (a score of 0 is an error),
    for one ``(d,)`` or a batch ``(B, d)`` of ``theta``: piecewise constant, zero gradient."""
    z = (x @ theta[..., None])[..., 0]
    return ((y * z <= 0) * 1.0).mean(-1)
