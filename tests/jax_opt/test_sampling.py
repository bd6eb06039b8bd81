"""jax_opt.sampling (MGS): the kernels and the optax shell against the float64 oracle, the
properties of math.md §4.4, the optax contracts (jit without recompiling, extra args,
inject_hyperparams, dtypes, checkpoints, sharding), a black-box search, and the errors."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.backends import assert_close, explicit_sharding_missing, jax_x64
from tests.reference import sampling as ref
from tests.strategies import arrays_like, finite, moderate
from twinopt.sampling import NOISE_SCALES, PROPOSAL_DENSITIES, mixture_mask

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from jax_opt import (  # noqa: E402
    MGSAsk,
    MGSState,
    clip_surrogate,
    importance_weights,
    log_proposal,
    mgs,
    mgs_ask,
    mgs_tell,
    noise_scale,
    perturbations,
    weighted_direction,
)
from jax_opt.sampling.shells import _draw  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


def jnp_or_none(x):
    return None if x is None else jnp.asarray(x)


# ---------------------------------------------------------------------- kernels vs the oracle
# The kernels run under module-level jit wrappers and the arrays come in a few shapes, so that
# compilations are shared between examples (each new shape costs one).

kernel_shapes = st.sampled_from([(), (3,), (2, 3)])
counts = st.sampled_from([1, 2, 4])

_clip = jax.jit(clip_surrogate)
_noise_scale = jax.jit(noise_scale, static_argnames="noise_scale")
_perturbations = jax.jit(perturbations, static_argnames="antithetic")
_log_proposal = jax.jit(log_proposal, static_argnames="proposal_density")
_weights = jax.jit(importance_weights)
_direction = jax.jit(weighted_direction)


@given(
    grads=st.lists(kernel_shapes.flatmap(arrays_like), min_size=1, max_size=2),
    drop=st.lists(st.booleans(), min_size=2, max_size=2),
    max_grad_norm=st.one_of(st.none(), st.floats(1e-3, 1e3)),
)
@example(grads=[np.zeros((2, 3)), np.array(0.0)], drop=[False] * 2, max_grad_norm=1.0)
@example(grads=[np.array([3.0, 4.0]), np.ones(2)], drop=[False, True], max_grad_norm=1.0)
@example(grads=[np.array([1e4, -1e4])], drop=[True] * 2, max_grad_norm=0.5)
@example(grads=[np.array([1e4, -1e-6, 0.0])], drop=[False] * 2, max_grad_norm=None)
def test_clip_surrogate_equals_oracle(grads, drop, max_grad_norm):
    """(1): global-norm clipping over the present tensors; None stays None."""
    grads = [None if d else g for g, d in zip(grads, drop, strict=False)]
    with jax_x64():
        got = (clip_surrogate if max_grad_norm is None else _clip)(
            [jnp_or_none(g) for g in grads], max_grad_norm
        )
    want = ref.clip_surrogate(grads, max_grad_norm)
    for a, b in zip(got, want, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b)


@given(
    guide=st.one_of(st.none(), kernel_shapes.flatmap(arrays_like)),
    noise=st.floats(1e-3, 10.0),
    mode=st.sampled_from(NOISE_SCALES),
)
@example(guide=np.zeros((2, 3)), noise=0.5, mode="grad")  # all-zero guide: s = noise
@example(guide=None, noise=2.0, mode="grad")
def test_noise_scale_equals_oracle(guide, noise, mode):
    """(2)."""
    with jax_x64():
        if guide is None:
            got = noise_scale(None, noise=noise, noise_scale=mode)
        else:
            got = _noise_scale(jnp.asarray(guide), noise=noise, noise_scale=mode)
    assert jnp.shape(got) == ()
    assert_close(got, ref.noise_scale(guide, noise, mode))


@st.composite
def perturbation_inputs(draw):
    shape = draw(kernel_shapes)
    antithetic = draw(st.booleans())
    k = draw(st.sampled_from([2, 4]) if antithetic else counts)
    normals = draw(arrays_like((k // 2 if antithetic else k, *shape), moderate))
    guide = draw(st.one_of(st.none(), arrays_like(shape)))
    mask = np.array(draw(st.lists(st.booleans(), min_size=k, max_size=k)))
    return guide, normals, mask, draw(st.floats(1e-3, 10.0)), antithetic


@given(inputs=perturbation_inputs())
@example(inputs=(None, np.array([[0.5, -1.0, 2.0]]), np.array([True]), 1.0, False))  # K = 1
@example(inputs=(np.zeros(3), np.ones((2, 3)), np.array([True, False]), 0.3, False))
@example(inputs=(np.array([1.0, -2.0, 0.0]), np.ones((1, 3)), np.array([True, True]), 0.5, True))
def test_perturbations_equal_oracle(inputs):
    """(3), antithetic pairs included."""
    guide, normals, mask, scale, antithetic = inputs
    with jax_x64():
        got = _perturbations(
            jnp_or_none(guide),
            jnp.asarray(normals),
            jnp.asarray(mask),
            scale=scale,
            antithetic=antithetic,
        )
    assert_close(got, ref.perturbations(guide, normals, mask, scale, antithetic))


@st.composite
def proposal_inputs(draw):
    k = draw(counts)
    shape_list = draw(st.lists(kernel_shapes, min_size=1, max_size=2))
    eps = [draw(arrays_like((k, *s), moderate)) for s in shape_list]
    guides = [draw(st.one_of(st.none(), arrays_like(s, moderate))) for s in shape_list]
    scales = [draw(st.floats(0.05, 5.0)) for _ in shape_list]
    return eps, guides, scales


@given(
    inputs=proposal_inputs(),
    mix=st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0)),
    density=st.sampled_from(PROPOSAL_DENSITIES),
)
@example(inputs=([np.ones((1, 3))], [None], [1.0]), mix=0.0, density="exact")
@example(inputs=([np.ones((2, 3))], [np.full(3, 2.0)], [0.1]), mix=1.0, density="exact")
def test_log_proposal_equals_oracle(inputs, mix, density):
    """(4): summed over the tensors, both mixture components, both densities."""
    eps, guides, scales = inputs
    with jax_x64():
        got = _log_proposal(
            [jnp.asarray(e) for e in eps],
            [jnp_or_none(g) for g in guides],
            scales,
            mix=mix,
            proposal_density=density,
        )
    a = ref.log_proposal(eps, guides, scales, 0.0, density)  # the components alone
    b = ref.log_proposal(eps, guides, scales, 1.0, density)
    assert got.shape == (eps[0].shape[0],)
    assert_close(
        got,
        ref.log_proposal(eps, guides, scales, mix, density),
        magnitude=np.abs(a) + np.abs(b),
    )


non_finite = st.sampled_from([np.inf, -np.inf, np.nan])


@st.composite
def weight_inputs(draw):
    k = draw(st.sampled_from([1, 3, 6]))
    losses = draw(arrays_like((k,), st.one_of(st.floats(-1e6, 1e6), non_finite)))
    return losses, draw(arrays_like((k,), st.floats(-50.0, 50.0)))


@given(inputs=weight_inputs(), loss0=st.floats(-1e6, 1e6), temperature=st.floats(0.01, 100.0))
@example(inputs=(np.array([1e6, -1e6, 3.0]), np.zeros(3)), loss0=0.0, temperature=1.0)
@example(
    inputs=(np.array([np.nan, 1.0, np.inf, -np.inf, 2.0, 0.0]), np.ones(6)),
    loss0=0.5,
    temperature=1.0,
)
@example(inputs=(np.array([np.nan, np.inf, -np.inf]), np.zeros(3)), loss0=0.0, temperature=1.0)
@example(inputs=(np.array([7.0]), np.array([-3.0])), loss0=1e6, temperature=0.01)  # K = 1
def test_importance_weights_equal_oracle(inputs, loss0, temperature):
    """(5): stable at any loss magnitude; a non-finite loss gets weight 0; never NaN."""
    losses, log_q = inputs
    with jax_x64():
        got = np.asarray(
            _weights(jnp.asarray(losses), loss0, jnp.asarray(log_q), temperature=temperature)
        )
    assert not np.isnan(got).any()
    want = ref.importance_weights(losses, loss0, log_q, temperature)
    rtol = ref.weights_rtol(losses, loss0, log_q, temperature)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-12, equal_nan=True)
    assert (got[~np.isfinite(losses)] == 0).all()
    assert got.sum() == pytest.approx(1.0 if np.isfinite(losses).any() else 0.0, abs=1e-12)


@given(
    data=counts.flatmap(
        lambda k: st.tuples(
            arrays_like((k,), st.floats(0.0, 1.0)),
            st.lists(kernel_shapes, min_size=1, max_size=2).flatmap(
                lambda ss: st.tuples(*[arrays_like((k, *s), finite) for s in ss])
            ),
        )
    )
)
def test_weighted_direction_equals_oracle(data):
    """(6)."""
    weights, eps = data
    with jax_x64():
        got = _direction(jnp.asarray(weights), [jnp.asarray(e) for e in eps])
    for a, b, e in zip(got, ref.weighted_direction(weights, list(eps)), eps, strict=True):
        assert_close(a, b, magnitude=np.abs(e).max(axis=0) * max(weights.sum(), 1.0))


# ------------------------------------------------------------------ properties (math.md §4.4)


@given(
    inputs=weight_inputs(),
    shift=st.floats(-1e3, 1e3),
    q_shift=st.floats(-1e3, 1e3),
    temperature=st.floats(0.05, 100.0),
)
def test_weights_sum_to_one_and_ignore_constant_shifts(inputs, shift, q_shift, temperature):
    """§4.4 (4): a constant added to every loss (with or without d_0) or to log q (q rescaled)
    changes nothing."""
    losses, log_q = inputs
    losses = np.where(np.isfinite(losses), losses, 0.0) / 1e3  # moderate, all finite

    def weights(d, d0, q):
        with jax_x64():
            return np.asarray(_weights(jnp.asarray(d), d0, jnp.asarray(q), temperature=temperature))

    w = weights(losses, 0.25, log_q)
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0, abs=1e-12)
    for other in (
        weights(losses + shift, 0.25 + shift, log_q),
        weights(losses + shift, 0.25, log_q),
        weights(losses, 0.25, log_q + q_shift),
    ):
        np.testing.assert_allclose(other, w, rtol=1e-7, atol=1e-10)


def test_temperature_limits():
    """§4.4 (6), §4.3: alpha -> 0 selects the best candidate (ties split); alpha -> infinity
    and a constant task loss both give w proportional to 1/q."""
    log_q = np.array([0.0, 1.0, -1.0, 0.5, 2.0])
    inv_q = np.exp(-log_q) / np.exp(-log_q).sum()
    with jax_x64():

        def weights(d, t):
            return np.asarray(_weights(jnp.asarray(d), 0.0, jnp.asarray(log_q), temperature=t))

        best = weights(np.array([3.0, 1.0, 2.0, 1.5, 4.0]), 1e-9)
        tie = weights(np.array([3.0, 1.0, 2.0, 1.0, 4.0]), 1e-9)  # split by 1/q
        hot = weights(np.array([3.0, 1.0, 2.0, 1.5, 4.0]), 1e12)
        flat = weights(np.full(5, 2.0), 0.1)
    np.testing.assert_array_equal(best, [0, 1, 0, 0, 0])
    split = np.exp(-log_q[[1, 3]]) / np.exp(-log_q[[1, 3]]).sum()
    np.testing.assert_allclose(tie, [0, split[0], 0, split[1], 0], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(hot, inv_q, rtol=1e-9)
    np.testing.assert_allclose(flat, inv_q, rtol=1e-12)


def test_identical_candidates_and_a_single_candidate():
    """§4.4 (5), §4.3: identical candidates give that candidate, whatever the weights; K = 1
    gives w = 1 and Delta = eps_0 (through the shell too: config "single-candidate")."""
    eps = np.tile(np.array([[0.3, -1.2, 2.0]]), (4, 1))
    with jax_x64():
        w = _weights(
            jnp.array([4.0, 1.0, 2.0, 3.0]), 0.0, jnp.array([0.0, 1.0, -2.0, 0.5]), temperature=1.0
        )
        (same,) = _direction(w, [jnp.asarray(eps)])
        w1 = _weights(jnp.array([9.0]), 0.0, jnp.array([-4.0]), temperature=0.1)
        (one,) = _direction(w1, [jnp.asarray(eps[:1])])
    np.testing.assert_allclose(same, eps[0], rtol=1e-15)
    np.testing.assert_array_equal(w1, [1.0])
    np.testing.assert_array_equal(one, eps[0])


def langevin(x: float) -> float:
    return 1 / np.tanh(x) - 1 / x


def test_ball_model_direction_and_the_one_dimensional_closed_form():
    """§4.4 (1)-(2): uniform candidates in the disk |Delta| <= eps with l = g.Delta give a Monte
    Carlo mean direction along -g (cos > 0.99) at every temperature; in 1-D the expectation
    is -eps L(eps g / alpha) (-0.11302 at eps 0.5, g 0.7, alpha 0.5)."""
    rng = np.random.default_rng(0)
    n, radius, g = 100_000, 0.5, np.array([0.7, -0.2])
    r = radius * np.sqrt(rng.random(n))
    phi = rng.random(n) * 2 * np.pi
    pts = np.stack([r * np.cos(phi), r * np.sin(phi)], -1)
    line = -0.5 + (np.arange(n) + 0.5) / n  # midpoints of a grid on [-0.5, 0.5]
    with jax_x64():
        for temperature in (0.05, 1.0):
            w = importance_weights(jnp.asarray(pts @ g), 0.0, jnp.zeros(n), temperature=temperature)
            (mean,) = weighted_direction(w, [jnp.asarray(pts)])
            mean = np.asarray(mean)
            assert -(mean @ g) / (np.linalg.norm(mean) * np.linalg.norm(g)) > 0.99
        w = importance_weights(jnp.asarray(0.7 * line), 0.0, jnp.zeros(n), temperature=0.5)
        (mean,) = weighted_direction(w, [jnp.asarray(line)])
    assert float(mean) == pytest.approx(-0.5 * langevin(0.5 * 0.7 / 0.5), rel=1e-6)
    assert float(mean) == pytest.approx(-0.11302, abs=1e-5)


# ------------------------------------------------------------------- the shell vs the oracle

TARGET = {"b": np.array([0.5, -1.0]), "w": np.array([[1.0, -0.5], [0.0, 2.0], [-1.5, 0.25]])}
START = {"b": np.array([0.1, 0.2]), "w": np.array([[0.3, 0.1], [-0.4, 0.9], [0.2, -0.6]])}
MGS_DEFAULTS = {
    "num_samples": 4,
    "noise": 1.0,
    "noise_scale": "grad",
    "mix": 0.5,
    "random_mix": False,
    "proposal_density": "exact",
    "antithetic": False,
    "max_grad_norm": 1.0,
}


def hyper_of(config: dict) -> dict:
    """The arguments of mgs_ask / _draw in a config of mgs arguments."""
    return {k: config.get(k, v) for k, v in MGS_DEFAULTS.items()}


def task(leaves, xp):
    """A non-differentiable task loss: L1 distance to TARGET plus a staircase."""
    return sum(
        xp.sum(xp.abs(p - t)) + 0.1 * xp.sum(xp.floor(3 * p))
        for p, t in zip(leaves, (TARGET["b"], TARGET["w"]), strict=True)
    )


def task_jax(params):
    return task([params["b"], params["w"]], jnp)


def task_np(leaves):
    return float(task(leaves, np))


def surrogate_of(params, zero_leaf=None):
    """The gradient of the surrogate 0.5 ||theta - TARGET||^2 (zero on ``zero_leaf``)."""
    return {
        k: jnp.zeros_like(p) if k == zero_leaf else p - jnp.asarray(TARGET[k])
        for k, p in params.items()
    }


def unflatten_like(tree, leaves):
    return jax.tree.unflatten(jax.tree.structure(tree), leaves)


def oracle_delta(state, params, surrogate, config, loss_fn=task_np):
    """The oracle's Delta for the step that ``state`` takes next, with the same randomness."""
    hyper = hyper_of(config)
    _, draw_key = jax.random.split(state.key)
    guided, normals = _draw(
        draw_key,
        params,
        hyper["num_samples"],
        hyper["antithetic"],
        hyper["random_mix"],
        hyper["mix"],
    )
    _, delta, _ = ref.mgs_step(
        [np.asarray(p) for p in jax.tree.leaves(params)],
        [np.asarray(g) for g in jax.tree.leaves(surrogate)],
        [np.asarray(z) for z in normals],
        np.asarray(guided),
        loss_fn,
        noise=hyper["noise"],
        noise_scale_mode=hyper["noise_scale"],
        mix=hyper["mix"],
        temperature=config.get("temperature", 1.0),
        proposal_density=hyper["proposal_density"],
        antithetic=hyper["antithetic"],
        max_grad_norm=hyper["max_grad_norm"],
    )
    return delta


CONFIGS = {
    "schedule-constant-noise-mix0": {
        "lr": optax.exponential_decay(0.5, 1, 0.5),
        "noise_scale": "constant",
        "noise": 0.3,
        "mix": 0.0,
        "num_samples": 5,
        "temperature": 0.3,
    },
    "random-mix-antithetic-unit-variance": {
        "random_mix": True,
        "antithetic": True,
        "num_samples": 6,
        "mix": 0.3,
        "proposal_density": "unit_variance",
        "max_grad_norm": None,
        "noise": 0.5,
        "lr": 0.7,
        "zero_leaf": "b",  # an all-zero surrogate: s = noise there
    },
    "sgd-base-single-candidate-mix1": {"base": True, "num_samples": 1, "mix": 1.0, "seed": 5},
}


def test_draw_order_and_low_precision_normals():
    """The documented draw, rebuilt from jax.random alone: the key split into 1 + (number of
    leaves) keys; the first draws the random_mix uniforms (float32, one per centre, guided
    where u < mix, repeated for antithetic pairs), the others one leaf's normals each (half
    dtypes drawn in float32 and cast)."""
    params = {"a": jnp.zeros(3, jnp.bfloat16), "b": jnp.zeros((2, 2), jnp.float32)}

    def uniforms(key):
        return np.asarray(jax.random.uniform(jax.random.split(key, 3)[0], (4,), jnp.float32))

    # The first key whose uniforms give both kinds of centre and a mask unlike those of
    # u < 1 - mix or u > mix (jax's bits for one key differ between releases).
    key = next(
        k
        for k in map(jax.random.PRNGKey, range(100))
        if 0 < np.sum(uniforms(k) < 0.6) < 4
        and (uniforms(k) < 0.6).tolist() != (uniforms(k) < 0.4).tolist()
    )
    guided, (za, zb) = _draw(key, params, 8, True, True, 0.6)
    _, key_a, key_b = jax.random.split(key, 3)
    want = [bool(v < 0.6) for v in uniforms(key) for _ in range(2)]
    assert np.asarray(guided).tolist() == want
    assert za.dtype == jnp.bfloat16 and zb.dtype == jnp.float32
    np.testing.assert_array_equal(
        np.asarray(za, np.float32),
        np.asarray(jax.random.normal(key_a, (4, 3), jnp.float32).astype(jnp.bfloat16), np.float32),
    )
    np.testing.assert_array_equal(zb, jax.random.normal(key_b, (4, 2, 2), jnp.float32))
    fixed, _ = _draw(key, params, 8, True, False, 0.5)  # without random_mix: the fixed mask
    assert np.asarray(fixed).tolist() == mixture_mask(8, 0.5, antithetic=True)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_update_equals_oracle_over_steps_without_recompiling(name):
    """(1)-(7) through the jitted transformation, the noise reproduced from the state's key:
    lr * Delta, with lr a schedule of the 0-based count, or with base=optax.sgd(1.0) the plain
    path; one compilation for all steps; extra arguments never reach value_fn."""
    config = dict(CONFIGS[name])
    base, zero_leaf = config.pop("base", False), config.pop("zero_leaf", None)
    lr = config.get("lr", 1.0)
    with jax_x64():
        params = jax.tree.map(jnp.asarray, START)
        opt = mgs(optax.sgd(1.0) if base else None, **config)
        state = opt.init(params)
        step = jax.jit(opt.update, static_argnames="value_fn")
        for t in range(3):
            surrogate = surrogate_of(params, zero_leaf)
            delta = oracle_delta(state, params, surrogate, config)
            updates, state = step(
                surrogate, state, params, value_fn=task_jax, unexpected_extra_arg=t
            )
            for a, d in zip(jax.tree.leaves(updates), delta, strict=True):
                assert a.dtype == jnp.float64
                assert_close(a, (lr(t) if callable(lr) else lr) * d, err_msg=f"{name}, step {t}")
            params = optax.apply_updates(params, updates)
        assert int(state.count) == 3 and int(state.nonfinite_count) == 0
        assert step._cache_size() == 1


def test_ask_and_tell_equal_update_and_the_oracle():
    """mgs is built on mgs_ask / mgs_tell: the same key gives the same step, the oracle's, at
    the defaults (the reference code's settings)."""
    opt = mgs()
    hyper = hyper_of({})

    @jax.jit
    def both(state, params, surrogate):
        updates, _ = opt.update(surrogate, state, params, value_fn=task_jax, unused=1.0)
        _, draw_key = jax.random.split(state.key)
        candidates, ask = mgs_ask(draw_key, params, surrogate, **hyper)
        losses = jax.vmap(task_jax)(candidates)
        return updates, mgs_tell(ask, losses, task_jax(params), temperature=1.0), candidates, ask

    with jax_x64():
        params = jax.tree.map(jnp.asarray, START)
        state = opt.init(params)
        updates, delta, candidates, ask = both(state, params, surrogate_of(params))
        expected = oracle_delta(state, params, surrogate_of(params), {})
        assert isinstance(ask, MGSAsk) and ask.log_q.shape == (4,)
        for (key, p), want in zip(params.items(), expected, strict=True):
            assert candidates[key].shape == (4, *p.shape)
            np.testing.assert_array_equal(candidates[key], p[None] + ask.eps[key])
            assert_close(updates[key], delta[key])
            assert_close(updates[key], want)


def test_non_finite_losses_and_a_base_optimizer():
    """With base=optax.adamw, the base's update of -Delta; a non-finite loss at theta gives a
    zero update, keeps the base's state and counts; a candidate with a non-finite loss gets
    weight 0 (the oracle's Delta)."""

    def flaky(leaves, xp, where):
        b, w = leaves
        loss = task(leaves, xp)
        loss = where(w[0, 0] == 100.0, np.nan, loss)  # only at theta (w00 exactly 100)
        return where(b[0] > 1.0, np.inf, loss)  # about half of the candidates

    def flaky_jax(params):
        return flaky([params["b"], params["w"]], jnp, jnp.where)

    def flaky_np(leaves):
        return float(flaky(leaves, np, np.where))

    config = {"num_samples": 6, "temperature": 0.5, "antithetic": True, "random_mix": True}
    with jax_x64():
        opt = mgs(optax.adamw(0.1), **config)
        step = jax.jit(opt.update, static_argnames="value_fn")
        reference = optax.adamw(0.1)
        ref_update = jax.jit(reference.update)
        params = jax.tree.map(jnp.asarray, START)
        params["b"] = params["b"].at[0].set(1.0)
        state, ref_state = opt.init(params), reference.init(params)
        for t, w00 in enumerate([0.3, 100.0, 0.3]):
            params["w"] = params["w"].at[0, 0].set(w00)
            surrogate = surrogate_of(params)
            delta = oracle_delta(state, params, surrogate, config, flaky_np)
            before = state
            updates, state = step(surrogate, state, params, value_fn=flaky_jax)
            if w00 == 100.0:
                assert all((u == 0).all() for u in jax.tree.leaves(updates))
                jax.tree.map(np.testing.assert_array_equal, state.base_state, before.base_state)
                assert int(state.nonfinite_count) == 1 and int(state.count) == t + 1
                assert not (state.key == before.key).all()  # fresh noise next time
                continue
            neg = unflatten_like(params, [-jnp.asarray(d) for d in delta])
            expected, ref_state = ref_update(neg, ref_state, params)
            for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected), strict=True):
                assert np.isfinite(np.asarray(a)).all()
                assert_close(a, b)
        assert int(state.nonfinite_count) == 1 and step._cache_size() == 1


def test_state_is_arrays_and_a_checkpoint_resumes_the_trajectory(tmp_path):
    """The state (key included) is a pytree of arrays: saved and restored, the run goes on
    exactly as it would have."""
    opt = mgs(optax.adam(0.05), num_samples=3, seed=11)
    step = jax.jit(opt.update, static_argnames="value_fn")
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), START)
    state = opt.init(params)
    assert isinstance(state, MGSState)
    assert state.key.dtype == jnp.uint32 and state.key.shape == (2,)
    leaves, treedef = jax.tree.flatten(state)
    assert all(isinstance(x, jax.Array) for x in leaves)

    def run(state, params, n):
        out = []
        for _ in range(n):
            updates, state = step(surrogate_of(params), state, params, value_fn=task_jax)
            params = optax.apply_updates(params, updates)
            out.append(params)
        return out, state

    (*_, params), state = run(state, params, 2)
    np.savez(tmp_path / "ckpt.npz", *[np.asarray(x) for x in jax.tree.leaves(state)])
    np.savez(tmp_path / "params.npz", **{k: np.asarray(v) for k, v in params.items()})
    straight, _ = run(state, params, 3)
    with np.load(tmp_path / "ckpt.npz") as f:
        restored = jax.tree.unflatten(treedef, [jnp.asarray(f[f"arr_{i}"]) for i in range(len(f))])
    with np.load(tmp_path / "params.npz") as f:
        resumed_params = {k: jnp.asarray(f[k]) for k in f}
    resumed, _ = run(restored, resumed_params, 3)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_inject_hyperparams_equals_the_plain_transform():
    """Numeric hyperparameters injected (lr as a schedule), num_samples and mix static."""
    kwargs = {
        "lr": optax.linear_schedule(1.0, 0.5, 4),
        "temperature": 0.5,
        "noise": 0.7,
        "max_grad_norm": 2.0,
        "seed": 3,
        "num_samples": 3,
        "mix": 0.5,
    }
    plain = mgs(**kwargs)
    injected = optax.inject_hyperparams(mgs, static_args=("num_samples", "mix"))(**kwargs)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), START)
    sp, si = plain.init(params), injected.init(params)
    pp = pi = params
    step_p = jax.jit(plain.update, static_argnames="value_fn")
    step_i = jax.jit(injected.update, static_argnames="value_fn")
    for _ in range(3):
        up, sp = step_p(surrogate_of(pp), sp, pp, value_fn=task_jax)
        ui, si = step_i(surrogate_of(pi), si, pi, value_fn=task_jax)
        pp, pi = optax.apply_updates(pp, up), optax.apply_updates(pi, ui)
    for a, b in zip(jax.tree.leaves(pp), jax.tree.leaves(pi), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert float(si.hyperparams["temperature"]) == 0.5


def test_low_precision_params_keep_their_dtype():
    """bf16 parameters: bf16 candidates and updates; the state's shapes and dtypes hold
    through update and match the abstract init."""
    params = {"w": jnp.ones((3, 2), jnp.bfloat16), "b": jnp.zeros(2, jnp.bfloat16)}
    opt = mgs(optax.adam(0.1), num_samples=2)
    state = opt.init(params)

    seen = []

    def value_fn(p):
        seen.extend(x.dtype for x in jax.tree.leaves(p))  # at theta and the candidates
        return jnp.sum(jnp.abs(p["w"] - 0.5)) + jnp.sum(jnp.floor(3 * p["b"]))

    updates, new_state = jax.jit(opt.update, static_argnames="value_fn")(
        jax.tree.map(jnp.ones_like, params), state, params, value_fn=value_fn
    )
    assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda p: p.dtype, params)
    assert any((u != 0).any() for u in jax.tree.leaves(updates))
    types = jax.tree.map(lambda x: (x.shape, x.dtype), (state, new_state))
    assert types[0] == types[1]
    abstract = jax.eval_shape(opt.init, params)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), abstract) == types[0]
    assert len(seen) == 4 and set(seen) == {jnp.dtype(jnp.bfloat16)}


SHARDED_SCRIPT = textwrap.dedent(
    """
    import numpy as np, jax, jax.numpy as jnp, optax
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from jax_opt import mgs

    jax.config.update("jax_enable_x64", True)
    assert jax.device_count() == 4
    params = {"w": jnp.linspace(-1.0, 1.0, 32).reshape(8, 4), "b": jnp.ones(4)}

    def value_fn(p):
        return jnp.sum(jnp.abs(p["w"] - 0.5)) + jnp.sum(jnp.floor(3 * p["b"]))

    grad = jax.grad(lambda p: jnp.sum((p["w"] - 0.5) ** 2) + jnp.sum(p["b"] ** 2))

    def run(opt, params, explicit=False):
        step = jax.jit(opt.update, static_argnames="value_fn")
        state = jax.jit(opt.init)(params)
        types = jax.tree.map(jax.typeof, state)
        assert jax.tree.map(jax.typeof, opt.init(params)) == types
        out, compiled = [], []
        for _ in range(4):
            updates, state = step(grad(params), state, params, value_fn=value_fn)
            assert jax.tree.map(jax.typeof, state) == types, "the state's type changed"
            assert jax.tree.map(jax.typeof, updates) == jax.tree.map(jax.typeof, params)
            params = optax.apply_updates(params, updates)
            out.append(params)
            compiled.append(step._cache_size())
        # An explicit mesh may compile once more, when jit's replicated outputs (spec
        # P(None,)) replace the init's (P()); never after that.
        assert compiled[0] == 1 and compiled[-1] == compiled[1] <= 1 + explicit, compiled
        return out

    expected = run(mgs(optax.adam(0.05)), params)
    for axis_type in (AxisType.Explicit, AxisType.Auto):
        mesh = jax.make_mesh((4,), ("pop",), axis_types=(axis_type,))
        with jax.set_mesh(mesh):
            sharded = {
                "w": jax.device_put(params["w"], NamedSharding(mesh, P("pop", None))),
                "b": jax.device_put(params["b"], NamedSharding(mesh, P())),
            }
            opt = mgs(optax.adam(0.05), candidate_sharding=NamedSharding(mesh, P("pop")))
            got = run(opt, sharded, explicit=axis_type == AxisType.Explicit)
            hlo = (
                jax.jit(opt.update, static_argnames="value_fn")
                .lower(grad(sharded), opt.init(sharded), sharded, value_fn=value_fn)
                .as_text()
            )
        # The stacked candidates of "w", (K, 8, 4), laid out along "pop" (Shardy or GSPMD text).
        stacked = '[{"pop"}, {}, {}]> : tensor<4x8x4xf64>'
        assert stacked in hlo or "devices=[4,1,1]" in hlo, "the candidates are not sharded"
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)
        assert got[-1]["w"].sharding.is_equivalent_to(sharded["w"].sharding, 2)
    print("ok")
    """
)


@pytest.mark.slow
@pytest.mark.skipif(bool(explicit_sharding_missing()), reason=str(explicit_sharding_missing()))
def test_sharded_candidates_equal_the_unsharded_run():
    """candidate_sharding over 4 forced host devices, parameters sharded too: init and update
    keep their types (explicit mesh), nothing recompiles, the result is the unsharded one."""
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("ok")


# -------------------------------------------------------------------------- black-box search


def test_black_box_search_trains_a_linear_classifier():
    """Zeros as the surrogate, constant noise: the 0-1 error of a linear classifier on a
    separable dataset drops from about one half to under 0.15 in 200 jitted steps."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 2))
    y = np.sign(x @ np.array([1.5, -2.0]) + 0.3)
    xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)

    def error(p):
        return jnp.mean(jnp.sign(xj @ p["w"] + p["b"]) != yj)

    opt = mgs(noise_scale="constant", noise=0.3, num_samples=8, temperature=0.01, seed=0)

    @jax.jit
    def train(params):
        def body(carry, _):
            p, s = carry
            u, s = opt.update(jax.tree.map(jnp.zeros_like, p), s, p, value_fn=error)
            return (optax.apply_updates(p, u), s), None

        (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), length=200)
        return params

    start = {"w": jnp.array([2.0, 1.5]), "b": jnp.array(0.0)}
    assert float(error(start)) > 0.4
    assert float(error(train(start))) < 0.15


# ------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: mgs(num_samples=0), r"^Invalid num_samples: 0 \(must be an integer >= 1\)$"),
        (lambda: mgs(num_samples=2.0), r"^Invalid num_samples: 2\.0 \(must be an integer"),
        (lambda: mgs(num_samples=True), r"^Invalid num_samples: True \(must be an integer"),
        (
            lambda: mgs(num_samples=3, antithetic=True),
            r"^Invalid num_samples: 3 \(must be even with antithetic=True",
        ),
        (lambda: mgs(noise=0.0), r"^Invalid noise: 0\.0 \(must be > 0\)$"),
        (lambda: mgs(noise_scale="uniform"), r"^Invalid noise_scale: 'uniform' \(must be one of"),
        (lambda: mgs(mix=1.5), r"^Invalid mix: 1\.5 \(must be in \[0, 1\]\)$"),
        (lambda: mgs(mix=-0.1), r"^Invalid mix: -0\.1 \(must be in \[0, 1\]\)$"),
        (lambda: mgs(temperature=0.0), r"^Invalid temperature: 0\.0 \(must be > 0\)$"),
        (lambda: mgs(proposal_density="unit"), r"^Invalid proposal_density: 'unit' \(must be"),
        (lambda: mgs(max_grad_norm=0.0), r"^Invalid max_grad_norm: 0\.0 \(must be > 0\)$"),
        (lambda: mgs(lr=-1.0), r"^Invalid lr: -1\.0 \(must be >= 0\)$"),
        (lambda: mgs(optax.sgd(0.1), lr=0.1), r"^Invalid lr: 0\.1 \(must be 1 with a base"),
        (
            lambda: mgs_ask(jax.random.PRNGKey(0), jnp.ones(2), None, **hyper_of({"noise": -1})),
            r"^Invalid noise: -1\.0 \(must be > 0\)$",
        ),
        (
            lambda: mgs_tell(
                MGSAsk(jnp.ones((1, 2)), jnp.zeros(1)), jnp.ones(1), 0.0, temperature=0
            ),
            r"^Invalid temperature: 0\.0 \(must be > 0\)$",
        ),
    ],
)
def test_bad_arguments(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_update_needs_params_and_value_fn_and_float_params():
    opt = mgs()
    params = jnp.ones(2)
    state = opt.init(params)
    with pytest.raises(ValueError, match=r"^Missing value_fn: mgs needs the task loss"):
        opt.update(params, state, params)
    with pytest.raises(ValueError, match=r"^Missing params: mgs needs the parameters"):
        opt.update(params, state, value_fn=jnp.sum)
    with pytest.raises(TypeError, match=r"mgs needs real floating-point parameters"):
        opt.init({"n": jnp.arange(3)})
    injected = optax.inject_hyperparams(mgs, static_args=("num_samples",))(mix=0.25)
    with pytest.raises(TypeError, match=r"^mix must be a concrete number unless random_mix"):
        jax.jit(injected.update, static_argnames="value_fn")(
            params, injected.init(params), params, value_fn=jnp.sum
        )
