"""The flooding oracle checked against closed forms and the properties of math.md §3.5."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tests.backends import assert_close
from tests.reference import flooding as ref
from tests.strategies import arrays_like

losses = st.floats(0.0, 50.0)
levels = st.floats(0.0, 5.0)


@given(loss=losses, level=levels)
def test_flooded_loss_is_at_least_the_level_and_symmetric_around_it(loss, level):
    """§3.5 (2): flood >= b, flood(b) = b, symmetric in L around b."""
    assert ref.flood(loss, level) >= level
    assert ref.flood(level, level) == level
    np.testing.assert_allclose(ref.flood(level + 0.3, level), ref.flood(level - 0.3, level))


@given(loss=losses)
def test_level_zero_is_the_identity_for_non_negative_losses(loss):
    """§3.5 (1)."""
    assert ref.flood(loss, 0.0) == loss
    assert ref.flood_slope(loss, 0.0) == (1.0 if loss > 0 else 0.0)


@given(per_sample=st.lists(losses, min_size=1, max_size=20), level=levels)
def test_iflood_bounds_flood_with_equality_on_one_side(per_sample, level):
    """§3.5 (6): iFlood >= Flood of the mean, equal when all losses lie on one side of b."""
    per_sample = np.array(per_sample)
    individual, batch = ref.iflood(per_sample, level), ref.flood(per_sample.mean(), level)
    assert individual >= batch - 1e-12
    if np.all(per_sample >= level) or np.all(per_sample <= level):
        np.testing.assert_allclose(individual, batch, rtol=1e-12)


@given(
    aux=arrays_like((6,), st.floats(0.0, 30.0)), alpha=st.floats(0.0, 3.0), beta=st.floats(0.0, 3.0)
)
def test_adaflood_levels_limits(aux, alpha, beta):
    """§3.4: gamma = 1 gives 0 (plain loss), gamma = 0 gives alpha l + beta, and for
    cross-entropy theta = -log(gamma + (1 - gamma) p) with p = exp(-l)."""
    np.testing.assert_allclose(ref.adaflood_levels(aux, 1.0, alpha, beta), 0.0, atol=0)
    np.testing.assert_allclose(
        ref.adaflood_levels(aux, 0.0, alpha, beta), alpha * aux + beta, rtol=1e-10, atol=1e-12
    )
    p = np.exp(-aux)
    np.testing.assert_allclose(ref.adaflood_levels(aux, 0.3), -np.log(0.3 + 0.7 * p), rtol=1e-12)
    losses_ = aux + 1.0
    np.testing.assert_allclose(
        ref.adaflood(losses_, ref.adaflood_levels(aux, 1.0)), losses_.mean(), rtol=1e-12
    )


def test_descent_ascent_pair_is_a_gradient_penalty_step():
    """§3.5 (4)-(5): one descent and one ascent step move theta by -(eps^2/2) grad||g||^2 (or
    the asymmetric form (7)) up to O(eps^3): the error falls 8x per halving of eps."""
    theta = np.array([0.3, -0.5, 0.8])
    for ratio in (1.0, 0.5):
        errors = [
            np.linalg.norm(
                ref.descent_then_ascent(theta, eps, ratio * eps)
                - ref.two_step_prediction(theta, eps, ratio * eps)
            )
            for eps in (0.1, 0.05, 0.025, 0.0125)
        ]
        orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
        np.testing.assert_allclose(orders, 3.0, atol=0.1)


@given(theta=arrays_like((3,), st.floats(-2.0, 2.0)))
def test_closed_form_gradient_and_hessian(theta):
    """The test objective's gradient and Hessian match central finite differences."""
    eye = np.eye(3) * 1e-6
    fd_grad = np.array([(ref.objective(theta + e) - ref.objective(theta - e)) / 2e-6 for e in eye])
    fd_hess = np.array([(ref.gradient(theta + e) - ref.gradient(theta - e)) / 2e-6 for e in eye])
    assert_close(fd_grad, ref.gradient(theta), "float32")
    assert_close(fd_hess, ref.hessian(theta), "float32")
