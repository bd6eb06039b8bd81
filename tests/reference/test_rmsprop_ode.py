"""The oracle checked against closed forms (math.md §1.5) and against upstream implementations
(torch.optim.RMSprop, torch.optim.Adam, optax.rmsprop)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.backends import assert_all_close, assert_close, assert_trajectory_close, jax_x64
from tests.reference import rmsprop_ode as ref
from tests.strategies import (
    HUGE_AND_TINY,
    ZERO_GRADS,
    epsilons,
    learning_rates,
    optax_example,
    optax_rmsprop_kwargs,
    torch_example,
    torch_rmsprop_kwargs,
    trajectories,
)

# ------------------------------------------------------------------------- upstream: torch.optim


@given(traj=trajectories(), kw=torch_rmsprop_kwargs)
@example(traj=ZERO_GRADS, kw=torch_example(lr=0.1))
@example(traj=HUGE_AND_TINY, kw=torch_example(alpha=0.0, momentum=0.9, maximize=True))
@example(
    traj=HUGE_AND_TINY, kw=torch_example(alpha=0.5, weight_decay=0.1, momentum=0.9, centered=True)
)
def test_oracle_equals_torch_rmsprop(traj, kw):
    torch = pytest.importorskip("torch")
    params, grad_seq = traj
    ps = [torch.tensor(p, requires_grad=True) for p in params]
    opt = torch.optim.RMSprop(ps, **kw)
    expected = ref.trajectory(params, grad_seq, eps_in_sqrt=False, **ref.from_torch(kw))
    got = []
    for grads in grad_seq:
        for p, g in zip(ps, grads, strict=True):
            p.grad = torch.tensor(g)
        opt.step()
        got.append([p.detach().numpy().copy() for p in ps])
    assert_trajectory_close(got, expected)


@given(traj=trajectories(), lr=learning_rates, beta2=st.floats(0.05, 0.999), eps=epsilons)
def test_oracle_bias_correction_equals_adam_without_first_moment(traj, lr, beta2, eps):
    """RMSprop with bias correction and eps outside the root is Adam with beta1 = 0."""
    torch = pytest.importorskip("torch")
    params, grad_seq = traj
    ps = [torch.tensor(p, requires_grad=True) for p in params]
    opt = torch.optim.Adam(ps, lr=lr, betas=(0.0, beta2), eps=eps)
    expected = ref.run(
        params, grad_seq, lr=lr, decay=beta2, eps=eps, eps_in_sqrt=False, bias_correction=True
    )
    for grads, want in zip(grad_seq, expected, strict=True):
        for p, g in zip(ps, grads, strict=True):
            p.grad = torch.tensor(g)
        opt.step()
        assert_all_close([p.detach().numpy() for p in ps], want)


# ------------------------------------------------------------------------------ upstream: optax


@given(traj=trajectories(), lr=learning_rates, kw=optax_rmsprop_kwargs)
@example(traj=ZERO_GRADS, lr=0.1, kw=optax_example())
def test_oracle_equals_optax_rmsprop(traj, lr, kw):
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    params, grad_seq = traj
    expected = ref.trajectory(
        params, grad_seq, lr=lr, momentum_style="optax", **{**kw, "momentum": kw["momentum"] or 0.0}
    )
    got = []
    with jax_x64():
        opt = optax.rmsprop(lr, **kw)
        ps = [jax.numpy.asarray(p) for p in params]
        state = opt.init(ps)
        for grads in grad_seq:
            updates, state = opt.update([jax.numpy.asarray(g) for g in grads], state, ps)
            ps = optax.apply_updates(ps, updates)
            got.append([np.asarray(p) for p in ps])
    assert_trajectory_close(got, expected)


# ------------------------------------------------------------------- closed forms (math.md §1.5)


def _one_step(params, grads, **hyper):
    hyper = {"lr": 0.1, "decay": 0.0, "eps": 0.0, "eps_in_sqrt": True, **hyper}
    new, _ = ref.step(
        params, grads, ref.init_state(params, scale=hyper.get("scale", "elementwise")), **hyper
    )
    return [n - p for n, p in zip(new, params, strict=True)]


def test_elementwise_no_memory_is_sign_descent():
    """§1.5 (1): decay 0, eps -> 0: |dtheta_i| = lr where g_i != 0, and 0 where g_i = 0."""
    g = [np.array([3.0, -1e-3, 0.0, 250.0])]
    (delta,) = _one_step([np.zeros(4)], g, eps=1e-30)
    np.testing.assert_allclose(delta, -0.1 * np.sign(g[0]), rtol=1e-12, atol=0)


def test_global_no_memory_is_normalized_gradient_descent():
    """§1.5 (2), (3): decay 0, eps 0: dtheta = -lr g/||g||, ||dtheta|| = lr, cos = 1."""
    g = [np.array([3.0, -4.0]), np.array([[12.0]])]
    delta = _one_step([np.zeros(2), np.zeros((1, 1))], g, scale="global")
    assert_all_close(delta, [-0.1 * x / 13.0 for x in g])
    flat_d = np.concatenate([d.ravel() for d in delta])
    flat_g = np.concatenate([x.ravel() for x in g])
    assert np.isclose(np.linalg.norm(flat_d), 0.1, rtol=1e-14)
    assert np.isclose(
        flat_d @ -flat_g / (np.linalg.norm(flat_d) * np.linalg.norm(flat_g)), 1.0, rtol=1e-14
    )


@given(
    traj=trajectories(max_steps=3),
    decay=st.floats(0.0, 0.99),
    scale=st.floats(0.1, 10.0),
    which=st.sampled_from(["elementwise", "global"]),
)
def test_updates_invariant_to_loss_scale(traj, decay, scale, which):
    """§1.5 (4): multiplying L (so every gradient) by c > 0 leaves the updates unchanged, eps 0."""
    params, grad_seq = traj
    hyper = {"lr": 0.1, "decay": decay, "eps": 0.0, "eps_in_sqrt": True, "scale": which}
    plain = ref.run(params, grad_seq, **hyper)
    scaled = ref.run(params, [[scale * g for g in gs] for gs in grad_seq], **hyper)
    for a, b in zip(plain, scaled, strict=True):
        assert_all_close(a, b)


def test_elementwise_invariant_to_per_coordinate_rescaling():
    """§1.5 (3): with eps 0, decay 0 the element-wise update ignores a diagonal rescaling."""
    g = np.array([0.5, -2.0, 7.0])
    d = np.array([10.0, 0.01, 3.0])
    (a,) = _one_step([np.zeros(3)], [g])
    (b,) = _one_step([np.zeros(3)], [d * g])
    assert_close(a, b)


def test_first_step_without_bias_correction_is_inflated():
    """math.md §1.3 edge case (a): G_0 = 0 gives a first step of lr/sqrt(1 - decay) * sign(g)."""
    for decay in (0.9, 0.99):
        (delta,) = _one_step([np.zeros(3)], [np.array([1.0, -5.0, 0.25])], decay=decay)
        assert_close(np.abs(delta), np.full(3, 0.1 / np.sqrt(1 - decay)))


# -------------------------------------------------------------------------- the vector field


@given(
    traj=trajectories(min_steps=1, max_steps=1),
    lr=st.floats(1e-3, 0.5),
    rate=st.floats(0.01, 1.9),
    eps=epsilons,
    eps_in_sqrt=st.booleans(),
    scale=st.sampled_from(["elementwise", "global"]),
    G0=st.floats(0.0, 5.0),
)
def test_euler_step_of_the_field_is_one_optimizer_step(traj, lr, rate, eps, eps_in_sqrt, scale, G0):
    params, grad_seq = traj
    theta, grad = params[0], grad_seq[0][0]
    field = ref.vector_field(
        lambda _t: grad, rate=rate, lr=lr, eps=eps, eps_in_sqrt=eps_in_sqrt, scale=scale
    )
    G = np.full(theta.shape, G0) if scale == "elementwise" else np.float64(G0)
    dtheta, dG = field(theta, G)
    state = ref.init_state([theta], scale=scale, initial_scale=G0)
    new, new_state = ref.step(
        [theta],
        [grad],
        state,
        lr=lr,
        decay=1 - rate * lr,
        eps=eps,
        eps_in_sqrt=eps_in_sqrt,
        scale=scale,
    )
    assert_close(theta + lr * dtheta, new[0])
    nu = new_state["nu"][0] if scale == "elementwise" else new_state["nu"]
    assert_close(G + lr * dG, nu)


def _quadratic_grad(theta):
    return np.array([1.0, 10.0]) * theta


def test_rmsprop_tracks_the_limit_ode_to_first_order():
    """The error against the limit ODE (lr = 0) at a fixed time halves with lr (slope ~1)."""
    theta0, G0, rate, t_end = np.array([1.0, 1.0]), np.array([1.0, 1.0]), 1.0, 1.0
    limit = ref.vector_field(_quadratic_grad, rate=rate, eps=1e-12, eps_in_sqrt=True)
    exact, _ = ref.integrate(limit, theta0, G0, t_end)
    errors = []
    for lr in (0.02, 0.01, 0.005):
        theta, state = [theta0], ref.init_state([theta0], initial_scale=1.0)
        for _ in range(round(t_end / lr)):
            theta, state = ref.step(
                theta,
                [_quadratic_grad(theta[0])],
                state,
                lr=lr,
                decay=1 - rate * lr,
                eps=1e-12,
                eps_in_sqrt=True,
            )
        errors.append(np.linalg.norm(theta[0] - exact))
    slopes = np.diff(np.log(errors)) / np.diff(np.log([0.02, 0.01, 0.005]))
    np.testing.assert_allclose(slopes, 1.0, atol=0.1)


# ----------------------------------------------------------------------- the loss-tied step


def test_loss_tied_on_a_quadratic_decays_geometrically():
    """§1.5 (6): L = ||theta||^2 / 2 gives theta <- (1 - h/2) theta, L_k = L_0 (1 - h/2)^{2k}
    (= L_0 (1 - h)^k to first order in h, the ODE's L_0 e^{-t})."""
    h, k = 1e-3, 1000
    theta = [np.array([3.0, -4.0])]
    for _ in range(k):
        theta = ref.loss_tied_step(theta, theta, 0.5 * np.sum(theta[0] ** 2), lr=h, max_scale=1e3)
    loss = 0.5 * np.sum(theta[0] ** 2)
    np.testing.assert_allclose(loss, 12.5 * (1 - h / 2) ** (2 * k), rtol=1e-12)
    np.testing.assert_allclose(loss, 12.5 * (1 - h) ** k, rtol=1e-3)
    np.testing.assert_allclose(loss, 12.5 * np.exp(-h * k), rtol=1e-3)


def test_loss_tied_zero_gradient_and_below_min_loss_do_not_move():
    theta = [np.array([1.0, 2.0])]
    assert_all_close(ref.loss_tied_step(theta, [np.zeros(2)], 5.0, lr=0.1, max_scale=10), theta)
    assert_all_close(
        ref.loss_tied_step(theta, [np.ones(2)], 0.5, lr=0.1, max_scale=10, min_loss=1.0), theta
    )


def su_trajectory(step_fn, steps: int = 20000) -> np.ndarray:
    x, xs = 4.0, []
    for _ in range(steps):
        x = step_fn(x)
        xs.append(x)
    return np.array(xs)


@pytest.mark.slow
def test_su_example_loss_tied_escapes_where_gradient_descent_stalls():
    """§1.5 (7): Su's 1-D example (math.md §1.4)."""

    def loss_tied(x):
        f, df = ref.su_example(x)
        return ref.loss_tied_step([np.array(x)], [np.array(df)], f, lr=0.01, max_scale=1000.0)[
            0
        ].item()

    def gd(x):
        return x - 0.01 * ref.su_example(x)[1]

    assert ref.settles(su_trajectory(loss_tied), ref.SU_GLOBAL_MIN)
    xs = su_trajectory(gd, 2500)
    np.testing.assert_allclose(xs[-1], 3.0, atol=1e-6)
    np.testing.assert_allclose(ref.su_example(xs[-1])[0], 1.62276, atol=1e-6)


# ------------------------------------------------------------------- momentum from the ODE


@given(step_size=st.floats(1e-3, 3.0), friction=st.floats(1e-3, 50.0))
def test_momentum_in_unit_interval_iff_friction_times_step_below_two(step_size, friction):
    """§1.5 (5)."""
    _, beta = ref.damped_ode_to_momentum(step_size, friction)
    product = step_size * friction
    if abs(product - 2.0) > 1e-9:
        assert (0.0 < beta < 1.0) == (0.0 < product < 2.0)


def test_momentum_mapping_limits_and_retune_identity():
    lr, beta = ref.damped_ode_to_momentum(1e-6, 1.0)
    np.testing.assert_allclose([lr, beta], [1e-12, 1.0], rtol=1e-6)
    assert ref.retune_momentum(0.9, 1.0) == 0.9
    np.testing.assert_allclose(ref.retune_momentum(0.9, 4.0), 0.8)


@given(step_size=st.floats(0.01, 0.5), friction=st.floats(0.0, 3.0))
def test_heavy_ball_is_the_leapfrog_scheme_of_the_damped_ode(step_size, friction):
    """Heavy ball with (alpha, beta) from (16)-(17) reproduces the leapfrog iterates (19)."""

    def grad(theta):
        return np.array([2.0, 0.5]) * theta + np.sin(theta)

    lr, beta = ref.damped_ode_to_momentum(step_size, friction)
    theta0 = np.array([1.0, -2.0])
    np.testing.assert_allclose(
        ref.heavy_ball(grad, theta0, lr=lr, momentum=beta, steps=50),
        ref.leapfrog(grad, theta0, step_size=step_size, friction=friction, steps=50),
        rtol=1e-9,
        atol=1e-12,
    )
