"""The gradient-norm penalty of both packages against the oracle: the exact penalty (value and
gradient), the finite-difference kernel and optimizers, and the properties of math.md §5.5."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tests.backends import assert_all_close, assert_close
from tests.reference import flooding as objective
from tests.reference import penalty as ref
from tests.strategies import arrays_like, tensor_lists

thetas = arrays_like((3,), st.floats(-2.0, 2.0))
mus = st.floats(0.0, 1.0)


def loss_fn(backend):
    a = backend.asarray(objective.A)

    def f(theta):
        return 0.5 * theta @ a @ theta + backend.xp.cos(theta).sum()

    return f


@given(theta=thetas, mu=mus)
def test_exact_penalty_equals_oracle(backend, theta, mu):
    """(1), (2): L + mu ||grad L||^2 and its gradient grad L + 2 mu H grad L."""
    with backend.x64():
        value, grad = backend.penalized_value_and_grad(loss_fn(backend), theta, mu)
    assert_close(value, ref.penalized(theta, mu))
    assert_close(grad, ref.penalized_gradient(theta, mu))


@given(theta=thetas, mu=mus)
def test_penalized_gradient_on_a_quadratic(backend, theta, mu):
    """§5.5 (4): for L = theta' A theta / 2 the penalized gradient is (A + 2 mu A^2) theta."""
    a = objective.A
    with backend.x64():
        A = backend.asarray(a)
        _, grad = backend.penalized_value_and_grad(lambda t: 0.5 * t @ A @ t, theta, mu)
    assert_close(grad, (a + 2 * mu * a @ a) @ theta)


@given(grads=tensor_lists(), mu=mus, delta=st.floats(1e-4, 1.0))
def test_finite_difference_kernel_equals_oracle(backend, grads, mu, delta):
    shifted = [g[::-1].copy() if g.ndim else -g for g in grads]
    with backend.x64():
        got = [
            backend.to_numpy(
                backend.mod.finite_difference_gradient(
                    backend.asarray(g), backend.asarray(s), mu=mu, delta=delta
                )
            )
            for g, s in zip(grads, shifted, strict=True)
        ]
    assert_all_close(
        got,
        [
            ref.finite_difference_gradient(g, s, mu, delta)
            for g, s in zip(grads, shifted, strict=True)
        ],
    )


@given(theta=thetas, mu=mus, delta=st.floats(1e-4, 0.1), lr=st.floats(1e-3, 0.5))
def test_finite_difference_optimizer_step_equals_oracle(backend, theta, mu, delta, lr):
    """FiniteDifferencePenalty(SGD) / chain(finite_difference_penalty, sgd): one step is
    theta - lr * (3)."""
    with backend.x64():
        got = backend.fd_penalty_step(loss_fn(backend), theta, mu=mu, delta=delta, lr=lr)
    assert_close(got, theta - lr * ref.finite_difference_step_gradient(theta, mu, delta))


def test_finite_difference_step_converges_to_the_exact_penalty(backend):
    """As delta -> 0 the finite-difference step approaches the exact penalized step (first
    order in delta)."""
    theta, mu, lr = np.array([0.3, -0.5, 0.8]), 0.3, 0.1
    exact = theta - lr * ref.penalized_gradient(theta, mu)
    errors = []
    for delta in (1e-2, 5e-3, 2.5e-3, 1.25e-3):
        with backend.x64():
            got = backend.fd_penalty_step(loss_fn(backend), theta, mu=mu, delta=delta, lr=lr)
        errors.append(np.linalg.norm(got - exact))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    np.testing.assert_allclose(orders, 1.0, atol=0.1)


def test_mu_zero_is_the_plain_loss(backend):
    theta = np.array([0.3, -0.5, 0.8])
    with backend.x64():
        value, grad = backend.penalized_value_and_grad(loss_fn(backend), theta, 0.0)
        plain_value, plain_grad = backend.value_and_grad(loss_fn(backend), theta)
        fd = backend.fd_penalty_step(loss_fn(backend), theta, mu=0.0, delta=0.01, lr=0.1)
    assert value == plain_value
    assert_close(grad, plain_grad)
    assert_close(fd, theta - 0.1 * plain_grad)


@given(lr=st.floats(0.0, 1.0), momentum=st.floats(0.0, 0.99))
def test_igr_coefficient_equals_oracle(backend, lr, momentum):
    assert_close(backend.mod.igr_coefficient(lr, momentum), ref.igr_coefficient(lr, momentum))
    assert backend.mod.igr_coefficient(lr) == ref.igr_coefficient(lr)
