"""``LossTiedODE``: Su's loss-tied step as a torch.optim optimizer.

Twin of ``jax_opt/rmsprop_ode/loss_tied.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from torch_opt._math import (
    TORCH_WORDING,
    as_real,
    check_group_keys,
    grad_mode_of_step,
    sparse_grad_error,
)
from torch_opt.rmsprop_ode.kernels import loss_tied_direction
from twinopt._checks import check_nonnegative, missing_loss


def _check_group(group: dict[str, Any]) -> None:
    if isinstance(group["lr"], Tensor) and group["lr"].numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    check_nonnegative(TORCH_WORDING["lr"], group["lr"])
    check_nonnegative("max_scale", group["max_scale"])


class LossTiedODE(Optimizer):
    r"""Su's loss-tied ("Polyak-type") step (math.md §1.4): Euler steps of
    ``dtheta/dt = -(g/||g||) * L * min(1/||g||, M)``, so that ``dL/dt = -L`` where untruncated.

    One step is ``theta <- theta - lr * d`` with ``d`` from :func:`loss_tied_direction` (8); the
    norm is over the param group, the loss enters as ``max(L - min_loss, 0)``, and a zero
    gradient gives no step. ``step`` needs a closure that returns the loss.

    Args:
        params: Parameters or param groups.
        lr: The Euler step ``h`` (float or 1-element tensor).
        max_scale: The truncation ``M`` of ``1/||g||``.
        min_loss: The loss value taken as the minimum (Su assumes ``min L = 0``).

    References:
        Su Jianlin, "Optimization algorithms from a dynamics perspective (III): a more holistic
        view", kexue.fm/archives/6261, 2019.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        max_scale: float = 1000.0,
        min_loss: float = 0.0,
    ) -> None:
        defaults = {"lr": lr, "max_scale": max_scale, "min_loss": min_loss}
        _check_group(defaults)  # before params is read
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        check_group_keys("LossTiedODE", param_group, self.defaults)
        _check_group({**self.defaults, **param_group})
        super().add_param_group(param_group)

    @grad_mode_of_step
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Perform one loss-tied step.

        Args:
            closure: A callable that re-evaluates the model (sets ``.grad``) and returns the loss.

        Returns:
            The closure's loss.
        """
        if closure is None:
            raise missing_loss(
                "closure",
                "LossTiedODE.step",
                "a callable that recomputes the gradients and returns the loss",
            )
        with torch.enable_grad():
            loss = closure()
        if loss is None:
            raise missing_loss("loss", "LossTiedODE.step", "the closure must return the loss")
        value = loss.detach() if isinstance(loss, Tensor) else loss
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for i, p in enumerate(group["params"]):
                if p.grad is not None and p.grad.is_sparse:
                    raise sparse_grad_error("LossTiedODE", self.param_groups, group, i)
            directions = loss_tied_direction(
                as_real([p.grad for p in params]),
                value,
                max_scale=group["max_scale"],
                min_loss=group["min_loss"],
            )
            for p, d in zip(as_real(params), directions, strict=True):
                p.add_(d, alpha=-float(group["lr"]))  # (8)
        return loss
