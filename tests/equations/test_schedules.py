"""Su's Amos-derived schedules of both packages against the oracle: the decay factor, the
per-tensor kernel on hypothesis-drawn inputs, the rule's shells over several steps (with an
identity and an Adam direction), AdamW driven by the schedules, the properties of math.md §2.6
item 6, and torch <-> JAX parity (trajectories and error messages), once per backend, in
float64."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.backends import (
    JaxBackend,
    TorchBackend,
    assert_all_close,
    assert_close,
    available,
)
from tests.reference import schedules as ref
from tests.strategies import arrays_like, finite, moderate

modes = st.sampled_from(ref.MODES)
alphas = st.floats(1e-3, 0.5)
half_lives = st.floats(0.5, 50.0)
qs = st.floats(0.1, 10.0)


def schedules(backend):
    """The backend's ``schedules`` module (imported from the submodule, not the package)."""
    return importlib.import_module(f"{backend.mod.__name__}.schedules")


def decay_at(backend, t, half_life, mode):
    """``amos_decay(half_life, mode)(t)``; in JAX under jit, with a traced int32 count (and a
    traced half-life, as under ``optax.inject_hyperparams``), compiled once per mode."""
    m = schedules(backend)
    if backend.name == "torch":
        return m.amos_decay(half_life, mode)(t)
    jax, jnp = backend.jax, backend.jnp
    if mode not in _JITTED:
        _JITTED[mode] = jax.jit(lambda n, h: m.amos_decay(h, mode)(n))
    return _JITTED[mode](jnp.asarray(t, jnp.int32), jnp.asarray(half_life, jnp.float64))


_JITTED: dict = {}


# ---------------------------------------------------------------------------- the decay factor


@given(t=st.integers(0, 10**7), half_life=st.floats(1e-2, 1e6), mode=modes)
@example(t=0, half_life=1.0, mode="inverse_square")
def test_amos_decay_equals_oracle(backend, t, half_life, mode):
    """(1), (2); in JAX under jit with a traced int32 count."""
    with backend.x64():
        got = decay_at(backend, t, half_life, mode)
    assert_close(got, ref.decay(t, half_life, mode))


@pytest.mark.parametrize("mode", ref.MODES)
def test_amos_decay_halves_after_the_half_life(backend, mode):
    """§2.6 (6): s(0) = 1 exactly and s(T) = 1/2, for the count types each framework uses."""
    with backend.x64():
        values = [decay_at(backend, t, 40, mode) for t in (0, 40, 80)]
    assert float(values[0]) == 1.0
    assert_close(values[1], 0.5)
    assert_close(values[2], ref.decay(80, 40, mode))


# -------------------------------------------------------------------------------- the kernel


# A few shapes (0-d included): JAX compiles its primitives once per shape.
KERNEL_SHAPES = [(), (1,), (4,), (2, 3), (2, 1, 3)]


@st.composite
def kernel_cases(draw):
    shape = draw(st.sampled_from(KERNEL_SHAPES))
    return {
        "direction": draw(arrays_like(shape, finite)),
        "param": draw(arrays_like(shape, finite)),
        "lr": draw(st.floats(0.0, 1.0)),
        "sigma": draw(st.floats(1e-3, 10.0)),
        "decay": draw(st.floats(1e-4, 1.0)),
        "q": draw(qs),
    }


def kernel(backend, case, **overrides):
    case = {**case, **overrides}
    k = np.size(case["direction"])
    with backend.x64():
        got = schedules(backend).su_amos_update(
            backend.asarray(case["direction"]),
            backend.asarray(case["param"]),
            lr=case["lr"],
            scale=np.sqrt(k) * case["sigma"],
            decay=case["decay"],
            q=case["q"],
        )
        return backend.to_numpy(got)


def oracle(case, **overrides):
    case = {**case, **overrides}
    return ref.su_update(
        case["direction"], case["param"], case["lr"], case["sigma"], case["decay"], case["q"]
    )


ZERO_DIRECTION = {
    "direction": np.zeros((2, 3)),
    "param": np.arange(6.0).reshape(2, 3) - 2.5,
    "lr": 0.1,
    "sigma": 0.5,
    "decay": 1.0,
    "q": 1.0,
}


@given(case=kernel_cases())
@example(case=ZERO_DIRECTION)
@example(case={**ZERO_DIRECTION, "direction": np.array(-3.0), "param": np.array(0.0)})
@example(case={**ZERO_DIRECTION, "direction": np.array([1e4, -1e-6, 0.0]), "param": np.ones(3)})
def test_kernel_equals_oracle(backend, case):
    """(6) on drawn inputs: zero directions, 0-d tensors, huge and tiny entries."""
    assert_close(kernel(backend, case), oracle(case))


@given(case=kernel_cases(), factor=st.floats(1e-3, 1e3))
def test_kernel_properties(backend, case, factor):
    """Only the direction of u matters (u -> c u, c > 0, leaves (6) unchanged); the step term
    is linear and the decay term quadratic in alpha0 (O(rho) = O(alpha^2)); and the step has
    norm alpha0 sqrt(k) sigma s(t) along -u (0 when u = 0)."""
    zeros = np.zeros_like(case["param"])
    assert_close(kernel(backend, case, direction=case["direction"] * factor), kernel(backend, case))
    step = kernel(backend, case, param=zeros)
    decay = kernel(backend, case, direction=zeros)
    assert np.all(np.isfinite(decay))
    assert_close(decay, -(case["lr"] ** 2) / (2 * case["q"]) * case["decay"] * case["param"])
    lr2 = {"lr": 2 * case["lr"]}
    assert_close(kernel(backend, case, direction=zeros, **lr2), 4 * decay)
    assert_close(kernel(backend, case, param=zeros, **lr2), 2 * step)
    norm_u = np.linalg.norm(case["direction"].ravel())
    if norm_u == 0:
        assert np.all(step == 0)
    else:
        k = case["direction"].size
        expected = case["lr"] * np.sqrt(k) * case["sigma"] * case["decay"]
        assert_close(np.linalg.norm(step.ravel()), expected)
        assert np.sum(step * case["direction"]) <= 0


@pytest.mark.parametrize("magnitude", [1e-30, 1e30])
def test_kernel_normalizes_without_underflow_or_overflow(backend, magnitude):
    """float32 directions whose squares underflow (1e-30) or overflow (1e30) are still
    normalized exactly; a zero direction gives no NaN."""
    u = np.array([3.0, -4.0, 0.0]) * magnitude
    theta = np.array([1.0, 2.0, -2.0])
    m = schedules(backend)
    if backend.name == "torch":
        torch = backend.torch

        def f32(x):
            return torch.tensor(x, dtype=torch.float32)
    else:
        jnp = backend.jnp

        def f32(x):
            return jnp.asarray(x, jnp.float32)

    got = m.su_amos_update(f32(u), f32(theta), lr=0.5, scale=2.0, decay=1.0, q=1.0)
    assert str(got.dtype).endswith("float32")
    want = ref.su_update(u, theta, 0.5, 2.0 / np.sqrt(3), 1.0, 1.0)
    assert_close(backend.to_numpy(got), want, "float32")
    zero = m.su_amos_update(f32(0 * u), f32(theta), lr=0.5, scale=2.0, decay=1.0, q=1.0)
    assert_close(backend.to_numpy(zero), -0.125 * theta, "float32")


# --------------------------------------------------------------------------------- the shells


def run_su_amos(backend, params, grad_seq, *, lr, half_life, mode, q, sigmas=None, base=None):
    """The package's rule over ``grad_seq``: torch SuAmosSchedule around SGD (direction = the
    gradient) or Adam; JAX su_amos_schedule alone (direction = the gradient) or after
    scale_by_adam. ``sigmas`` per parameter through the callable (None: the default rule).
    JAX runs eagerly here (a compile per drawn shape costs more than the test); jit is checked
    in tests/jax_opt/test_schedules.py."""
    m = schedules(backend)
    if backend.name == "torch":
        torch = backend.torch
        ps = [backend.asarray(p).requires_grad_() for p in params]
        inner = torch.optim.Adam(ps, lr=0.1) if base == "adam" else torch.optim.SGD(ps, lr=0.3)
        sigma = None if sigmas is None else (lambda name, p: sigmas[int(name)])
        opt = m.SuAmosSchedule(inner, lr, half_life, mode=mode, q=q, sigma=sigma)
        out = []
        for grads in grad_seq:
            for p, g in zip(ps, grads, strict=True):
                p.grad = backend.asarray(g)
            opt.step()
            out.append([backend.to_numpy(p) for p in ps])
        return out
    optax = backend.optax
    sigma_fn = None if sigmas is None else (lambda name, shape: sigmas[int(name[0])])
    su = m.su_amos_schedule(lr, half_life, mode=mode, q=q, sigma_fn=sigma_fn)
    opt = optax.chain(optax.scale_by_adam(), su) if base == "adam" else su
    ps = [backend.asarray(p) for p in params]
    state = opt.init(ps)
    out = []
    for grads in grad_seq:
        updates, state = opt.update([backend.asarray(g) for g in grads], state, ps)
        ps = optax.apply_updates(ps, updates)
        out.append([backend.to_numpy(p) for p in ps])
    return out


def oracle_su_amos(params, grad_seq, *, base=None, **hyper):
    """The oracle's trajectory, and the magnitudes each step's values were computed through
    when the direction is read back as theta_before - theta_after (torch): rounding in that
    difference is relative to |theta| + |u| and is then divided by ||u||."""
    adam = ref.Adam([np.shape(p) for p in params]) if base == "adam" else None
    seen = []

    def direction_fn(t, ps):
        dirs = adam(grad_seq[t]) if adam is not None else grad_seq[t]
        seen.append((ps, dirs))
        return dirs

    steps = ref.su_run(params, direction_fn, len(grad_seq), **hyper)
    sigmas = hyper.get("sigmas") or [ref.model_scale(p) for p in params]
    total = np.zeros(len(params))
    magnitudes = []
    for t, (ps, dirs) in enumerate(seen):
        s = ref.decay(t, hyper["half_life"], hyper["mode"])
        for i, (p, u, sg) in enumerate(zip(ps, dirs, sigmas, strict=True)):
            norm = np.linalg.norm(np.ravel(u))
            if norm > 0:
                coef = hyper["alpha0"] * np.sqrt(np.size(u)) * sg * s
                total[i] += coef * (np.max(np.abs(p)) + np.max(np.abs(u))) / norm
        magnitudes.append([total[i] + np.abs(p) for i, p in enumerate(steps[t])])
    return steps, magnitudes


def check_trajectory(backend, got, steps, magnitudes):
    for k, (g, want, mags) in enumerate(zip(got, steps, magnitudes, strict=True)):
        for i, (a, e, mag) in enumerate(zip(g, want, mags, strict=True)):
            assert_close(
                a,
                e,
                err_msg=f"step {k + 1}, array {i}",
                magnitude=mag if backend.name == "torch" else None,
            )


# The shells run on one layout (a matrix, a vector, a 0-d tensor) over 4 steps: JAX then
# compiles its primitives once, not once per drawn shape (the kernel tests draw the shapes).
LAYOUT = [(2, 3), (3,), ()]
STEPS = 4


@st.composite
def layout_trajectories(draw):
    params = [draw(arrays_like(s, moderate)) for s in LAYOUT]
    grad_seq = [[draw(arrays_like(s, moderate)) for s in LAYOUT] for _ in range(STEPS)]
    return params, grad_seq


@st.composite
def su_runs(draw):
    params, grad_seq = draw(layout_trajectories())
    hyper = {
        "alpha0": draw(alphas),
        "half_life": draw(half_lives),
        "mode": draw(modes),
        "q": draw(qs),
    }
    if draw(st.booleans()):
        n = len(params)
        hyper["sigmas"] = draw(st.lists(st.floats(1e-2, 3.0), min_size=n, max_size=n))
    return params, grad_seq, hyper


def shell_hyper(hyper):
    return {
        "lr": hyper["alpha0"],
        "half_life": hyper["half_life"],
        "mode": hyper["mode"],
        "q": hyper["q"],
        "sigmas": hyper.get("sigmas"),
    }


@given(run=su_runs())
def test_su_amos_rule_equals_oracle(backend, run):
    """(6) over several steps with u_t = the gradient: sigma given or by the RMS rule at
    construction / init, t counting from 0."""
    params, grad_seq, hyper = run
    steps, magnitudes = oracle_su_amos(params, grad_seq, **hyper)
    with backend.x64():
        got = run_su_amos(backend, params, grad_seq, **shell_hyper(hyper))
    check_trajectory(backend, got, steps, magnitudes)


@given(run=su_runs())
def test_su_amos_rule_around_adam_equals_oracle(backend, run):
    """(6) with Adam's direction: SuAmosSchedule(torch.optim.Adam) and
    chain(optax.scale_by_adam(), su_amos_schedule)."""
    params, grad_seq, hyper = run
    steps, magnitudes = oracle_su_amos(params, grad_seq, base="adam", **hyper)
    with backend.x64():
        got = run_su_amos(backend, params, grad_seq, base="adam", **shell_hyper(hyper))
    check_trajectory(backend, got, steps, magnitudes)


def run_adamw(backend, params, grad_seq, *, alpha0, half_life, mode, q):
    """AdamW driven by the package's schedules: torch AdamW + AmosDecayScheduler (its own lr and
    weight_decay overwritten), optax.adamw(*amos_decay_schedules(...)), eagerly."""
    m = schedules(backend)
    if backend.name == "torch":
        torch = backend.torch
        ps = [backend.asarray(p).requires_grad_() for p in params]
        opt = torch.optim.AdamW(ps, lr=7.0, weight_decay=0.3)
        scheduler = m.AmosDecayScheduler(opt, alpha0, half_life, mode=mode, q=q)
        out = []
        for grads in grad_seq:
            for p, g in zip(ps, grads, strict=True):
                p.grad = backend.asarray(g)
            opt.step()
            scheduler.step()
            out.append([backend.to_numpy(p) for p in ps])
        return out
    optax = backend.optax
    learning_rate, weight_decay = m.amos_decay_schedules(alpha0, half_life, mode=mode, q=q)
    opt = optax.adamw(learning_rate, weight_decay=weight_decay)
    ps = [backend.asarray(p) for p in params]
    state = opt.init(ps)
    out = []
    for grads in grad_seq:
        updates, state = opt.update([backend.asarray(g) for g in grads], state, ps)
        ps = optax.apply_updates(ps, updates)
        out.append([backend.to_numpy(p) for p in ps])
    return out


@st.composite
def adamw_runs(draw):
    params, grad_seq = draw(layout_trajectories())
    hyper = {
        "alpha0": draw(alphas),
        "half_life": draw(half_lives),
        "mode": draw(modes),
        "q": draw(qs),
    }
    return params, grad_seq, hyper


@given(run=adamw_runs())
def test_adamw_driven_by_the_schedules_equals_oracle(backend, run):
    """(3)-(5): theta <- theta (1 - rho_t) - alpha_t adam_t, step after step."""
    params, grad_seq, hyper = run
    want = ref.adamw_run(params, grad_seq, **hyper)
    with backend.x64():
        got = run_adamw(backend, params, grad_seq, **hyper)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        for i, (a, e) in enumerate(zip(g, w, strict=True)):
            assert_close(a, e, err_msg=f"step {k + 1}, array {i}")


@pytest.mark.parametrize("mode", ref.MODES)
def test_adamw_realizes_the_decay_rate_each_step(backend, mode):
    """With zero gradients AdamW's direction is 0, so each step multiplies the parameters by
    exactly 1 - rho_t: the realized decay fraction is (4) at t = 0, 1, ..., 7."""
    params = [np.array([1.0, -2.0, 0.5]), np.array(3.0)]
    grad_seq = [[np.zeros(3), np.array(0.0)]] * 8
    hyper = {"alpha0": 0.1, "half_life": 3.0, "mode": mode, "q": 0.5}
    with backend.x64():
        got = run_adamw(backend, params, grad_seq, **hyper)
    previous = params
    for t, ps in enumerate(got):
        rho = ref.decay_rate(t, 0.1, 3.0, mode, 0.5)
        for before, after in zip(previous, ps, strict=True):
            assert_close(1 - after / before, np.full(np.shape(before), rho))
        previous = ps


# ---------------------------------------------------------------------------------- parity

both_packages = pytest.mark.skipif(
    not (available("torch") and available("jax")), reason="parity needs torch and jax"
)


@pytest.fixture(scope="module")
def both():
    if not (available("torch") and available("jax")):
        pytest.skip("parity needs torch and jax")
    return TorchBackend(), JaxBackend()


@both_packages
@given(run=su_runs(), base=st.sampled_from([None, "adam"]))
def test_su_amos_trajectories_agree(both, run, base):
    """SuAmosSchedule and su_amos_schedule on the same inputs give the same trajectory."""
    params, grad_seq, hyper = run
    torch_b, jax_b = both
    _, magnitudes = oracle_su_amos(params, grad_seq, base=base, **hyper)
    with jax_b.x64():
        got_jax = run_su_amos(jax_b, params, grad_seq, base=base, **shell_hyper(hyper))
    got_torch = run_su_amos(torch_b, params, grad_seq, base=base, **shell_hyper(hyper))
    check_trajectory(torch_b, got_torch, got_jax, magnitudes)


@both_packages
@given(run=adamw_runs())
def test_adamw_trajectories_agree(both, run):
    params, grad_seq, hyper = run
    torch_b, jax_b = both
    with jax_b.x64():
        got_jax = run_adamw(jax_b, params, grad_seq, **hyper)
    got_torch = run_adamw(torch_b, params, grad_seq, **hyper)
    for a, b in zip(got_torch, got_jax, strict=True):
        assert_all_close(a, b)


def torch_factories():
    import torch

    from torch_opt import schedules as m

    def opt(kind=torch.optim.AdamW):
        return kind([torch.zeros(2, requires_grad=True)], weight_decay=0.0)

    return {
        "decay": lambda **kw: m.amos_decay(**{"half_life": 10, **kw}),
        "schedules": lambda **kw: m.AmosDecayScheduler(
            opt(), **{"lr": 1e-3, "half_life": 10, **kw}
        ),
        "rule": lambda **kw: m.SuAmosSchedule(
            opt(torch.optim.Adam), **{"lr": 1e-3, "half_life": 10, **kw}
        ),
    }


def jax_factories():
    from jax_opt import schedules as m

    return {
        "decay": lambda **kw: m.amos_decay(**{"half_life": 10, **kw}),
        "schedules": lambda **kw: m.amos_decay_schedules(**{"lr": 1e-3, "half_life": 10, **kw}),
        "rule": lambda **kw: m.su_amos_schedule(**{"lr": 1e-3, "half_life": 10, **kw}),
    }


BAD_ARGUMENTS = [
    ("decay", {"half_life": 0.0}, "Invalid half_life: 0.0 (must be > 0)"),
    ("decay", {"half_life": -5}, "Invalid half_life: -5.0 (must be > 0)"),
    (
        "decay",
        {"mode": "linear"},
        "Invalid mode: 'linear' (must be one of 'inverse_time', 'inverse_square')",
    ),
    ("schedules", {"half_life": 0.0}, "Invalid half_life: 0.0 (must be > 0)"),
    (
        "schedules",
        {"mode": "cosine"},
        "Invalid mode: 'cosine' (must be one of 'inverse_time', 'inverse_square')",
    ),
    ("schedules", {"lr": -0.1}, "Invalid lr: -0.1 (must be >= 0)"),
    ("schedules", {"q": 0.0}, "Invalid q: 0.0 (must be > 0)"),
    ("rule", {"half_life": -1.0}, "Invalid half_life: -1.0 (must be > 0)"),
    (
        "rule",
        {"mode": "exp"},
        "Invalid mode: 'exp' (must be one of 'inverse_time', 'inverse_square')",
    ),
    ("rule", {"lr": -1.0}, "Invalid lr: -1.0 (must be >= 0)"),
    ("rule", {"q": -2.0}, "Invalid q: -2.0 (must be > 0)"),
]


@both_packages
@pytest.mark.parametrize(("factory", "kwargs", "message"), BAD_ARGUMENTS)
def test_bad_arguments_read_the_same_in_both_packages(factory, kwargs, message):
    for factories in (torch_factories(), jax_factories()):
        with pytest.raises(ValueError) as info:
            factories[factory](**kwargs)
        assert str(info.value) == message
