"""The penalty oracle checked against backward error analysis and the properties of §5.5."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import root

from tests.backends import assert_close
from tests.reference import flooding as objective
from tests.reference import penalty as ref
from tests.strategies import arrays_like

THETA = np.array([0.3, -0.5, 0.8])


def orders(errors):
    """log2 of the error ratio per halving of the step."""
    return np.log2(np.array(errors[:-1]) / np.array(errors[1:]))


def test_one_gd_step_follows_the_modified_flow_to_third_order():
    """§5.5 (1): a GD step of size h is O(h^2) off the plain flow and O(h^3) off the flow of
    L + (h/4) ||grad L||^2."""
    steps = (0.1, 0.05, 0.025, 0.0125)
    plain, modified = [], []
    for h in steps:
        gd = THETA - h * objective.gradient(THETA)
        plain.append(np.linalg.norm(gd - ref.flow(THETA, h)))
        modified.append(np.linalg.norm(gd - ref.flow(THETA, h, mu=ref.igr_coefficient(h))))
    np.testing.assert_allclose(orders(plain), 2.0, atol=0.1)
    np.testing.assert_allclose(orders(modified), 3.0, atol=0.15)


def test_heavy_ball_follows_its_modified_flow_to_second_order():
    """§5.5 (5): heavy ball (beta = 0.5) over a fixed time is O(h) off the plain flow and O(h^2)
    off the flow with mu = h (1 + beta) / (4 (1 - beta)^2)."""
    beta, t_end, steps = 0.5, 1.0, (0.02, 0.01, 0.005, 0.0025)
    plain, modified = [], []
    for h in steps:
        end = ref.heavy_ball(THETA, h, beta, round(t_end * (1 - beta) / h))
        plain.append(np.linalg.norm(end - ref.flow(THETA, t_end)))
        mu = ref.igr_coefficient(h, beta)
        modified.append(np.linalg.norm(end - ref.flow(THETA, t_end, mu=mu)))
    np.testing.assert_allclose(orders(plain), 1.0, atol=0.1)
    np.testing.assert_allclose(orders(modified), 2.0, atol=0.15)


def test_igr_coefficient_reduces_to_a_quarter_of_the_lr():
    assert ref.igr_coefficient(0.2) == 0.05
    np.testing.assert_allclose(ref.igr_coefficient(0.2, 0.5), 0.2 * 1.5 / (4 * 0.25))


@given(theta=arrays_like((3,), st.floats(-2.0, 2.0)), mu=st.floats(0.0, 1.0))
def test_penalized_gradient_matches_finite_differences(theta, mu):
    """§5.5 (2): the gradient of L + mu ||grad L||^2 is grad L + 2 mu H grad L; mu = 0 is L."""
    eye = np.eye(3) * 1e-6
    fd = np.array(
        [(ref.penalized(theta + e, mu) - ref.penalized(theta - e, mu)) / 2e-6 for e in eye]
    )
    assert_close(fd, ref.penalized_gradient(theta, mu), "float32")
    assert ref.penalized(theta, 0.0) == objective.objective(theta)


def test_a_critical_point_is_left_alone():
    """§5.5 (3): where grad L = 0, L_IGR = L and grad L_IGR = 0."""
    critical = root(objective.gradient, THETA, jac=objective.hessian, tol=1e-14).x
    np.testing.assert_allclose(objective.gradient(critical), 0.0, atol=1e-13)
    np.testing.assert_allclose(ref.penalized(critical, 0.7), objective.objective(critical))
    np.testing.assert_allclose(ref.penalized_gradient(critical, 0.7), 0.0, atol=1e-12)


def test_finite_difference_converges_to_the_exact_penalty_gradient():
    """The forward difference (3) is first order in delta."""
    exact = ref.penalized_gradient(THETA, 0.3)
    errors = [
        np.linalg.norm(ref.finite_difference_step_gradient(THETA, 0.3, d) - exact)
        for d in (1e-2, 5e-3, 2.5e-3, 1.25e-3)
    ]
    np.testing.assert_allclose(orders(errors), 1.0, atol=0.1)
