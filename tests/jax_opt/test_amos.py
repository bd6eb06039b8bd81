"""jax_opt.amos / scale_by_amos: the reference's names, schedules, optax contracts, dtypes."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.peers import reference_amos
from tests.backends import assert_close

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from jax_opt import amos, scale_by_amos  # noqa: E402

PARAMS = {"layers": [{"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}], "scale": jnp.array(2.0)}


def test_eta_fn_and_shape_fn_get_the_reference_names_at_init():
    seen = []

    def eta_fn(name, shape):
        seen.append((name, shape))
        return 0.5 if name[-1] == "b" else 1.0

    def shape_fn(name, shape):
        return (1, shape[1]) if len(shape) == 2 else ()

    opt = scale_by_amos(0.1, eta_fn=eta_fn, shape_fn=shape_fn)
    state = opt.init(PARAMS)
    assert sorted(seen) == sorted(
        [(("layers", "0", "b"), (2,)), (("layers", "0", "w"), (3, 2)), (("scale",), ())]
    )
    assert state.v["layers"][0]["w"].shape == (1, 2) and state.v["layers"][0]["b"].shape == ()
    assert float(state.eta["layers"][0]["b"]) == 0.5
    default = scale_by_amos(0.1).init(PARAMS)
    assert float(default.eta["layers"][0]["w"]) == 1.0 and float(default.eta["scale"]) == 2.0
    assert float(default.eta["layers"][0]["b"]) == 0.5  # all zeros


def test_the_schedule_sees_the_one_based_count():
    counts = []

    def schedule(count):
        jax.debug.callback(lambda c: counts.append(int(c)), count)
        return 0.1

    opt = amos(schedule, eta_fn=lambda n, s: 1.0)
    params = jnp.ones(3)
    state = opt.init(params)
    for _ in range(3):
        _, state = jax.jit(opt.update)(params, state, params)
    jax.effects_barrier()
    assert counts == [1, 2, 3]


def test_params_are_required_and_extra_args_are_ignored():
    opt = amos(0.1)
    g = jnp.ones(2)
    state = opt.init(g)
    with pytest.raises(ValueError, match=r"^Missing params: scale_by_amos needs the parameters"):
        opt.update(g, state)
    updates, _ = opt.update(g, state, g, unexpected_extra_arg=1)
    assert updates.shape == (2,)


def test_inject_hyperparams_with_static_callables_equals_the_plain_factory():
    kwargs = {
        "eta_fn": lambda n, s: 0.5,
        "shape_fn": lambda n, s: (),
        "beta": 0.9,
        "momentum": 0.9,
        "clip_value": 1.0,
    }
    plain = amos(0.05, **kwargs)
    injected = optax.inject_hyperparams(amos, static_args=("eta_fn", "shape_fn"))(
        learning_rate=0.05, **kwargs
    )
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    sp, si = plain.init(params), injected.init(params)
    pp = pi = params
    for k in range(5):
        g = jax.tree.map(lambda x, k=k: jnp.sin(x + k), params)
        up, sp = jax.jit(plain.update)(g, sp, pp)
        ui, si = jax.jit(injected.update)(g, si, pi)
        pp, pi = optax.apply_updates(pp, up), optax.apply_updates(pi, ui)
    np.testing.assert_allclose(pp["w"], pi["w"], rtol=1e-6)


def test_low_precision_state_is_float32_and_updates_keep_the_dtype():
    params = {"w": jnp.ones((3, 2), jnp.bfloat16), "b": jnp.zeros(2, jnp.float16)}
    opt = amos(0.1, momentum=0.9, clip_value=1.0)
    state = opt.init(params)
    updates, new_state = jax.jit(opt.update)(jax.tree.map(jnp.ones_like, params), state, params)
    assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda p: p.dtype, params)
    floats = [x for x in jax.tree.leaves(new_state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats)
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), (state, new_state))
    assert shapes[0] == shapes[1]
    abstract = jax.eval_shape(opt.init, params)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), abstract) == shapes[0]


def test_matches_the_reference_in_float32_under_jit():
    reference = reference_amos()
    if reference is None:
        pytest.skip("jestimator (and flax) are not installed")
    kwargs = {
        "shape_fn": lambda n, s: (1, s[1]) if len(s) == 2 else (),
        "momentum": 0.9,
        "clip_value": 0.5,
        "beta": 0.98,
    }
    ours, theirs = (
        amos(0.05, eta_fn=lambda n, s: 0.5, **kwargs),
        reference.amos(0.05, lambda n, s: 0.5, **kwargs),
    )
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.zeros(4)}
    states, ps = [ours.init(params), theirs.init(params)], [params, params]
    for k in range(30):
        g = jax.tree.map(lambda x, k=k: jnp.cos(3 * x + k), params)
        for i, opt in enumerate((ours, theirs)):
            u, states[i] = jax.jit(opt.update)(g, states[i], ps[i])
            ps[i] = optax.apply_updates(ps[i], u)
    for key in params:
        assert_close(ps[0][key], ps[1][key], "float32")


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (
            lambda: amos(0.1, eta_fn=lambda n, s: 0.0).init(jnp.ones(2)),
            r"^Invalid eta: 0\.0 \(must be > 0\)$",
        ),
        (
            lambda: amos(0.1, shape_fn=lambda n, s: (2, 1)).init(jnp.ones((3, 4))),
            r"^Invalid shape: \(2, 1\) \(must be \(\) or the shape \(3, 4\) of parameter \(\)",
        ),
        (lambda: amos(0.1, beta=1.0), r"^Invalid beta: 1\.0 \(must be in \[0, 1\)\)$"),
        (lambda: amos(0.1, momentum=1.5), r"^Invalid momentum: 1\.5 \(must be in \[0, 1\)\)$"),
        (lambda: amos(0.1, c_coef=-1.0), r"^Invalid c_coef: -1\.0 \(must be >= 0\)$"),
        (lambda: amos(-0.1), r"^Invalid learning_rate: -0\.1 \(must be >= 0\)$"),
    ],
)
def test_bad_arguments(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()
