"""torch_opt.Flooding: a loss module that floods another, in training mode only."""

from __future__ import annotations

import copy
import io
import pickle

import numpy as np
import pytest

from tests.reference import flooding as ref

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from torch_opt import Flooding  # noqa: E402


def batch(seed=0, n=8, classes=3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=gen), torch.randint(0, classes, (n,), generator=gen)


@pytest.mark.parametrize("level", [0.0, 0.5, 1.0, 5.0])
def test_batch_mode_floods_the_mean_loss_and_eval_returns_it_plain(level):
    logits, target = batch()
    logits.requires_grad_()
    plain = nn.functional.cross_entropy(logits, target)
    loss_fn = Flooding(nn.CrossEntropyLoss(), level)
    flooded = loss_fn(logits, target)
    np.testing.assert_allclose(flooded.item(), ref.flood(plain.item(), level), rtol=1e-6)
    (g_flooded,) = torch.autograd.grad(flooded, logits)
    (g_plain,) = torch.autograd.grad(plain, logits)
    torch.testing.assert_close(g_flooded, ref.flood_slope(plain.item(), level) * g_plain)
    assert torch.equal(loss_fn.eval()(logits, target), plain)


def test_individual_mode_floods_each_sample_and_averages_extra_dimensions():
    """Per-sample losses of a (batch, tokens) problem are averaged over tokens, then flooded
    one by one (iFlood); the criterion's own reduction is left alone."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, 5, generator=gen)  # (batch, classes, tokens)
    target = torch.randint(0, 3, (4, 5), generator=gen)
    criterion = nn.CrossEntropyLoss()
    loss_fn = Flooding(criterion, 1.1, mode="individual")
    per_sample = nn.functional.cross_entropy(logits, target, reduction="none").mean(dim=1)
    np.testing.assert_allclose(
        loss_fn(logits, target).item(), ref.iflood(per_sample.numpy(), 1.1), rtol=1e-6
    )
    assert criterion.reduction == "mean"
    assert torch.equal(loss_fn.eval()(logits, target), criterion(logits, target))


def test_individual_mode_shares_the_criterion_parameters_and_buffers():
    weight = torch.tensor([1.0, 2.0, 0.5])
    loss_fn = Flooding(nn.CrossEntropyLoss(weight=weight), 0.2, mode="individual").double()
    logits, target = batch()
    logits = logits.double()
    per_sample = nn.functional.cross_entropy(
        logits, target, weight=weight.double(), reduction="none"
    )
    np.testing.assert_allclose(
        loss_fn(logits, target).item(), ref.iflood(per_sample.numpy(), 0.2), rtol=1e-12
    )
    clone = copy.deepcopy(loss_fn)
    clone.criterion.weight.mul_(2)
    assert clone(logits, target).item() != loss_fn(logits, target).item()
    np.testing.assert_allclose(
        clone(logits, target).item(),
        ref.iflood(
            nn.functional.cross_entropy(
                logits, target, weight=2 * weight.double(), reduction="none"
            ).numpy(),
            0.2,
        ),
        rtol=1e-12,
    )


def test_individual_mode_sees_later_changes_to_the_criterion():
    criterion = nn.CrossEntropyLoss()
    loss_fn = Flooding(criterion, 0.0, mode="individual")
    logits, target = batch()
    criterion.label_smoothing = 0.3
    smoothed = nn.functional.cross_entropy(logits, target, label_smoothing=0.3)
    torch.testing.assert_close(loss_fn(logits, target), smoothed)


def test_state_dict_round_trip_keeps_level_and_criterion():
    source = Flooding(nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 3.0])), 0.37)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target_ = Flooding(nn.CrossEntropyLoss(weight=torch.ones(3)), 0.0)
    target_.load_state_dict(torch.load(buffer, weights_only=True))
    logits, target = batch()
    assert torch.equal(target_(logits, target), source(logits, target))
    assert float(target_.level) == pytest.approx(0.37)
    assert "level=0.37" in repr(target_)
    restored = pickle.loads(pickle.dumps(source))
    assert torch.equal(restored(logits, target), source(logits, target))


@pytest.mark.slow
def test_compile_and_autocast_give_the_eager_result():
    logits, target = batch()
    loss_fn = Flooding(nn.CrossEntropyLoss(), 2.0, mode="individual")
    eager = loss_fn(logits, target)
    compiled = torch.compile(loss_fn, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(logits, target), eager)
    model = nn.Linear(3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = Flooding(nn.CrossEntropyLoss(), 2.0)(model(logits), target)
    out.backward()
    assert torch.isfinite(out) and model.weight.grad is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"level": -0.5}, r"^Invalid level: -0\.5 \(must be >= 0\)$"),
        (
            {"level": 0.1, "mode": "adaptive"},
            r"^Invalid mode: 'adaptive' \(must be one of 'batch', 'individual'\)$",
        ),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Flooding(nn.CrossEntropyLoss(), **kwargs)


def test_individual_mode_needs_a_criterion_with_a_reduction():
    class Custom(nn.Module):
        def forward(self, x, y):
            return (x - y).square().mean()

    with pytest.raises(
        ValueError,
        match=r"^Invalid criterion: 'Custom' \(must be a loss with a "
        r"'reduction' attribute",
    ):
        Flooding(Custom(), 0.1, mode="individual")
    Flooding(Custom(), 0.1)  # batch mode only needs a loss


def test_individual_mode_rejects_a_criterion_that_ignores_reduction():
    class Stubborn(nn.Module):
        reduction = "mean"

        def forward(self, x, y):
            return (x - y).square().mean()

    with pytest.raises(ValueError, match=r"^Invalid criterion: Stubborn returned one loss"):
        Flooding(Stubborn(), 0.1, mode="individual")(torch.ones(3), torch.zeros(3))
