"""torch_opt.RMSpropODE and LossTiedODE: equal to torch.optim.RMSprop and to the oracle, fast
path equal to the reference path, state_dict resumes, errors."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.backends import TorchBackend, assert_all_close, assert_close, assert_trajectory_close
from tests.reference import rmsprop_ode as ref
from tests.strategies import (
    HUGE_AND_TINY,
    ZERO_GRADS,
    rms_example,
    rms_settings,
    torch_example,
    torch_rmsprop_kwargs,
    trajectories,
    weight_decays,
    well_conditioned_centered,
)

torch = pytest.importorskip("torch")
from torch_opt import LossTiedODE, RMSpropODE  # noqa: E402

torch_backend = TorchBackend()


def drive(opt, params, grad_seq, closure=None):
    """Set ``.grad`` from ``grad_seq`` and step; returns NumPy copies of the params per step."""
    out = []
    for grads in grad_seq:
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.as_tensor(g, dtype=p.dtype)
        opt.step(closure)
        out.append([p.detach().numpy().copy() for p in params])
    return out


def leaves(arrays, dtype=torch.float64):
    return [torch.tensor(np.asarray(a), dtype=dtype, requires_grad=True) for a in arrays]


# ------------------------------------------------------------------- equal to torch.optim.RMSprop


@given(traj=trajectories(), kw=torch_rmsprop_kwargs, foreach=st.booleans())
@example(traj=ZERO_GRADS, kw=torch_example(), foreach=False)
@example(
    traj=HUGE_AND_TINY,
    kw=torch_example(alpha=0.0, weight_decay=0.1, momentum=0.9, centered=True, maximize=True),
    foreach=False,
)
def test_equals_torch_rmsprop(traj, kw, foreach):
    params, grad_seq = traj
    ours = leaves(params)
    theirs = leaves(params)
    got = drive(RMSpropODE(ours, foreach=foreach, **kw), ours, grad_seq)
    want = drive(torch.optim.RMSprop(theirs, foreach=foreach, **kw), theirs, grad_seq)
    steps = ref.trajectory(params, grad_seq, eps_in_sqrt=False, **ref.from_torch(kw))
    assert_trajectory_close(got, steps, expected=want)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"momentum": 0.9},
        {"centered": True, "alpha": 0.9},
        {"weight_decay": 0.1, "maximize": True},
        {"centered": True, "momentum": 0.5, "weight_decay": 0.01, "lr": 0.1},
    ],
)
@pytest.mark.parametrize("foreach", [None, True, False])
def test_foreach_path_is_bitwise_torch_rmsprop_in_float32(kw, foreach):
    """The foreach path runs torch's operations in torch's order: equal to the bit. The default
    (native) path differs only in its IEEE square root (torch's CPU sqrt is MKL's, an ulp off
    for some entries; tests/torch_opt/test_native.py checks the rest to the bit), the
    reference kernels in their order of operations."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 3), (5,), ()]
    ours = [torch.randn(s, generator=gen, requires_grad=True) for s in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt_ours = RMSpropODE(ours, foreach=foreach, **kw) if foreach else RMSpropODE(ours, **kw)
    opt_theirs = torch.optim.RMSprop(theirs, **kw)
    for _ in range(20):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        for a, b, g in zip(ours, theirs, grads, strict=True):
            a.grad, b.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    for a, b in zip(ours, theirs, strict=True):
        if foreach:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def assert_same_as_torch(ours, theirs, foreach):
    """Bitwise for the foreach path (torch's operations); for the default native path, equal
    up to its IEEE square root, which differs from torch's MKL one by an ulp at most."""
    for a, b in zip(ours, theirs, strict=True):
        if foreach:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def _large_params(dtype=torch.float32, seed=5):
    """Tensors that exercise the CPU runs: a large one split into pieces, small ones grouped,
    a non-contiguous one (never split) and a 0-d one."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(700, 1000), (300,), (64, 64), (2000, 300), ()]
    ps = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    ps.append(torch.randn(500, 300, generator=gen, dtype=dtype).t().clone())
    assert not ps[-1].is_contiguous()
    return [p.requires_grad_() for p in ps]


@pytest.mark.parametrize(
    "kw", [{}, {"momentum": 0.9, "centered": True, "weight_decay": 0.1, "maximize": True}]
)
def test_cpu_runs_and_pieces_stay_bitwise_torch_rmsprop(kw):
    ours = _large_params()
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    gen = torch.Generator().manual_seed(6)
    opts = [RMSpropODE(ours, foreach=True, **kw), torch.optim.RMSprop(theirs, **kw)]
    for _ in range(3):
        for a, b in zip(ours, theirs, strict=True):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        for opt in opts:
            opt.step()
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(ours, theirs, strict=True):
        for key in opts[1].state[b]:
            assert torch.equal(opts[0].state[a][key], opts[1].state[b][key]), key


@pytest.mark.parametrize(
    "kw",
    [
        {
            "scale": "global",
            "momentum": 0.9,
            "centered": True,
            "weight_decay": 0.1,
            "initial_scale": 1.0,
        },
        {"eps_in_sqrt": True, "bias_correction": True, "centered": True, "initial_scale": 1.0},
    ],
)
def test_cpu_runs_and_pieces_equal_the_reference_path(kw):
    fast = _large_params(torch.float64)
    slow = [p.detach().clone().requires_grad_() for p in fast]
    gen = torch.Generator().manual_seed(7)
    opts = [RMSpropODE(fast, foreach=True, **kw), RMSpropODE(slow, foreach=False, **kw)]
    for _ in range(3):
        for a, b in zip(fast, slow, strict=True):
            a.grad = torch.randn(a.shape, generator=gen, dtype=torch.float64)
            b.grad = a.grad.clone()
        for opt in opts:
            opt.step()
    assert_all_close([p.detach().numpy() for p in fast], [p.detach().numpy() for p in slow])
    assert_all_close(_state_arrays(opts[0]), _state_arrays(opts[1]))


@pytest.mark.parametrize("foreach", [True, None])
def test_lr_schedulers_and_param_groups_match_torch(foreach):
    gen = torch.Generator().manual_seed(1)
    w = [torch.randn(4, 3, generator=gen), torch.randn(3, generator=gen)]
    ours = [p.clone().requires_grad_() for p in w]
    theirs = [p.clone().requires_grad_() for p in w]

    def groups(ps):
        return [
            {"params": [ps[0]], "lr": 0.05, "momentum": 0.5},
            {"params": [ps[1]], "alpha": 0.9, "centered": True, "lr": 1e-28},
        ]

    opts = [
        RMSpropODE(groups(ours), lr=0.01, foreach=foreach),
        torch.optim.RMSprop(groups(theirs), lr=0.01),
    ]
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5) for o in opts]
    for _ in range(10):
        grads = [torch.randn_like(p) for p in w]
        for ps, opt, sched in zip((ours, theirs), opts, scheds, strict=True):
            for p, g in zip(ps, grads, strict=True):
                p.grad = g.clone()
            opt.step()
            sched.step()
    assert_same_as_torch(ours, theirs, foreach)
    torch.testing.assert_close(ours[1], w[1], rtol=0, atol=1e-20)  # lr 1e-28 group stays put


# ------------------------------------------------------------------------- the new options


@given(
    traj=trajectories(),
    hyper=rms_settings(),
    weight_decay=weight_decays,
    maximize=st.booleans(),
    foreach=st.booleans(),
)
@example(
    traj=ZERO_GRADS,
    hyper=rms_example(centered=True, bias_correction=True, momentum=0.9, scale="global"),
    weight_decay=0.0,
    maximize=False,
    foreach=True,
)
def test_shell_equals_oracle(traj, hyper, weight_decay, maximize, foreach):
    check_shell(traj, hyper, weight_decay, maximize, foreach)


@given(case=well_conditioned_centered(), foreach=st.booleans())
def test_centered_bias_corrected_shell_equals_oracle(case, foreach):
    check_shell(*case, 0.0, False, foreach, require_well_conditioned=True)


def check_shell(traj, hyper, weight_decay, maximize, foreach, require_well_conditioned=False):
    params, grad_seq = traj
    hyper = dict(hyper)
    init = hyper.pop("initial_scale")
    steps = ref.trajectory(
        params, grad_seq, weight_decay=weight_decay, maximize=maximize, initial_scale=init, **hyper
    )
    if require_well_conditioned:
        assert all(np.all(m) for m in ref.reliable([s for _, s in steps], hyper["scale"])[-1])
    decay = hyper.pop("decay")
    ps = leaves(params)
    opt = RMSpropODE(
        ps,
        alpha=decay,
        weight_decay=weight_decay,
        maximize=maximize,
        foreach=foreach,
        initial_scale=init,
        **hyper,
    )
    assert_trajectory_close(drive(opt, ps, grad_seq), steps, scale=hyper["scale"])


def _state_arrays(opt):
    out = []
    for group in opt.param_groups:
        for key in ("global_sq_avg", "global_step"):
            if key in group:
                out.append(group[key].detach().numpy().copy())
        for p in group["params"]:
            for key in sorted(opt.state[p]):
                out.append(opt.state[p][key].detach().numpy().copy())
    return out


@given(
    traj=trajectories(), hyper=rms_settings(), weight_decay=weight_decays, maximize=st.booleans()
)
def test_foreach_path_equals_reference_path(traj, hyper, weight_decay, maximize):
    """The fast path equals the per-tensor kernels in float64, parameters and every state."""
    params, grad_seq = traj
    hyper = dict(hyper)
    hyper["alpha"] = hyper.pop("decay")
    steps = ref.trajectory(
        params,
        grad_seq,
        weight_decay=weight_decay,
        maximize=maximize,
        **{("decay" if k == "alpha" else k): v for k, v in hyper.items() if k != "initial_scale"},
        initial_scale=hyper["initial_scale"],
    )
    runs = []
    for foreach in (False, True):
        ps = leaves(params)
        opt = RMSpropODE(ps, weight_decay=weight_decay, maximize=maximize, foreach=foreach, **hyper)
        runs.append((drive(opt, ps, grad_seq), _state_arrays(opt)))
    (slow, slow_state), (fast, fast_state) = runs
    assert_trajectory_close(fast, steps, scale=hyper["scale"], expected=slow)
    if all(np.all(m) for m in ref.reliable([s for _, s in steps], hyper["scale"])[-1]):
        assert_all_close(fast_state, slow_state)


@pytest.mark.parametrize("scale", ["elementwise", "global"])
def test_complex_params_equal_their_real_view(scale):
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(3, 2, dtype=torch.complex128, generator=gen)
    zc = z.clone().requires_grad_()
    zr = torch.view_as_real(z.clone()).requires_grad_()
    kw = {"scale": scale, "momentum": 0.9, "centered": True, "alpha": 0.9, "initial_scale": 0.5}
    oc, orr = RMSpropODE([zc], **kw), RMSpropODE([zr], **kw)
    for _ in range(5):
        g = torch.randn(3, 2, dtype=torch.complex128, generator=gen)
        zc.grad, zr.grad = g, torch.view_as_real(g).clone()
        oc.step()
        orr.step()
    torch.testing.assert_close(torch.view_as_real(zc.detach()), zr.detach(), rtol=1e-14, atol=1e-14)


# ---------------------------------------------------------------------------- the contracts


@pytest.mark.parametrize(
    "kw",
    [
        {"momentum": 0.9, "centered": True},
        {
            "scale": "global",
            "centered": True,
            "bias_correction": True,
            "momentum": 0.5,
            "initial_scale": 1.0,
        },
        {"scale": "global", "eps_in_sqrt": True, "weight_decay": 0.01},
    ],
)
@pytest.mark.parametrize("foreach", [False, True])
def test_state_dict_midway_resumes_the_identical_trajectory(kw, foreach):
    gen = torch.Generator().manual_seed(3)
    w = [torch.randn(4, 3, generator=gen), torch.randn(3, generator=gen)]
    grads = [[torch.randn_like(p) for p in w] for _ in range(8)]
    ps = [p.clone().requires_grad_() for p in w]
    opt = RMSpropODE(ps, foreach=foreach, **kw)
    for gs in grads[:4]:
        for p, g in zip(ps, gs, strict=True):
            p.grad = g.clone()
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_ps = [p.detach().clone().requires_grad_() for p in ps]
    resumed = RMSpropODE(resumed_ps, foreach=foreach, **kw)
    resumed.load_state_dict(saved)
    for gs in grads[4:]:
        for a, b, g in zip(ps, resumed_ps, gs, strict=True):
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        resumed.step()
    for a, b in zip(ps, resumed_ps, strict=True):
        assert torch.equal(a, b)
    assert all(
        np.array_equal(x, y)
        for x, y in zip(_state_arrays(opt), _state_arrays(resumed), strict=True)
    )


def test_a_torch_rmsprop_checkpoint_loads_and_continues_identically():
    """A state dict of torch.optim.RMSprop lacks RMSpropODE's flags: it loads with their
    defaults (and a Python-number step), and the run continues as torch's would (torch's
    ``foreach=None`` comes with the groups, so the default native path runs)."""
    gen = torch.Generator().manual_seed(8)
    w = [torch.randn(5, 3, generator=gen), torch.randn(3, generator=gen)]
    grads = [[torch.randn(p.shape, generator=gen) for p in w] for _ in range(6)]
    theirs = [p.clone().requires_grad_() for p in w]
    peer = torch.optim.RMSprop(theirs, momentum=0.9, centered=True)
    for gs in grads[:3]:
        for p, g in zip(theirs, gs, strict=True):
            p.grad = g.clone()
        peer.step()
    saved = copy.deepcopy(peer.state_dict())  # state_dict() shares the live per-param dicts
    for param_state in saved["state"].values():
        param_state["step"] = float(param_state["step"])  # as an old checkpoint stored it
    ours = [p.detach().clone().requires_grad_() for p in theirs]
    opt = RMSpropODE(ours, momentum=0.9, centered=True, foreach=True)
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["foreach"] is None
    assert opt.param_groups[0]["scale"] == "elementwise"
    for gs in grads[3:]:
        for a, b, g in zip(ours, theirs, gs, strict=True):
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        peer.step()
    assert_same_as_torch(ours, theirs, foreach=None)


@pytest.mark.parametrize("scale", ["elementwise", "global"])
def test_global_state_lives_in_the_param_group_and_per_param_state_is_lean(scale):
    p = torch.zeros(3, requires_grad=True)
    opt = RMSpropODE([p], scale=scale, centered=True)
    p.grad = torch.ones(3)
    opt.step()
    keys = set(opt.state[p])
    if scale == "global":
        assert keys == {"step", "grad_avg"}
        assert opt.state_dict()["param_groups"][0]["global_sq_avg"].shape == ()
    else:
        assert keys == {"step", "square_avg", "grad_avg"}
        assert "global_sq_avg" not in opt.param_groups[0]


@pytest.mark.parametrize("foreach", [False, True])
def test_maximize_leaves_grad_alone_and_missing_or_zero_grads_do_not_move(foreach):
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(2, requires_grad=True)
    opt = RMSpropODE([a, b], maximize=True, weight_decay=0.0, foreach=foreach)
    a.grad = torch.tensor([1.0, -2.0, 3.0])
    opt.step()
    assert torch.equal(a.grad, torch.tensor([1.0, -2.0, 3.0]))
    assert torch.equal(b, torch.ones(2)) and b not in opt.state
    before = a.detach().clone()
    a.grad = torch.zeros(3)
    RMSpropODE([a], foreach=foreach).step()
    assert torch.equal(a, before)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("scale", ["elementwise", "global"])
def test_nan_gradients_propagate(foreach, scale):
    p = torch.zeros(3, requires_grad=True)
    opt = RMSpropODE([p], foreach=foreach, scale=scale)
    p.grad = torch.tensor([float("nan"), 1.0, 1.0])
    opt.step()
    assert torch.isnan(p[0])
    if scale == "global":
        assert torch.isnan(p).all()  # one norm for the group: NaN everywhere
    ref_p = torch.zeros(3, requires_grad=True)
    ref_p.grad = torch.tensor([float("nan"), 1.0, 1.0])
    torch.optim.RMSprop([ref_p]).step()
    if scale == "elementwise":
        torch.testing.assert_close(p, ref_p, equal_nan=True)


def test_differentiable_step_has_torch_rmsprop_gradients():
    """differentiable=True: gradients through one step equal torch.optim.RMSprop's."""

    def run(cls):
        p0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
        g = torch.tensor([0.3, 0.1, -2.0], dtype=torch.float64, requires_grad=True)
        sq = torch.tensor([0.2, 0.4, 0.1], dtype=torch.float64, requires_grad=True)
        p = p0.clone()
        opt = cls([p], lr=0.1, alpha=0.9, momentum=0.5, differentiable=True)
        opt.state[p]["step"] = torch.tensor(0.0)
        opt.state[p]["square_avg"] = sq.clone()
        opt.state[p]["momentum_buffer"] = torch.zeros(3, dtype=torch.float64)
        p.grad = g
        opt.step()
        out = (p * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum()
        return torch.autograd.grad(out, (p0, g, sq))

    for ours, theirs in zip(run(RMSpropODE), run(torch.optim.RMSprop), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        # torch's wording for torch's arguments (torch.optim.RMSprop's messages are prefixes)
        ({"lr": -0.1}, "Invalid learning rate: -0.1 (must be >= 0)"),
        ({"eps": -1e-8}, "Invalid epsilon value: -1e-08 (must be >= 0)"),
        ({"alpha": 1.0}, "Invalid alpha value: 1.0 (must be in [0, 1))"),
        ({"alpha": -0.5}, "Invalid alpha value: -0.5 (must be in [0, 1))"),
        ({"momentum": -0.9}, "Invalid momentum value: -0.9 (must be >= 0)"),
        ({"weight_decay": -1.0}, "Invalid weight_decay value: -1.0 (must be >= 0)"),
        # twinopt's wording for its own
        ({"initial_scale": -1.0}, "Invalid initial_scale: -1.0 (must be >= 0)"),
        (
            {"scale": "layerwise"},
            "Invalid scale: 'layerwise' (must be one of 'elementwise', 'global')",
        ),
        ({"lr": torch.tensor([0.1, 0.2])}, "Tensor lr must be 1-element"),
        (
            {"foreach": True, "differentiable": True},
            "Invalid foreach: True (must be False or None when differentiable=True)",
        ),
    ],
)
def test_bad_hyperparameters_raise_value_errors_naming_them(kw, message):
    with pytest.raises(ValueError) as info:
        RMSpropODE([torch.zeros(2, requires_grad=True)], **kw)
    assert str(info.value) == message


def test_bad_param_group_value_is_rejected_at_construction():
    with pytest.raises(ValueError, match=r"Invalid alpha value: 1\.5"):
        RMSpropODE([{"params": [torch.zeros(1, requires_grad=True)], "alpha": 1.5}])


@pytest.mark.parametrize("kw", [{"momentum": -1.0}, {"lr": -1.0}, {"alpha": 2.0}])
def test_arguments_are_checked_before_params_is_read(kw):
    """As torch.optim.RMSprop: a bad argument is reported even where ``params`` is not valid
    (torch's OptimizerInfo error inputs pass ``params=None``), in the same words."""
    name = next(iter(kw))
    with pytest.raises(ValueError) as ours:
        RMSpropODE(None, **kw)
    if name == "alpha":  # torch accepts alpha >= 1; RMSpropODE's EMA needs alpha < 1
        assert str(ours.value) == "Invalid alpha value: 2.0 (must be in [0, 1))"
        return
    with pytest.raises(ValueError) as theirs:
        torch.optim.RMSprop(None, **kw)
    assert str(ours.value).startswith(str(theirs.value) + " (must be")


def test_capturable_is_not_implemented():
    with pytest.raises(NotImplementedError, match="capturable"):
        RMSpropODE([torch.zeros(2, requires_grad=True)], capturable=True)


@pytest.mark.parametrize("cls", [RMSpropODE, LossTiedODE])
def test_sparse_gradients_raise_a_type_error_naming_the_parameter(cls):
    model = torch.nn.Embedding(4, 2, sparse=True)
    opt = cls([{"params": list(model.named_parameters())}])
    model(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match=r"does not support sparse gradients \(parameter 'weight'"):
        opt.step(lambda: torch.tensor(1.0))


# ------------------------------------------------------------------------------- LossTiedODE


def test_loss_tied_needs_a_closure_that_returns_the_loss():
    p = torch.zeros(2, requires_grad=True)
    opt = LossTiedODE([p])
    with pytest.raises(ValueError, match=r"^Missing closure: LossTiedODE.step needs the current"):
        opt.step()
    with pytest.raises(ValueError, match=r"^Missing loss:"):
        opt.step(lambda: None)


def test_loss_tied_norm_is_per_param_group():
    a = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = LossTiedODE([{"params": [a]}, {"params": [b]}], lr=0.5, max_scale=1e6)

    def closure():
        a.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
        b.grad = torch.tensor([0.0, 1.0], dtype=torch.float64)
        return torch.tensor(2.0)

    opt.step(closure)
    assert_close(a.detach().numpy(), -0.5 * 2.0 * np.array([3.0, 4.0]) / 25.0)
    assert_close(b.detach().numpy(), -0.5 * 2.0 * np.array([0.0, 1.0]))


@pytest.mark.slow
def test_su_example_loss_tied_escapes_where_sgd_stalls():
    """math.md §1.4: settles within 1e-3 of x* for 500 consecutive steps within 20000 steps."""

    def f(x):
        return x * (x - 1) * (x - 3) ** 2 + 1.62276

    def trajectory(opt_cls, steps, **kw):
        x = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
        opt = opt_cls([x], lr=0.01, **kw)

        def closure():
            opt.zero_grad()
            loss = f(x)
            loss.backward()
            return loss

        xs = []
        for _ in range(steps):
            opt.step(closure)
            xs.append(x.item())
        return np.array(xs)

    assert ref.settles(trajectory(LossTiedODE, 20000, max_scale=1000.0), ref.SU_GLOBAL_MIN)
    np.testing.assert_allclose(trajectory(torch.optim.SGD, 2500)[-1], 3.0, atol=1e-6)
