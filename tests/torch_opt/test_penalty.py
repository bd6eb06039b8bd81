"""torch_opt.gradient_norm_penalty and FiniteDifferencePenalty: the optimizer-wrapper contract."""

from __future__ import annotations

import copy
import io

import pytest

from tests.backends import assert_close
from tests.reference import penalty as ref

torch = pytest.importorskip("torch")
from torch_opt import FiniteDifferencePenalty, RMSpropODE, gradient_norm_penalty  # noqa: E402

A = torch.tensor([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]], dtype=torch.float64)


def loss_of(theta):
    return 0.5 * theta @ A @ theta + torch.cos(theta).sum()


def setup(base=torch.optim.SGD, **kw):
    theta = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64, requires_grad=True)
    opt = FiniteDifferencePenalty(base([theta], lr=0.1), **{"mu": 0.2, "delta": 0.01, **kw})

    def closure():
        opt.zero_grad()
        loss = loss_of(theta)
        loss.backward()
        return loss

    return theta, opt, closure


def test_gradient_norm_penalty_accumulates_in_float32_at_least():
    x = torch.full((4,), 300.0, dtype=torch.float16, requires_grad=True)
    penalty = gradient_norm_penalty((x * x).sum(), [x])  # |g|^2 = 4 * 600^2 > fp16 max
    assert penalty.dtype == torch.float32 and torch.isfinite(penalty)
    assert penalty.item() == 4 * 600.0**2
    y = torch.ones(2, requires_grad=True)
    assert gradient_norm_penalty((x * x).sum(), [x, y]).item() == 4 * 600.0**2  # unused: 0


def test_step_equals_the_oracle_and_returns_the_loss_at_theta():
    theta, opt, closure = setup()
    start = theta.detach().numpy().copy()
    loss = opt.step(closure)
    assert loss.item() == pytest.approx(ref.objective(start), rel=1e-12)
    assert_close(
        theta.detach().numpy(), start - 0.1 * ref.finite_difference_step_gradient(start, 0.2, 0.01)
    )


def test_a_failing_closure_leaves_parameters_and_gradients_as_they_were():
    theta, opt, closure = setup()
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 2:
            loss_of(theta).backward()  # leaves a gradient behind, then fails
            raise RuntimeError("boom")
        return closure()

    before = theta.detach().clone()
    with pytest.raises(RuntimeError, match="boom"):
        opt.step(flaky)
    assert torch.equal(theta.detach(), before)
    theta.grad = None
    closure()
    expected_grad = theta.grad.clone()
    calls["n"] = 0
    with pytest.raises(RuntimeError):
        opt.step(flaky)
    assert torch.equal(theta.grad, expected_grad)


def test_groups_and_state_are_shared_with_the_base_and_round_trip():
    theta, opt, closure = setup(RMSpropODE, mu=0.1)
    assert opt.param_groups is opt.base_optimizer.param_groups
    assert opt.param_groups[0]["mu"] == 0.1 and opt.param_groups[0]["alpha"] == 0.99
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        opt.step(closure)
        scheduler.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert "square_avg" in saved["state"][0]
    twin_theta, twin, twin_closure = setup(RMSpropODE, mu=0.7)
    with torch.no_grad():
        twin_theta.copy_(theta)
    twin.load_state_dict(saved)
    assert twin.param_groups is twin.base_optimizer.param_groups
    assert twin.state is twin.base_optimizer.state
    assert twin.param_groups[0]["mu"] == 0.1
    for _ in range(2):
        opt.step(closure)
        twin.step(twin_closure)
    assert torch.equal(theta, twin_theta)
    clone = copy.deepcopy(opt)
    assert clone.param_groups is clone.base_optimizer.param_groups


def test_added_param_groups_reach_the_base():
    theta, opt, _ = setup()
    extra = torch.zeros(2, requires_grad=True)
    opt.add_param_group({"params": [extra], "delta": 0.5})
    assert opt.base_optimizer.param_groups[-1]["delta"] == 0.5
    assert opt.base_optimizer.param_groups[-1]["mu"] == 0.2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mu": -0.1}, r"^Invalid mu: -0\.1 \(must be >= 0\)$"),
        ({"delta": 0.0}, r"^Invalid delta: 0\.0 \(must be > 0\)$"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        setup(**kwargs)


def test_needs_a_closure_and_an_optimizer():
    _, opt, _ = setup()
    with pytest.raises(ValueError, match=r"^Missing closure: FiniteDifferencePenalty.step"):
        opt.step()
    with pytest.raises(TypeError, match="base_optimizer must be a torch.optim.Optimizer"):
        FiniteDifferencePenalty(object(), 0.1)
