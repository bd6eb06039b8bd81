"""``RMSpropODE``: the torch.optim shell around the kernels, and its per-tensor reference path.

Twin of ``jax_opt/rmsprop_ode/shells.py``; the foreach fast path is in ``_foreach.py``, the
native CPU path in ``torch_opt/_native/rmsprop_ode.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from torch_opt import _native as native
from torch_opt._math import (
    TORCH_WORDING,
    as_real,
    check_group_keys,
    default_foreach,
    grad_mode_of_step,
    scalar_dtype,
    sparse_grad_error,
    stat_dtype,
)
from torch_opt._native.rmsprop_ode import native_rmsprop_ode
from torch_opt.rmsprop_ode._foreach import _multi_tensor_rmsprop_ode
from torch_opt.rmsprop_ode.kernels import (
    SCALES,
    rmsprop_ode_direction,
    rmsprop_ode_global_direction,
)
from twinopt._checks import check_choice, check_decay, check_nonnegative, fail

# The group keys RMSpropODE keeps besides its options: the global second moment and its count.
_GLOBAL_KEYS = ("global_sq_avg", "global_step")


def _check_rmsprop_group(group: dict) -> None:
    """The checks of every option; torch's wording for the arguments torch's RMSprop has."""
    if isinstance(group["lr"], Tensor) and group["lr"].numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    check_nonnegative(TORCH_WORDING["lr"], group["lr"])
    check_nonnegative(TORCH_WORDING["eps"], group["eps"])
    check_nonnegative(TORCH_WORDING["momentum"], group["momentum"])
    check_nonnegative(TORCH_WORDING["weight_decay"], group["weight_decay"])
    check_decay(TORCH_WORDING["alpha"], group["alpha"])
    check_nonnegative("initial_scale", group["initial_scale"])
    check_choice("scale", group["scale"], SCALES)
    if group["capturable"]:
        raise NotImplementedError(
            "RMSpropODE does not support capturable=True (CUDA-graph capture) yet; "
            "use capturable=False"
        )
    if group["differentiable"] and group["foreach"]:
        raise fail("foreach", group["foreach"], "False or None when differentiable=True")


def _init_global_state(group: dict) -> None:
    """A ``scale="global"`` group's second moment and its count, created with the group (not
    inside a step, where torch.compile would trace a change to the param group)."""
    if group["scale"] != "global" or "global_sq_avg" in group or not group["params"]:
        return
    params = group["params"]
    group["global_sq_avg"] = torch.full(
        (), float(group["initial_scale"]), dtype=stat_dtype(params), device=params[0].device
    )
    group["global_step"] = torch.zeros((), dtype=scalar_dtype())


class RMSpropODE(Optimizer):
    r"""RMSprop as an error-controlled ODE solver (math.md §1.3), a drop-in for torch.optim.RMSprop.

    With ``scale="elementwise"``, ``eps_in_sqrt=False``, ``bias_correction=False`` and
    ``initial_scale=0`` (the defaults) every trajectory equals ``torch.optim.RMSprop``'s with the
    same arguments: to the bit with ``foreach=True``, and up to the last bit of the square root
    on the default CPU path (see ``foreach``). The additions, equations (1)-(7) of the module
    docstring:

    - ``scale="global"``: Su's global version, one second moment per param group, the EMA of the
      squared global norm of the group's gradient (kept in the param group as
      ``"global_sq_avg"`` with its count ``"global_step"``, so it is saved in ``state_dict``).
      Weight decay is added to the gradient first; ``centered`` subtracts the squared norm of
      the gradient EMA. The update keeps the gradient's direction.
    - ``eps_in_sqrt=True``: ``sqrt(v + eps)`` (Su, optax's default) instead of ``sqrt(v) + eps``.
    - ``bias_correction=True``: every EMA divided by ``1 - alpha**t`` (as optax does).
    - ``initial_scale``: the initial value of the second moment (optax's ``initial_scale``).

    Args:
        params: Parameters or param groups.
        lr: Learning rate ``gamma`` (float or 1-element tensor).
        alpha: The EMA decay ``lambda`` in ``[0, 1)``.
        eps: ``epsilon >= 0``.
        weight_decay: L2 penalty added to the gradient.
        momentum: Heavy-ball momentum, torch's convention ``b <- m b + d; theta -= lr b``.
        centered: Divide by the variance estimate instead of the second moment.
        capturable: Not supported (``NotImplementedError`` when True).
        foreach: ``True``: the ``torch._foreach_*`` path, torch's own operations in torch's
            order, so ``torch.optim.RMSprop`` to the bit. ``None`` (default): plain contiguous
            float32/float64 CPU tensors take the native kernels (``torch_opt/_native``: one
            fused pass over memory, as a torch custom op; the same operations with an IEEE
            square root, where torch's MKL sqrt differs in the last bit for some entries),
            every other tensor the foreach path (GPUs, other dtypes, DTensor); without a C
            compiler all take the foreach path, with one warning. ``False``: the per-tensor
            reference kernels.
        maximize: Maximize the objective (``p.grad`` is never modified).
        differentiable: Let autograd track the step (uses the per-tensor kernels).
        scale: ``"elementwise"`` or ``"global"``.
        eps_in_sqrt: Place ``epsilon`` inside the square root.
        bias_correction: Correct the EMAs' bias towards their initial value.
        initial_scale: Initial second moment.

    .. warning::
        Complex parameters are handled as torch does, as pairs of reals (``view_as_real``); optax
        (and ``jax_opt``) use ``|z|^2`` per complex entry instead. NaN and Inf gradients are not
        repaired: they propagate into the parameters as in ``torch.optim.RMSprop``.

    References:
        Su Jianlin, "Optimization algorithms from a dynamics perspective (II): adaptive learning
        rates", kexue.fm/archives/6234, 2018. Hinton, "Overview of mini-batch gradient descent",
        2012.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        scale: str = "elementwise",
        eps_in_sqrt: bool = False,
        bias_correction: bool = False,
        initial_scale: float = 0.0,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
            "capturable": capturable,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "scale": scale,
            "eps_in_sqrt": eps_in_sqrt,
            "bias_correction": bias_correction,
            "initial_scale": initial_scale,
        }
        _check_rmsprop_group(defaults)  # before params is read, as torch's RMSprop does
        super().__init__(params, defaults)
        if foreach is None and any(p.is_cpu for g in self.param_groups for p in g["params"]):
            native.available()  # build or load the native kernels now, not inside a step

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        check_group_keys("RMSpropODE", param_group, [*self.defaults, *_GLOBAL_KEYS])
        _check_rmsprop_group({**self.defaults, **param_group})
        super().add_param_group(param_group)
        _init_global_state(self.param_groups[-1])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in (
                ("momentum", 0),
                ("centered", False),
                ("foreach", None),
                ("maximize", False),
                ("differentiable", False),
                ("capturable", False),
                ("scale", "elementwise"),
                ("eps_in_sqrt", False),
                ("bias_correction", False),
                ("initial_scale", 0.0),
            ):
                group.setdefault(key, value)
            _init_global_state(group)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if "step" in p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=scalar_dtype())

    def _init_group(self, group, params, grads, square_avgs, grad_avgs, momentum_bufs, steps):
        """Collect the params with gradients and their state, creating state lazily."""
        elementwise = group["scale"] == "elementwise"
        for i, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise sparse_grad_error("RMSpropODE", self.param_groups, group, i)
            params.append(p)
            grads.append(p.grad)
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=scalar_dtype())
            if elementwise and "square_avg" not in state:
                state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["initial_scale"] != 0:
                    as_real([state["square_avg"]])[0].fill_(group["initial_scale"])
            if group["centered"] and "grad_avg" not in state:
                state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["momentum"] > 0 and "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            steps.append(state["step"])
            if elementwise:
                square_avgs.append(state["square_avg"])
            if group["centered"]:
                grad_avgs.append(state["grad_avg"])
            if group["momentum"] > 0:
                momentum_bufs.append(state["momentum_buffer"])

    @grad_mode_of_step
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step.

        Args:
            closure: Optional callable that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            square_avgs: list[Tensor] = []
            grad_avgs: list[Tensor] = []
            momentum_bufs: list[Tensor] = []
            steps: list[Tensor] = []
            self._init_group(group, params, grads, square_avgs, grad_avgs, momentum_bufs, steps)
            if not params:
                continue
            global_state = None
            if group["scale"] == "global":
                global_state = group["global_sq_avg"], group["global_step"]
            lists = [params, grads, square_avgs, grad_avgs, momentum_bufs, steps]
            hyper = {
                key: group[key]
                for key in ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")
                + ("maximize", "eps_in_sqrt", "bias_correction")
            }
            foreach = group["foreach"]
            if foreach is None and not group["differentiable"]:
                rest = native_rmsprop_ode(
                    params,
                    grads,
                    square_avgs,
                    grad_avgs,
                    momentum_bufs,
                    steps,
                    global_state,
                    **hyper,
                )
                if not rest:
                    continue
                if len(rest) < len(params):
                    lists = [[x[i] for i in rest] if x else x for x in lists]
            if foreach is None:
                foreach = default_foreach(lists[0], group["differentiable"])
            impl = _multi_tensor_rmsprop_ode if foreach else _single_tensor_rmsprop_ode
            ps, gs, nus, mus, bufs, sts = lists
            impl(ps, gs, nus, mus, bufs, sts, global_state, **hyper)
        return loss


def _single_tensor_rmsprop_ode(
    params,
    grads,
    square_avgs,
    grad_avgs,
    momentum_bufs,
    steps,
    global_state,
    *,
    lr,
    alpha,
    eps,
    weight_decay,
    momentum,
    centered,
    maximize,
    eps_in_sqrt,
    bias_correction,
):
    """The readable reference path: the kernels, tensor by tensor (or once, for ``global``)."""
    hyper = {
        "decay": alpha,
        "eps": eps,
        "eps_in_sqrt": eps_in_sqrt,
        "bias_correction": bias_correction,
    }
    gs = []
    for p, g, step in zip(params, grads, steps, strict=True):
        step += 1
        g = -g if maximize else g
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        gs.append(g)
    ps, gs = as_real(params), as_real(gs)
    mus = as_real(grad_avgs) if centered else None
    if global_state is None:
        directions = []
        for i, (g, nu) in enumerate(zip(gs, as_real(square_avgs), strict=True)):
            d, new_nu, new_mu = rmsprop_ode_direction(
                g, nu, mus[i] if centered else None, count=steps[i], **hyper
            )
            nu.copy_(new_nu)
            if new_mu is not None:  # centered
                mus[i].copy_(new_mu)
            directions.append(d)
    else:
        nu, count = global_state
        count += 1
        directions, new_nu, new_mus = rmsprop_ode_global_direction(
            gs, nu, mus, count=count, **hyper
        )
        nu.copy_(new_nu)
        for m, new_m in zip(mus or (), new_mus or (), strict=True):
            m.copy_(new_m)
    bufs = as_real(momentum_bufs)
    for i, (p, d) in enumerate(zip(ps, directions, strict=True)):
        if momentum > 0:
            d = bufs[i].mul_(momentum).add_(d)
        p.add_(d, alpha=-float(lr))  # (7)
