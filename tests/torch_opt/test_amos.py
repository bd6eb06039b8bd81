"""torch_opt.Amos: eta and shape resolution, state_dict, low precision, momentum, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.backends import assert_all_close
from tests.reference import amos as ref

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from torch_opt import Amos  # noqa: E402


def model(dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).to(dtype)


def train(opt, net, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=gen, dtype=next(net.parameters()).dtype)
    for _ in range(steps):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()


def test_callables_get_names_once_and_their_values_live_in_the_state():
    net = model()
    calls = []

    def eta(name, p):
        calls.append(("eta", name))
        return 0.5 if name.endswith("bias") else 1.0 / p.shape[1] ** 0.5

    def shape(name, p):
        calls.append(("shape", name))
        return (1, p.shape[1]) if p.dim() == 2 else ()

    opt = Amos(net.named_parameters(), lr=0.01, eta=eta, shape=shape)
    names = [n for n, _ in net.named_parameters()]
    assert sorted(calls) == sorted([("eta", n) for n in names] + [("shape", n) for n in names])
    train(opt, net, 3)
    assert len(calls) == 2 * len(names)  # resolved once, at construction
    w = net[0].weight
    assert opt.state[w]["eta"].item() == pytest.approx(0.5)
    assert opt.state[w]["v"].shape == (1, 4) and opt.state[net[0].bias]["v"].shape == ()
    unnamed = Amos(
        [{"params": [net[2].weight, net[2].bias]}],
        lr=0.01,
        eta=lambda name, p: {"0": 0.3, "1": 0.7}[name],
    )
    assert [unnamed.state[p]["eta"].item() for p in net[2].parameters()] == pytest.approx(
        [0.3, 0.7]
    )


def test_eta_as_float_group_key_and_default():
    net = model()
    opt = Amos(
        [{"params": net[0].parameters(), "eta": 0.25}, {"params": net[2].parameters()}], lr=0.01
    )
    assert opt.state[net[0].weight]["eta"].item() == 0.25
    w = net[2].weight.detach().numpy()
    assert opt.state[net[2].weight]["eta"].item() == pytest.approx(ref.model_scale(w))
    with torch.no_grad():
        net[2].bias.zero_()
    assert Amos([net[2].bias], lr=0.01).state[net[2].bias]["eta"].item() == 0.5
    assert Amos(net.parameters(), lr=0.01, eta=2.0).param_groups[0]["eta"] == 2.0


def test_state_dict_holds_only_tensors_and_numbers_and_resumes_exactly():
    net, twin = model(), model()
    kwargs = {"lr": 0.05, "momentum": 0.9, "clip_value": 0.5, "shape": lambda n, p: ()}
    opt = Amos(net.parameters(), **kwargs)
    train(opt, net, 4)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    twin.load_state_dict(net.state_dict())
    resumed = Amos(twin.parameters(), **{**kwargs, "eta": 9.0})  # the loaded eta wins
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    train(opt, net, 5, seed=2)
    train(resumed, twin, 5, seed=2)
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_low_precision_parameters_keep_float32_state_through_a_round_trip():
    net = model(torch.bfloat16)
    opt = Amos(net.parameters(), lr=0.05, momentum=0.9)
    train(opt, net, 2)
    for p in net.parameters():
        assert {k: v.dtype for k, v in opt.state[p].items() if k != "step"} == dict.fromkeys(
            ("eta", "v", "b", "momentum_buffer"), torch.float32
        )
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    twin = model(torch.bfloat16)
    twin.load_state_dict(net.state_dict())
    resumed = Amos(twin.parameters(), lr=0.05, momentum=0.9)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        for key, value in opt.state[p].items():
            assert resumed.state[q][key].dtype == value.dtype
            assert torch.equal(resumed.state[q][key], value)


def test_low_precision_update_is_computed_in_float32_and_rounded_once():
    p = torch.tensor([1.0, -2.0, 0.5], dtype=torch.bfloat16, requires_grad=True)
    p32 = p.detach().float().clone().requires_grad_()
    g = torch.tensor([0.3, 0.1, -2.0])
    opt, opt32 = Amos([p], lr=0.1, eta=0.5), Amos([p32], lr=0.1, eta=0.5)
    p.grad, p32.grad = g.bfloat16(), g.bfloat16().float()
    opt.step()
    opt32.step()
    assert torch.equal(p, p32.detach().bfloat16())


def test_momentum_buffer_appears_when_a_scheduler_first_makes_it_nonzero():
    net = model()
    opt = Amos(net.parameters(), lr=0.01)
    train(opt, net, 1)
    assert "momentum_buffer" not in opt.state[net[0].weight]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=10)
    assert 0.85 <= opt.param_groups[0]["momentum"] <= 0.95
    train(opt, net, 1)
    scheduler.step()
    assert opt.state[net[0].weight]["momentum_buffer"].shape == net[0].weight.shape


def test_lr_schedulers_drive_the_global_learning_rate():
    theta = np.array([0.5, -1.0, 2.0])
    rng = np.random.default_rng(3)
    grads = [[rng.normal(size=3)] for _ in range(6)]
    p = torch.tensor(theta, requires_grad=True)
    opt = Amos([p], lr=0.1, eta=0.7)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for (g,) in grads:
        p.grad = torch.tensor(g)
        opt.step()
        scheduler.step()
    lrs = [0.1 * 0.5 ** (k // 2) for k in range(6)]
    want = ref.run([theta], grads, lrs=lrs, lr=None, etas=[0.7])[-1][0]
    assert_all_close([p.detach().numpy()], want)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eta": 0.0}, r"^Invalid eta: 0\.0 \(must be > 0\)$"),
        ({"eta": lambda n, p: -1.0}, r"^Invalid eta: -1\.0 \(must be > 0\)$"),
        ({"beta": 1.0}, r"^Invalid beta: 1\.0 \(must be in \[0, 1\)\)$"),
        ({"momentum": -0.1}, r"^Invalid momentum: -0\.1 \(must be in \[0, 1\)\)$"),
        ({"c_coef": -1.0}, r"^Invalid c_coef: -1\.0 \(must be >= 0\)$"),
        ({"d_coef": -1.0}, r"^Invalid d_coef: -1\.0 \(must be >= 0\)$"),
        ({"extra_l2": -1.0}, r"^Invalid extra_l2: -1\.0 \(must be >= 0\)$"),
        ({"clip_value": -1.0}, r"^Invalid clip_value: -1\.0 \(must be >= 0\)$"),
        ({"lr": -0.1}, r"^Invalid learning rate: -0\.1 \(must be >= 0\)$"),
        ({"foreach": "yes"}, r"^Invalid foreach: 'yes' \(must be None, True or False\)$"),
        ({"shape": 3}, r"^Invalid shape: 3 \(must be None, a callable"),
        (
            {"shape": lambda n, p: (2, 1)},
            r"^Invalid shape: \(2, 1\) \(must be \(\) or the shape \(3, 4\) of parameter "
            r"'0\.weight'",
        ),
        (
            {"shape": lambda n, p: (4,) if p.dim() == 2 else ()},
            r"^Invalid shape: \(4,\) \(must be \(\) or the shape",
        ),
    ],
)
def test_bad_arguments(kwargs, message):
    net = model()
    with pytest.raises(ValueError, match=message):
        Amos(net.named_parameters(), **{"lr": 0.01, **kwargs})


def test_sparse_gradients_raise_a_type_error():
    emb = nn.Embedding(5, 2, sparse=True)
    opt = Amos(emb.named_parameters(), lr=0.01)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(
        TypeError,
        match=r"Amos does not support sparse gradients \(parameter "
        r"'weight'",
    ):
        opt.step()


AMOS_CASES = [
    (torch.float64, {}),
    (torch.float64, {"momentum": 0.9, "clip_value": 0.3, "extra_l2": 0.01}),
    (torch.float32, {"momentum": 0.5}),
    (torch.bfloat16, {}),
]


def amos_paths(dtype, options, foreach, steps=4):
    """A mixed set (a transposed view, a reduced and a 0-d state, an empty tensor) stepped by
    one path; the native kernels are not used (``foreach`` is True or False)."""
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(37, 101, generator=gen).to(dtype).requires_grad_()
    view = torch.randn(101, 37, generator=gen).to(dtype).t().requires_grad_()
    reduced = torch.randn(50, 60, generator=gen).to(dtype).requires_grad_()
    scalar_state = torch.randn(7, 3, generator=gen).to(dtype).requires_grad_()
    zero_d = torch.randn((), generator=gen).to(dtype).requires_grad_()
    empty = torch.zeros(0, 3, dtype=dtype, requires_grad=True)
    params = [big, view, reduced, scalar_state, zero_d, empty]
    shapes = {id(reduced): (50, 1), id(scalar_state): ()}
    opt = Amos(
        params,
        lr=0.05,
        shape=lambda name, p: shapes.get(id(p), tuple(p.shape)),
        foreach=foreach,
        **options,
    )
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(dtype)
        opt.step()
    return [p.detach().clone() for p in params], opt.state_dict()


@pytest.mark.parametrize(("dtype", "options"), AMOS_CASES)
def test_the_foreach_path_equals_the_reference_path(dtype, options):
    """foreach=True runs amos_update's operations on lists: the same results (in float64 up
    to the last bits of (3), where it multiplies by 1/max(v, eps) instead of dividing)."""
    got, state = amos_paths(dtype, options, foreach=True)
    want, want_state = amos_paths(dtype, options, foreach=False)
    tol = {"rtol": 1e-13, "atol": 1e-300} if dtype == torch.float64 else {}
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **tol)
    for key, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value, want_state["state"][key][name], **tol)


def test_eta_and_shape_work_per_param_group_callables_included():
    net = model()
    seen = []

    def eta(name, p):
        seen.append(name)
        return 0.125

    opt = Amos(
        [
            {"params": list(net[0].named_parameters()), "eta": eta, "shape": ()},
            {
                "params": list(net[2].named_parameters()),
                "shape": lambda n, p: p.shape[:1] + (1,) * (p.dim() - 1),
            },
        ],
        lr=0.01,
        eta=0.75,
    )
    assert seen == ["weight", "bias"]
    assert [opt.state[p]["eta"].item() for p in net[0].parameters()] == [0.125, 0.125]
    assert [opt.state[p]["eta"].item() for p in net[2].parameters()] == [0.75, 0.75]
    assert [opt.state[p]["v"].shape for p in net[0].parameters()] == [(), ()]
    assert [opt.state[p]["v"].shape for p in net[2].parameters()] == [(2, 1), (2,)]
    train(opt, net, 2)
    saved = opt.state_dict()
    # callables are resolved into the state: listed as None, values kept
    assert [g["eta"] for g in saved["param_groups"]] == [None, 0.75]
    assert [g["shape"] for g in saved["param_groups"]] == [(), None]
    assert callable(opt.param_groups[0]["eta"])
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)
