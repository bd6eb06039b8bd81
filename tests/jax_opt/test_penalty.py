"""jax_opt.penalized and finite_difference_penalty: signatures, aux, chaining, errors."""

from __future__ import annotations

import numpy as np
import pytest

from tests.backends import jax_x64
from tests.reference import penalty as ref

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from jax_opt import finite_difference_penalty, igr_coefficient, penalized  # noqa: E402

A = np.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])


def loss_fn(params, scale, *, shift=0.0):
    theta = params["theta"]
    return scale * (0.5 * theta @ A @ theta + jnp.sum(jnp.cos(theta))) + shift


def test_penalized_keeps_the_signature_and_passes_aux_through():
    params = {"theta": jnp.array([0.3, -0.5, 0.8])}
    fn = penalized(loss_fn, 0.25)
    with jax_x64():
        params64 = jax.tree.map(lambda x: x.astype(jnp.float64), params)
        value = fn(params64, 1.0, shift=2.0)
        np.testing.assert_allclose(
            value, ref.penalized(np.asarray(params64["theta"]), 0.25) + 2.0, rtol=1e-12
        )

    def with_aux(params, scale):
        return loss_fn(params, scale), {"scale": scale}

    value, aux = jax.jit(penalized(with_aux, 0.25, has_aux=True))(params, 1.0)
    assert aux["scale"] == 1.0
    np.testing.assert_allclose(value, fn(params, 1.0), rtol=1e-6)
    assert fn.__name__ == "loss_fn"


def test_finite_difference_penalty_chains_and_jits():
    params = {"theta": jnp.array([0.3, -0.5, 0.8])}
    lr, mu = 0.1, igr_coefficient(0.1)
    opt = optax.chain(finite_difference_penalty(mu, 0.01), optax.sgd(lr))
    grad_fn = jax.grad(lambda p: loss_fn(p, 1.0))
    state = opt.init(params)
    update = jax.jit(opt.update, static_argnames=("grad_fn",))
    u, state = update(grad_fn(params), state, params, grad_fn=grad_fn, unexpected_extra_arg=1)
    theta = np.asarray(params["theta"], np.float64)
    np.testing.assert_allclose(
        u["theta"], -lr * ref.finite_difference_step_gradient(theta, mu, 0.01), rtol=1e-5
    )


def test_finite_difference_penalty_needs_params_and_grad_fn():
    opt = finite_difference_penalty(0.1)
    g = jnp.ones(2)
    with pytest.raises(ValueError, match=r"^Missing grad_fn: finite_difference_penalty needs"):
        opt.update(g, opt.init(g), g)
    with pytest.raises(ValueError, match=r"^Missing params: finite_difference_penalty needs"):
        opt.update(g, opt.init(g), grad_fn=lambda p: p)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: penalized(loss_fn, -0.5), r"^Invalid mu: -0\.5 \(must be >= 0\)$"),
        (lambda: finite_difference_penalty(-0.5), r"^Invalid mu: -0\.5 \(must be >= 0\)$"),
        (
            lambda: finite_difference_penalty(0.5, delta=-1.0),
            r"^Invalid delta: -1\.0 \(must be > 0\)$",
        ),
        (
            lambda: igr_coefficient(0.1, momentum=1.0),
            r"^Invalid momentum: 1\.0 \(must be in \[0, 1\)\)$",
        ),
    ],
)
def test_bad_arguments(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()
