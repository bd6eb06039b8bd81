"""flood, iflood, adaflood_levels and adaflood of both packages against the oracle, values and
gradients, and the properties of math.md §3.5, once per backend, in float64."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.backends import assert_close
from tests.reference import flooding as ref
from tests.strategies import arrays_like, shapes

loss_values = st.floats(0.0, 50.0, allow_subnormal=False)
levels = st.floats(0.0, 5.0, allow_subnormal=False)


@st.composite
def loss_arrays(draw, min_dims=0):
    shape = draw(shapes.filter(lambda s: len(s) >= min_dims))
    return draw(arrays_like(shape, loss_values))


@given(losses=loss_arrays(), level=levels)
@example(losses=np.array([0.5, 0.2, 0.7]), level=0.5)  # one loss exactly at the level
@example(losses=np.array(0.0), level=0.0)
def test_flood_value_and_gradient_equal_oracle(backend, losses, level):
    """(1), (2): the value and, through autodiff, the slope sign(L - b), 0 at L = b."""
    with backend.x64():
        value, grad = backend.value_and_grad(lambda x: backend.mod.flood(x, level).sum(), losses)
    np.testing.assert_allclose(value, ref.flood(losses, level).sum(), rtol=1e-12, atol=1e-12)
    assert np.array_equal(grad, ref.flood_slope(losses, level) * np.ones_like(losses))


@given(losses=loss_arrays(min_dims=1), level=levels)
def test_iflood_equals_oracle_and_bounds_flood(backend, losses, level):
    with backend.x64():
        x = backend.asarray(losses)
        individual = float(backend.mod.iflood(x, level))
        batch = float(backend.mod.flood(x.mean(), level))
        _, grad = backend.value_and_grad(lambda v: backend.mod.iflood(v, level), losses)
    assert_close(individual, ref.iflood(losses, level))
    assert individual >= batch - 1e-12  # §3.5 (6)
    assert_close(grad, ref.flood_slope(losses, level) / losses.size)


@given(
    aux=arrays_like((5,), st.floats(0.0, 30.0)),
    gamma=st.floats(0.0, 1.0),
    alpha=st.floats(0.0, 3.0),
    beta=st.floats(0.0, 3.0),
)
@example(aux=np.array([0.0, 0.1, 1.0, 10.0, 30.0]), gamma=1.0, alpha=1.0, beta=0.0)
@example(aux=np.array([0.0, 0.1, 1.0, 10.0, 30.0]), gamma=0.0, alpha=2.0, beta=0.5)
def test_adaflood_levels_equal_oracle_and_are_constants(backend, aux, gamma, alpha, beta):
    with backend.x64():
        got = backend.to_numpy(
            backend.mod.adaflood_levels(backend.asarray(aux), gamma, alpha, beta)
        )
        _, grad = backend.value_and_grad(
            lambda a: backend.mod.adaflood_levels(a, gamma, alpha, beta).sum() + 0 * a.sum(), aux
        )
    assert_close(got, ref.adaflood_levels(aux, gamma, alpha, beta))
    assert not grad.any()  # no gradient flows into the levels


@given(
    losses=arrays_like((6,), loss_values),
    aux=arrays_like((6,), st.floats(0.0, 30.0)),
    gamma=st.floats(0.0, 1.0),
)
def test_adaflood_equals_oracle(backend, losses, aux, gamma):
    levels_ = ref.adaflood_levels(aux, gamma)
    with backend.x64():
        value, grad = backend.value_and_grad(
            lambda x: backend.mod.adaflood(x, backend.asarray(levels_)), losses
        )
        plain = float(
            backend.mod.adaflood(
                backend.asarray(losses), backend.mod.adaflood_levels(backend.asarray(aux), 1.0)
            )
        )
    assert_close(value, ref.adaflood(losses, levels_))
    assert_close(grad, ref.flood_slope(losses, levels_) / losses.size)
    assert_close(plain, losses.mean())  # §3.5 (6): gamma = 1 is the plain loss


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_descent_then_ascent_through_the_flooded_loss(backend, ratio):
    """§3.5 (4), (5) through each package's flood: a step on the flooded loss above the level
    is descent, below it ascent; the pair is a gradient-penalty step up to O(eps^3)."""
    a = ref.A

    def loss_fn(theta):
        return 0.5 * theta @ backend.asarray(a) @ theta + backend.xp.cos(theta).sum()

    theta0 = np.array([0.3, -0.5, 0.8])
    errors = []
    for eps in (0.1, 0.05, 0.025, 0.0125):
        with backend.x64():
            _, g = backend.value_and_grad(lambda t: backend.mod.flood(loss_fn(t), 0.0), theta0)
            mid = theta0 - eps * g  # level 0 < L: descent
            _, g = backend.value_and_grad(lambda t: backend.mod.flood(loss_fn(t), 1e6), mid)
            end = mid - ratio * eps * g  # level far above L: ascent
        errors.append(np.linalg.norm(end - ref.two_step_prediction(theta0, eps, ratio * eps)))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    np.testing.assert_allclose(orders, 3.0, atol=0.1)


def test_level_and_shape_errors(backend):
    mod = backend.mod
    with pytest.raises(ValueError, match=r"^Invalid level: -0\.1 \(must be >= 0\)$"):
        mod.flood(backend.asarray(np.ones(2)), -0.1)
    with pytest.raises(ValueError, match=r"^Invalid gamma: 1\.5 \(must be in \[0, 1\]\)$"):
        mod.adaflood_levels(backend.asarray(np.ones(2)), gamma=1.5)
    with pytest.raises(ValueError, match=r"^Invalid alpha: -1\.0 \(must be >= 0\)$"):
        mod.adaflood_levels(backend.asarray(np.ones(2)), alpha=-1.0)
    with pytest.raises(
        ValueError,
        match=r"^Invalid levels: shape \(3,\) \(must match the "
        r"shape of losses, \(4,\)\)$",
    ):
        mod.adaflood(backend.asarray(np.ones(4)), backend.asarray(np.ones(3)))
