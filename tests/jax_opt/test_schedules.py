"""jax_opt.schedules: amos_decay as an optax schedule (jit, inject_hyperparams),
amos_decay_schedules with optax.adamw / add_decayed_weights, and su_amos_schedule (names,
sigma, params required, extra args, eval_shape, jit, inject_hyperparams, dtypes, errors)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.backends import assert_all_close, assert_close
from tests.reference import schedules as ref

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from jax_opt.schedules import (  # noqa: E402
    SuAmosScheduleState,
    amos_decay,
    amos_decay_schedules,
    su_amos_schedule,
)


def tree():
    return {
        "dense": {"kernel": jnp.array([[0.5, -1.0], [2.0, 0.0]]), "bias": jnp.zeros(2)},
        "scale": [jnp.array(1.5, jnp.float32), jnp.array([3.0, -4.0, 0.0])],
    }


def gradients(seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=np.shape(p)), p.dtype), tree())


# ---------------------------------------------------------------------------------- amos_decay


@pytest.mark.parametrize("mode", ref.MODES)
def test_amos_decay_is_an_optax_schedule_under_jit_and_inject_hyperparams(mode):
    decay = amos_decay(5, mode)
    counts = jnp.arange(12, dtype=jnp.int32)
    values = jax.jit(jax.vmap(decay))(counts)
    assert values.dtype == jnp.float32
    assert_close(values, ref.decay(np.arange(12), 5, mode), "float32")
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=amos_decay(5, mode))
    params = jnp.zeros(3)
    state = opt.init(params)
    update = jax.jit(opt.update)
    g = jnp.array([1.0, -2.0, 0.5])
    for t in range(6):
        u, state = update(g, state, params)
        assert_close(-u / g, np.full(3, ref.decay(t, 5, mode)), "float32")
        assert_close(state.hyperparams["learning_rate"], ref.decay(t, 5, mode), "float32")


@pytest.mark.parametrize("mode", ref.MODES)
def test_the_schedule_pair_feeds_adamw_and_add_decayed_weights_alike(mode):
    """amos_decay_schedules: alpha_t = lr s(t) under jit, weight_decay = lr / (2 q); adamw and
    the explicit chain with add_decayed_weights give the same updates."""
    learning_rate, weight_decay = amos_decay_schedules(0.05, 3, mode=mode, q=0.5)
    assert weight_decay == 0.05
    values = jax.jit(jax.vmap(learning_rate))(jnp.arange(8, dtype=jnp.int32))
    assert_close(values, [ref.learning_rate(t, 0.05, 3, mode) for t in range(8)], "float32")
    adamw = optax.adamw(learning_rate, weight_decay=weight_decay)
    chain = optax.chain(
        optax.scale_by_adam(),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )
    params = tree()
    sa, sc = adamw.init(params), chain.init(params)
    for k in range(4):
        g = gradients(k)
        ua, sa = jax.jit(adamw.update)(g, sa, params)
        uc, sc = jax.jit(chain.update)(g, sc, params)
        assert_all_close(jax.tree.leaves(ua), jax.tree.leaves(uc), "float32")
        params = optax.apply_updates(params, ua)


# ---------------------------------------------------------------------------- su_amos_schedule


def test_sigma_fn_gets_the_path_names_once_and_sigma_lives_in_the_state():
    calls = []

    def sigma_fn(name, shape):
        calls.append((name, shape))
        return 0.5 if name[-1] == "bias" else 1.0

    opt = su_amos_schedule(0.01, 10, sigma_fn=sigma_fn)
    state = opt.init(tree())
    assert calls == [
        (("dense", "bias"), (2,)),
        (("dense", "kernel"), (2, 2)),
        (("scale", "0"), ()),
        (("scale", "1"), (3,)),
    ]
    assert isinstance(state, SuAmosScheduleState) and int(state.count) == 0
    assert state.sigma["dense"]["bias"] == 0.5 and state.sigma["scale"][1] == 1.0
    update = jax.jit(opt.update)
    for k in range(3):
        _, state = update(gradients(k), state, tree())
    assert len(calls) == 4 and int(state.count) == 3


def test_default_sigma_is_the_rms_at_init_and_eval_shape_works():
    opt = su_amos_schedule(0.01, 10)
    state = opt.init(tree())
    kernel = ref.model_scale([[0.5, -1.0], [2.0, 0.0]])
    assert_close(state.sigma["dense"]["kernel"], kernel, "float32")
    assert state.sigma["dense"]["bias"] == 0.5
    assert_close(state.sigma["scale"][1], np.sqrt(25 / 3), "float32")
    abstract = jax.eval_shape(opt.init, tree())
    assert abstract.sigma["scale"][0].shape == () and abstract.count.dtype == jnp.int32
    with_fn = jax.eval_shape(su_amos_schedule(0.01, 10, sigma_fn=lambda n, s: 0.3).init, tree())
    assert with_fn.sigma["dense"]["kernel"].dtype == jnp.float32


@pytest.mark.parametrize("mode", ref.MODES)
def test_chained_after_adam_under_jit_equals_the_oracle_in_float32(mode):
    params = tree()
    leaves = jax.tree.leaves(params)
    opt = optax.chain(optax.scale_by_adam(), su_amos_schedule(0.05, 3, mode=mode, q=0.5))
    state = opt.init(params)
    traces = []

    def step(g, state, params):
        traces.append(1)
        return opt.update(g, state, params)

    update = jax.jit(step)
    got = []
    grads = [gradients(k) for k in range(5)]
    for g in grads:
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
        got.append([np.asarray(x) for x in jax.tree.leaves(params)])
    assert len(traces) == 1  # no recompilation
    adam = ref.Adam([np.shape(x) for x in leaves])
    want = ref.su_run(
        [np.asarray(x) for x in leaves],
        lambda t, ps: adam([np.asarray(x, np.float64) for x in jax.tree.leaves(grads[t])]),
        5,
        alpha0=0.05,
        half_life=3,
        mode=mode,
        q=0.5,
    )
    for a, w in zip(got, want, strict=True):
        assert_all_close(a, w, "float32")


def test_first_steps_have_the_norm_of_the_schedule_and_zero_directions_decay_only():
    """theta = 0: ||update|| = alpha0 sqrt(k) sigma s(t) along -u, t = 0, 1, 2; u = 0: the
    update is -rho_t theta, no NaN."""
    opt = su_amos_schedule(0.1, 2, sigma_fn=lambda n, s: 0.5)
    zeros = jnp.zeros(4)
    state = opt.init(zeros)
    g = jnp.array([1.0, -2.0, 0.0, 2.0])
    for t in range(3):
        u, state = opt.update(g, state, zeros)
        assert_close(jnp.linalg.norm(u), 0.1 * 2 * 0.5 * ref.decay(t, 2, "inverse_time"), "float32")
        assert_close(u, -0.1 * 0.5 * 2 * ref.decay(t, 2, "inverse_time") * g / 3, "float32")
    theta = jnp.array([1.0, -2.0, 4.0, 0.5])
    u, _ = opt.update(jnp.zeros(4), opt.init(theta), theta)
    assert np.all(np.isfinite(u))
    assert_close(u, -(0.1**2) / 2 * theta, "float32")


def test_inject_hyperparams_with_a_static_sigma_fn_equals_the_plain_factory():
    kwargs = {"lr": 0.05, "half_life": 3.0, "q": 0.5, "mode": "inverse_square"}
    sigma_fn = lambda n, s: 0.5 if n[-1] == "bias" else 1.0  # noqa: E731
    plain = su_amos_schedule(**kwargs, sigma_fn=sigma_fn)
    injected = optax.inject_hyperparams(su_amos_schedule, static_args=("sigma_fn",))(
        **kwargs, sigma_fn=sigma_fn
    )
    params = tree()
    sp, si = plain.init(params), injected.init(params)
    for k in range(3):
        g = gradients(k)
        up, sp = jax.jit(plain.update)(g, sp, params)
        ui, si = jax.jit(injected.update)(g, si, params)
        assert_all_close(jax.tree.leaves(up), jax.tree.leaves(ui), "float32")
        params = optax.apply_updates(params, up)
    assert float(si.hyperparams["lr"]) == pytest.approx(0.05)


def test_params_are_required_and_extra_args_are_ignored():
    opt = su_amos_schedule(0.01, 10)
    g = jnp.ones(2)
    with pytest.raises(ValueError, match=r"^Missing params: su_amos_schedule needs the parameters"):
        opt.update(g, opt.init(g))
    u, _ = opt.update(g, opt.init(g), g, unexpected_extra_args_your_optimizer_doesnt_expect=1)
    assert u.shape == (2,)


def test_low_precision_updates_keep_the_dtype_and_sigma_is_float32():
    params = {"w": jnp.array([0.5, -1.0, 2.0], jnp.bfloat16)}
    opt = optax.chain(optax.scale_by_adam(), su_amos_schedule(0.01, 10))
    state = opt.init(params)
    assert state[1].sigma["w"].dtype == jnp.float32
    u, state = jax.jit(opt.update)(jax.tree.map(jnp.ones_like, params), state, params)
    assert u["w"].dtype == jnp.bfloat16
    assert jax.tree.map(lambda x: x.dtype, state) == jax.tree.map(
        lambda x: x.dtype, opt.init(params)
    )


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: amos_decay(0), r"^Invalid half_life: 0\.0 \(must be > 0\)$"),
        (
            lambda: amos_decay(10, "linear"),
            r"^Invalid mode: 'linear' \(must be one of 'inverse_time', 'inverse_square'\)$",
        ),
        (lambda: amos_decay_schedules(0.1, -1.0), r"^Invalid half_life: -1\.0 \(must be > 0\)$"),
        (lambda: amos_decay_schedules(0.1, 10, q=0), r"^Invalid q: 0\.0 \(must be > 0\)$"),
        (lambda: su_amos_schedule(-0.1, 10), r"^Invalid lr: -0\.1 \(must be >= 0\)$"),
        (
            lambda: su_amos_schedule(0.1, 10, sigma_fn=lambda n, s: 0.0).init(jnp.ones(2)),
            r"^Invalid sigma: 0\.0 \(must be > 0\)$",
        ),
    ],
)
def test_bad_arguments(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()
