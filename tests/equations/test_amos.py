"""Amos of both packages against the oracle: the kernel on hypothesis-drawn inputs, the
optimizers over 120 steps of every scenario of issue 3, the first-step closed form, and the
reference's own convergence settings, once per backend, in float64."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.backends import assert_all_close, assert_close
from tests.reference import amos as ref
from tests.strategies import arrays_like, shapes


@st.composite
def kernel_cases(draw):
    shape = draw(shapes)
    mode = draw(st.sampled_from(["full", "scalar", "axes"]))
    if mode == "scalar":
        state_shape = ()
    elif mode == "axes":
        state_shape = tuple(draw(st.sampled_from([1, k])) for k in shape)
    else:
        state_shape = shape
    positive = st.floats(0.0, 10.0, allow_subnormal=False)
    return {
        "grad": draw(arrays_like(shape, st.floats(-100.0, 100.0, allow_subnormal=False))),
        "param": draw(arrays_like(shape, st.floats(-5.0, 5.0, allow_subnormal=False))),
        "v": draw(arrays_like(state_shape, positive)),
        "b": draw(arrays_like(state_shape, positive)),
        "hyper": {
            "lr": draw(st.floats(1e-4, 1.0)),
            "eta": draw(st.floats(1e-3, 2.0)),
            "beta": draw(st.one_of(st.just(0.0), st.floats(0.5, 0.9999))),
            "extra_l2": draw(st.one_of(st.just(0.0), st.floats(0.0, 0.1))),
            "c_coef": draw(st.floats(0.0, 1.0)),
            "d_coef": draw(st.floats(0.0, 1.0)),
            "eps": 2.0**-125,
            "count": draw(st.integers(1, 1000)),
        },
    }


@given(case=kernel_cases())
def test_kernel_equals_oracle(backend, case):
    h = case["hyper"]
    state = {
        "count": h["count"] - 1,
        "v": [case["v"]],
        "b": [case["b"]],
        "m": [np.zeros_like(case["param"])],
    }
    (new,), want = ref.step(
        [case["param"]],
        [case["grad"]],
        state,
        lr=h["lr"],
        etas=[h["eta"]],
        beta=h["beta"],
        extra_l2=h["extra_l2"],
        c_coef=h["c_coef"],
        d_coef=h["d_coef"],
        eps=h["eps"],
    )
    with backend.x64():
        b = backend
        update, v, bb = b.mod.amos_update(
            b.asarray(case["grad"]),
            b.asarray(case["param"]),
            b.asarray(case["v"]),
            b.asarray(case["b"]),
            **h,
        )
        got = [b.to_numpy(x) for x in (update, v, bb)]
    assert_all_close(got, [new - case["param"], want["v"][0], want["b"][0]])


@pytest.mark.parametrize("name", sorted(ref.SCENARIOS))
def test_optimizer_equals_oracle_for_120_steps(backend, name):
    keys, grads, state_shapes, options, want = ref.scenario(name)
    options.pop("mode")
    params = [ref.SCENARIO_PARAMS[k] for k in keys]
    etas = [ref.SCENARIO_ETAS[k] for k in keys]
    options["momentum"] = options["momentum"] or 0.0
    with backend.x64():
        got = backend.run_amos(
            params, [[g[k] for k in keys] for g in grads], etas=etas, shapes=state_shapes, **options
        )
    for k in (0, 9, len(grads) - 1):
        assert_all_close(got[k], want[k][0])


def test_default_eta_is_the_rms_at_init_or_one_half(backend):
    """math.md §2.4: without eta, each tensor's eta is its RMS, 0.5 for an all-zero tensor."""
    params = [np.array([3.0, -4.0]), np.zeros(3)]
    grads = [[np.array([1.0, 2.0]), np.array([1.0, -1.0, 0.5])]]
    with backend.x64():
        (got,) = backend.run_amos(params, grads, lr=0.1)
    want = ref.run(params, grads, lr=0.1, etas=[ref.model_scale(p) for p in params])[0][0]
    assert_all_close(got, want)
    assert ref.model_scale(params[0]) == np.sqrt(12.5) and ref.model_scale(params[1]) == 0.5


@given(
    theta=arrays_like((5,), st.floats(-3.0, 3.0, allow_subnormal=False)),
    g=arrays_like((5,), st.floats(-10.0, 10.0).filter(lambda x: abs(x) > 1e-3)),
    eta=st.floats(0.01, 2.0),
    lr=st.floats(1e-3, 0.5),
)
def test_first_step_closed_form(backend, theta, g, eta, lr):
    """§2.6 (1): u = -xi eta sign(g) - xi^2 theta / 2 (element-wise state), exactly 0 where
    g = 0; u = -xi eta g / RMS(g) - xi^2 theta / 2 with one value per tensor."""
    g = g.copy()
    g[0] = 0.0
    hyper = {
        "lr": lr,
        "eta": eta,
        "beta": 0.999,
        "extra_l2": 0.0,
        "c_coef": 0.25,
        "d_coef": 0.25,
        "eps": 2.0**-125,
        "count": 1,
    }
    with backend.x64():
        b = backend
        zeros = b.asarray(np.zeros(5))
        full, _, _ = b.mod.amos_update(b.asarray(g), b.asarray(theta), zeros, zeros, **hyper)
        zero = b.asarray(np.zeros(()))
        scalar, _, _ = b.mod.amos_update(b.asarray(g), b.asarray(theta), zero, zero, **hyper)
        full, scalar = b.to_numpy(full), b.to_numpy(scalar)
    assert_close(full[1:], -lr * eta * np.sign(g[1:]) - 0.5 * lr**2 * theta[1:])
    assert full[0] == 0.0
    assert_close(scalar, -lr * eta * g / np.sqrt(np.mean(g**2)) - 0.5 * lr**2 * theta)


@pytest.mark.parametrize("setting", ["parabola", "rosenbrock"])
@pytest.mark.slow
def test_the_reference_convergence_settings(backend, setting):
    """§2.6 (5): the reference's own tests, 10 000 steps, one state value per tensor."""
    cfg = ref.PARABOLA if setting == "parabola" else ref.ROSENBROCK
    grad = ref.parabola_grad if setting == "parabola" else ref.rosenbrock_grad
    hyper = {k: cfg[k] for k in ("beta", "clip_value", "momentum") if k in cfg}
    theta = cfg["start"]
    with backend.x64():
        b = backend
        if b.name == "jax":
            theta = _jax_loop(b, cfg, grad, hyper)
        else:
            p = b.asarray(theta).requires_grad_()
            opt = b.mod.Amos([p], lr=cfg["lr"], eta=cfg["eta"], shape=lambda n, q: (), **hyper)
            for _ in range(cfg["steps"]):
                p.grad = b.asarray(grad(b.to_numpy(p)))
                opt.step()
            theta = b.to_numpy(p)
    np.testing.assert_allclose(theta, cfg["target"], atol=1e-6)


def _jax_loop(b, cfg, grad, hyper):
    jax, jnp = b.jax, b.jnp
    target = jnp.asarray(ref.PARABOLA["target"])

    def grad_fn(theta):
        if cfg is ref.PARABOLA:
            return 2 * (theta - target)
        x, y = theta[0], theta[1]
        return jnp.stack([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])

    opt = b.mod.amos(cfg["lr"], eta_fn=lambda n, s: cfg["eta"], shape_fn=lambda n, s: (), **hyper)

    def body(carry, _):
        theta, state = carry
        updates, state = opt.update(grad_fn(theta), state, theta)
        return (theta + updates, state), None

    theta = jnp.asarray(cfg["start"])
    (theta, _), _ = jax.lax.scan(body, (theta, opt.init(theta)), length=cfg["steps"])
    del grad
    return np.asarray(theta)
