"""torch_opt.sampling: the MGS kernels against the oracle, MGS step for step against
``reference.sampling.mgs_step`` with the same noise, the properties of math.md §4.4, failures
that change nothing, checkpoints, the population and distributed paths, argument errors."""

from __future__ import annotations

import copy
import io
import math
import pathlib
import shutil
import warnings

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.backends import assert_close
from tests.reference import sampling as ref
from tests.strategies import arrays_like, moderate, shapes, tensor_lists

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from torch_opt import (  # noqa: E402
    MGS,
    clip_surrogate,
    functional_population,
    importance_weights,
    log_proposal,
    noise_scale,
    perturbations,
    weighted_direction,
)

F64 = torch.float64
NAN, INF = float("nan"), float("inf")


def tt(x):
    return None if x is None else torch.tensor(np.asarray(x, np.float64))


def nn_(x):
    return None if x is None else x.detach().cpu().numpy().copy()


def as_float(x) -> float:
    return float(x)


# --------------------------------------------------------------------- kernels vs the oracle

scales_ = st.floats(1e-3, 10.0)
mixes = st.sampled_from([0.0, 0.25, 0.5, 1.0])


@given(grads=tensor_lists(max_size=4), c=st.one_of(st.none(), st.floats(1e-3, 1e3)), data=st.data())
@example(grads=[np.zeros((2, 3)), np.array(0.0)], c=1.0, data=None)  # all-zero surrogate
@example(grads=[np.array([3.0, 0.0]), np.array([[4.0]])], c=1.0, data=None)  # norm 5 -> 1
@example(grads=[np.array([1e4, -1e-6])], c=None, data=None)
def test_clip_surrogate_equals_oracle(grads, c, data):
    """(1), with parameters that have no surrogate (``None``)."""
    drop = (
        [False] * len(grads)
        if data is None
        else data.draw(st.lists(st.booleans(), min_size=len(grads), max_size=len(grads)))
    )
    grads = [None if d else g for g, d in zip(grads, drop, strict=True)]
    got = clip_surrogate([tt(g) for g in grads], c)
    want = ref.clip_surrogate(grads, c)
    for a, b in zip(got, want, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == F64
            assert_close(nn_(a), b)


def test_clip_surrogate_without_any_surrogate():
    assert clip_surrogate([None, None], 1.0) == [None, None]


@given(
    guide=st.one_of(st.none(), shapes.flatmap(arrays_like)),
    noise=st.floats(0.01, 10.0),
    mode=st.sampled_from(["grad", "constant"]),
)
@example(guide=np.zeros((2, 2)), noise=0.7, mode="grad")  # all-zero guide: s = noise
@example(guide=None, noise=0.7, mode="grad")  # no guide: s = noise
@example(guide=np.array([-0.6, 0.0]), noise=2.0, mode="grad")
def test_noise_scale_equals_oracle(guide, noise, mode):
    """(2)."""
    got = noise_scale(tt(guide), noise=noise, noise_scale=mode)
    assert as_float(got) == pytest.approx(ref.noise_scale(guide, noise, mode), rel=1e-12)


@st.composite
def perturbation_inputs(draw):
    shape = draw(shapes)
    k = draw(st.sampled_from([1, 2, 4, 6]))
    antithetic = draw(st.booleans()) and k % 2 == 0
    rows = k // 2 if antithetic else k
    guide = draw(st.one_of(st.none(), arrays_like(shape, moderate)))
    normals = draw(arrays_like((rows, *shape), moderate))
    mask = ref.guided(k, draw(mixes), antithetic)
    return guide, normals, mask, draw(scales_), antithetic


@given(inputs=perturbation_inputs())
@example(inputs=(np.array([1.0, -2.0]), np.array([[0.5, 1.0]]), [True], 0.3, False))  # K = 1
@example(inputs=(None, np.ones((2, 3)), [True, False], 1.5, False))  # no guide: centre 0
@example(inputs=(np.zeros(3), np.ones((2, 3)), [True, True], 1.0, False))  # all-zero guide
@example(inputs=(np.array([1.0, 2.0]), np.eye(2), [True, True, False, False], 0.5, True))
@example(inputs=(np.array([1.0, 2.0]), np.eye(2), ref.guided(2, 0.0), 0.5, False))  # mix 0
@example(inputs=(np.array([1.0, 2.0]), np.eye(2), ref.guided(2, 1.0), 0.5, False))  # mix 1
def test_perturbations_equal_oracle(inputs):
    """(3), antithetic pairs included."""
    guide, normals, mask, scale, antithetic = inputs
    got = perturbations(tt(guide), tt(normals), list(mask), scale=scale, antithetic=antithetic)
    want = ref.perturbations(guide, normals, mask, scale, antithetic)
    assert got.shape == want.shape and got.dtype == F64
    assert_close(nn_(got), want)


@st.composite
def proposal_inputs(draw):
    k = draw(st.sampled_from([1, 2, 3, 5]))
    tensor_shapes = draw(st.lists(shapes, min_size=1, max_size=3))
    eps = [draw(arrays_like((k, *s), moderate)) for s in tensor_shapes]
    guides = [draw(st.one_of(st.none(), arrays_like(s, moderate))) for s in tensor_shapes]
    scales = [draw(st.floats(0.1, 3.0)) for _ in tensor_shapes]
    return eps, guides, scales


@given(
    inputs=proposal_inputs(),
    mix=st.one_of(mixes, st.floats(0.0, 1.0)),
    density=st.sampled_from(["exact", "unit_variance"]),
)
@example(inputs=([np.ones((1, 2))], [np.array([1.0, 0.0])], [0.5]), mix=0.5, density="exact")
@example(inputs=([np.ones((3, 2))], [None], [0.5]), mix=0.0, density="exact")  # no guide
@example(inputs=([np.ones((3, 2))], [np.zeros(2)], [2.0]), mix=1.0, density="exact")
@example(inputs=([np.ones((3, 2))], [np.ones(2)], [2.0]), mix=0.0, density="unit_variance")
def test_log_proposal_equals_oracle(inputs, mix, density):
    """(4), both densities, mix at and between its bounds."""
    eps, guides, scales = inputs
    got = log_proposal(
        [tt(e) for e in eps],
        [tt(g) for g in guides],
        scales,
        mix=mix,
        proposal_density=density,
    )
    want = ref.log_proposal(eps, guides, scales, mix, density)
    assert got.dtype == F64 and got.shape == want.shape
    assert_close(nn_(got), want)


def test_log_proposal_accumulates_float32_candidates_in_float64():
    """A million float32 entries: the log densities equal the float64 oracle on the same values
    (a float32 sum would be off by units, which the softmax (5) would see)."""
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(3, 1_000_000, generator=gen)
    guide = torch.randn(1_000_000, generator=gen) * 0.1
    got = log_proposal([eps], [guide], [0.9], mix=0.5, proposal_density="exact")
    want = ref.log_proposal([eps.double().numpy()], [guide.double().numpy()], [0.9], 0.5)
    assert got.dtype == F64
    np.testing.assert_allclose(nn_(got), want, rtol=1e-12)
    # the scale as the shell passes it: a 0-d float32 tensor, used as the same number
    s = torch.tensor(0.9)
    want_s = ref.log_proposal([eps.double().numpy()], [None], [float(s)], 0.5)
    got_s = log_proposal([eps], [None], [s], mix=0.5, proposal_density="exact")
    np.testing.assert_allclose(nn_(got_s), want_s, rtol=1e-12)


@pytest.mark.parametrize("density", ["exact", "unit_variance"])
def test_log_proposal_in_column_blocks_equals_oracle(monkeypatch, density):
    """(4) reduced a few columns at a time (blocks of 8 entries: 2 columns of 4 candidates, so
    tensors straddle blocks), with per-tensor and per-entry scales and a tensor without a
    guide, equals the oracle."""
    import torch_opt.sampling.kernels as kernels

    monkeypatch.setattr(kernels, "_BLOCK", 8)
    rng = np.random.default_rng(5)
    shapes = [(3, 3), (5,), (2, 1, 2)]
    eps = [rng.standard_normal((4, *s)) for s in shapes]
    guides = [rng.standard_normal(s) for s in shapes]
    guides[1] = None
    scales = [0.4, 2.0, 0.7]
    got = log_proposal(
        [tt(e).float() for e in eps],
        [None if g is None else tt(g) for g in guides],
        [scales[0], torch.tensor(scales[1]), torch.full(shapes[2], scales[2], dtype=F64)],
        mix=0.25,
        proposal_density=density,
    )
    rounded = [tt(e).float().double().numpy() for e in eps]
    want = ref.log_proposal(rounded, guides, scales, 0.25, density)
    assert got.dtype == F64
    np.testing.assert_allclose(nn_(got), want, rtol=1e-12)


def test_noise_scales_of_many_tensors_equal_the_kernel_per_tensor():
    """(2) for several tensors in a few ops equals ``noise_scale`` per tensor (exactly, in
    float64): 'grad' and 'constant', no guide, an all-zero guide, float32 and float64."""
    from torch_opt.sampling.kernels import _noise_scales

    for dtype in (torch.float32, F64):
        gen = torch.Generator().manual_seed(2)
        guides = [
            torch.randn(3, 4, generator=gen, dtype=dtype),
            None,
            torch.zeros(5, dtype=dtype),
            torch.randn(7, generator=gen, dtype=dtype) * 1e-3,
            torch.randn(2, generator=gen, dtype=dtype),
        ]
        noises = [0.1, 0.3, 0.7, 2.0, 1.0]
        modes = ["grad", "grad", "grad", "grad", "constant"]
        got = _noise_scales(guides, noises, modes, "cpu")
        want = [
            torch.as_tensor(noise_scale(g, noise=n, noise_scale=m), dtype=F64)
            for g, n, m in zip(guides, noises, modes, strict=True)
        ]
        assert got.dtype == F64
        torch.testing.assert_close(
            got, torch.stack(want), rtol=4e-7 if dtype != F64 else 1e-15, atol=0
        )
        assert got[1] == 0.3 and got[4] == 1.0  # exact Python floats, not float32-rounded


losses_with_gaps = st.one_of(st.floats(-1e6, 1e6), st.sampled_from([NAN, INF, -INF]))


@given(
    losses=arrays_like((5,), losses_with_gaps),
    loss0=st.floats(-1e6, 1e6),
    log_q=arrays_like((5,), st.floats(-50.0, 50.0)),
    temperature=st.floats(0.01, 100.0),
)
@example(losses=np.array([1e6, -1e6, 0.0, 5.0, 5.0]), loss0=0.0, log_q=np.zeros(5), temperature=1.0)
@example(
    losses=np.array([1e6, 1e6 + 1, 1e6 - 1, 1e6, 1e6]),
    loss0=1e6,
    log_q=np.zeros(5),
    temperature=1.0,
)
@example(
    losses=np.array([NAN, 2.0, INF, -INF, 1.0]), loss0=1.0, log_q=np.arange(5.0), temperature=1.0
)
@example(losses=np.full(5, NAN), loss0=1.0, log_q=np.zeros(5), temperature=1.0)
def test_importance_weights_equal_oracle(losses, loss0, log_q, temperature):
    """(5) at any magnitude; non-finite losses get weight 0, never NaN."""
    got = nn_(importance_weights(tt(losses), loss0, tt(log_q), temperature=temperature))
    want = ref.importance_weights(losses, loss0, log_q, temperature)
    assert not np.isnan(got).any()
    rtol = ref.weights_rtol(losses, loss0, log_q, temperature, base=1e-9)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-12)
    assert (got[~np.isfinite(losses)] == 0).all()


@given(
    k=st.integers(1, 5),
    tensor_shapes=st.lists(shapes, min_size=1, max_size=3),
    data=st.data(),
)
@example(k=1, tensor_shapes=[(2,)], data=None)
def test_weighted_direction_equals_oracle(k, tensor_shapes, data):
    """(6)."""
    if data is None:
        w, eps = np.ones(1), [np.array([[0.5, -1.0]])]
    else:
        raw = data.draw(arrays_like((k,), st.floats(0.0, 1.0)))
        w = raw / raw.sum() if raw.sum() > 0 else np.full(k, 1 / k)
        eps = [data.draw(arrays_like((k, *s))) for s in tensor_shapes]
    got = weighted_direction(tt(w), [tt(e) for e in eps])
    for a, b, e in zip(got, ref.weighted_direction(w, eps), eps, strict=True):
        assert a.dtype == F64
        assert_close(nn_(a), b, magnitude=np.max(np.abs(e), initial=0.0))


# ------------------------------------------------------------------ properties (math.md §4.4)


@given(
    losses=arrays_like((6,), st.floats(-1e6, 1e6)),
    log_q=arrays_like((6,), st.floats(-50.0, 50.0)),
    shift=st.floats(-1e3, 1e3),
    temperature=st.floats(0.01, 100.0),
)
def test_weights_sum_to_one_and_ignore_constant_shifts(losses, log_q, shift, temperature):
    """§4.4 (4): normalized; adding a constant to every loss (and d_0) or to log q changes
    nothing."""

    def w(d, d0, q):
        return nn_(importance_weights(tt(d), d0, tt(q), temperature=temperature))

    base = w(losses, 0.5, log_q)
    assert base.sum() == pytest.approx(1.0, abs=1e-12) and (base >= 0).all()
    np.testing.assert_allclose(w(losses + shift, 0.5 + shift, log_q), base, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(w(losses, 0.5, log_q + shift), base, rtol=1e-6, atol=1e-9)


def test_temperature_to_zero_selects_the_best_and_splits_ties():
    """§4.4 (6): alpha -> 0 is one-hot on argmin d_k (ties split); a huge alpha gives 1/q."""
    log_q = tt([0.0, 1.0, -1.0, 0.5])
    best = importance_weights(tt([3.0, 1.0, 2.0, 1.5]), 0.0, log_q, temperature=1e-8)
    np.testing.assert_array_equal(nn_(best), [0.0, 1.0, 0.0, 0.0])
    tie = importance_weights(tt([3.0, 1.0, 1.0, 1.5]), 0.0, torch.zeros(4), temperature=1e-8)
    np.testing.assert_array_equal(nn_(tie), [0.0, 0.5, 0.5, 0.0])
    far = importance_weights(tt([3.0, 1.0, 2.0, 1.5]), 0.0, log_q, temperature=1e12)
    inv_q = np.exp(-nn_(log_q))
    np.testing.assert_allclose(nn_(far), inv_q / inv_q.sum(), rtol=1e-9)


def test_identical_candidates_and_a_single_candidate():
    """§4.4 (5) and K = 1: the direction is the candidate, whatever the weights."""
    eps = tt(np.tile([[0.3, -1.2, 2.0]], (4, 1)))
    w = importance_weights(
        tt([4.0, 1.0, 2.0, 3.0]), 0.0, tt([0.1, 0.0, 2.0, -1.0]), temperature=1.0
    )
    np.testing.assert_allclose(nn_(weighted_direction(w, [eps])[0]), [0.3, -1.2, 2.0], rtol=1e-12)
    w1 = importance_weights(tt([9.0]), 0.0, tt([3.0]), temperature=1.0)
    np.testing.assert_array_equal(nn_(w1), [1.0])
    (d1,) = weighted_direction(w1, [eps[:1]])
    assert torch.equal(d1, eps[0])


@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_ball_model_mean_direction_is_minus_g(temperature):
    """§4.4 (1), Monte Carlo: uniform candidates in the disk |Delta| <= 0.5 (a constant
    proposal) and l = g.Delta give a mean direction along -g (cos > 0.99)."""
    gen = torch.Generator().manual_seed(5)
    n, radius, g = 400_000, 0.5, tt([0.7, -0.2])
    r = radius * torch.rand(n, generator=gen, dtype=F64).sqrt()
    phi = 2 * math.pi * torch.rand(n, generator=gen, dtype=F64)
    pts = torch.stack([r * phi.cos(), r * phi.sin()], dim=1)
    w = importance_weights(pts @ g, 0.0, torch.zeros(n, dtype=F64), temperature=temperature)
    (mean,) = weighted_direction(w, [pts])
    assert -(mean @ g) / (mean.norm() * g.norm()) > 0.99


def test_one_dimensional_closed_form():
    """§4.4 (2): on |Delta| <= 0.5 with l = 0.7 Delta, alpha = 0.5, a uniform proposal gives
    -eps L(eps g / alpha) = -0.11302 (L the Langevin function)."""
    n, eps_r = 200_000, 0.5
    delta = -eps_r + (torch.arange(n, dtype=F64) + 0.5) * (2 * eps_r / n)
    w = importance_weights(0.7 * delta, 0.0, torch.zeros(n, dtype=F64), temperature=0.5)
    (mean,) = weighted_direction(w, [delta[:, None]])
    x = eps_r * 0.7 / 0.5
    assert mean.item() == pytest.approx(-eps_r * (1 / math.tanh(x) - 1 / x), rel=1e-8)
    assert mean.item() == pytest.approx(-0.11302, abs=1e-5)


@pytest.mark.parametrize("alpha", [0.1, 3.0])
def test_proposal_equal_to_the_gaussian_target_gives_equal_weights(alpha):
    """§4.4 (3): for l = g.Delta + h/2 |Delta|^2 the target exp(-l / alpha) is N(-g / h,
    alpha / h); (4) with mix 1, guide -g / h and s^2 = alpha / h ("exact") is that density up to
    a constant, so every weight is 1 / K and the step tends to the Newton step -g / h."""
    h, g = 2.0, tt([1.0, -2.0, 0.5])
    guide, s = -g / h, math.sqrt(alpha / h)
    gen = torch.Generator().manual_seed(1)
    k = 100_000
    z = torch.randn(k, 3, generator=gen, dtype=F64)
    eps = perturbations(guide, z, [True] * k, scale=s)
    losses = eps @ g + 0.5 * h * eps.square().sum(1)
    log_q = log_proposal([eps], [guide], [s], mix=1.0, proposal_density="exact")
    w = importance_weights(losses, 0.0, log_q, temperature=alpha)
    np.testing.assert_allclose(nn_(w), 1 / k, rtol=1e-8)
    (mean,) = weighted_direction(w, [eps])
    np.testing.assert_allclose(nn_(mean), nn_(guide), atol=0.02)


# ------------------------------------------------------------------- MGS vs the oracle step

C = [np.array([0.4, -0.3, 1.1]), np.array([[0.2, -0.7], [0.5, 0.0]])]


def smooth_loss(ps) -> float:
    """A smooth task loss of NumPy arrays (the oracle's and the closure's)."""
    return float(sum(np.sum(np.sin(3 * p) + (p - c) ** 2) for p, c in zip(ps, C, strict=True)))


def start_params():
    return [np.array([0.5, -1.0, 0.25]), np.array([[1.0, -0.5], [0.0, 2.0]])]


def oracle_step(params, grads, normals, mask, loss_fn, lrs, noises, modes, hyper):
    """The oracle with per-tensor lr, noise and noise_scale: ``mgs_step`` where they agree,
    else its kernels composed the same way."""
    if len(set(noises)) == 1 and len(set(modes)) == 1:
        _, delta, _ = ref.mgs_step(
            params,
            grads,
            normals,
            mask,
            loss_fn,
            lr=1.0,
            noise=noises[0],
            noise_scale_mode=modes[0],
            **hyper,
        )
    else:
        guides = ref.clip_surrogate(grads, hyper["max_grad_norm"])
        scales = [ref.noise_scale(g, n, m) for g, n, m in zip(guides, noises, modes, strict=True)]
        eps = [
            ref.perturbations(g, z, mask, s, hyper["antithetic"])
            for g, z, s in zip(guides, normals, scales, strict=True)
        ]
        d0 = loss_fn(params)
        losses = [
            loss_fn([p + e[i] for p, e in zip(params, eps, strict=True)]) for i in range(len(mask))
        ]
        log_q = ref.log_proposal(eps, guides, scales, hyper["mix"], hyper["proposal_density"])
        w = ref.importance_weights(losses, d0, log_q, hyper["temperature"])
        delta = ref.weighted_direction(w, eps)
    return [p + lr * d for p, d, lr in zip(params, delta, lrs, strict=True)], delta


ORACLE_KEYS = ("mix", "temperature", "proposal_density", "antithetic", "max_grad_norm")
DEFAULT_HYPER = {
    "num_samples": 4,
    "noise": 1.0,
    "noise_scale": "grad",
    "mix": 0.5,
    "random_mix": False,
    "temperature": 1.0,
    "proposal_density": "exact",
    "antithetic": False,
    "max_grad_norm": 1.0,
}
CONFIGS = {
    "reference_defaults": {},
    "constant_unit_variance_no_clip": {
        "noise_scale": "constant",
        "noise": 0.3,
        "proposal_density": "unit_variance",
        "num_samples": 6,
        "mix": 0.25,
        "max_grad_norm": None,
    },
    "antithetic": {"antithetic": True, "temperature": 0.1, "num_samples": 6},
    "random_mix": {"random_mix": True, "mix": 0.7, "num_samples": 5},
    "random_mix_antithetic": {"random_mix": True, "antithetic": True, "mix": 0.5},
    "single_candidate": {"num_samples": 1},
    "mix_0": {"mix": 0.0, "temperature": 3.0},
    "mix_1": {"mix": 1.0, "max_grad_norm": 10.0},
    "black_box": {"noise_scale": "constant", "noise": 0.2, "grads": "none"},
    "one_tensor_without_surrogate": {"grads": "first_none", "lr": 0.5},
    "groups": {"groups": True},
}


def run_against_oracle(config, steps=3, seed=11):
    """Run MGS and the oracle side by side, the oracle fed ``MGS._draw`` from a generator of
    the same seed; returns both trajectories."""
    config = dict(config)
    grads_mode = config.pop("grads", "all")
    groups = config.pop("groups", False)
    lr = config.pop("lr", 1.0)
    hyper = {**DEFAULT_HYPER, **config}
    params = start_params()
    ps = [tt(p).requires_grad_() for p in params]
    if groups:  # per-group lr (scheduled), noise and noise_scale
        opt = MGS(
            [
                {"params": [ps[0]], "lr": 0.5, "noise": 0.5},
                {"params": [ps[1]], "lr": 2.0, "noise": 2.0, "noise_scale": "constant"},
            ],
            seed=seed,
            **{k: v for k, v in hyper.items() if k not in ("noise", "noise_scale")},
        )
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        noises, modes = [0.5, 2.0], ["grad", "constant"]
    else:
        opt = MGS(ps, lr=lr, seed=seed, **hyper)
        scheduler = None
        noises, modes = [hyper["noise"]] * 2, [hyper["noise_scale"]] * 2
    draws = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    oracle_hyper = {k: hyper[k] for k in ORACLE_KEYS}
    got, want = [], []
    for _ in range(steps):
        grads = [rng.standard_normal(p.shape) for p in params]
        if grads_mode == "none":
            grads = [None, None]
        elif grads_mode == "first_none":
            grads[0] = None
        lrs = [g["lr"] for g in opt.param_groups]
        lrs = lrs if groups else [lr, lr]
        mask, normals = opt._draw(draws)
        params, _ = oracle_step(
            params,
            grads,
            [nn_(z) for z in normals],
            mask,
            smooth_loss,
            lrs,
            noises,
            modes,
            oracle_hyper,
        )
        for p, g in zip(ps, grads, strict=True):
            p.grad = tt(g)
        loss = opt.step(lambda: smooth_loss([nn_(p) for p in ps]))
        assert isinstance(loss, float)
        if scheduler is not None:
            scheduler.step()
        got.append([nn_(p) for p in ps])
        want.append([p.copy() for p in params])
    return got, want


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_step_equals_oracle_with_the_same_noise(name):
    """(1)-(7) over three steps, float64, per configuration (per-group values and an LR
    scheduler in "groups")."""
    got, want = run_against_oracle(CONFIGS[name])
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, err_msg=f"step {k + 1}, tensor {i}")
    assert not np.array_equal(got[-1][0], start_params()[0])  # it moved


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")  # the oracle's (2)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_zero_dimensional_and_empty_parameters_step_as_the_oracle():
    """A 0-d and an empty parameter in one block with others (a block's views of a 0-d
    member once failed): three steps equal the oracle's with the same noise."""
    start = [np.array(0.7), np.array([0.5, -1.0, 0.25]), np.zeros((0, 2)), np.array([[2.0]])]
    ps = [tt(p).requires_grad_() for p in start]
    opt = MGS(ps, num_samples=5, seed=6)
    draws = torch.Generator().manual_seed(6)
    rng = np.random.default_rng(6)

    def loss(qs):
        return float(sum(np.sum(np.sin(3 * q) + q**2) for q in qs))

    params = [p.copy() for p in start]
    for _ in range(3):
        grads = [rng.standard_normal(p.shape) for p in start]
        mask, normals = opt._draw(draws)
        params, _, _ = ref.mgs_step(params, grads, [nn_(z) for z in normals], mask, loss)
        for p, g in zip(ps, grads, strict=True):
            p.grad = tt(g)
        opt.step(lambda: loss([nn_(p) for p in ps]))
        for p, want in zip(ps, params, strict=True):
            assert p.shape == want.shape
            assert_close(nn_(p), want)
    assert nn_(ps[0]) != start[0]


def test_draw_order_and_low_precision_normals():
    """The documented draw order: (random_mix uniforms,) then one normal block per parameter,
    half dtypes drawn in float32 and cast."""
    a = torch.zeros(3, dtype=torch.bfloat16, requires_grad=True)
    b = torch.zeros(2, 2, dtype=F64, requires_grad=True)
    opt = MGS([a, b], num_samples=4, antithetic=True, random_mix=True, mix=0.5, seed=3)
    mask, (za, zb) = opt._draw(torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    u = torch.rand(2, generator=gen, dtype=F64)
    assert mask == [m for m in (u < 0.5).tolist() for _ in range(2)]
    assert torch.equal(za, torch.randn(2, 3, generator=gen).bfloat16())
    assert torch.equal(zb, torch.randn(2, 2, 2, generator=gen, dtype=F64))


def test_low_precision_parameters_step():
    """bf16 parameters: the closure sees theta + eps_k rounded to bf16 (eps_k from the
    documented draw), and Delta = sum_k w_k eps_k is computed in float32 and rounded once
    into the parameter."""
    p = torch.tensor([1.0, -2.0, 0.5, 0.3, -0.7], dtype=torch.bfloat16, requires_grad=True)
    theta = p.detach().clone()
    opt = MGS([p], seed=0, noise_scale="constant", noise=0.1, num_samples=4)
    mask, (z,) = opt._draw(torch.Generator().manual_seed(0))  # the step's own draw
    eps = perturbations(None, z, mask, scale=0.1)
    assert eps.dtype == torch.bfloat16

    def loss(q):
        return q.float().square().sum()

    seen = []

    def closure():
        seen.append(p.detach().clone())
        return loss(p)

    opt.step(closure)
    assert torch.equal(seen[0], theta)
    for k in range(4):
        assert torch.equal(seen[k + 1], theta + eps[k])
    d = torch.tensor([loss(q).item() for q in seen], dtype=F64)
    log_q = log_proposal([eps], [None], [0.1], mix=0.5, proposal_density="exact")
    w = importance_weights(d[1:], d[0], log_q, temperature=1.0)
    (delta,) = weighted_direction(w, [eps])
    assert delta.dtype == torch.float32
    want = (theta.float() + delta).bfloat16()
    assert torch.equal(p.detach(), want)
    assert not torch.equal(want, theta + delta.bfloat16())  # rounding twice differs here


# ----------------------------------------------------------------------- base optimizers


def quadratic_setup(seed=4, base=None, **kwargs):
    ps = [tt(p).requires_grad_() for p in start_params()]
    opt = MGS(ps, None if base is None else base(ps), seed=seed, **kwargs)

    def set_grads(step):
        rng = np.random.default_rng(100 + step)
        for p in ps:
            p.grad = tt(rng.standard_normal(p.shape))

    def closure():
        return smooth_loss([nn_(p) for p in ps])

    return ps, opt, set_grads, closure


def test_sgd_with_lr_1_equals_the_plain_update_bitwise():
    ps, opt, set_grads, closure = quadratic_setup(lr=1.0)
    qs, sgd, set_grads_q, closure_q = quadratic_setup(
        base=lambda params: torch.optim.SGD(params, lr=1.0)
    )
    for step in range(3):
        set_grads(step)
        set_grads_q(step)
        opt.step(closure)
        sgd.step(closure_q)
    for p, q in zip(ps, qs, strict=True):
        assert torch.equal(p, q)


def test_adamw_consumes_minus_delta_as_its_gradient():
    """The reference code's setup: AdamW fed -Delta, here against torch's own AdamW fed the
    oracle's -Delta; ``.grad`` holds -Delta after the step."""
    adamw = {"lr": 0.05, "weight_decay": 0.01, "eps": 1e-8}
    ps, opt, set_grads, closure = quadratic_setup(
        base=lambda params: torch.optim.AdamW(params, **adamw)
    )
    twin = [tt(p).requires_grad_() for p in start_params()]
    twin_opt = torch.optim.AdamW(twin, **adamw)
    draws = torch.Generator().manual_seed(4)
    hyper = {k: DEFAULT_HYPER[k] for k in ORACLE_KEYS}
    for step in range(3):
        set_grads(step)
        params = [nn_(p) for p in twin]
        grads = [nn_(p.grad) for p in ps]
        mask, normals = opt._draw(draws)
        _, delta, _ = ref.mgs_step(
            params, grads, [nn_(z) for z in normals], mask, smooth_loss, **hyper
        )
        opt.step(closure)
        for p, d in zip(ps, delta, strict=True):
            assert_close(nn_(p.grad), -d)
        for q, d in zip(twin, delta, strict=True):
            q.grad = tt(-d)
        twin_opt.step()
        for p, q in zip(ps, twin, strict=True):
            assert_close(nn_(p), nn_(q))


# ------------------------------------------------------------------ failures change nothing


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_raising_closure_changes_nothing(fail_at):
    """At theta (call 1) or at candidate 0 or 1: parameters and gradients bitwise as before, the
    generator too (the next step is the one a run without the failure takes)."""
    ps, opt, set_grads, closure = quadratic_setup(random_mix=True)
    qs, twin, set_grads_q, closure_q = quadratic_setup(random_mix=True)
    set_grads(0)
    set_grads_q(0)
    before = [p.detach().clone() for p in ps]
    grads = [p.grad.clone() for p in ps]
    generator = opt.state_dict()["generator"]
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise RuntimeError("boom")
        return closure()

    with pytest.raises(RuntimeError, match="boom"):
        opt.step(flaky)
    for p, b, g in zip(ps, before, grads, strict=True):
        assert torch.equal(p, b) and torch.equal(p.grad, g)
    assert torch.equal(opt.state_dict()["generator"], generator)
    opt.step(closure)
    twin.step(closure_q)
    for p, q in zip(ps, qs, strict=True):
        assert torch.equal(p, q)


def test_a_non_finite_loss_at_theta_raises_and_changes_nothing():
    ps, opt, set_grads, _ = quadratic_setup()
    set_grads(0)
    before = [p.detach().clone() for p in ps]
    generator = opt.state_dict()["generator"]
    calls = []
    with pytest.raises(ValueError, match=r"^Invalid loss: nan \(must be finite"):
        opt.step(lambda: calls.append(1) or torch.tensor(NAN))
    assert len(calls) == 1  # no candidate evaluated
    assert all(torch.equal(p, b) for p, b in zip(ps, before, strict=True))
    assert torch.equal(opt.state_dict()["generator"], generator)


@pytest.mark.parametrize(
    "value",
    [torch.ones(2), torch.ones(1, 2), "1.0", None, [1.0], torch.tensor(1 + 1j)],
    ids=["vector", "matrix", "str", "none", "list", "complex"],
)
def test_a_closure_must_return_one_number(value):
    ps, opt, _, _ = quadratic_setup()
    before = [p.detach().clone() for p in ps]
    with pytest.raises(ValueError, match=r"^Invalid closure: returned"):
        opt.step(lambda: value)
    assert all(torch.equal(p, b) for p, b in zip(ps, before, strict=True))


def test_closure_values_of_every_kind_and_the_return_value():
    ps, opt, _, closure = quadratic_setup()
    for value in (1, 2.5, np.float32(0.5), torch.tensor([3.0]), torch.tensor(4.0, dtype=F64)):
        assert opt.step(lambda v=value: v) is value


def test_non_finite_candidate_losses_get_weight_zero():
    """A NaN and an inf candidate: the step equals the oracle's (weights 0 there, finite
    update); all candidates non-finite: Delta = 0."""
    ps, opt, set_grads, closure = quadratic_setup()
    set_grads(0)
    params = [nn_(p) for p in ps]
    grads = [nn_(p.grad) for p in ps]
    mask, normals = opt._draw(torch.Generator().manual_seed(4))
    losses = iter([1.0, NAN, 0.5, INF, 2.0])
    hyper = {k: DEFAULT_HYPER[k] for k in ORACLE_KEYS}
    oracle_losses = iter([1.0, NAN, 0.5, INF, 2.0])
    want, _, w = ref.mgs_step(
        params, grads, [nn_(z) for z in normals], mask, lambda _: next(oracle_losses), **hyper
    )
    assert w[0] == 0 and w[2] == 0
    opt.step(lambda: next(losses))
    for p, x in zip(ps, want, strict=True):
        assert torch.isfinite(p).all()
        assert_close(nn_(p), x)
    before = [p.detach().clone() for p in ps]
    values = iter([1.0, NAN, INF, -INF, NAN])
    opt.step(lambda: next(values))
    assert all(torch.equal(p, b) for p, b in zip(ps, before, strict=True))


# -------------------------------------------------------------------------- checkpoints


def save_and_load(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("with_base", [False, True], ids=["plain", "adamw"])
def test_resumed_run_repeats_the_uninterrupted_one_bitwise(with_base):
    base = (lambda params: torch.optim.AdamW(params, lr=0.05)) if with_base else None
    kwargs = {"random_mix": True, "antithetic": True, "mix": 0.6}
    ps, opt, set_grads, closure = quadratic_setup(base=base, **kwargs)
    for step in range(3):
        set_grads(step)
        opt.step(closure)
    saved = save_and_load(opt.state_dict())
    assert saved["generator"].dtype == torch.uint8 and saved["generator"].device.type == "cpu"
    assert ("base_optimizer" in saved) == with_base
    qs, resumed, set_grads_q, closure_q = quadratic_setup(base=base, seed=999, **kwargs)
    with torch.no_grad():
        for p, q in zip(ps, qs, strict=True):
            q.copy_(p)
    resumed.load_state_dict(saved)
    clone = copy.deepcopy(opt)
    clone_ps = [p for g in clone.param_groups for p in g["params"]]
    for step in range(3, 6):
        for setter in (set_grads, set_grads_q):
            setter(step)
        for p, c in zip(ps, clone_ps, strict=True):
            c.grad = p.grad.clone()
        opt.step(closure)
        resumed.step(closure_q)
        clone.step(lambda: smooth_loss([nn_(c) for c in clone_ps]))
    for p, q, c in zip(ps, qs, clone_ps, strict=True):
        assert torch.equal(p, q) and torch.equal(p, c)


def test_seed_none_follows_torch_manual_seed():
    torch.manual_seed(123)
    ps, opt, _, closure = quadratic_setup(seed=None)
    torch.manual_seed(123)
    qs, twin, _, closure_q = quadratic_setup(seed=None)
    for _ in range(2):
        opt.step(closure)
        twin.step(closure_q)
    assert all(torch.equal(p, q) for p, q in zip(ps, qs, strict=True))
    assert opt.seed == twin.seed


# ------------------------------------------------------------------------ population path


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()


X = torch.linspace(-1, 1, 24, dtype=F64).reshape(8, 3)
Y = torch.sin(X.sum(1, keepdim=True))


def mse(forward):
    return (forward(X) - Y).square().mean()


def test_population_path_equals_closure_path():
    """One batched call with B = K + 1 (theta first) gives the closure path's steps."""
    net, twin = mlp(), mlp()
    opt = MGS(net.parameters(), seed=2, num_samples=4)
    twin_opt = MGS(twin.parameters(), seed=2, num_samples=4)
    sizes = []
    batched = functional_population(twin, mse)

    def population(stacked):
        sizes.append([tuple(s.shape) for s in stacked])
        return batched(stacked)

    for _ in range(3):
        for model in (net, twin):
            model.zero_grad()
            mse(model).backward()  # the surrogate: the differentiable loss's gradient
        loss = opt.step(lambda: mse(net))
        loss_q = twin_opt.step(population=population)
        assert loss_q.dtype == F64 and loss_q.item() == pytest.approx(loss.item(), rel=1e-12)
    assert sizes[0] == [(5, *p.shape) for p in twin.parameters()]
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert_close(nn_(q), nn_(p))


@pytest.mark.skipif(
    shutil.which("g++") is None, reason="TorchInductor's CPU backend needs a C++ compiler"
)
@pytest.mark.parametrize("data", ["captured", "arguments"])
@pytest.mark.slow
def test_compiled_population_equals_the_eager_one_and_the_closure_path(data):
    """functional_population(..., compile=True): the same losses as the eager vmap for two
    batch sizes (the second compiles again), and MGS steps equal to the closure path's; with
    the data read from the enclosing scope and passed as arguments."""
    net, twin = mlp(), mlp()
    loss, extra = mse, ()
    if data == "arguments":
        loss, extra = (lambda forward, x, y: (forward(x) - y).square().mean()), (X, Y)
    eager_population = functional_population(twin, loss)
    compiled_population = functional_population(twin, loss, compile=True)
    assert compiled_population.compiled and not eager_population.compiled

    def eager(stacked):
        return eager_population(stacked, *extra)

    def compiled(stacked):
        return compiled_population(stacked, *extra)

    gen = torch.Generator().manual_seed(5)
    stacked = [
        p.detach() + 0.3 * torch.randn(6, *p.shape, generator=gen, dtype=F64)
        for p in twin.parameters()
    ]
    with torch.no_grad():
        for rows in (6, 3):
            want = eager([s[:rows] for s in stacked])
            got = compiled([s[:rows] for s in stacked])
            assert got.shape == (rows,)
            np.testing.assert_allclose(nn_(got), nn_(want), rtol=1e-12)
            assert len(set(nn_(got).tolist())) == rows  # the candidates differ
    opt = MGS(net.parameters(), seed=4, num_samples=4)
    twin_opt = MGS(twin.parameters(), seed=4, num_samples=4)
    for _ in range(3):
        for model in (net, twin):
            model.zero_grad()
            mse(model).backward()
        loss = opt.step(lambda: mse(net))
        loss_q = twin_opt.step(population=compiled)
        assert loss_q.item() == pytest.approx(loss.item(), rel=1e-12)
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert_close(nn_(q), nn_(p))
    start = mlp()  # the steps moved the parameters (the comparison is not vacuous)
    assert not all(
        torch.equal(p, s) for p, s in zip(net.parameters(), start.parameters(), strict=True)
    )


def test_compiled_population_falls_back_to_eager_with_one_warning(monkeypatch):
    """When the compiled call fails (as without a C++ compiler) where the eager evaluation
    works, the evaluation runs eagerly from then on, with one warning that says why, and
    gives the eager losses."""
    calls = []

    def failing_compile(fn, *args, **kwargs):
        def compiled(*stacked):
            calls.append(1)
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    net = mlp()
    population = functional_population(net, mse, compile=True)
    stacked = [p.detach() + 0.1 * torch.ones(3, *p.shape, dtype=F64) for p in net.parameters()]
    with pytest.warns(UserWarning, match="could not compile.*No working C.. compiler") as record:
        got = population(stacked)
    assert len(record) == 1 and not population.compiled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = population(stacked)  # no second warning, no second attempt
    assert calls == [1]
    want = functional_population(net, mse)(stacked)
    assert torch.equal(got, want) and torch.equal(again, want)


@pytest.mark.slow
def test_an_error_of_the_evaluation_itself_is_raised_not_taken_for_a_compiler_failure():
    """compute_loss's own error propagates (as the eager vmap raises it), with no warning,
    and the population stays compiled."""
    net = mlp()

    def broken(forward):
        raise KeyError("no such column")

    population = functional_population(net, broken, compile=True)
    stacked = [p.detach().expand(2, *p.shape) for p in net.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(KeyError, match="no such column"):
            population(stacked)
    assert population.compiled


def _ce(forward, x, y):
    return nn.functional.cross_entropy(forward(x), y)


def _classification_batch(seed, rows=12):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 3, generator=gen), torch.randint(0, 4, (rows,), generator=gen)


def _population_input(net, rows, seed):
    gen = torch.Generator().manual_seed(seed)
    return [p.detach() + 0.3 * torch.randn(rows, *p.shape, generator=gen) for p in net.parameters()]


@pytest.mark.skipif(
    shutil.which("g++") is None, reason="TorchInductor's CPU backend needs a C++ compiler"
)
@pytest.mark.slow
def test_compiled_population_with_data_arguments_computes_with_each_call_s_data():
    """Data given as arguments (compute_loss(forward, x, y), population(stacked, x, y)): each
    call computes with the data it is given (new data, new losses; a new number of rows),
    equal to the eager vmap's losses."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4))
    compiled = functional_population(net, _ce, compile=True)
    eager = functional_population(net, _ce)
    stacked = _population_input(net, 6, seed=9)
    seen = set()
    with torch.no_grad():
        for rows, batch_seed in ((6, 1), (6, 2), (3, 2), (6, 3)):
            x, y = _classification_batch(batch_seed)
            got = compiled([s[:rows] for s in stacked], x, y)
            want = eager([s[:rows] for s in stacked], x, y)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            assert got.shape == (rows,) and len(set(got.tolist())) == rows
            seen.add(tuple(got.tolist()))
    assert len(seen) == 4  # new data (or rows), new losses: nothing was frozen into the graph
    assert compiled.compiled


@pytest.mark.skipif(
    shutil.which("g++") is None, reason="TorchInductor's CPU backend needs a C++ compiler"
)
@pytest.mark.slow
def test_compiled_population_reads_captured_tensors_anew():
    """A tensor that compute_loss reads from outside (here: rebound in a dict between calls)
    is read anew at each call (torch.compile's guards)."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4))
    batch = dict(zip("xy", _classification_batch(1), strict=True))
    compiled = functional_population(
        net, lambda forward: _ce(forward, batch["x"], batch["y"]), compile=True
    )
    stacked = _population_input(net, 5, seed=9)
    with torch.no_grad():
        first = compiled(stacked)
        batch.update(zip("xy", _classification_batch(2), strict=True))
        second = compiled(stacked)
        want = functional_population(net, _ce)(stacked, batch["x"], batch["y"])
    torch.testing.assert_close(second, want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(first, second)


@pytest.mark.skipif(
    shutil.which("g++") is None, reason="TorchInductor's CPU backend needs a C++ compiler"
)
@pytest.mark.slow
def test_compiled_population_follows_buffers_and_training_mode():
    """Buffers are read at each call (also after one is replaced by a new tensor), and a
    change of a submodule's training mode is followed."""

    class Shift(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("offset", torch.zeros(4))

        def forward(self, h):
            return h + self.offset if self.training else 2 * h - self.offset

    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(3, 4), Shift(), nn.Tanh(), nn.Linear(4, 4))
    compiled = functional_population(net, _ce, compile=True)
    eager = functional_population(net, _ce)
    stacked = _population_input(net, 5, seed=9)
    x, y = _classification_batch(1)
    results = []
    with torch.no_grad():
        for change in (
            lambda: None,
            lambda: net[1].offset.fill_(0.5),  # in place
            lambda: setattr(net[1], "offset", torch.linspace(-1, 1, 4)),  # a new tensor
            lambda: net.eval(),
        ):
            change()
            got = compiled(stacked, x, y)
            torch.testing.assert_close(got, eager(stacked, x, y), rtol=1e-5, atol=1e-6)
            results.append(tuple(got.tolist()))
    assert len(set(results)) == 4


@pytest.mark.skipif(
    shutil.which("g++") is None, reason="TorchInductor's CPU backend needs a C++ compiler"
)
@pytest.mark.slow
def test_compiled_population_keeps_autograd_where_inputs_need_it():
    """With gradients enabled and inputs that require them, the gradients through the
    compiled population equal the eager vmap's."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4))
    x, y = _classification_batch(1)
    grads = []
    for compile in (True, False):
        stacked = [s.requires_grad_() for s in _population_input(net, 5, seed=9)]
        functional_population(net, _ce, compile=compile)(stacked, x, y).sum().backward()
        grads.append([s.grad for s in stacked])
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert got.abs().sum() > 0


def test_population_sees_the_closure_paths_candidates_bitwise():
    """The same noise: each stacked parameter set is bitwise the parameters the closure sees
    for that candidate (theta first), and the closure path puts theta back bitwise (lr 0)."""
    net, twin = mlp(), mlp()
    for model in (net, twin):
        mse(model).backward()
    opt = MGS(net.parameters(), seed=3, num_samples=6, lr=0.0)
    twin_opt = MGS(twin.parameters(), seed=3, num_samples=6, lr=0.0)
    before = [p.detach().clone() for p in net.parameters()]
    seen, stacked = [], []

    def closure():
        seen.append([p.detach().clone() for p in net.parameters()])
        return mse(net)

    batched = functional_population(twin, mse)

    def population(s):
        stacked.extend(t.clone() for t in s)
        return batched(s)

    opt.step(closure)
    twin_opt.step(population=population)
    assert len(seen) == 7
    for i, ps in enumerate(seen):
        for p, s in zip(ps, stacked, strict=True):
            assert torch.equal(p, s[i]), f"parameter set {i}"
    for p, b in zip(net.parameters(), before, strict=True):
        assert torch.equal(p, b)


def test_population_of_a_module_with_tied_weights():
    """A weight shared by two submodules gets each candidate's value under both names."""

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(3, 3)
            self.dec = nn.Linear(3, 3)
            self.dec.weight = self.enc.weight

        def forward(self, x):
            return self.dec(torch.tanh(self.enc(x)))

    torch.manual_seed(0)
    net = Tied().double()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["enc.weight", "enc.bias", "dec.bias"]

    def loss(forward):
        return forward(X).square().mean()

    gen = torch.Generator().manual_seed(1)
    stacked = [
        p.detach() + 0.3 * torch.randn(4, *p.shape, generator=gen, dtype=F64)
        for p in net.parameters()
    ]
    got = functional_population(net, loss)(stacked)
    want = []
    with torch.no_grad():
        theta = [p.detach().clone() for p in net.parameters()]
        for k in range(4):
            for p, s in zip(net.parameters(), stacked, strict=True):
                p.copy_(s[k])
            want.append(loss(net).item())
        for p, t in zip(net.parameters(), theta, strict=True):
            p.copy_(t)
    np.testing.assert_allclose(nn_(got), want, rtol=1e-12)


def test_parameters_of_several_dtypes_step_as_the_oracle():
    """Blocks per dtype (float32 and float64 parameters, interleaved): each parameter gets its
    own perturbations and Delta, as in the per-tensor oracle (float32 tolerance)."""
    start = [
        np.array([0.5, -1.0, 0.25]),
        np.array([[1.0, -0.5], [0.0, 2.0]]),
        np.array([0.3, 0.1, -0.2, 0.9]),
    ]
    dtypes = [torch.float32, F64, torch.float32]
    ps = [torch.tensor(p, dtype=d, requires_grad=True) for p, d in zip(start, dtypes, strict=True)]
    opt = MGS(ps, seed=8, num_samples=6, temperature=0.5)
    draws = torch.Generator().manual_seed(8)
    rng = np.random.default_rng(8)
    target = [np.full(p.shape, 0.2) for p in start]

    def loss(arrays):
        return float(
            sum(np.sum(np.sin(3 * a) + (a - t) ** 2) for a, t in zip(arrays, target, strict=True))
        )

    params = [nn_(p).astype(np.float64) for p in ps]
    hyper = {k: DEFAULT_HYPER[k] for k in ORACLE_KEYS} | {"temperature": 0.5}
    for _ in range(2):
        grads = [rng.standard_normal(p.shape) for p in start]
        grads[1] = None
        mask, normals = opt._draw(draws)
        params, _, _ = ref.mgs_step(
            params, grads, [nn_(z).astype(np.float64) for z in normals], mask, loss, **hyper
        )
        for p, g in zip(ps, grads, strict=True):
            p.grad = None if g is None else torch.tensor(g, dtype=p.dtype)
        opt.step(lambda: loss([nn_(p).astype(np.float64) for p in ps]))
        for p, want in zip(ps, params, strict=True):
            assert_close(nn_(p), want, "float32")


def test_population_must_match_the_parameters_and_return_one_loss_each():
    net, other = mlp(), mlp(1)
    opt = MGS(net.parameters(), seed=0)
    with pytest.raises(ValueError, match="^Invalid population: its module's parameters"):
        opt.step(population=functional_population(other, mse))
    with pytest.raises(ValueError, match=r"^Invalid population: returned 3 values"):
        opt.step(population=lambda stacked: torch.zeros(3))
    with pytest.raises(ValueError, match="^Invalid closure: MGS.step needs exactly one"):
        opt.step()
    with pytest.raises(ValueError, match="^Invalid closure: MGS.step needs exactly one"):
        opt.step(lambda: 0.0, population=functional_population(net, mse))


# ---------------------------------------------------------------------------- distributed


def distributed_run(global_seed, steps=2, population=False):
    """The run both the single process and each rank make; MGS draws its seed from torch's
    global generator, seeded per rank here: the broadcast makes every rank use rank 0's."""
    net = mlp()
    torch.manual_seed(global_seed)
    opt = MGS(
        net.parameters(), seed=None, num_samples=4, distributed=torch.distributed.is_initialized()
    )
    calls = []

    def closure():
        calls.append(1)
        return mse(net)

    batched = functional_population(net, mse)

    def pop(stacked):
        calls.append(stacked[0].shape[0])
        return batched(stacked)

    for _ in range(steps):
        net.zero_grad()
        mse(net).backward()
        if population:
            opt.step(population=pop)
        else:
            opt.step(closure)
    return [p.detach().clone() for p in net.parameters()], calls


def _distributed_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    try:
        global_seed = 0 if rank == 0 else 77
        params, calls = distributed_run(global_seed)
        pop_params, pop_calls = distributed_run(global_seed, population=True)
        torch.save(
            {"params": params, "calls": calls, "pop_params": pop_params, "pop_calls": pop_calls},
            pathlib.Path(out_dir) / f"rank{rank}.pt",
        )
        torch.distributed.barrier()  # both ranks done before either tears gloo down
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_distributed_ranks_split_the_candidates_and_match_one_process(tmp_path):
    """Two gloo processes: evaluation i (0 = theta) on rank i % 2; both ranks end with the
    single-process parameters, bitwise (each loss travels alone in its sum)."""
    want, _ = distributed_run(0)
    want_pop, _ = distributed_run(0, population=True)
    torch.multiprocessing.spawn(
        _distributed_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    for rank, (n_calls, batch) in enumerate([(3, [3, 3]), (2, [2, 2])]):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert len(out["calls"]) == 2 * n_calls  # 2 steps, K + 1 = 5 evaluations shared
        assert out["pop_calls"] == batch
        for got, expected in ((out["params"], want), (out["pop_params"], want_pop)):
            for p, q in zip(got, expected, strict=True):
                assert torch.equal(p, q)


def test_distributed_needs_a_process_group():
    with pytest.raises(RuntimeError, match="needs an initialized torch.distributed"):
        MGS([torch.zeros(2, requires_grad=True)], distributed=True)


# --------------------------------------------------------------------------- black box


def test_black_box_search_lowers_the_zero_one_error():
    """No gradients, constant noise: MGS alone trains a linear classifier on its 0-1 error (a
    loss without a useful gradient) from chance level."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 2))
    y = x @ np.array([1.5, -1.0]) + 0.3 > 0
    w = torch.tensor([1.0, 1.5], dtype=F64, requires_grad=True)  # about orthogonal to the truth
    b = torch.zeros(1, dtype=F64, requires_grad=True)

    def error():
        return float(np.mean((x @ nn_(w) + nn_(b) > 0) != y))

    start = error()
    opt = MGS([w, b], noise_scale="constant", noise=0.3, temperature=0.01, seed=0)
    for _ in range(200):
        opt.step(error)
    assert 0.35 < start < 0.65
    assert error() < 0.1


# ------------------------------------------------------------------------------- errors


def one_param():
    return [torch.zeros(3, requires_grad=True)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0}, r"^Invalid num_samples: 0 \(must be an integer >= 1\)$"),
        ({"num_samples": 2.0}, r"^Invalid num_samples: 2\.0 \(must be an integer >= 1\)$"),
        ({"num_samples": True}, r"^Invalid num_samples: True \(must be an integer >= 1\)$"),
        (
            {"num_samples": 3, "antithetic": True},
            r"^Invalid num_samples: 3 \(must be even with antithetic=True",
        ),
        ({"noise": 0.0}, r"^Invalid noise: 0\.0 \(must be > 0\)$"),
        ({"noise_scale": "uniform"}, r"^Invalid noise_scale: 'uniform' \(must be one of 'grad'"),
        ({"mix": 1.5}, r"^Invalid mix: 1\.5 \(must be in \[0, 1\]\)$"),
        ({"mix": -0.1}, r"^Invalid mix: -0\.1 \(must be in \[0, 1\]\)$"),
        ({"temperature": 0.0}, r"^Invalid temperature: 0\.0 \(must be > 0\)$"),
        (
            {"proposal_density": "unit"},
            r"^Invalid proposal_density: 'unit' \(must be one of 'exact', 'unit_variance'\)$",
        ),
        ({"max_grad_norm": 0.0}, r"^Invalid max_grad_norm: 0\.0 \(must be > 0\)$"),
        ({"lr": -0.1}, r"^Invalid learning rate: -0\.1 \(must be >= 0\)$"),
        ({"seed": -1}, r"^Invalid seed: -1 \(must be an integer in \[0, 2\*\*63\) or None\)$"),
        ({"seed": "0"}, r"^Invalid seed: '0'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MGS(one_param(), **kwargs)


def test_tensor_lr_must_have_one_element():
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        MGS(one_param(), lr=torch.ones(2))
    p = torch.zeros(2, dtype=F64, requires_grad=True)
    q = torch.zeros(2, dtype=F64, requires_grad=True)
    MGS([p], lr=torch.tensor(0.5), seed=0).step(lambda: p.square().sum() - p.sum())
    MGS([q], lr=0.5, seed=0).step(lambda: q.square().sum() - q.sum())
    assert torch.equal(p, q) and p.abs().sum() > 0  # a tensor lr steps as the float does


@pytest.mark.parametrize(
    ("group", "message"),
    [
        ({"num_samples": 6}, r"^Invalid num_samples: 6 \(must be the same in every param group "),
        ({"mix": 0.25}, r"^Invalid mix: 0\.25 \(must be the same in every param group"),
        ({"temperature": 2.0}, r"^Invalid temperature: 2\.0 \(must be the same"),
        ({"antithetic": True}, r"^Invalid antithetic: True \(must be the same"),
        ({"random_mix": True}, r"^Invalid random_mix: True \(must be the same"),
        ({"proposal_density": "unit_variance"}, r"^Invalid proposal_density: 'unit_variance'"),
        ({"max_grad_norm": None}, r"^Invalid max_grad_norm: None \(must be the same"),
        ({"noise": -1.0}, r"^Invalid noise: -1\.0 \(must be > 0\)$"),
    ],
)
def test_groups_share_the_candidate_hyperparameters(group, message):
    a, b = one_param()[0], one_param()[0]
    with pytest.raises(ValueError, match=message):
        MGS([{"params": [a]}, {"params": [b], **group}])
    opt = MGS(
        [{"params": [a]}, {"params": [b], "lr": 0.1, "noise": 3.0, "noise_scale": "constant"}]
    )
    assert [g["noise"] for g in opt.param_groups] == [1.0, 3.0]
    opt.param_groups[1].update(group)  # changed later: the next step refuses
    with pytest.raises(ValueError, match=message):
        opt.step(lambda: 0.0)


def test_base_optimizer_must_cover_exactly_the_same_parameters():
    a, b = one_param()[0], one_param()[0]
    with pytest.raises(
        ValueError, match=r"^Invalid base_optimizer: 'SGD' \(must be an optimizer over exactly"
    ):
        MGS([a, b], torch.optim.SGD([a], lr=0.1))
    with pytest.raises(TypeError, match="base_optimizer must be a torch.optim.Optimizer"):
        MGS([a], object())
    opt = MGS([a], torch.optim.SGD([a], lr=0.1))
    opt.base_optimizer.add_param_group({"params": [b]})
    with pytest.raises(ValueError, match="^Invalid base_optimizer"):
        opt.step(lambda: 0.0)
    with pytest.raises(ValueError, match="^Invalid state_dict"):
        MGS([a]).load_state_dict(MGS([a], torch.optim.SGD([a], lr=0.1)).state_dict())


def test_sparse_gradients_and_complex_parameters_are_refused():
    emb = nn.Embedding(5, 2, sparse=True)
    opt = MGS(emb.named_parameters(), seed=0)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(
        TypeError, match=r"MGS does not support sparse gradients \(parameter 'weight'"
    ):
        opt.step(lambda: 0.0)
    with pytest.raises(TypeError, match="MGS does not support complex parameters"):
        MGS([torch.zeros(2, dtype=torch.complex64, requires_grad=True)])
