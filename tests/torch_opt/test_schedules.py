"""torch_opt.schedules: amos_decay as a LambdaLR multiplier, AmosDecayScheduler (lr and weight
decay per group, both decay conventions, exact resume) and SuAmosSchedule (shared groups and
state, sigma resolution, exact resume, errors)."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest

from tests.backends import assert_all_close, assert_close
from tests.reference import schedules as ref

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.optim import Optimizer  # noqa: E402

from torch_opt.schedules import AmosDecayScheduler, SuAmosSchedule, amos_decay  # noqa: E402


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()


def batches(steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 4, generator=gen, dtype=torch.float64) for _ in range(steps)]


def train(opt, net, xs, scheduler=None):
    for x in xs:
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def round_trip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ---------------------------------------------------------------------------------- amos_decay


@pytest.mark.parametrize("mode", ref.MODES)
def test_amos_decay_is_a_lambda_lr_multiplier_that_round_trips(mode):
    p = torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, amos_decay(4, mode))
    lrs = []
    for _ in range(9):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert_close(lrs, [0.2 * ref.decay(t, 4, mode) for t in range(9)])
    assert lrs[0] == 0.2 and isinstance(lrs[1], float)
    saved = round_trip(scheduler.state_dict())
    assert saved["lr_lambdas"] == [{"half_life": 4, "mode": mode}]
    twin_opt = torch.optim.SGD([p], lr=0.2)
    twin = torch.optim.lr_scheduler.LambdaLR(twin_opt, amos_decay(100))
    twin.load_state_dict(saved)
    twin_opt.step()
    twin.step()
    assert twin.get_last_lr() == pytest.approx([0.2 * ref.decay(10, 4, mode)], rel=1e-15)


# -------------------------------------------------------------------------- AmosDecayScheduler


@pytest.mark.parametrize("mode", ref.MODES)
@pytest.mark.parametrize("convention", ["lr_scaled", "absolute"])
def test_scheduler_sets_each_groups_lr_and_weight_decay(mode, convention):
    """lr is absolute: one alpha0 per group (a list) or for all; the groups' own lr and
    weight_decay are replaced; weight_decay is (5) (lr_scaled) or rho_t (absolute)."""
    net = model()
    opt = torch.optim.AdamW(
        [
            {"params": net[0].parameters(), "lr": 0.5, "weight_decay": 0.1},
            {"params": net[2].parameters(), "lr": 0.7},
        ]
    )
    alphas, q = [0.01, 0.002], 0.25
    scheduler = AmosDecayScheduler(opt, alphas, 5, mode=mode, q=q, decay_convention=convention)
    for t in range(7):
        for group, a0 in zip(opt.param_groups, alphas, strict=True):
            assert_close(group["lr"], ref.learning_rate(t, a0, 5, mode))
            assert_close(group["weight_decay"], ref.weight_decay(t, a0, 5, mode, q, convention))
        assert scheduler.get_last_lr() == [g["lr"] for g in opt.param_groups]
        train(opt, net, batches(1, seed=t))
        scheduler.step()
    single = AmosDecayScheduler(torch.optim.AdamW(net.parameters(), lr=3.0), 0.01, 5)
    assert single.optimizer.param_groups[0]["lr"] == 0.01
    assert single.optimizer.param_groups[0]["weight_decay"] == 0.01 / 2


class DecoupledSGD(Optimizer):
    """SGD that decays by the fraction weight_decay itself: theta <- theta (1 - wd) - lr g."""

    def __init__(self, params, lr=0.1, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.mul_(1 - group["weight_decay"]).add_(p.grad, alpha=-group["lr"])


@pytest.mark.parametrize("mode", ref.MODES)
def test_absolute_convention_realizes_rho_without_the_learning_rate(mode):
    theta0 = np.array([1.0, -2.0, 0.5])
    grads = [np.array([0.3, 0.0, -1.0]) * (k + 1) for k in range(6)]
    p = torch.tensor(theta0, requires_grad=True)
    opt = DecoupledSGD([p])
    scheduler = AmosDecayScheduler(opt, 0.2, 2.0, mode=mode, q=2.0, decay_convention="absolute")
    theta = theta0
    for t, g in enumerate(grads):
        p.grad = torch.tensor(g)
        opt.step()
        scheduler.step()
        rho = ref.decay_rate(t, 0.2, 2.0, mode, 2.0)
        theta = theta * (1 - rho) - ref.learning_rate(t, 0.2, 2.0, mode) * g
        assert_close(p.detach().numpy(), theta)


@pytest.mark.parametrize("mode", ref.MODES)
def test_adamw_with_the_scheduler_resumes_exactly(mode):
    """Optimizer and scheduler state dicts (through torch.load(weights_only=True)) resume
    bitwise: 3 + 4 steps equal 7 uninterrupted ones."""
    xs = batches(7)
    net = model()
    opt = torch.optim.AdamW(net.parameters())
    scheduler = AmosDecayScheduler(opt, 0.05, 3, mode=mode, q=0.5)
    train(opt, net, xs[:3], scheduler)
    saved_net = round_trip(net.state_dict())
    saved_opt, saved_sched = round_trip(opt.state_dict()), round_trip(scheduler.state_dict())
    train(opt, net, xs[3:], scheduler)

    twin = model(seed=5)
    twin.load_state_dict(saved_net)
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=1.0, weight_decay=0.5)
    twin_sched = AmosDecayScheduler(twin_opt, 0.05, 3, mode=mode, q=0.5)
    twin_opt.load_state_dict(saved_opt)
    twin_sched.load_state_dict(saved_sched)
    assert twin_sched.last_epoch == 3
    train(twin_opt, twin, xs[3:], twin_sched)
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    assert twin_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert twin_opt.param_groups[0]["weight_decay"] == opt.param_groups[0]["weight_decay"]


def test_scheduler_bad_arguments():
    opt = torch.optim.AdamW([torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError, match=r"^Invalid lr: \[0\.1, 0\.2\] \(must be a number or a"):
        AmosDecayScheduler(opt, [0.1, 0.2], 10)
    with pytest.raises(
        ValueError,
        match=r"^Invalid decay_convention: 'l2' \(must be one of 'lr_scaled', 'absolute'\)$",
    ):
        AmosDecayScheduler(opt, 0.1, 10, decay_convention="l2")
    with pytest.raises(ValueError, match=r"^Invalid half_life: 0\.0 \(must be > 0\)$"):
        AmosDecayScheduler(opt, 0.1, 0)
    with pytest.raises(ValueError, match=r"^Invalid optimizer: Rprop has no 'weight_decay'"):
        AmosDecayScheduler(torch.optim.Rprop([torch.zeros(2, requires_grad=True)]), 0.1, 10)
    with pytest.raises(TypeError, match="is not an Optimizer"):
        AmosDecayScheduler(object(), 0.1, 10)


# ------------------------------------------------------------------------------ SuAmosSchedule


def test_groups_and_state_are_shared_and_lr_becomes_alpha0():
    net = model()
    base = torch.optim.Adam(net.parameters(), lr=0.3)
    opt = SuAmosSchedule(base, 0.01, 100, mode="inverse_square", q=2.0, sigma=0.1)
    assert opt.param_groups is base.param_groups and opt.state is base.state
    group = opt.param_groups[0]
    assert group["lr"] == 0.01 and group["betas"] == (0.9, 0.999)
    assert (group["half_life"], group["mode"], group["q"], group["sigma"]) == (
        100,
        "inverse_square",
        2.0,
        0.1,
    )
    train(opt, net, batches(2))
    assert group["lr"] == 0.01  # the base stepped with lr 1, then got alpha0 back
    assert "exp_avg" in base.state[net[0].weight]  # the base's state evolves as usual
    assert int(opt.state_dict()["state"][0]["su_step"]) == 2


def test_sigma_callables_get_names_or_indices_once():
    net = model()
    calls = []

    def sigma(name, p):
        calls.append(name)
        return 0.5 if name.endswith("bias") else 1.0 / p.shape[1] ** 0.5

    opt = SuAmosSchedule(torch.optim.Adam(net.named_parameters()), 0.01, 10, sigma=sigma)
    names = [n for n, _ in net.named_parameters()]
    assert calls == names
    train(opt, net, batches(2))
    assert calls == names  # resolved once, at construction
    assert opt.schedule_state[net[0].weight]["su_sigma"].item() == pytest.approx(0.5)
    assert opt.schedule_state[net[0].bias]["su_sigma"].item() == 0.5
    unnamed = SuAmosSchedule(
        torch.optim.SGD([net[2].weight, net[2].bias]),
        0.01,
        10,
        sigma=lambda name, p: {"0": 0.3, "1": 0.7}[name],
    )
    got = [unnamed.schedule_state[p]["su_sigma"].item() for p in net[2].parameters()]
    assert got == pytest.approx([0.3, 0.7])


def test_sigma_as_float_group_key_and_default():
    net = model()
    with torch.no_grad():
        net[2].bias.zero_()
    opt = SuAmosSchedule(
        torch.optim.SGD(
            [{"params": net[0].parameters(), "sigma": 0.25}, {"params": net[2].parameters()}]
        ),
        0.01,
        10,
    )
    state = opt.schedule_state
    assert state[net[0].weight]["su_sigma"].item() == 0.25
    w = net[2].weight.detach().numpy()
    assert state[net[2].weight]["su_sigma"].item() == pytest.approx(ref.model_scale(w), 1e-15)
    assert state[net[2].bias]["su_sigma"].item() == 0.5
    assert state[net[2].bias]["su_sigma"].dtype == torch.float64


def test_one_step_equals_the_oracle_and_returns_the_closures_loss():
    net = model()
    x = batches(1)[0]
    start = [p.detach().numpy().copy() for p in net.parameters()]
    opt = SuAmosSchedule(torch.optim.SGD(net.parameters(), lr=1e-3), 0.02, 8, q=0.5)

    def closure():
        opt.zero_grad()
        loss = net(x).square().mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    grads = [p.grad.numpy() for p in net.parameters()]
    assert loss.item() > 0
    want = [
        p + ref.su_update(g, p, 0.02, ref.model_scale(p), 1.0, 0.5)
        for p, g in zip(start, grads, strict=True)
    ]
    assert_all_close([p.detach().numpy() for p in net.parameters()], want)


def test_zero_direction_decays_only_and_missing_gradients_are_skipped():
    a = torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    opt = SuAmosSchedule(torch.optim.SGD([a, b]), 0.1, 4, q=1.0)
    for t in range(3):
        a.grad = torch.zeros_like(a)
        before = a.detach().clone()
        opt.step()
        assert torch.isfinite(a).all()
        assert_close(
            a.detach().numpy(),
            before.numpy() * (1 - ref.decay_rate(t, 0.1, 4, "inverse_time", 1.0)),
        )
    assert b.item() == 3.0 and int(opt.schedule_state[b]["su_step"]) == 0


def test_state_dict_round_trips_and_resumes_exactly():
    """weights_only load; sigma comes from the checkpoint (not from the trained parameters the
    twin is built on); t continues; 3 + 3 steps equal 6 uninterrupted ones."""
    xs = batches(6)
    net = model()
    opt = SuAmosSchedule(torch.optim.Adam(net.parameters()), 0.05, 4, mode="inverse_square")
    train(opt, net, xs[:3])
    saved = round_trip(opt.state_dict())
    saved_net = round_trip(net.state_dict())
    entry = saved["state"][0]
    assert int(entry["su_step"]) == 3 and "exp_avg" in entry and entry["su_sigma"].dim() == 0
    train(opt, net, xs[3:])

    twin = model(seed=7)
    twin.load_state_dict(saved_net)
    twin_opt = SuAmosSchedule(torch.optim.Adam(twin.parameters()), 0.05, 4, mode="inverse_square")
    assert twin_opt.schedule_state[twin[0].weight]["su_sigma"] != entry["su_sigma"]
    twin_opt.load_state_dict(saved)
    assert twin_opt.param_groups is twin_opt.base_optimizer.param_groups
    assert twin_opt.state is twin_opt.base_optimizer.state
    assert twin_opt.schedule_state[twin[0].weight]["su_sigma"] == entry["su_sigma"]
    train(twin_opt, twin, xs[3:])
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    clone = copy.deepcopy(opt)
    assert clone.param_groups is clone.base_optimizer.param_groups
    assert len(clone.schedule_state) == len(opt.schedule_state)


def test_a_failing_base_step_leaves_parameters_and_lr_as_they_were():
    net = model()
    base = torch.optim.SGD(net.parameters())
    opt = SuAmosSchedule(base, 0.05, 4)
    opt.zero_grad()
    net(batches(1)[0]).square().mean().backward()
    before = [p.detach().clone() for p in net.parameters()]
    original = base.step

    def failing(*args, **kwargs):
        original()
        raise RuntimeError("boom")

    base.step = failing
    with pytest.raises(RuntimeError, match="boom"):
        opt.step()
    for p, b in zip(net.parameters(), before, strict=True):
        assert torch.equal(p, b)
    assert opt.param_groups[0]["lr"] == 0.05


def test_added_groups_and_low_precision():
    net = model()
    opt = SuAmosSchedule(torch.optim.Adam(net[0].parameters()), 0.05, 4)
    opt.add_param_group({"params": net[2].parameters(), "sigma": 0.2})
    group = opt.param_groups[-1]
    assert group["lr"] == 0.05 and group["half_life"] == 4 and group["betas"] == (0.9, 0.999)
    assert opt.schedule_state[net[2].weight]["su_sigma"].item() == 0.2
    half = nn.Linear(3, 2).to(torch.bfloat16)
    low = SuAmosSchedule(torch.optim.Adam(half.parameters()), 0.05, 4)
    assert low.schedule_state[half.weight]["su_sigma"].dtype == torch.float32
    half(torch.ones(1, 3, dtype=torch.bfloat16)).sum().backward()
    low.step()
    assert half.weight.dtype == torch.bfloat16 and torch.isfinite(half.weight).all()
    reloaded = SuAmosSchedule(torch.optim.Adam(half.parameters()), 0.05, 4)
    reloaded.load_state_dict(round_trip(low.state_dict()))
    assert reloaded.schedule_state[half.weight]["su_sigma"].dtype == torch.float32


def test_a_scheduler_on_the_wrapper_scales_alpha0():
    a = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = SuAmosSchedule(torch.optim.SGD([a]), 0.1, 4, sigma=1.0)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5)
    a.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
    opt.step()
    want = np.array([1.0, -2.0]) + ref.su_update(
        np.ones(2), np.array([1.0, -2.0]), 0.05, 1.0, 1.0, 1.0
    )
    assert_close(a.detach().numpy(), want)


def test_su_amos_bad_arguments():
    params = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(
        ValueError,
        match=r"^Invalid weight_decay: 0\.01 \(must be 0 in the base optimizer: SuAmosSchedule",
    ):
        SuAmosSchedule(torch.optim.AdamW(params), 0.1, 10)
    opt = SuAmosSchedule(torch.optim.SGD(params), 0.1, 10)
    with pytest.raises(ValueError, match=r"^Invalid weight_decay: 0\.5"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "weight_decay": 0.5})
    with pytest.raises(ValueError, match=r"^Invalid sigma: 0\.0 \(must be > 0\)$"):
        SuAmosSchedule(torch.optim.SGD(params), 0.1, 10, sigma=0.0)
    with pytest.raises(ValueError, match=r"^Invalid sigma: -1\.0 \(must be > 0\)$"):
        SuAmosSchedule(torch.optim.SGD(params), 0.1, 10, sigma=lambda n, p: -1.0)
    with pytest.raises(
        ValueError,
        match=r"^Invalid mode: 'linear' \(must be one of 'inverse_time', 'inverse_square'\)$",
    ):
        SuAmosSchedule(torch.optim.SGD(params), 0.1, 10, mode="linear")
    with pytest.raises(TypeError, match="base_optimizer must be a torch.optim.Optimizer"):
        SuAmosSchedule(object(), 0.1, 10)
