"""The MGS kernels of both packages against the oracle, (1)-(6) composed into one step, and the
properties of math.md §4.4, once per backend, in float64."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.reference import sampling as ref
from tests.strategies import arrays_like, tensor_lists

unit = st.floats(-3.0, 3.0, allow_subnormal=False)


def kernel_step(backend, grads, normals, mask, losses_fn, hyper):
    """(1)-(6) through the backend's kernels; returns Delta (NumPy), the weights and log q."""
    k = backend.mod
    conv = [None if g is None else backend.asarray(g) for g in grads]
    guides = k.clip_surrogate(conv, hyper["max_grad_norm"])
    scales = [
        k.noise_scale(g, noise=hyper["noise"], noise_scale=hyper["noise_scale"]) for g in guides
    ]
    eps = [
        k.perturbations(
            g,
            backend.asarray(z),
            backend.asarray(np.asarray(mask)),
            scale=s,
            antithetic=hyper["antithetic"],
        )
        for g, z, s in zip(guides, normals, scales, strict=True)
    ]
    eps_np = [backend.to_numpy(e) for e in eps]
    losses, loss0 = losses_fn(eps_np)
    log_q = k.log_proposal(
        eps, guides, scales, mix=hyper["mix"], proposal_density=hyper["proposal_density"]
    )
    w = k.importance_weights(
        backend.asarray(np.asarray(losses)), loss0, log_q, temperature=hyper["temperature"]
    )
    delta = k.weighted_direction(w, eps)
    return [backend.to_numpy(d) for d in delta], backend.to_numpy(w), backend.to_numpy(log_q)


hypers = st.fixed_dictionaries(
    {
        "noise": st.sampled_from([0.1, 1.0, 3.0]),
        "noise_scale": st.sampled_from(["grad", "constant"]),
        "mix": st.sampled_from([0.0, 0.25, 0.5, 1.0]),
        "temperature": st.sampled_from([0.05, 1.0, 30.0]),
        "proposal_density": st.sampled_from(["exact", "unit_variance"]),
        "antithetic": st.booleans(),
        "max_grad_norm": st.sampled_from([None, 0.5, 10.0]),
        "num_samples": st.sampled_from([1, 2, 4, 6]),
        "drop_grad": st.booleans(),
    }
)


# Eager JAX dispatches many small ops per example: at most 30 (the profile's count if fewer).
@settings(max_examples=min(30, settings().max_examples))
@given(params=tensor_lists(elements=unit), hyper=hypers, data=st.data())
@example(
    params=[np.array([1.0, -2.0])],
    hyper={
        "noise": 1.0,
        "noise_scale": "grad",
        "mix": 0.5,
        "temperature": 1.0,
        "proposal_density": "exact",
        "antithetic": False,
        "max_grad_norm": 1.0,
        "num_samples": 4,
        "drop_grad": False,
    },
    data=None,
)  # the reference code's defaults
def test_one_step_through_the_kernels_equals_oracle(backend, params, hyper, data):
    """(1)-(6): clipped surrogate, scales, candidates, log q, weights, direction."""
    rng = np.random.default_rng(0 if data is None else data.draw(st.integers(0, 2**16)))
    k = hyper["num_samples"]
    if hyper["antithetic"] and k % 2:
        k += 1
    rows = k // 2 if hyper["antithetic"] else k
    grads = [rng.standard_normal(p.shape) for p in params]
    if hyper["drop_grad"]:
        grads[0] = None  # a tensor without a surrogate
    normals = [rng.standard_normal((rows, *p.shape)) for p in params]
    mask = ref.guided(k, hyper["mix"], hyper["antithetic"])

    def loss(ps):
        return float(sum(np.sum(np.sin(3 * p) + p * p) for p in ps))

    def losses_fn(eps):
        return [loss([p + e[i] for p, e in zip(params, eps, strict=True)]) for i in range(k)], loss(
            params
        )

    with backend.x64():
        delta, w, log_q = kernel_step(backend, grads, normals, mask, losses_fn, hyper)
    _, ref_delta, ref_w = ref.mgs_step(
        params,
        grads,
        normals,
        mask,
        loss,
        noise=hyper["noise"],
        noise_scale_mode=hyper["noise_scale"],
        mix=hyper["mix"],
        temperature=hyper["temperature"],
        proposal_density=hyper["proposal_density"],
        antithetic=hyper["antithetic"],
        max_grad_norm=hyper["max_grad_norm"],
    )
    np.testing.assert_allclose(w, ref_w, rtol=1e-9, atol=1e-12)
    for d, r in zip(delta, ref_delta, strict=True):
        np.testing.assert_allclose(d, r, rtol=1e-9, atol=1e-12)


@given(
    losses=arrays_like((5,), st.floats(-1e6, 1e6)),
    log_q=arrays_like((5,), st.floats(-50.0, 50.0)),
    shift=st.floats(-1e3, 1e3),
    temperature=st.floats(0.01, 100.0),
)
@example(losses=np.array([1e6, -1e6, 0.0, 5.0, 5.0]), log_q=np.zeros(5), shift=0.0, temperature=1.0)
def test_weights_equal_oracle_sum_to_one_and_ignore_shifts(
    backend, losses, log_q, shift, temperature
):
    """(5) and §4.4 (4), at any loss magnitude."""
    mod = backend.mod
    with backend.x64():

        def weights(d, d0, q):
            return backend.to_numpy(
                mod.importance_weights(
                    backend.asarray(d), d0, backend.asarray(q), temperature=temperature
                )
            )

        w = weights(losses, 0.5, log_q)
        shifted = weights(losses + shift, 0.5 + shift, log_q)
        q_shifted = weights(losses, 0.5, log_q + shift)
    np.testing.assert_allclose(
        w, ref.importance_weights(losses, 0.5, log_q, temperature), atol=1e-12
    )
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(shifted, w, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(q_shifted, w, rtol=1e-6, atol=1e-9)


def test_weight_limits_and_non_finite_losses(backend):
    """§4.4 (6), §4.3: temperature -> 0 picks the best candidate; a non-finite loss gets weight 0
    and never a NaN; no finite loss gives zero weights."""
    mod = backend.mod
    log_q = np.array([0.0, 1.0, -1.0, 0.5])
    with backend.x64():

        def weights(d, t):
            return backend.to_numpy(
                mod.importance_weights(
                    backend.asarray(d), 0.0, backend.asarray(log_q), temperature=t
                )
            )

        best = weights(np.array([3.0, 1.0, 2.0, 1.5]), 1e-8)
        bad = weights(np.array([np.nan, 1.0, np.inf, -np.inf]), 1.0)
        none = weights(np.full(4, np.nan), 1.0)
    np.testing.assert_array_equal(best, [0.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(bad, [0.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(none, np.zeros(4))


def test_identical_candidates_and_a_single_candidate(backend):
    """§4.4 (5) and K = 1: the direction is the candidate, whatever the weights."""
    mod = backend.mod
    eps = np.tile(np.array([[0.3, -1.2, 2.0]]), (4, 1))
    with backend.x64():
        w = mod.importance_weights(
            backend.asarray(np.array([4.0, 1.0, 2.0, 3.0])),
            0.0,
            backend.asarray(np.zeros(4)),
            temperature=1.0,
        )
        (delta,) = mod.weighted_direction(w, [backend.asarray(eps)])
        w1 = mod.importance_weights(
            backend.asarray(np.array([9.0])), 0.0, backend.asarray(np.zeros(1)), temperature=1.0
        )
        (delta1,) = mod.weighted_direction(w1, [backend.asarray(eps[:1])])
    np.testing.assert_allclose(backend.to_numpy(delta), eps[0], rtol=1e-12)
    np.testing.assert_array_equal(backend.to_numpy(w1), [1.0])
    np.testing.assert_allclose(backend.to_numpy(delta1), eps[0], rtol=1e-12)


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_ball_model_mean_direction_is_minus_g(backend, temperature):
    """§4.4 (1), Monte Carlo: candidates uniform in the disk |Delta| <= eps (a constant proposal)
    and l = g.Delta give a direction along -g (cos > 0.99) for any temperature."""
    mod = backend.mod
    rng = np.random.default_rng(3)
    n, eps_r, g = 400_000, 0.5, np.array([0.7, -0.2])
    r = eps_r * np.sqrt(rng.random(n))
    phi = rng.random(n) * 2 * np.pi
    pts = np.stack([r * np.cos(phi), r * np.sin(phi)], -1)
    with backend.x64():
        w = mod.importance_weights(
            backend.asarray(pts @ g), 0.0, backend.asarray(np.zeros(n)), temperature=temperature
        )
        (mean,) = mod.weighted_direction(w, [backend.asarray(pts)])
    mean = backend.to_numpy(mean)
    assert -(mean @ g) / (np.linalg.norm(mean) * np.linalg.norm(g)) > 0.99


@pytest.mark.parametrize("density", ["exact", "unit_variance"])
def test_per_entry_scales_over_tensors_laid_end_to_end(backend, density):
    """(3), (4): tensors laid end to end in one (K, n) array, each entry carrying its tensor's
    scale, give the per-tensor perturbations and the same log densities (the form the torch
    shell uses; a tensor without a guide counts as a zero guide)."""
    mod = backend.mod
    rng = np.random.default_rng(11)
    shapes = [(3, 2), (4,), (2, 2)]
    k, mix = 4, 0.5
    mask = np.array(ref.guided(k, mix, False))
    guides = [rng.standard_normal(s) for s in shapes]
    guides[1] = None
    normals = [rng.standard_normal((k, *s)) for s in shapes]
    scales = [0.3, 1.7, 0.05]
    flat_guide = np.concatenate([np.zeros(4) if g is None else g.ravel() for g in guides])
    flat_normals = np.concatenate([z.reshape(k, -1) for z in normals], axis=1)
    flat_scale = np.repeat(scales, [int(np.prod(s)) for s in shapes])
    with backend.x64():
        eps = [
            mod.perturbations(
                None if g is None else backend.asarray(g),
                backend.asarray(z),
                backend.asarray(mask),
                scale=s,
            )
            for g, z, s in zip(guides, normals, scales, strict=True)
        ]
        flat_eps = mod.perturbations(
            backend.asarray(flat_guide),
            backend.asarray(flat_normals),
            backend.asarray(mask),
            scale=backend.asarray(flat_scale),
        )
        log_q = mod.log_proposal(
            eps,
            [None if g is None else backend.asarray(g) for g in guides],
            scales,
            mix=mix,
            proposal_density=density,
        )
        flat_log_q = mod.log_proposal(
            [flat_eps],
            [backend.asarray(flat_guide)],
            [backend.asarray(flat_scale)],
            mix=mix,
            proposal_density=density,
        )
    per_tensor = np.concatenate([backend.to_numpy(e).reshape(k, -1) for e in eps], axis=1)
    np.testing.assert_allclose(backend.to_numpy(flat_eps), per_tensor, rtol=1e-15, atol=0)
    want = ref.log_proposal([backend.to_numpy(e) for e in eps], guides, scales, mix, density)
    np.testing.assert_allclose(backend.to_numpy(log_q), want, rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(flat_log_q), want, rtol=1e-12)
