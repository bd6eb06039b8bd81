"""jax_opt.flooded and flood_gradients: loss wrapping and the optax transformation."""

from __future__ import annotations

import numpy as np
import pytest

from tests.reference import flooding as ref

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from jax_opt import flood_gradients, flooded  # noqa: E402

X = np.random.default_rng(0).normal(size=(8, 3))
Y = np.random.default_rng(1).normal(size=8)


def per_sample_loss(w, x, y):
    return (x @ w - y) ** 2


def mean_loss(w, x, y):
    return jnp.mean(per_sample_loss(w, x, y))


@pytest.mark.parametrize("level", [0.0, 0.5, 2.0, 50.0])
def test_batch_mode_floods_the_mean_loss(level):
    w = jnp.array([0.1, -0.2, 0.3])
    plain, g_plain = jax.value_and_grad(mean_loss)(w, X, Y)
    fn = flooded(mean_loss, level)
    value, g = jax.value_and_grad(fn)(w, X, Y)
    np.testing.assert_allclose(value, ref.flood(float(plain), level), rtol=1e-6)
    np.testing.assert_allclose(g, ref.flood_slope(float(plain), level) * g_plain, rtol=1e-6)
    assert fn.__name__ == "mean_loss"  # the wrapper keeps the function's identity


def test_individual_mode_and_has_aux():
    w = jnp.array([0.1, -0.2, 0.3])

    def with_aux(w, x, y):
        losses = per_sample_loss(w, x, y)[:, None] * jnp.ones((1, 4))  # (batch, tokens)
        return losses, {"n": x.shape[0]}

    value, aux = jax.jit(flooded(with_aux, 1.0, mode="individual", has_aux=True))(w, X, Y)
    np.testing.assert_allclose(
        value, ref.iflood(np.asarray(per_sample_loss(w, X, Y)), 1.0), rtol=1e-6
    )
    assert aux == {"n": 8}


def test_individual_mode_needs_per_sample_losses():
    with pytest.raises(ValueError, match=r"^Invalid loss_fn: it returned one loss"):
        flooded(mean_loss, 0.1, mode="individual")(jnp.zeros(3), X, Y)


@pytest.mark.parametrize("level", [0.0, 0.5, 2.0, 50.0])
def test_flood_gradients_equals_differentiating_the_flooded_loss(level):
    w = jnp.array([0.1, -0.2, 0.3])
    opt = optax.chain(flood_gradients(level), optax.sgd(0.1, momentum=0.9))
    reference = optax.sgd(0.1, momentum=0.9)
    state, ref_state = opt.init(w), reference.init(w)
    w_ref = w
    update = jax.jit(opt.update)
    for _ in range(5):
        loss, g = jax.value_and_grad(mean_loss)(w, X, Y)
        u, state = update(g, state, w, value=loss, unexpected_extra_arg=1)
        w = optax.apply_updates(w, u)
        g_ref = jax.grad(flooded(mean_loss, level))(w_ref, X, Y)
        u_ref, ref_state = reference.update(g_ref, ref_state, w_ref)
        w_ref = optax.apply_updates(w_ref, u_ref)
        np.testing.assert_allclose(w, w_ref, rtol=1e-6, atol=1e-7)


def test_flood_gradients_needs_the_loss():
    opt = flood_gradients(0.1)
    with pytest.raises(ValueError, match=r"^Missing value: flood_gradients needs the current"):
        opt.update(jnp.ones(2), opt.init(jnp.ones(2)))


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: flooded(mean_loss, -1.0), r"^Invalid level: -1\.0 \(must be >= 0\)$"),
        (
            lambda: flooded(mean_loss, 0.1, mode="token"),
            r"^Invalid mode: 'token' \(must be one of 'batch', 'individual'\)$",
        ),
        (lambda: flood_gradients(-0.2), r"^Invalid level: -0\.2 \(must be >= 0\)$"),
    ],
)
def test_bad_arguments(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()
