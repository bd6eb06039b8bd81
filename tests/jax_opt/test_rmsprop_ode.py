"""jax_opt.rmsprop_ode and loss_tied_ode: equal to optax.rmsprop and to the oracle, optax
contracts (schedules, inject_hyperparams, extra args, dtypes, abstract init), errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given

from tests.backends import (
    JaxBackend,
    assert_all_close,
    assert_close,
    assert_trajectory_close,
    jax_x64,
)
from tests.reference import rmsprop_ode as ref
from tests.strategies import (
    ZERO_GRADS,
    learning_rates,
    optax_example,
    optax_rmsprop_kwargs,
    rms_settings,
    trajectories,
    well_conditioned_centered,
)

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from jax_opt import loss_tied_ode, rmsprop_ode, scale_by_rmsprop_ode  # noqa: E402

jax_backend = JaxBackend()


def drive(opt, params, grad_seq, **extra):
    """Jitted updates from ``grad_seq``; returns NumPy params per step and the final state."""
    ps = [jnp.asarray(p) for p in params]
    state = opt.init(ps)
    update = jax.jit(opt.update)
    out = []
    for grads in grad_seq:
        updates, state = update([jnp.asarray(g) for g in grads], state, ps, **extra)
        ps = optax.apply_updates(ps, updates)
        out.append([np.asarray(p) for p in ps])
    return out, state


@given(traj=trajectories(), lr=learning_rates, kw=optax_rmsprop_kwargs)
@example(traj=ZERO_GRADS, lr=0.1, kw=optax_example())
def test_equals_optax_rmsprop(traj, lr, kw):
    params, grad_seq = traj
    steps = ref.trajectory(
        params,
        grad_seq,
        lr=lr,
        momentum_style="optax",
        **{**kw, "momentum": kw["momentum"] or 0.0},
    )
    with jax_x64():
        got, _ = drive(rmsprop_ode(lr, **kw), params, grad_seq)
        want, _ = drive(optax.rmsprop(lr, **kw), params, grad_seq)
    assert_trajectory_close(got, steps, expected=want)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"momentum": 0.9, "nesterov": True},
        {"centered": True, "initial_scale": 1.0},
        {"eps_in_sqrt": False, "bias_correction": True, "momentum": 0.5},
    ],
)
def test_matches_optax_in_float32_under_jit(kw):
    """The same operations as optax; XLA may fuse the two graphs differently, which moves
    results by an ulp, so the check is to float32 tolerance rather than bitwise (the float64
    tests above are the precise ones)."""
    key = jax.random.PRNGKey(0)
    params = {"w": jax.random.normal(key, (7, 3)), "b": jnp.zeros(3), "s": jnp.array(1.5)}
    opts = [rmsprop_ode(0.01, **kw), optax.rmsprop(0.01, **kw)]
    states = [o.init(params) for o in opts]
    ps = [params, params]
    for k in range(20):
        grads = jax.tree.map(
            lambda x, k=k: jax.random.normal(jax.random.fold_in(key, k), x.shape), params
        )
        for i, o in enumerate(opts):
            updates, states[i] = jax.jit(o.update)(grads, states[i], ps[i])
            ps[i] = optax.apply_updates(ps[i], updates)
    for a, b in zip(jax.tree.leaves(ps[0]), jax.tree.leaves(ps[1]), strict=True):
        assert_close(a, b, "float32")


def test_schedule_equals_optax():
    schedule = optax.exponential_decay(0.1, transition_steps=2, decay_rate=0.5)
    params = [np.array([1.0, -2.0, 3.0]), np.array(0.5)]
    rng = np.random.default_rng(0)
    grad_seq = [[rng.normal(size=p.shape) for p in params] for _ in range(8)]
    kw = {"momentum": 0.9, "centered": True, "decay": 0.8}
    with jax_x64():
        got, _ = drive(rmsprop_ode(schedule, **kw), params, grad_seq)
        want, _ = drive(optax.rmsprop(schedule, **kw), params, grad_seq)
    for a, b in zip(got, want, strict=True):
        assert_all_close(a, b)
    lrs = [float(schedule(k)) for k in range(8)]
    steps = ref.trajectory(
        params,
        grad_seq,
        lrs=lrs,
        lr=None,
        decay=0.8,
        eps=1e-8,
        eps_in_sqrt=True,
        centered=True,
        momentum=0.9,
        momentum_style="optax",
    )
    assert_trajectory_close(got, steps)


@given(traj=trajectories(), hyper=rms_settings())
def test_shell_equals_oracle(traj, hyper):
    check_shell(traj, hyper)


@given(case=well_conditioned_centered())
def test_centered_bias_corrected_shell_equals_oracle(case):
    check_shell(*case, require_well_conditioned=True)


def check_shell(traj, hyper, require_well_conditioned=False):
    params, grad_seq = traj
    steps = ref.trajectory(params, grad_seq, momentum_style="optax", **hyper)
    if require_well_conditioned:
        assert all(np.all(m) for m in ref.reliable([s for _, s in steps], hyper["scale"])[-1])
    with jax_x64():
        got = jax_backend.run_rmsprop(params, grad_seq, **hyper)
    assert_trajectory_close(got, steps, scale=hyper["scale"])


@pytest.mark.parametrize("scale", ["elementwise", "global"])
def test_a_checkpointed_state_resumes_the_identical_trajectory(scale):
    """The state is a pytree of arrays: saved to NumPy mid-run and restored, it continues the
    same trajectory bit for bit."""
    opt = rmsprop_ode(
        0.05, centered=True, momentum=0.9, bias_correction=True, initial_scale=1.0, scale=scale
    )
    update = jax.jit(opt.update)
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    grads = [jax.tree.map(lambda x, k=k: jnp.sin(x * (k + 1)), params) for k in range(6)]
    state = opt.init(params)
    for g in grads[:3]:
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
    saved = jax.tree.map(np.asarray, (params, state))
    restored_params, restored = jax.tree.map(jnp.asarray, saved)
    for g in grads[3:]:
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
        u, restored = update(g, restored, restored_params)
        restored_params = optax.apply_updates(restored_params, u)
    assert jax.tree.all(
        jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, restored_params)
    )


@pytest.mark.parametrize("scale", ["elementwise", "global"])
def test_inject_hyperparams_equals_the_plain_factory(scale):
    kw = {"decay": 0.8, "momentum": 0.9, "centered": True, "initial_scale": 0.5, "scale": scale}
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    plain = rmsprop_ode(0.05, **kw)
    injected = optax.inject_hyperparams(rmsprop_ode)(learning_rate=0.05, **kw)
    sp, si = plain.init(params), injected.init(params)
    pp = pi = params
    for k in range(5):
        grads = jax.tree.map(lambda x, k=k: jnp.cos(x + k), params)
        up, sp = jax.jit(plain.update)(grads, sp, pp)
        ui, si = jax.jit(injected.update)(grads, si, pi)
        pp, pi = optax.apply_updates(pp, up), optax.apply_updates(pi, ui)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.allclose(a, b, rtol=1e-6)), pp, pi))


def test_global_state_is_one_scalar_and_dtypes_are_kept():
    params = {"w": jnp.ones((3, 2), jnp.bfloat16), "b": jnp.zeros(2, jnp.float32)}
    opt = rmsprop_ode(0.1, scale="global", centered=True, momentum=0.9)
    state = opt.init(params)
    rms_state = state[0]
    assert rms_state.nu.shape == () and rms_state.nu.dtype == jnp.float32
    grads = jax.tree.map(jnp.ones_like, params)
    updates, new_state = jax.jit(opt.update)(grads, state, params)
    assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda p: p.dtype, params)
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), (state, new_state))
    assert shapes[0] == shapes[1]
    abstract = jax.eval_shape(opt.init, params)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), abstract) == shapes[0]


def test_extra_arguments_are_ignored_and_update_does_not_recompile():
    opt = rmsprop_ode(0.1, momentum=0.9)
    params = jnp.ones(4)
    state = opt.init(params)
    traces = []

    def update(g, s, p):
        traces.append(1)
        return opt.update(g, s, p, unexpected_extra_arg=1)

    jitted = jax.jit(update)
    for _ in range(3):
        u, state = jitted(params, state, params)
    assert len(traces) == 1
    assert u.shape == (4,)


@pytest.mark.parametrize("scale", ["elementwise", "global"])
def test_nan_gradients_propagate(scale):
    opt = rmsprop_ode(0.01, scale=scale)
    params = jnp.zeros(3)
    u, _ = opt.update(jnp.array([jnp.nan, 1.0, 1.0]), opt.init(params), params)
    assert bool(jnp.isnan(u[0]))
    if scale == "global":
        assert bool(jnp.isnan(u).all())


# ----------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("factory", "kw", "message"),
    [
        (rmsprop_ode, {"learning_rate": -0.1}, "Invalid learning_rate: -0.1 (must be >= 0)"),
        (rmsprop_ode, {"learning_rate": 0.1, "eps": -1e-8}, "Invalid eps: -1e-08 (must be >= 0)"),
        (
            rmsprop_ode,
            {"learning_rate": 0.1, "decay": 1.0},
            "Invalid decay: 1.0 (must be in [0, 1))",
        ),
        (
            rmsprop_ode,
            {"learning_rate": 0.1, "momentum": -0.5},
            "Invalid momentum: -0.5 (must be >= 0)",
        ),
        (
            rmsprop_ode,
            {"learning_rate": 0.1, "scale": "layerwise"},
            "Invalid scale: 'layerwise' (must be one of 'elementwise', 'global')",
        ),
        (scale_by_rmsprop_ode, {"decay": -0.1}, "Invalid decay: -0.1 (must be in [0, 1))"),
        (loss_tied_ode, {"learning_rate": -1.0}, "Invalid learning_rate: -1.0 (must be >= 0)"),
    ],
)
def test_bad_hyperparameters_raise_value_errors_naming_them(factory, kw, message):
    with pytest.raises(ValueError) as info:
        factory(**kw)
    assert str(info.value) == message


def test_sparse_gradients_raise_a_type_error_naming_the_leaf():
    from jax.experimental import sparse

    opt = rmsprop_ode(0.1)
    params = {"emb": jnp.zeros((3, 2))}
    state = opt.init(params)
    with pytest.raises(TypeError, match=r"does not support sparse gradients \(\['emb'\]"):
        opt.update({"emb": sparse.BCOO.fromdense(jnp.eye(3, 2))}, state, params)


# ------------------------------------------------------------------------------ loss_tied_ode


def test_loss_tied_needs_value_and_ignores_unknown_extra_args():
    opt = loss_tied_ode(0.1)
    params = jnp.ones(2)
    state = opt.init(params)
    with pytest.raises(ValueError, match=r"^Missing value: loss_tied_ode needs the current loss"):
        opt.update(params, state, params)
    u, _ = opt.update(params, state, params, value=2.0, unexpected_extra_arg=1)
    np.testing.assert_allclose(u, -0.1 * 2.0 * np.ones(2) / 2.0, rtol=1e-6)


def test_loss_tied_takes_a_schedule():
    opt = loss_tied_ode(lambda count: 0.1 * (count + 1))
    params = jnp.ones(2)
    state = opt.init(params)
    u1, state = opt.update(params, state, params, value=1.0)
    u2, _ = opt.update(params, state, params, value=1.0)
    np.testing.assert_allclose(u2, 2 * u1, rtol=1e-6)


@pytest.mark.slow
def test_su_example_loss_tied_escapes_where_sgd_stalls():
    """math.md §1.4: settles within 1e-3 of x* for 500 consecutive steps within 20000 steps."""

    def f(x):
        return x * (x - 1) * (x - 3) ** 2 + 1.62276

    def trajectory(opt, steps):
        def body(carry, _):
            x, state = carry
            loss, grad = jax.value_and_grad(f)(x)
            updates, state = opt.update(grad, state, x, value=loss)
            x = optax.apply_updates(x, updates)
            return (x, state), x

        x0 = jnp.asarray(4.0)
        _, xs = jax.lax.scan(body, (x0, opt.init(x0)), length=steps)
        return np.asarray(xs)

    with jax_x64():
        assert ref.settles(
            trajectory(loss_tied_ode(0.01, max_scale=1000.0), 20000), ref.SU_GLOBAL_MIN
        )
        np.testing.assert_allclose(trajectory(optax.sgd(0.01), 2500)[-1], 3.0, atol=1e-6)
