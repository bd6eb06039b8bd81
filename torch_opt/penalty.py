r"""The explicit gradient-norm penalty (math.md §5), exactly and by finite differences.

Twin of ``jax_opt/penalty.py``: the same kernel names, signatures and equation tags.

.. math::

    L_{EGR}(\theta) &= L(\theta) + \mu \lVert \nabla L(\theta) \rVert^2              \tag{1}

    \nabla L_{EGR} &= \nabla L + 2 \mu\, H \nabla L                                  \tag{2}

    \nabla L_{EGR} &\approx \nabla L(\theta) + \tfrac{2\mu}{\delta}
        \big(\nabla L(\theta + \delta \nabla L(\theta)) - \nabla L(\theta)\big)      \tag{3}

    \mu_{IGR} &= \frac{h (1 + \beta)}{4 (1 - \beta)^2}
        \quad (h/4 \text{ for gradient descent})                                     \tag{4}

(3) is the forward ("ascent") finite difference of the Hessian-vector product in (2), one
extra gradient evaluation per step; (4) is the penalty that a learning rate ``h`` (and
momentum ``beta``) imposes implicitly.

References:
    Barrett & Dherin, "Implicit Gradient Regularization", ICLR 2021. Su Jianlin,
    kexue.fm/archives/7787. Karakida et al., "Understanding Gradient Regularization in Deep
    Learning: Efficient Finite-Difference Computation and Implicit Bias", 2023.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from torch_opt._math import check_group_keys, stat_dtype
from torch_opt._wrapper import SharesBase
from twinopt._checks import check_nonnegative, check_positive, missing
from twinopt.dynamics import igr_coefficient

__all__ = [
    "FiniteDifferencePenalty",
    "finite_difference_gradient",
    "gradient_norm_penalty",
    "igr_coefficient",
]


def gradient_norm_penalty(loss: Tensor, params: Iterable[Tensor]) -> Tensor:
    """``||grad L||^2`` over ``params``, differentiable (double backprop), for (1).

    ``(loss + mu * gradient_norm_penalty(loss, params)).backward()`` gives (2). The sum of
    squares is accumulated in float32 at least (a float16 gradient norm overflows easily).

    Args:
        loss: A scalar loss with a graph to ``params``.
        params: The tensors to differentiate by (unused ones count as zero).

    Returns:
        A 0-d tensor with a graph (``create_graph=True``).
    """
    params = list(params)
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    grads = [g for g in grads if g is not None]
    if not grads:
        return torch.zeros((), dtype=stat_dtype(params), device=loss.device)
    like = torch.zeros((), dtype=stat_dtype(grads), device=loss.device)
    return sum((g.to(like.dtype).square().sum() for g in grads), like)


def finite_difference_gradient(
    grad: Tensor, shifted_grad: Tensor, *, mu: float, delta: float
) -> Tensor:
    """(3) for one tensor: the penalized gradient from ``grad = grad L(theta)`` and
    ``shifted_grad = grad L(theta + delta * grad L(theta))``.

    Args:
        grad: The gradient at ``theta``.
        shifted_grad: The gradient at the ascent point ``theta + delta * grad``.
        mu: The penalty coefficient ``mu >= 0``.
        delta: The finite-difference step ``delta > 0``.

    Returns:
        ``grad + (2 mu / delta) (shifted_grad - grad)``.
    """
    return grad + (2 * mu / delta) * (shifted_grad - grad)  # (3)


class FiniteDifferencePenalty(SharesBase):
    """Wrap an optimizer so that it descends the penalized loss (1), by finite differences (3).

    ``step(closure)`` evaluates the closure at ``theta`` and at the ascent point
    ``theta + delta * grad``, writes (3) into ``.grad`` and steps the base optimizer: two
    gradient evaluations per step, no double backprop. The wrapper shares the base optimizer's
    param groups (which also hold ``mu`` and ``delta``, so LR schedulers and per-group values
    work) and its state (so ``state_dict()`` is complete).

    If the closure raises, the exception propagates and neither the parameters nor their
    gradients are left changed.

    Args:
        base_optimizer: A ``torch.optim.Optimizer`` over the parameters to train.
        mu: The penalty coefficient ``mu >= 0``. ``mu = igr_coefficient(lr)`` adds an explicit
            penalty as large as the one the learning rate already imposes implicitly, so the
            total is twice the implicit one.
        delta: The finite-difference step ``delta > 0``, in parameter units: the ascent point
            lies ``delta * ||grad L||`` away, so a large gradient wants a small ``delta``.
    """

    def __init__(self, base_optimizer: Optimizer, mu: float, delta: float = 1e-2) -> None:
        if not isinstance(base_optimizer, Optimizer):
            raise TypeError(
                f"base_optimizer must be a torch.optim.Optimizer, got "
                f"{type(base_optimizer).__name__}"
            )
        check_nonnegative("mu", mu)
        check_positive("delta", delta)
        # Adds mu and delta to the base optimizer's own param group dicts.
        super().__init__(base_optimizer.param_groups, {"mu": mu, "delta": delta})
        self._adopt(base_optimizer)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "base_optimizer" in self.__dict__:  # a new group (the base's own were checked there)
            known = {*self.base_optimizer.defaults, *self.defaults}
            check_group_keys("FiniteDifferencePenalty", param_group, known)
        check_nonnegative("mu", param_group.get("mu", self.defaults["mu"]))
        check_positive("delta", param_group.get("delta", self.defaults["delta"]))
        if "base_optimizer" not in self.__dict__:  # construction: the base's own groups
            super().add_param_group(param_group)
            return
        self.base_optimizer.add_param_group(param_group)
        for key, value in self.defaults.items():
            self.param_groups[-1].setdefault(key, value)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One step of the base optimizer on the finite-difference penalized gradient (3).

        Args:
            closure: A callable that recomputes the loss, calls ``backward()`` and returns the
                loss (zeroing the gradients first, as for any closure); it is called twice.

        Returns:
            The loss at ``theta`` (the closure's first value).
        """
        if closure is None:
            raise missing(
                "closure",
                "FiniteDifferencePenalty.step",
                "the loss and its gradients at two points",
                "a callable that recomputes the loss and calls backward()",
            )
        with torch.enable_grad():
            loss = closure()
        pairs = [
            (group, p) for group in self.param_groups for p in group["params"] if p.grad is not None
        ]
        grads = [p.grad.detach().clone() for _, p in pairs]
        saved = [p.detach().clone() for _, p in pairs]
        try:
            for (group, p), g in zip(pairs, grads, strict=True):
                p.add_(g, alpha=group["delta"])  # the ascent point theta + delta * grad
                p.grad = None
            with torch.enable_grad():
                closure()
            shifted = [
                g if p.grad is None else p.grad.detach()
                for (_, p), g in zip(pairs, grads, strict=True)
            ]
        except BaseException:
            for (_, p), g in zip(pairs, grads, strict=True):
                p.grad = g
            raise
        finally:
            for (_, p), s in zip(pairs, saved, strict=True):
                p.copy_(s)
        for (group, p), g, s in zip(pairs, grads, shifted, strict=True):
            p.grad = finite_difference_gradient(g, s, mu=group["mu"], delta=group["delta"])
        self.base_optimizer.step()
        return loss
