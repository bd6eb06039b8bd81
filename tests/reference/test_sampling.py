"""The MGS oracle checked against closed forms and the properties of math.md §4.4."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import multivariate_normal

from tests.reference import sampling as ref
from tests.strategies import arrays_like
from twinopt.sampling import mixture_mask

loss_vectors = arrays_like((6,), st.floats(-1e6, 1e6))
log_qs = arrays_like((6,), st.floats(-50.0, 50.0))


def langevin(x: float) -> float:
    return 1 / math.tanh(x) - 1 / x


def test_one_dimensional_closed_form():
    """§4.4 (2): on the interval |Delta| <= eps with l = g Delta and a uniform proposal, the
    expectation is -eps L(eps g / alpha); at eps 0.5, g 0.7, alpha 0.5 it is -0.11302."""
    eps, g, alpha = 0.5, 0.7, 0.5
    assert -eps * langevin(eps * g / alpha) == pytest.approx(-0.11302, abs=1e-5)
    n = 200_000
    delta = -eps + (np.arange(n) + 0.5) * (2 * eps / n)  # midpoints of a uniform grid
    w = ref.importance_weights(g * delta, 0.0, np.zeros(n), alpha)
    (mean,) = ref.weighted_direction(w, [delta])
    assert mean == pytest.approx(-eps * langevin(eps * g / alpha), rel=1e-8)


@pytest.mark.parametrize("alpha", [1e-3, 0.3, 1.0, 1e3])
def test_ball_model_direction_is_minus_g_and_magnitude_limits(alpha):
    """§4.4 (1): on the disk |Delta| <= eps with l = g.Delta the expectation points along -g for
    every alpha; its size tends to eps (alpha -> 0) and eps^2 |g| / ((d + 2) alpha) (large)."""
    eps, g = 0.8, np.array([0.6, -1.3])
    n = 1000  # a polar grid symmetric about -g; a uniform r has density ∝ 1/r on the disk
    r = (np.arange(n) + 0.5) * (eps / n)
    phi = np.arctan2(-g[1], -g[0]) + (np.arange(n) + 0.5) * (2 * np.pi / n)
    r, phi = (a.ravel() for a in np.meshgrid(r, phi))
    pts = np.stack([r * np.cos(phi), r * np.sin(phi)], -1)
    w = ref.importance_weights(pts @ g, 0.0, -np.log(r), alpha)
    (mean,) = ref.weighted_direction(w, [pts])
    cos = -(mean @ g) / (np.linalg.norm(mean) * np.linalg.norm(g))
    assert cos > 1 - 1e-9
    size = np.linalg.norm(mean)
    if alpha == 1e-3:
        assert size == pytest.approx(eps, rel=1e-2)
    if alpha == 1e3:
        assert size == pytest.approx(eps**2 * np.linalg.norm(g) / (4 * alpha), rel=1e-3)


def test_gaussian_target_gives_equal_weights_and_newton_step():
    """§4.4 (3): for a quadratic l and the proposal equal to the target N(-H^-1 g, alpha H^-1),
    the weights are equal and the expectation is -H^-1 g, for any alpha."""
    rng = np.random.default_rng(0)
    h = np.array([[2.0, 0.5], [0.5, 1.0]])
    g = np.array([1.0, -2.0])
    newton = -np.linalg.solve(h, g)
    for alpha in (0.1, 3.0):
        target = multivariate_normal(newton, alpha * np.linalg.inv(h))
        delta = target.rvs(200_000, random_state=rng)
        losses = delta @ g + 0.5 * np.einsum("ki,ij,kj->k", delta, h, delta)
        w = ref.importance_weights(losses, 0.0, target.logpdf(delta), alpha)
        np.testing.assert_allclose(w, 1 / len(w), rtol=1e-9)
        (mean,) = ref.weighted_direction(w, [delta])
        np.testing.assert_allclose(mean, newton, atol=0.02)


@given(losses=loss_vectors, log_q=log_qs, shift=st.floats(-1e3, 1e3), t=st.floats(0.01, 100))
def test_weights_sum_to_one_and_ignore_constant_shifts(losses, log_q, shift, t):
    """§4.4 (4)."""
    w = ref.importance_weights(losses, 1.0, log_q, t)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert (w >= 0).all()
    np.testing.assert_allclose(
        ref.importance_weights(losses + shift, 1.0 + shift, log_q, t), w, rtol=1e-6, atol=1e-12
    )
    np.testing.assert_allclose(
        ref.importance_weights(losses, 1.0, log_q + shift, t), w, rtol=1e-6, atol=1e-12
    )


def test_temperature_limits_and_non_finite_losses():
    """§4.4 (6) and §4.3: alpha -> 0 picks the best candidate, a large alpha gives w ∝ 1/q; a
    non-finite loss gets weight 0; no finite loss at all gives zero weights."""
    losses = np.array([3.0, 1.0, 2.0, 1.5])
    log_q = np.array([0.0, 1.0, -1.0, 0.5])
    np.testing.assert_array_equal(ref.importance_weights(losses, 0.0, log_q, 1e-6), [0, 1, 0, 0])
    far = ref.importance_weights(losses, 0.0, log_q, 1e12)
    np.testing.assert_allclose(far, np.exp(-log_q) / np.exp(-log_q).sum(), rtol=1e-9)
    bad = ref.importance_weights(np.array([np.nan, 1.0, np.inf, -np.inf]), 0.0, log_q, 1.0)
    np.testing.assert_array_equal(bad, [0, 1, 0, 0])
    assert not ref.importance_weights(np.full(4, np.nan), 0.0, log_q, 1.0).any()


@pytest.mark.parametrize("mix", [0.0, 0.3, 0.5, 1.0])
def test_log_proposal_is_the_mixture_density_up_to_one_constant(mix):
    """(4) differs from the true mixture log density by one constant over the candidates."""
    rng = np.random.default_rng(1)
    guide, s = rng.standard_normal(3), 0.7
    eps = rng.standard_normal((5, 3)) + rng.integers(0, 2, (5, 1)) * guide
    ours = ref.log_proposal([eps], [guide], [s], mix)
    with np.errstate(divide="ignore"):
        true = np.logaddexp(
            np.log(1 - mix) + multivariate_normal(np.zeros(3), s * s).logpdf(eps),
            np.log(mix) + multivariate_normal(guide, s * s).logpdf(eps),
        )
    diff = ours - true
    np.testing.assert_allclose(diff, diff[0], rtol=1e-12)
    unit = ref.log_proposal([eps], [guide], [s], mix, "unit_variance")
    half = np.logaddexp(
        np.log(0.5) - 0.5 * (eps**2).sum(1), np.log(0.5) - 0.5 * ((eps - guide) ** 2).sum(1)
    )
    if mix == 0.5:  # the reference code's form
        np.testing.assert_allclose(unit, half, rtol=1e-12)


@given(k=st.integers(1, 40), mix=st.floats(0.0, 1.0))
def test_mixture_mask_proportion(k, mix):
    """(3): ceil(K mix) guided candidates, spread evenly; every even k at mix 0.5; the shared
    kernel equals the oracle; antithetic pairs share their centre."""
    mask = ref.guided(k, mix)
    assert mask.sum() == math.ceil(k * mix)  # the increments telescope
    assert list(mask) == mixture_mask(k, mix)
    if 2 * k <= 80:
        pairs = ref.guided(2 * k, mix, antithetic=True)
        assert list(pairs) == mixture_mask(2 * k, mix, antithetic=True)
        np.testing.assert_array_equal(pairs[::2], pairs[1::2])
    np.testing.assert_array_equal(ref.guided(6, 0.5), [1, 0, 1, 0, 1, 0])


def test_surrogate_clip_scale_and_perturbations():
    """(1)-(3) on numbers worked by hand."""
    g1, g2 = np.array([3.0, 0.0]), np.array([[4.0]])
    c1, c2, none = ref.clip_surrogate([g1, g2, None], 1.0)  # global norm 5
    np.testing.assert_allclose(c1, [-0.6, 0.0])
    np.testing.assert_allclose(c2, [[-0.8]])
    assert none is None
    np.testing.assert_allclose(ref.clip_surrogate([g1], None)[0], -g1)
    np.testing.assert_allclose(ref.clip_surrogate([g1], 10.0)[0], -g1)
    assert ref.noise_scale(c1, 2.0, "grad") == pytest.approx(0.6)
    assert ref.noise_scale(c1, 2.0, "constant") == 2.0
    assert ref.noise_scale(np.zeros(2), 2.0, "grad") == 2.0
    assert ref.noise_scale(None, 2.0, "grad") == 2.0
    z = np.array([[1.0, 2.0], [3.0, 4.0]])
    eps = ref.perturbations(c1, z, [True, False], 0.5)
    np.testing.assert_allclose(eps, [[-0.1, 1.0], [1.5, 2.0]])
    anti = ref.perturbations(c1, z, [True, True, False, False], 0.5, antithetic=True)
    np.testing.assert_allclose(anti, [[-0.1, 1.0], [-1.1, -1.0], [1.5, 2.0], [-1.5, -2.0]])


def test_single_candidate_step_and_identical_candidates():
    """§4.3/§4.4 (5): K = 1 moves by lr eps_0; identical candidates give that candidate."""
    theta = [np.array([1.0, -1.0])]
    grads = [np.array([0.2, 0.1])]
    z = [np.array([[0.5, -0.25]])]

    def loss(ps):
        return float(np.sum(ps[0] ** 2))

    new, delta, w = ref.mgs_step(theta, grads, z, [True], loss, lr=0.5)
    eps = ref.perturbations(ref.clip_surrogate(grads, 1.0)[0], z[0], [True], 1.0 * 0.15)
    np.testing.assert_array_equal(w, [1.0])
    np.testing.assert_allclose(delta[0], eps[0])
    np.testing.assert_allclose(new[0], theta[0] + 0.5 * eps[0])
    same = np.tile(eps, (4, 1))
    w4 = ref.importance_weights([1.0, 2.0, 0.5, 3.0], 1.0, np.zeros(4), 1.0)
    np.testing.assert_allclose(ref.weighted_direction(w4, [same])[0], eps[0], rtol=1e-12)
