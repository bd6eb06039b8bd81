"""The schedules oracle checked against Su's derivation (math.md §2.1), the properties of §2.6
item 6, and the upstream AdamW (torch.optim.AdamW, optax.adamw) it drives."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.backends import assert_all_close, assert_close, jax_x64
from tests.reference import schedules as ref
from tests.strategies import arrays_like, moderate, shapes

modes = st.sampled_from(ref.MODES)
half_lives = st.floats(1e-2, 1e6)
lrs = st.floats(1e-5, 1.0)
qs = st.floats(0.1, 10.0)


@given(half_life=half_lives, mode=modes)
def test_decay_starts_at_one_and_halves_after_the_half_life(half_life, mode):
    """§2.6 (6): s(0) = 1, s(T) = 1/2; then 1/3 (inverse_time) or 1/(2 sqrt(2) - 1)^2
    (inverse_square) at 2T, and decreasing."""
    assert ref.decay(0, half_life, mode) == 1.0
    assert_close(ref.decay(half_life, half_life, mode), 0.5)
    at_2t = 1 / 3 if mode == "inverse_time" else 1 / (2 * np.sqrt(2) - 1) ** 2
    assert_close(ref.decay(2 * half_life, half_life, mode), at_2t)
    ts = np.linspace(0, 10 * half_life, 50)
    assert np.all(np.diff(ref.decay(ts, half_life, mode)) < 0)


@given(t=st.integers(0, 10**7), alpha0=lrs, half_life=half_lives, mode=modes)
def test_half_life_form_equals_sus_cosine_form(t, alpha0, half_life, mode):
    """(1) is Su's 1/(2 alpha0 p0 t + 1) with 2 alpha0 p0 T = 1; (2) is 1/(alpha0 p t + 1)^2 with
    alpha0 p T = sqrt(2) - 1."""
    p = ref.cosine_for_half_life(alpha0, half_life, mode)
    assert_close(ref.decay(t, half_life, mode), ref.su_decay(t, alpha0, p, mode))


@pytest.mark.parametrize("mode", ref.MODES)
def test_decay_solves_sus_error_recurrence_to_first_order(mode):
    """§2.1 steps 4-7: with the balanced decay, Su's recurrence for the squared error ratio
    follows s(t) up to O(alpha0 p): the largest gap over [0, 3T] halves when T doubles, and the
    ratio is 1/2 at the half-life within 0.4%."""
    errors = []
    for half_life in (100, 200, 400, 800):
        p = ref.cosine_for_half_life(1e-3, half_life, mode)
        x = ref.error_ratio(1e-3, p, 3 * half_life, mode)
        s = ref.decay(np.arange(3 * half_life + 1), half_life, mode)
        errors.append(np.max(np.abs(x - s)))
        np.testing.assert_allclose(x[half_life], 0.5, rtol=4e-3)
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    np.testing.assert_allclose(orders, 1.0, atol=0.02)


@given(t=st.integers(0, 10**6), alpha0=lrs, half_life=half_lives, mode=modes, q=qs)
def test_decay_rate_is_of_the_order_of_the_squared_learning_rate(t, alpha0, half_life, mode, q):
    """§2.1 step 1, O(rho) = O(alpha^2): rho_t / alpha_t^2 = 1 / (2 q s(t)) whatever alpha0
    (1 / (2 q) at t = 0); and the lr-scaled weight decay (5) realizes rho_t."""
    s = ref.decay(t, half_life, mode)
    lr = ref.learning_rate(t, alpha0, half_life, mode)
    rho = ref.decay_rate(t, alpha0, half_life, mode, q)
    assert_close(rho / lr**2, 1 / (2 * q * s))
    assert_close(ref.decay_rate(t, 3 * alpha0, half_life, mode, q), 9 * rho)
    assert_close(lr * ref.weight_decay(t, alpha0, half_life, mode, q), rho)
    assert ref.weight_decay(t, alpha0, half_life, mode, q, "absolute") == rho


@st.composite
def rule_cases(draw):
    shape = draw(shapes)
    u = draw(arrays_like(shape, moderate))
    return {
        "u": u,
        "theta": draw(arrays_like(shape, moderate)),
        "alpha0": draw(lrs),
        "sigma": draw(st.floats(1e-3, 10.0)),
        "s": draw(st.floats(1e-3, 1.0)),
        "q": draw(qs),
    }


@given(case=rule_cases())
@example(
    case={"u": np.zeros(3), "theta": np.ones(3), "alpha0": 0.1, "sigma": 1.0, "s": 1.0, "q": 1.0}
)
def test_rule_balances_the_learning_rate_against_the_decay(case):
    """(6) is the sum of a step of norm alpha0 sqrt(k) sigma s(t) along -u (0 when u = 0) and
    -rho_t theta; Su's balance (§2.1 steps 2, 3, 5) holds with the per-direction learning rate
    alpha_t = alpha0 ||eps_0|| s(t) / ||u|| and ||eps_t||^2 = ||eps_0||^2 s(t), ||eps_0|| =
    sqrt(k) sigma: alpha_t^2 ||u||^2 = 2 rho_t q ||eps_t||^2, so
    rho_t / alpha_t^2 = ||u||^2 / (2 q ||eps_0||^2 s(t))  (math.md §2.6 item 6)."""
    u, theta, a0, sigma, s, q = (case[k] for k in ("u", "theta", "alpha0", "sigma", "s", "q"))
    full = ref.su_update(u, theta, a0, sigma, s, q)
    step = ref.su_update(u, np.zeros_like(theta), a0, sigma, s, q)
    decay = ref.su_update(np.zeros_like(u), theta, a0, sigma, s, q)
    rho = a0**2 / (2 * q) * s
    assert_close(decay, -rho * theta)
    assert_close(full, step + decay)
    norm_u = np.linalg.norm(u.ravel())
    eps0_sq = u.size * sigma**2
    if norm_u == 0:
        assert np.all(step == 0)
        return
    assert_close(np.linalg.norm(step.ravel()), a0 * np.sqrt(u.size) * sigma * s)
    assert_close(np.sum(step * u), -a0 * np.sqrt(u.size) * sigma * s * norm_u)  # along -u
    alpha_t = np.linalg.norm(step.ravel()) / norm_u
    assert_close(alpha_t**2 * norm_u**2, 2 * rho * q * eps0_sq * s)
    assert_close(rho / alpha_t**2, norm_u**2 / (2 * q * eps0_sq * s))


def test_model_scale_is_the_rms_or_one_half():
    assert ref.model_scale(np.array([3.0, -4.0])) == np.sqrt(12.5)
    assert ref.model_scale(np.zeros((2, 2))) == 0.5


GRADS = [
    [np.array([[0.3, -1.2], [0.0, 2.0]]), np.array([0.5, -0.1, 0.0])],
    [np.array([[-0.4, 0.2], [1.0, 0.0]]), np.array([0.0, 0.0, 0.0])],
    [np.array([[1.5, 0.7], [-0.2, 0.1]]), np.array([-0.3, 0.9, 0.2])],
    [np.array([[0.0, -0.6], [0.4, -1.1]]), np.array([0.2, 0.0, -0.5])],
]
PARAMS = [np.array([[0.5, -0.3], [0.8, 0.1]]), np.array([0.2, -0.7, 1.1])]
SETTINGS = {"alpha0": 0.05, "half_life": 2.0, "q": 0.5}


@pytest.mark.parametrize("mode", ref.MODES)
def test_adamw_oracle_equals_torch_adamw_driven_by_hand(mode):
    """The oracle's AdamW with (3), (4) is torch.optim.AdamW with lr = alpha_t and
    weight_decay = rho_t / alpha_t set before each step."""
    torch = pytest.importorskip("torch")
    want = ref.adamw_run(PARAMS, GRADS, mode=mode, **SETTINGS)
    ps = [torch.tensor(p, requires_grad=True) for p in PARAMS]
    opt = torch.optim.AdamW(ps)
    a0, half_life, q = SETTINGS["alpha0"], SETTINGS["half_life"], SETTINGS["q"]
    for t, (grads, expected) in enumerate(zip(GRADS, want, strict=True)):
        lr = ref.learning_rate(t, a0, half_life, mode)
        opt.param_groups[0]["lr"] = lr
        opt.param_groups[0]["weight_decay"] = ref.decay_rate(t, a0, half_life, mode, q) / lr
        for p, g in zip(ps, grads, strict=True):
            p.grad = torch.tensor(g)
        opt.step()
        assert_all_close([p.detach().numpy() for p in ps], expected)


@pytest.mark.parametrize("mode", ref.MODES)
def test_adamw_oracle_equals_optax_adamw_with_the_schedule(mode):
    """The same AdamW is optax.adamw(alpha_t schedule, weight_decay=(5)): optax counts from 0
    and decays by learning_rate * weight_decay; the oracle's Adam is optax.scale_by_adam."""
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    a0, half_life, q = SETTINGS["alpha0"], SETTINGS["half_life"], SETTINGS["q"]
    want = ref.adamw_run(PARAMS, GRADS, mode=mode, **SETTINGS)
    with jax_x64():
        opt = optax.adamw(
            lambda n: ref.learning_rate(n, a0, half_life, mode),
            weight_decay=ref.weight_decay(0, a0, half_life, mode, q),
        )
        adam, adam_ref = optax.scale_by_adam(), ref.Adam([p.shape for p in PARAMS])
        ps = [jax.numpy.asarray(p) for p in PARAMS]
        state, adam_state = opt.init(ps), adam.init(ps)
        for grads, expected in zip(GRADS, want, strict=True):
            gs = [jax.numpy.asarray(g) for g in grads]
            updates, state = opt.update(gs, state, ps)
            ps = optax.apply_updates(ps, updates)
            assert_all_close([np.asarray(p) for p in ps], expected)
            directions, adam_state = adam.update(gs, adam_state)
            assert_all_close([np.asarray(d) for d in directions], adam_ref(grads))
