"""Kernels of torch_opt.rmsprop_ode and jax_opt.rmsprop_ode against the oracle, and the
invariants of math.md §1.5, once per backend, in float64."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from tests.backends import assert_all_close, assert_close
from tests.reference import rmsprop_ode as ref
from tests.strategies import (
    HUGE_AND_TINY,
    ZERO_GRADS,
    arrays_like,
    epsilons,
    loss_tied_runs,
    rms_example,
    rms_settings,
    shapes,
    tensor_lists,
    trajectories,
    well_conditioned_centered,
)

KERNEL_KEYS = ("decay", "eps", "eps_in_sqrt", "bias_correction")


def kernel_directions(backend, params, grad_seq, hyper):
    """Drive the package's direction kernels over ``grad_seq``; (directions, nu) per step."""
    b = backend
    hyper_k = {k: hyper[k] for k in KERNEL_KEYS}
    centered, init = hyper["centered"], hyper["initial_scale"]
    if hyper["scale"] == "elementwise":
        nus = [b.asarray(np.full(p.shape, init)) for p in params]
    else:
        nus = b.asarray(np.float64(init))
    mus = [b.asarray(np.zeros(p.shape)) for p in params] if centered else None
    out = []
    for t, grads in enumerate(grad_seq, start=1):
        gs = [b.asarray(g) for g in grads]
        if hyper["scale"] == "elementwise":
            results = [
                b.mod.rmsprop_ode_direction(g, nu, mus[i] if centered else None, count=t, **hyper_k)
                for i, (g, nu) in enumerate(zip(gs, nus, strict=True))
            ]
            ds = [r[0] for r in results]
            nus = [r[1] for r in results]
            mus = [r[2] for r in results] if centered else None
            nu_np = [b.to_numpy(n) for n in nus]
        else:
            ds, nus, mus = b.mod.rmsprop_ode_global_direction(gs, nus, mus, count=t, **hyper_k)
            nu_np = b.to_numpy(nus)
        out.append(([b.to_numpy(d) for d in ds], nu_np))
    return out


def oracle_directions(params, grad_seq, hyper):
    state = ref.init_state(
        params,
        scale=hyper["scale"],
        centered=hyper["centered"],
        initial_scale=hyper["initial_scale"],
    )
    out = []
    for grads in grad_seq:
        d, state = ref.directions(
            grads, state, **{k: hyper[k] for k in (*KERNEL_KEYS, "centered", "scale")}
        )
        out.append((d, state["nu"], state["well_conditioned"]))
    return out


@given(traj=trajectories(), hyper=rms_settings(momentum=False))
@example(traj=ZERO_GRADS, hyper=rms_example())
@example(
    traj=HUGE_AND_TINY,
    hyper=rms_example(decay=0.0, eps_in_sqrt=False, bias_correction=True, scale="global"),
)
def test_direction_kernels_equal_oracle(backend, traj, hyper):
    check_directions(backend, *traj, hyper)


@given(case=well_conditioned_centered())
def test_centered_bias_corrected_directions_equal_oracle(backend, case):
    """Centered with bias correction, on inputs that are well-conditioned at every step (so
    every direction is compared)."""
    check_directions(backend, *case[0], case[1], require_well_conditioned=True)


def check_directions(backend, params, grad_seq, hyper, require_well_conditioned=False):
    with backend.x64():
        got = kernel_directions(backend, params, grad_seq, hyper)
    want = oracle_directions(params, grad_seq, hyper)
    if require_well_conditioned:
        assert all(np.all(w) for _, _, well in want for w in well)
    for (d, nu), (d_ref, nu_ref, well) in zip(got, want, strict=True):
        assert_all_close(
            [x[m] for x, m in zip(d, well, strict=True)],
            [x[m] for x, m in zip(d_ref, well, strict=True)],
        )
        if hyper["scale"] == "elementwise":
            assert_all_close(nu, nu_ref)
        else:
            assert_close(nu, nu_ref)


@given(
    grads=tensor_lists(),
    loss=st.floats(0.0, 1e3),
    max_scale=st.floats(1e-2, 1e4),
    min_loss=st.floats(0.0, 10.0),
)
@example(grads=[np.zeros(3), np.array(0.0)], loss=2.0, max_scale=1e3, min_loss=0.0)
def test_loss_tied_direction_equals_oracle(backend, grads, loss, max_scale, min_loss):
    zeros = [np.zeros_like(g) for g in grads]
    want = ref.loss_tied_step(zeros, grads, loss, lr=-1.0, max_scale=max_scale, min_loss=min_loss)
    with backend.x64():
        got = backend.mod.loss_tied_direction(
            [backend.asarray(g) for g in grads], loss, max_scale=max_scale, min_loss=min_loss
        )
        assert_all_close([backend.to_numpy(d) for d in got], want)


@given(run=loss_tied_runs())
def test_loss_tied_optimizer_equals_oracle(backend, run):
    """LossTiedODE / loss_tied_ode over several steps, a loss per step."""
    params, grad_seq, losses, hyper = run
    with backend.x64():
        got = backend.run_loss_tied(params, grad_seq, losses, **hyper)
    for a, b in zip(got, ref.loss_tied_run(params, grad_seq, losses, **hyper), strict=True):
        assert_all_close(a, b)


@st.composite
def field_cases(draw):
    shape = draw(shapes)
    return {
        "theta": draw(arrays_like(shape)),
        "a": draw(arrays_like(shape)),
        "b": draw(arrays_like(shape)),
        "G0": draw(st.floats(0.0, 5.0)),
        "rate": draw(st.floats(0.01, 1.9)),
        "lr": draw(st.floats(1e-3, 0.5)),
        "eps": draw(epsilons),
        "eps_in_sqrt": draw(st.booleans()),
        "scale": draw(st.sampled_from(["elementwise", "global"])),
    }


def _field_args(case, lr=None):
    return {
        "rate": case["rate"],
        "lr": case["lr"] if lr is None else lr,
        "eps": case["eps"],
        "eps_in_sqrt": case["eps_in_sqrt"],
        "scale": case["scale"],
    }


@given(case=field_cases(), limit=st.booleans())
def test_vector_field_equals_oracle(backend, case, limit):
    theta, a, b = case["theta"], case["a"], case["b"]
    G = np.full(theta.shape, case["G0"]) if case["scale"] == "elementwise" else case["G0"]
    args = _field_args(case, lr=0.0 if limit else None)
    want = ref.vector_field(lambda th: a * th + b, **args)(theta, np.asarray(G))
    with backend.x64():
        A, B = backend.asarray(a), backend.asarray(b)
        field = backend.mod.rmsprop_vector_field(lambda th: A * th + B, **args)
        got = field(backend.asarray(theta), backend.asarray(G))
        assert_all_close([backend.to_numpy(x) for x in got], want)


@given(case=field_cases())
def test_euler_step_of_the_field_is_one_optimizer_step(backend, case):
    """One explicit Euler step of size lr of the package's field == one step of its optimizer."""
    theta, a, b = case["theta"], case["a"], case["b"]
    G = np.full(theta.shape, case["G0"]) if case["scale"] == "elementwise" else case["G0"]
    with backend.x64():
        A, B = backend.asarray(a), backend.asarray(b)
        field = backend.mod.rmsprop_vector_field(lambda th: A * th + B, **_field_args(case))
        dtheta, _ = field(backend.asarray(theta), backend.asarray(G))
        euler = theta + case["lr"] * backend.to_numpy(dtheta)
        (stepped,) = backend.run_rmsprop(
            [theta],
            [[a * theta + b]],
            lr=case["lr"],
            decay=1 - case["rate"] * case["lr"],
            eps=case["eps"],
            eps_in_sqrt=case["eps_in_sqrt"],
            scale=case["scale"],
            initial_scale=case["G0"],
        )
    assert_close(euler, stepped[0])


# ------------------------------------------------------------------- invariants (math.md §1.5)


def _first_direction(backend, grads, *, scale, decay=0.0, eps=0.0):
    hyper = {"decay": decay, "eps": eps, "eps_in_sqrt": True, "bias_correction": False}
    gs = [backend.asarray(g) for g in grads]
    if scale == "elementwise":
        ds = [backend.mod.rmsprop_ode_direction(g, g * 0, None, count=1, **hyper)[0] for g in gs]
    else:
        ds = backend.mod.rmsprop_ode_global_direction(
            gs, backend.asarray(0.0), None, count=1, **hyper
        )[0]
    return [backend.to_numpy(d) for d in ds]


@given(grads=tensor_lists())
def test_elementwise_without_memory_is_sign_descent(backend, grads):
    """§1.5 (1): decay 0, eps -> 0 (inside the root): d = sign(g)."""
    with backend.x64():
        ds = _first_direction(backend, grads, scale="elementwise", eps=1e-300)
    assert_all_close(ds, [np.sign(g) for g in grads])


@given(grads=tensor_lists(), decay=st.floats(0.0, 0.99))
def test_global_direction_is_the_gradient_direction(backend, grads, decay):
    """§1.5 (2), (3): the global version divides every gradient by one positive scalar; with
    decay 0 and eps 0 the step has norm lr (normalized gradient descent)."""
    flat = np.concatenate([g.ravel() for g in grads])
    with backend.x64():
        ds = _first_direction(backend, grads, scale="global", decay=decay, eps=1e-12)
        unit = _first_direction(backend, grads, scale="global")
    flat_d = np.concatenate([d.ravel() for d in ds])
    norm = np.linalg.norm(flat)
    if norm > 0:
        cos = flat_d @ flat / (np.linalg.norm(flat_d) * norm)
        np.testing.assert_allclose(cos, 1.0, rtol=1e-12)
        np.testing.assert_allclose(
            np.linalg.norm(np.concatenate([d.ravel() for d in unit])), 1.0, rtol=1e-12
        )
    else:
        assert not flat_d.any()


@given(
    grads=tensor_lists(), c=st.floats(1e-2, 1e2), scale=st.sampled_from(["elementwise", "global"])
)
def test_direction_invariant_to_loss_scale(backend, grads, c, scale):
    """§1.5 (4): multiplying the loss by c > 0 leaves the direction unchanged (eps 0)."""
    with backend.x64():
        plain = _first_direction(backend, grads, scale=scale)
        scaled = _first_direction(backend, [c * g for g in grads], scale=scale)
    assert_all_close(scaled, plain)


@given(grad=arrays_like((4,)), diag=arrays_like((4,)).map(lambda d: np.abs(d) + 1e-2))
def test_elementwise_invariant_to_per_coordinate_rescaling(backend, grad, diag):
    """§1.5 (3): with eps 0, decay 0 the element-wise update ignores a diagonal rescaling."""
    with backend.x64():
        plain = _first_direction(backend, [grad], scale="elementwise")
        scaled = _first_direction(backend, [diag * grad], scale="elementwise")
    assert_all_close(scaled, plain)


@given(step_size=st.floats(1e-3, 3.0), friction=st.floats(0.0, 50.0), ratio=st.floats(1e-2, 1e2))
def test_momentum_helpers_equal_oracle(backend, step_size, friction, ratio):
    """The damped-ODE helpers give the oracle's values on the framework's arrays too, and
    momentum_to_damped_ode inverts damped_ode_to_momentum."""
    mod = backend.mod
    with backend.x64():
        lr, beta = mod.damped_ode_to_momentum(backend.asarray(step_size), backend.asarray(friction))
        assert_all_close(
            [backend.to_numpy(lr), backend.to_numpy(beta)],
            ref.damped_ode_to_momentum(step_size, friction),
        )
        back = mod.momentum_to_damped_ode(lr, beta)
        assert_all_close([backend.to_numpy(x) for x in back], [step_size, friction])
        assert_close(
            backend.to_numpy(mod.retune_momentum(beta, backend.asarray(ratio))),
            ref.retune_momentum(float(backend.to_numpy(beta)), ratio),
        )
    assert mod.retune_momentum(0.9, 1.0) == 0.9


def test_kernels_leave_their_inputs_alone(backend):
    """The kernels are pure: state in, state out."""
    with backend.x64():
        g = backend.asarray(np.array([1.0, -2.0]))
        nu = backend.asarray(np.array([0.5, 0.5]))
        mu = backend.asarray(np.array([0.1, 0.2]))
        backend.mod.rmsprop_ode_direction(
            g, nu, mu, decay=0.9, eps=1e-8, eps_in_sqrt=False, bias_correction=True, count=3
        )
        backend.mod.rmsprop_ode_global_direction(
            [g],
            backend.asarray(0.5),
            [mu],
            decay=0.9,
            eps=1e-8,
            eps_in_sqrt=True,
            bias_correction=False,
            count=1,
        )
        assert_all_close(
            [backend.to_numpy(x) for x in (g, nu, mu)], [[1.0, -2.0], [0.5, 0.5], [0.1, 0.2]]
        )
