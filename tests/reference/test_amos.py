"""The Amos oracle checked against the reference implementation (jestimator 0.3.3's amos.py,
loaded by file path) and against the closed forms of math.md §2.6."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.peers import reference_amos
from tests.backends import assert_all_close, assert_close, jax_x64
from tests.reference import amos as ref
from tests.strategies import arrays_like


@pytest.mark.parametrize("name", sorted(ref.SCENARIOS))
def test_oracle_equals_the_reference_implementation(name):
    """120 steps of each scenario: the reference's ``amos`` (jestimator 0.3.3, float64)."""
    jax = pytest.importorskip("jax")
    reference = reference_amos()
    if reference is None:
        pytest.skip("jestimator (and flax) are not installed")
    keys, grads, _, options, want = ref.scenario(name)
    mode = options.pop("mode")
    shape_fn = None if mode is None else (lambda n, s: ref.scenario_shape(s, mode))
    with jax_x64():
        opt = reference.amos(
            options.pop("lr"), lambda n, s: ref.SCENARIO_ETAS[n[-1]], shape_fn=shape_fn, **options
        )
        params = {k: jax.numpy.asarray(v) for k, v in ref.SCENARIO_PARAMS.items()}
        state = opt.init(params)
        update = jax.jit(opt.update)
        got = []
        for g in grads:
            updates, state = update({k: jax.numpy.asarray(v) for k, v in g.items()}, state, params)
            params = jax.tree.map(lambda p, u: p + u, params, updates)
            got.append([np.asarray(params[k]) for k in keys])
    for k in (0, 9, len(grads) - 1):
        assert_all_close(got[k], want[k][0])


# ---------------------------------------------------------------- closed forms (math.md §2.6)


def first_update(theta, g, eta, lr, shape=None, **hyper):
    state = ref.init_state([theta], None if shape is None else [shape])
    (new,), _ = ref.step([theta], [g], state, lr=lr, etas=[eta], **hyper)
    return new - theta


@given(
    theta=arrays_like((5,), st.floats(-3.0, 3.0)),
    g=arrays_like((5,), st.floats(-10.0, 10.0).filter(lambda x: abs(x) > 1e-3)),
    eta=st.floats(0.01, 2.0),
    lr=st.floats(1e-3, 0.5),
)
def test_first_step_is_sign_descent_plus_half_xi_squared_decay(theta, g, eta, lr):
    """§2.6 (1): element-wise state, t = 1: u = -xi eta sign(g) - xi^2 theta / 2 where g != 0,
    and u = 0 exactly where g = 0; with one value per tensor, u = -xi eta g/RMS(g) - ..."""
    g = g.copy()
    g[0] = 0.0
    u = first_update(theta, g, eta, lr)
    assert_close(u[1:], -lr * eta * np.sign(g[1:]) - 0.5 * lr**2 * theta[1:])
    assert u[0] == 0.0
    rms = np.sqrt(np.mean(g**2))
    assert_close(
        first_update(theta, g, eta, lr, shape=()), -lr * eta * g / rms - 0.5 * lr**2 * theta
    )


def test_b_accumulates_the_product_and_decay_factors_shrink():
    """§2.6 (2): 1 + b_t = prod (1 + gamma_i); b non-decreasing; c_t, d_t in (0, 1] and
    non-increasing."""
    rng = np.random.default_rng(1)
    theta, lr, eta = [rng.normal(size=4)], 0.1, 0.5
    state = ref.init_state(theta)
    product = np.ones(4)
    previous = {"b": np.zeros(4), "c": np.ones(4), "d": np.ones(4)}
    for _ in range(200):
        g = rng.normal(size=4)
        m2 = g**2
        v = 0.999 * state["v"][0] + 0.001 * m2
        r = (1 - 0.999 ** (state["count"] + 1)) / v
        c = (1 + 0.25 * np.sqrt(lr) * state["b"][0]) ** -0.5
        d = 1 / (1 + 0.25 * np.sqrt(lr * eta) * state["b"][0])
        product *= 1 + c * lr**2 * r * m2
        theta, state = ref.step(theta, [g], state, lr=lr, etas=[eta])
        np.testing.assert_allclose(1 + state["b"][0], product, rtol=1e-12)
        assert np.all(state["b"][0] >= previous["b"])
        assert np.all((0 < c) & (c <= previous["c"])) and np.all((0 < d) & (d <= previous["d"]))
        previous = {"b": state["b"][0], "c": c, "d": d}


@given(scale=st.floats(1e-3, 1e3), shape=st.sampled_from([None, ()]))
def test_updates_are_invariant_to_the_loss_scale(scale, shape):
    """§2.6 (3): g -> s g for every step leaves every update unchanged."""
    rng = np.random.default_rng(2)
    theta = [rng.normal(size=6)]
    grad_seq = [[rng.normal(size=6)] for _ in range(20)]
    shapes = None if shape is None else [shape]
    plain = ref.run(theta, grad_seq, lr=0.1, etas=[0.5], shapes=shapes)
    scaled = ref.run(
        theta, [[scale * g for g in gs] for gs in grad_seq], lr=0.1, etas=[0.5], shapes=shapes
    )
    assert_all_close(plain[-1][0], scaled[-1][0])


@given(eta=st.floats(0.01, 5.0))
def test_first_gradient_step_is_linear_in_eta(eta):
    """§2.6 (4): at t = 1 the gradient part of the update is proportional to eta."""
    theta, g = np.zeros(3), np.array([0.5, -2.0, 1.0])
    assert_close(first_update(theta, g, eta, 0.1), eta * first_update(theta, g, 1.0, 0.1))


def test_zero_gradient_with_zero_state_moves_only_by_extra_l2():
    """§2.5: g = 0 and v = 0 give a huge but finite r, gamma = 0, and u = -d extra_l2 theta."""
    theta = np.array([1.0, -2.0])
    assert_close(first_update(theta, np.zeros(2), 0.5, 0.1, extra_l2=0.01), -0.01 * theta)


@pytest.mark.slow
def test_the_reference_convergence_settings():
    """§2.6 (5): the reference's parabola and Rosenbrock tests reach their targets."""
    for setting, grad in ((ref.PARABOLA, ref.parabola_grad), (ref.ROSENBROCK, ref.rosenbrock_grad)):
        hyper = {k: setting[k] for k in ("beta", "clip_value", "momentum") if k in setting}
        theta, state = [setting["start"]], ref.init_state([setting["start"]], [()])
        for _ in range(setting["steps"]):
            theta, state = ref.step(
                theta, [grad(theta[0])], state, lr=setting["lr"], etas=[setting["eta"]], **hyper
            )
        np.testing.assert_allclose(theta[0], setting["target"], atol=1e-6)
