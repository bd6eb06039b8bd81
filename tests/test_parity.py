"""torch_opt and jax_opt on the same NumPy inputs give the same trajectories (float64), and word
their errors the same way."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.backends import (
    JaxBackend,
    TorchBackend,
    assert_all_close,
    assert_trajectory_close,
    available,
)
from tests.reference import amos as ref_amos
from tests.reference import rmsprop_ode as ref
from tests.strategies import (
    arrays_like,
    epsilons,
    loss_tied_runs,
    rms_settings,
    shapes,
    trajectories,
    well_conditioned_centered,
)
from twinopt.sampling import mixture_mask

pytestmark = pytest.mark.skipif(
    not (available("torch") and available("jax")), reason="parity needs torch and jax"
)


@pytest.fixture(scope="module")
def both():
    return TorchBackend(), JaxBackend()


def run_both(both, fn):
    torch_b, jax_b = both
    with jax_b.x64():
        return fn(torch_b), fn(jax_b)


@given(traj=trajectories(), hyper=rms_settings())
def test_rmsprop_ode_trajectories_agree(both, traj, hyper):
    """Both scales, both eps placements, bias correction on and off, centered, momentum (at a
    constant lr, where torch's and optax's momentum conventions coincide), initial_scale."""
    check_trajectories(both, traj, hyper)


@given(case=well_conditioned_centered())
def test_centered_bias_corrected_trajectories_agree(both, case):
    check_trajectories(both, *case, require_well_conditioned=True)


def check_trajectories(both, traj, hyper, require_well_conditioned=False):
    params, grad_seq = traj
    steps = ref.trajectory(params, grad_seq, **hyper)
    if require_well_conditioned:
        assert all(np.all(m) for m in ref.reliable([s for _, s in steps], hyper["scale"])[-1])
    got_torch, got_jax = run_both(both, lambda b: b.run_rmsprop(params, grad_seq, **hyper))
    assert_trajectory_close(got_torch, steps, scale=hyper["scale"], expected=got_jax)
    assert_trajectory_close(got_jax, steps, scale=hyper["scale"])


@given(run=loss_tied_runs())
def test_loss_tied_trajectories_agree(both, run):
    params, grad_seq, losses, hyper = run
    got_torch, got_jax = run_both(
        both, lambda b: b.run_loss_tied(params, grad_seq, losses, **hyper)
    )
    for a, b in zip(got_torch, got_jax, strict=True):
        assert_all_close(a, b)


@st.composite
def field_inputs(draw):
    shape = draw(shapes)
    return (
        draw(arrays_like(shape)),
        draw(arrays_like(shape)),
        draw(st.floats(0.0, 5.0)),
        draw(st.floats(0.01, 2.0)),
        draw(st.floats(0.0, 0.5)),
        draw(epsilons),
        draw(st.booleans()),
        draw(st.sampled_from(["elementwise", "global"])),
    )


@given(inputs=field_inputs())
def test_vector_fields_agree(both, inputs):
    theta, a, G0, rate, lr, eps, eps_in_sqrt, scale = inputs
    G = np.full(theta.shape, G0) if scale == "elementwise" else np.float64(G0)

    def field(b):
        A = b.asarray(a)
        f = b.mod.rmsprop_vector_field(
            lambda th: A * th - th**3,
            rate=rate,
            lr=lr,
            eps=eps,
            eps_in_sqrt=eps_in_sqrt,
            scale=scale,
        )
        return [b.to_numpy(x) for x in f(b.asarray(theta), b.asarray(G))]

    got_torch, got_jax = run_both(both, field)
    assert_all_close(got_torch, got_jax)


# ------------------------------------------------------------------------------------- errors

# (torch call, jax call): the same mistake in each package's own names.
SAME_MISTAKES = [
    (("RMSpropODE", {"lr": -0.5}), ("rmsprop_ode", {"learning_rate": -0.5})),
    (("RMSpropODE", {"eps": -1.0}), ("rmsprop_ode", {"learning_rate": 0.1, "eps": -1.0})),
    (("RMSpropODE", {"alpha": 1.0}), ("rmsprop_ode", {"learning_rate": 0.1, "decay": 1.0})),
    (("RMSpropODE", {"alpha": -0.1}), ("rmsprop_ode", {"learning_rate": 0.1, "decay": -0.1})),
    (
        ("RMSpropODE", {"scale": "rowwise"}),
        ("rmsprop_ode", {"learning_rate": 0.1, "scale": "rowwise"}),
    ),
    (
        ("RMSpropODE", {"initial_scale": -1.0}),
        ("rmsprop_ode", {"learning_rate": 0.1, "initial_scale": -1.0}),
    ),
    (("LossTiedODE", {"lr": -0.5}), ("loss_tied_ode", {"learning_rate": -0.5})),
    (
        ("LossTiedODE", {"max_scale": -2.0}),
        ("loss_tied_ode", {"learning_rate": 0.1, "max_scale": -2.0}),
    ),
]
# torch_opt words the arguments torch.optim's classes have as torch does ("Invalid learning
# rate"); jax_opt names them as optax does. The rest of the message is the same.
RENAMES = {
    "learning rate": "learning_rate",
    "alpha value": "decay",
    "epsilon value": "eps",
    "momentum value": "momentum",
    "weight_decay value": "weight_decay",
}


@pytest.mark.parametrize(("torch_call", "jax_call"), SAME_MISTAKES)
def test_bad_arguments_are_worded_the_same(both, torch_call, jax_call):
    torch_b, jax_b = both
    with pytest.raises(ValueError) as torch_err:
        getattr(torch_b.mod, torch_call[0])(
            [torch_b.torch.zeros(1, requires_grad=True)], **torch_call[1]
        )
    with pytest.raises(ValueError) as jax_err:
        getattr(jax_b.mod, jax_call[0])(**jax_call[1])
    torch_msg = str(torch_err.value)
    for torch_name, jax_name in RENAMES.items():
        torch_msg = torch_msg.replace(f"Invalid {torch_name}:", f"Invalid {jax_name}:")
    assert torch_msg == str(jax_err.value)


def test_a_missing_loss_is_worded_the_same(both):
    torch_b, jax_b = both
    p = torch_b.torch.zeros(1, requires_grad=True)
    with pytest.raises(ValueError) as torch_err:
        torch_b.mod.LossTiedODE([p]).step()
    opt = jax_b.mod.loss_tied_ode(0.1)
    params = jax_b.jnp.zeros(1)
    with pytest.raises(ValueError) as jax_err:
        opt.update(params, opt.init(params), params)
    pattern = r"^Missing (\w+): ([\w.]+) needs the current loss \(\1: .+\)$"
    assert re.match(pattern, str(torch_err.value))
    assert re.match(pattern, str(jax_err.value))


# ------------------------------------------------------------------ flooding and the penalty


@given(
    logits=arrays_like((6, 3, 2), st.floats(-5.0, 5.0)),
    labels=arrays_like((6, 2), st.integers(0, 2)),
    level=st.floats(0.0, 3.0),
    mode=st.sampled_from(["batch", "individual"]),
)
def test_flooding_module_and_flooded_loss_agree(both, logits, labels, level, mode):
    """torch_opt.Flooding(CrossEntropyLoss) and jax_opt.flooded(cross-entropy) on the same
    (batch, classes, tokens) logits: the same flooded loss and gradient."""
    torch_b, jax_b = both
    torch, jax, optax = torch_b.torch, jax_b.jax, jax_b.optax
    labels = labels.astype(np.int64)
    x = torch.tensor(logits, requires_grad=True)
    loss_fn = torch_b.mod.Flooding(torch.nn.CrossEntropyLoss(), level, mode=mode)
    torch_loss = loss_fn(x, torch.tensor(labels))
    torch_loss.backward()

    def ce(z):  # per-sample, per-token cross-entropy, (batch, tokens)
        per = optax.softmax_cross_entropy_with_integer_labels(jax_b.jnp.moveaxis(z, 1, -1), labels)
        return per if mode == "individual" else per.mean()

    with jax_b.x64():
        jax_loss, jax_grad = jax.value_and_grad(jax_b.mod.flooded(ce, level, mode=mode))(
            jax_b.asarray(logits)
        )
        assert_all_close(
            [torch_loss.item(), x.grad.numpy()], [float(jax_loss), np.asarray(jax_grad)]
        )


@given(
    theta=arrays_like((3,), st.floats(-2.0, 2.0)),
    mu=st.floats(0.0, 1.0),
    delta=st.floats(1e-4, 0.1),
)
def test_penalties_agree(both, theta, mu, delta):
    a = np.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])

    def run(b):
        A = b.asarray(a)

        def f(t):
            return 0.5 * t @ A @ t + b.xp.cos(t).sum()

        value, grad = b.penalized_value_and_grad(f, theta, mu)
        return [value, grad, b.fd_penalty_step(f, theta, mu=mu, delta=delta, lr=0.1)]

    got_torch, got_jax = run_both(both, run)
    assert_all_close(got_torch, got_jax)


FLOODING_MISTAKES = [
    ("flood", lambda b: ((b.asarray(np.ones(2)), -0.5), {})),
    ("iflood", lambda b: ((b.asarray(np.ones(2)), -0.5), {})),
    ("adaflood_levels", lambda b: ((b.asarray(np.ones(2)),), {"gamma": -0.1})),
    ("adaflood_levels", lambda b: ((b.asarray(np.ones(2)),), {"beta": -1.0})),
    ("adaflood", lambda b: ((b.asarray(np.ones(3)), b.asarray(np.ones((3, 1)))), {})),
    ("igr_coefficient", lambda b: ((-0.1,), {})),
]


@pytest.mark.parametrize(("name", "make_args"), FLOODING_MISTAKES)
def test_flooding_and_penalty_errors_are_worded_the_same(both, name, make_args):
    messages = []
    for b in both:
        args, kwargs = make_args(b)
        with pytest.raises(ValueError) as err:
            getattr(b.mod, name)(*args, **kwargs)
        messages.append(str(err.value))
    assert messages[0] == messages[1]


def test_wrapper_errors_are_worded_the_same(both):
    torch_b, jax_b = both
    torch = torch_b.torch
    pairs = [
        (
            lambda: torch_b.mod.Flooding(torch.nn.MSELoss(), -1.0),
            lambda: jax_b.mod.flooded(lambda x: x, -1.0),
        ),
        (
            lambda: torch_b.mod.FiniteDifferencePenalty(
                torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), 0.1, delta=0.0
            ),
            lambda: jax_b.mod.finite_difference_penalty(0.1, delta=0.0),
        ),
        (
            lambda: torch_b.mod.FiniteDifferencePenalty(
                torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), -0.1
            ),
            lambda: jax_b.mod.penalized(lambda x: x, -0.1),
        ),
    ]
    for torch_call, jax_call in pairs:
        with pytest.raises(ValueError) as torch_err:
            torch_call()
        with pytest.raises(ValueError) as jax_err:
            jax_call()
        assert str(torch_err.value) == str(jax_err.value)


# ------------------------------------------------------------------------------------- Amos


@pytest.mark.parametrize("name", ["everything", "reduced_state", "momentum"])
def test_amos_trajectories_agree(both, name):
    keys, grads, state_shapes, options, _ = ref_amos.scenario(name)
    options.pop("mode")
    options["momentum"] = options["momentum"] or 0.0
    params = [ref_amos.SCENARIO_PARAMS[k] for k in keys]
    etas = [ref_amos.SCENARIO_ETAS[k] for k in keys]
    got_torch, got_jax = run_both(
        both,
        lambda b: b.run_amos(
            params, [[g[k] for k in keys] for g in grads], etas=etas, shapes=state_shapes, **options
        ),
    )
    for step in (0, 59, len(grads) - 1):
        assert_all_close(got_torch[step], got_jax[step])


AMOS_MISTAKES = [
    ({"beta": 1.0}, {"beta": 1.0}),
    ({"momentum": 1.5}, {"momentum": 1.5}),
    ({"c_coef": -0.1}, {"c_coef": -0.1}),
    ({"d_coef": -0.1}, {"d_coef": -0.1}),
    ({"extra_l2": -0.1}, {"extra_l2": -0.1}),
    ({"clip_value": -2.0}, {"clip_value": -2.0}),
    ({"eta": lambda n, p: 0.0}, {"eta_fn": lambda n, s: 0.0}),
]


@pytest.mark.parametrize(("torch_kwargs", "jax_kwargs"), AMOS_MISTAKES)
def test_amos_errors_are_worded_the_same(both, torch_kwargs, jax_kwargs):
    torch_b, jax_b = both
    with pytest.raises(ValueError) as torch_err:
        torch_b.mod.Amos([torch_b.torch.zeros(2, requires_grad=True)], lr=0.1, **torch_kwargs)
    with pytest.raises(ValueError) as jax_err:
        jax_b.mod.amos(0.1, **jax_kwargs).init(jax_b.jnp.zeros(2))
    assert str(torch_err.value) == str(jax_err.value)


# -------------------------------------------------------------------------------------- MGS


@pytest.mark.parametrize(
    "hyper",
    [
        {},
        {"antithetic": True, "proposal_density": "unit_variance", "temperature": 0.3},
        {"noise_scale": "constant", "noise": 0.2, "mix": 0.25, "max_grad_norm": None},
    ],
)
def test_mgs_steps_agree_with_injected_noise(both, hyper, monkeypatch):
    """The same surrogate gradients and the same standard normals give the same MGS trajectory
    (with a base SGD(lr 0.5) fed -Delta) in torch and JAX."""
    torch_b, jax_b = both
    torch, jnp = torch_b.torch, jax_b.jnp
    import optax

    import jax_opt.sampling.shells as jax_shells

    k = 4
    rows = k // 2 if hyper.get("antithetic") else k
    mask = mixture_mask(k, hyper.get("mix", 0.5), antithetic=hyper.get("antithetic", False))
    rng = np.random.default_rng(7)
    theta0 = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
    steps = 3
    grads = [[rng.standard_normal(p.shape) for p in theta0] for _ in range(steps)]
    normals = [[rng.standard_normal((rows, *p.shape)) for p in theta0] for _ in range(steps)]

    def task_loss(ps, sin):
        return sum((sin(3 * p) + p * p).sum() for p in ps)

    # torch: the optimizer's own draw replaced by the injected noise
    ps = [torch.tensor(p, requires_grad=True) for p in theta0]
    torch_draws = iter(normals)

    def injected_draw(self, gen, into=None):  # keeps _draw's contract: written into `into`
        drawn = [torch.tensor(z) for z in next(torch_draws)]
        into = into or {}
        return mask, [into[i].copy_(z) if i in into else z for i, z in enumerate(drawn)]

    monkeypatch.setattr(torch_b.mod.MGS, "_draw", injected_draw)
    base = torch.optim.SGD(ps, lr=0.5)
    opt = torch_b.mod.MGS(ps, base, num_samples=k, seed=0, **hyper)
    got_torch = []
    for g in grads:
        for p, gi in zip(ps, g, strict=True):
            p.grad = torch.tensor(gi)
        opt.step(lambda: task_loss(ps, torch.sin))
        got_torch.append([p.detach().numpy().copy() for p in ps])

    # JAX
    jax_draws = iter(normals)
    monkeypatch.setattr(
        jax_shells,
        "_draw",
        lambda *args, **kw: (jnp.asarray(mask), [jnp.asarray(z) for z in next(jax_draws)]),
    )
    got_jax = []
    with jax_b.x64():
        tx = jax_b.mod.mgs(optax.sgd(0.5), num_samples=k, **hyper)
        params = [jnp.asarray(p) for p in theta0]
        state = tx.init(params)
        for g in grads:
            updates, state = tx.update(
                [jnp.asarray(gi) for gi in g],
                state,
                params,
                value_fn=lambda q: task_loss(q, jnp.sin),
            )
            params = optax.apply_updates(params, updates)
            got_jax.append([np.asarray(p) for p in params])
    for a, b in zip(got_torch, got_jax, strict=True):
        assert_all_close(a, b)


MGS_MISTAKES = [
    {"num_samples": 0},
    {"num_samples": 3, "antithetic": True},
    {"noise": 0.0},
    {"noise_scale": "uniform"},
    {"mix": 1.5},
    {"temperature": -1.0},
    {"proposal_density": "gaussian"},
    {"max_grad_norm": 0.0},
]


@pytest.mark.parametrize("kwargs", MGS_MISTAKES)
def test_mgs_errors_are_worded_the_same(both, kwargs):
    torch_b, jax_b = both
    with pytest.raises(ValueError) as torch_err:
        torch_b.mod.MGS([torch_b.torch.zeros(2, requires_grad=True)], **kwargs)
    with pytest.raises(ValueError) as jax_err:
        jax_b.mod.mgs(**kwargs).init(jax_b.jnp.zeros(2))
    assert str(torch_err.value) == str(jax_err.value)


def test_mgs_lr_with_a_base_is_worded_the_same(both):
    import optax

    torch_b, jax_b = both
    p = torch_b.torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError) as torch_err:
        torch_b.mod.MGS([p], torch_b.torch.optim.SGD([p], lr=0.1), lr=0.5)
    with pytest.raises(ValueError) as jax_err:
        jax_b.mod.mgs(optax.sgd(0.1), lr=0.5)
    torch_msg = str(torch_err.value).replace("Invalid learning rate:", "Invalid lr:")
    assert torch_msg == str(jax_err.value)
