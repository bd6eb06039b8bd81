r"""RMSprop as an ODE (math.md §1.2-1.4): kernels, RMSpropODE, LossTiedODE, the vector field.

Twin of ``jax_opt/rmsprop_ode.py``: the same kernel names, signatures and equation tags.

.. math::

    \nu_i &\leftarrow \lambda \nu_i + (1-\lambda)\, g_i^2
        \quad\text{(elementwise)} \qquad
    \nu \leftarrow \lambda \nu + (1-\lambda) \textstyle\sum_i \lVert g_i\rVert^2
        \quad\text{(global)}                                                        \tag{1}

    \mu_i &\leftarrow \lambda \mu_i + (1-\lambda)\, g_i \quad\text{(centered)}     \tag{2}

    c &= 1 - \lambda^t \ \text{(bias correction)}, \quad 1 \ \text{otherwise}       \tag{3}

    v &= \nu / c - (\mu / c)^2
        \quad\text{(global: } \nu/c - \textstyle\sum_i \lVert \mu_i/c\rVert^2)      \tag{4}

    s &= \sqrt{v + \epsilon} \ \text{(eps\_in\_sqrt)}, \quad \sqrt{v} + \epsilon   \tag{5}

    d_i &= g_i / s                                                                  \tag{6}

    \theta_i &\leftarrow \theta_i - \gamma\, d_i \quad\text{(through momentum if any)} \tag{7}

The kernels compute (1)-(6) and return the direction ``d`` (the optax ``scale_by_*``
convention); the shells apply the learning rate and momentum in their framework's convention
(torch: ``b <- m b + d; theta <- theta - lr b``; optax: ``trace`` after the learning rate).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import (
    Optimizer,
    ParamsT,
    _get_scalar_dtype,
    _use_grad_for_differentiable,
)

from torch_opt._math import (
    as_real,
    default_foreach,
    sparse_grad_error,
    stat_dtype,
    sum_of_squares,
)
from twinopt._checks import (
    check_choice,
    check_decay,
    check_nonnegative,
    fail,
    missing_loss,
)
from twinopt.dynamics import damped_ode_to_momentum, momentum_to_damped_ode, retune_momentum

__all__ = [
    "SCALES",
    "LossTiedODE",
    "RMSpropODE",
    "damped_ode_to_momentum",
    "loss_tied_direction",
    "momentum_to_damped_ode",
    "retune_momentum",
    "rmsprop_ode_direction",
    "rmsprop_ode_global_direction",
    "rmsprop_vector_field",
]

SCALES = ("elementwise", "global")


# ------------------------------------------------------------------------------------- kernels


def _bias(decay: Any, count: Any, bias_correction: bool) -> Any:
    """(3): ``1 - decay**count``, or 1 without bias correction (``count`` is 1-based)."""
    if not bias_correction:
        return 1.0
    if isinstance(count, Tensor):
        count = count.item()
    return 1 - decay**count


def _denominator(v: Tensor, eps: Any, eps_in_sqrt: bool) -> Tensor:
    """(5)."""
    return v.add(eps).sqrt() if eps_in_sqrt else v.sqrt().add(eps)


def rmsprop_ode_direction(
    grad: Tensor,
    nu: Tensor,
    mu: Tensor | None,
    *,
    decay: float,
    eps: float,
    eps_in_sqrt: bool,
    bias_correction: bool,
    count: int | Tensor,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Element-wise RMSprop for one real tensor: equations (1)-(6).

    Args:
        grad: The gradient ``g`` (after maximize / weight decay).
        nu: The EMA of squared gradients before this step.
        mu: The EMA of gradients before this step (centered), or ``None`` (not centered).
        decay: ``lambda`` (torch's ``alpha``).
        eps: ``epsilon``.
        eps_in_sqrt: Whether ``epsilon`` goes inside the square root (5).
        bias_correction: Whether to divide the EMAs by ``1 - decay**count`` (3).
        count: The 1-based number of this step.

    Returns:
        ``(direction, nu, mu)``: ``d = g / s`` and the updated EMAs. Inputs are not modified.
    """
    nu = nu.mul(decay).addcmul_(grad, grad, value=1 - decay)  # (1)
    if mu is not None:
        mu = mu.lerp(grad, 1 - decay)  # (2)
    c = _bias(decay, count, bias_correction)  # (3)
    v = nu / c if bias_correction else nu
    if mu is not None:
        mu_hat = mu / c if bias_correction else mu
        v = v.addcmul(mu_hat, mu_hat, value=-1)  # (4)
    return grad / _denominator(v, eps, eps_in_sqrt), nu, mu  # (5), (6)


def rmsprop_ode_global_direction(
    grads: Sequence[Tensor],
    nu: Tensor,
    mus: Sequence[Tensor] | None,
    *,
    decay: float,
    eps: float,
    eps_in_sqrt: bool,
    bias_correction: bool,
    count: int | Tensor,
) -> tuple[list[Tensor], Tensor, list[Tensor] | None]:
    """Global-norm RMSprop for a list of real tensors: equations (1)-(6) with one scalar ``nu``.

    The direction of every tensor is its gradient divided by the same scalar, so the update
    keeps the direction of the gradient (Su's "more principled" multi-dimensional version).

    Args:
        grads: The gradients (after maximize / weight decay).
        nu: The 0-d EMA of the squared global norm before this step; its dtype is the dtype of
            the statistics (see :func:`torch_opt._math.stat_dtype`).
        mus: The per-tensor gradient EMAs (centered), or ``None``.
        decay, eps, eps_in_sqrt, bias_correction, count: As in :func:`rmsprop_ode_direction`.

    Returns:
        ``(directions, nu, mus)``. Inputs are not modified.
    """
    nu = nu.mul(decay).add(sum_of_squares(grads, like=nu), alpha=1 - decay)  # (1)
    if mus is not None:
        mus = [m.lerp(g, 1 - decay) for m, g in zip(mus, grads, strict=True)]  # (2)
    c = _bias(decay, count, bias_correction)  # (3)
    v = nu / c
    if mus is not None:
        v = v - sum_of_squares(mus, like=nu) / c**2  # (4)
    s = _denominator(v, eps, eps_in_sqrt)  # (5)
    return [g / s.to(g.device) for g in grads], nu, mus  # (6)


def loss_tied_direction(
    grads: Sequence[Tensor], loss: Tensor | float, *, max_scale: float, min_loss: float
) -> list[Tensor]:
    r"""Su's truncated loss-tied direction (math.md §1.4) for a list of tensors.

    .. math::

        n = \lVert g\rVert, \qquad L_+ = \max(L - L_{min}, 0), \qquad
        d = g\, L_+ \min(1/n, M) / n \quad (d = 0 \text{ where } n = 0)            \tag{8}

    so ``theta - lr * d`` is one Euler step of ``dtheta/dt = -(g/||g||) L min(1/||g||, M)``.

    Args:
        grads: The gradients; the norm ``n`` is over all of them.
        loss: The current loss ``L``.
        max_scale: The truncation ``M`` of ``1/n``.
        min_loss: ``L_min``, the loss value taken as the minimum.

    Returns:
        The directions ``d``; a zero gradient gives a zero direction.
    """
    like = torch.zeros((), dtype=stat_dtype(grads), device=grads[0].device)
    n = sum_of_squares(grads, like=like).sqrt()
    excess = (torch.as_tensor(loss, dtype=like.dtype, device=like.device) - min_loss).clamp_min(0)
    safe_n = torch.where(n > 0, n, torch.ones_like(n))
    factor = torch.where(n > 0, excess * torch.clamp(1 / safe_n, max=max_scale) / safe_n, 0.0)
    return [g * factor.to(device=g.device, dtype=g.dtype) for g in grads]  # (8)


def rmsprop_vector_field(
    grad_fn: Callable[[Tensor], Tensor],
    *,
    rate: float,
    lr: float = 0.0,
    eps: float,
    eps_in_sqrt: bool,
    scale: str = "elementwise",
) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    r"""The vector field of RMSprop in ODE time (math.md §1.3).

    .. math::

        \dot G = \rho\,(g(\theta)^2 - G), \qquad
        \tilde G = G + \gamma \dot G, \qquad
        \dot\theta = -g(\theta) / s(\tilde G)                                        \tag{9}

    with ``s`` as in (5) and ``g^2`` replaced by ``||g||^2`` (a scalar ``G``) when
    ``scale="global"``. Time is scaled so that one explicit Euler step of size ``dt = lr`` is
    exactly one RMSprop step with ``decay = 1 - rate * lr`` (no momentum, not centered, no bias
    correction): the look-ahead ``G~`` is the optimizer's updated second moment. ``lr = 0``
    gives the limit ODE that RMSprop tracks to first order in ``lr`` at a fixed ``rate``.

    Args:
        grad_fn: ``theta -> g(theta)`` for one tensor ``theta``.
        rate: The relaxation rate ``rho = (1 - decay) / lr`` of the second moment.
        lr: The Euler step the field is matched to (0: the limit ODE).
        eps: ``epsilon``.
        eps_in_sqrt: Placement of ``epsilon`` as in (5).
        scale: ``"elementwise"`` (``G`` shaped like ``theta``) or ``"global"`` (0-d ``G``).

    Returns:
        ``field(theta, G) -> (dtheta/dt, dG/dt)``.
    """
    check_nonnegative("rate", rate)
    check_nonnegative("lr", lr)
    check_nonnegative("eps", eps)
    check_choice("scale", scale, SCALES)

    def field(theta: Tensor, G: Tensor) -> tuple[Tensor, Tensor]:
        g = grad_fn(theta)
        sq = g * g if scale == "elementwise" else torch.sum(g * g)
        dG = rate * (sq - G)
        s = _denominator(G + lr * dG, eps, eps_in_sqrt)  # (9)
        return -g / s, dG

    return field


# -------------------------------------------------------------------------------------- shells


def _check_rmsprop_group(group: dict) -> None:
    check_nonnegative("lr", group["lr"])
    check_nonnegative("eps", group["eps"])
    check_decay("alpha", group["alpha"])
    check_nonnegative("weight_decay", group["weight_decay"])
    check_nonnegative("momentum", group["momentum"])
    check_nonnegative("initial_scale", group["initial_scale"])
    check_choice("scale", group["scale"], SCALES)
    if group["capturable"]:
        raise NotImplementedError(
            "RMSpropODE does not support capturable=True (CUDA-graph capture) yet; "
            "use capturable=False"
        )
    if group["differentiable"] and group["foreach"]:
        raise fail("foreach", group["foreach"], "False or None when differentiable=True")


class RMSpropODE(Optimizer):
    r"""RMSprop as an error-controlled ODE solver (math.md §1.3), a drop-in for torch.optim.RMSprop.

    With ``scale="elementwise"``, ``eps_in_sqrt=False``, ``bias_correction=False`` and
    ``initial_scale=0`` (the defaults) every trajectory equals ``torch.optim.RMSprop``'s with the
    same arguments. The additions, equations (1)-(7) of the module docstring:

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
        foreach: Use the ``torch._foreach_*`` path. ``None`` (default) uses it wherever it can
            run (plain tensors, not ``differentiable``), on the CPU too: it runs torch's own
            operations, so it equals ``torch.optim.RMSprop`` to the bit, and it is the faster
            path here.
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
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
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
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**self.defaults, **param_group}
        _check_rmsprop_group(merged)
        super().add_param_group(param_group)

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
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if "step" in p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(
                        float(p_state["step"]), dtype=_get_scalar_dtype()
                    )

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
                state["step"] = torch.zeros((), dtype=_get_scalar_dtype())
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

    @staticmethod
    def _global_state(group: dict, params: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The group's global second moment and its count, created on first use."""
        if "global_sq_avg" not in group:
            group["global_sq_avg"] = torch.full(
                (),
                float(group["initial_scale"]),
                dtype=stat_dtype(params),
                device=params[0].device,
            )
            group["global_step"] = torch.zeros((), dtype=_get_scalar_dtype())
        return group["global_sq_avg"], group["global_step"]

    @_use_grad_for_differentiable
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
            foreach = group["foreach"]
            if foreach is None:
                foreach = default_foreach(params, group["differentiable"])
            global_state = None
            if group["scale"] == "global":
                global_state = self._global_state(group, params)
            impl = _multi_tensor_rmsprop_ode if foreach else _single_tensor_rmsprop_ode
            impl(
                params,
                grads,
                square_avgs,
                grad_avgs,
                momentum_bufs,
                steps,
                global_state,
                lr=group["lr"],
                alpha=group["alpha"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                centered=group["centered"],
                maximize=group["maximize"],
                eps_in_sqrt=group["eps_in_sqrt"],
                bias_correction=group["bias_correction"],
            )
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
            if centered:
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


# On the CPU, foreach ops loop over tensors, and each allocates its result list at once; for many
# (or large) tensors that means fresh, page-faulting memory every step. Running the pipeline over
# runs of about this many bytes (splitting large contiguous tensors into flat pieces) keeps every
# intermediate in the allocator's reuse range; benchmarks/README.md has the measurement.
# Elsewhere a (device, dtype) group is one run.
_CPU_CHUNK_BYTES = 1 << 20


def _pieces(tensors: list[Tensor], limit: int) -> list[list[Tensor]]:
    """Parallel tensors (same shape) as parallel flat pieces of at most ``limit`` bytes each,
    when all are contiguous and larger; else as they are."""
    first = tensors[0]
    if first.numel() * first.element_size() <= limit or not all(
        t.is_contiguous() and t.shape == first.shape for t in tensors
    ):
        return [tensors]
    size = max(1, limit // first.element_size())
    return [list(chunk) for chunk in zip(*(t.view(-1).split(size) for t in tensors), strict=True)]


def _chunks(lists: list[list[Tensor]], steps: list[Tensor] | None = None):
    """The (device, dtype) groups of the parallel ``lists`` (empty ones stay empty), in runs of
    about ``_CPU_CHUNK_BYTES`` on the CPU; each run ends with its ``steps`` (pieces of a tensor
    share its step counter)."""
    grouped = Optimizer._group_tensors_by_device_and_dtype([*lists, steps or []])
    for group, _ in grouped.values():
        if group[0][0].device.type != "cpu":
            yield group
            continue
        live = [k for k, x in enumerate(group[:-1]) if x]
        run, size = [[] for _ in group], 0
        for i in range(len(group[0])):
            for piece in _pieces([group[k][i] for k in live], _CPU_CHUNK_BYTES):
                for k, t in zip(live, piece, strict=True):
                    run[k].append(t)
                if steps:
                    run[-1].append(group[-1][i])
                size += piece[0].numel() * piece[0].element_size()
                if size >= _CPU_CHUNK_BYTES:
                    yield run
                    run, size = [[] for _ in group], 0
        if run[0]:
            yield run


def _effective_grads(ps, gs, *, maximize, weight_decay):
    """(M) and (W), without touching ``p.grad``."""
    if maximize:
        gs = torch._foreach_neg(gs)
    if weight_decay != 0:
        if maximize:
            torch._foreach_add_(gs, ps, alpha=weight_decay)
        else:
            gs = torch._foreach_add(gs, ps, alpha=weight_decay)
    return gs


def _multi_tensor_rmsprop_ode(
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
    """The ``torch._foreach_*`` path, by (device, dtype) group and, on the CPU, by runs.

    Equal to the reference path in float64; with torch's own settings it runs torch's foreach
    operations in torch's order, so it equals ``torch.optim.RMSprop`` to the bit.
    """
    lr = float(lr)
    lists = [as_real(list(x)) for x in (params, grads, square_avgs, grad_avgs, momentum_bufs)]
    torch._foreach_add_(steps, torch.tensor(1.0), alpha=1.0)
    wd = {"maximize": maximize, "weight_decay": weight_decay}
    if global_state is not None:
        ps, gs, _, mus, bufs = lists
        _multi_tensor_global(
            ps,
            gs,
            mus,
            bufs,
            global_state,
            lr=lr,
            alpha=alpha,
            eps=eps,
            momentum=momentum,
            centered=centered,
            eps_in_sqrt=eps_in_sqrt,
            bias_correction=bias_correction,
            **wd,
        )
        return
    for ps, gs, nus, mus, bufs, run_steps in _chunks(lists, list(steps)):
        gs = _effective_grads(ps, gs, **wd)
        torch._foreach_mul_(nus, alpha)
        torch._foreach_addcmul_(nus, gs, gs, value=1 - alpha)  # (1)
        if centered:
            torch._foreach_lerp_(mus, gs, 1 - alpha)  # (2)
        if bias_correction:
            cs = [_bias(alpha, s, True) for s in run_steps]  # (3)
            v = torch._foreach_div(nus, cs)
            if centered:
                mu_hat = torch._foreach_div(mus, cs)
                torch._foreach_addcmul_(v, mu_hat, mu_hat, value=-1)  # (4)
        elif centered:
            v = torch._foreach_addcmul(nus, mus, mus, value=-1)  # (4)
        else:
            v = nus
        if eps_in_sqrt:
            denom = torch._foreach_add(v, eps)
            torch._foreach_sqrt_(denom)  # (5)
        else:
            denom = torch._foreach_sqrt(v)
            torch._foreach_add_(denom, eps)  # (5)
        if momentum > 0:
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_addcdiv_(bufs, gs, denom)  # (6)
            torch._foreach_add_(ps, bufs, alpha=-lr)  # (7)
        else:
            torch._foreach_addcdiv_(ps, gs, denom, value=-lr)  # (6), (7)


def _multi_tensor_global(
    ps,
    gs,
    mus,
    bufs,
    global_state,
    *,
    lr,
    alpha,
    eps,
    momentum,
    centered,
    eps_in_sqrt,
    bias_correction,
    maximize,
    weight_decay,
):
    """Two passes: the squared norms (and the gradient EMAs), then the update. The effective
    gradient is recomputed in the second pass rather than kept, so no pass holds more than a
    run of temporaries."""
    nu, count = global_state
    count += 1
    wd = {"maximize": maximize, "weight_decay": weight_decay}
    sq = torch.zeros((), dtype=nu.dtype, device=nu.device)
    mu_sq = torch.zeros((), dtype=nu.dtype, device=nu.device)
    for run_ps, run_gs, run_mus, _ in _chunks([ps, gs, mus]):
        run_gs = _effective_grads(run_ps, run_gs, **wd)
        sq += sum_of_squares(run_gs, like=nu)
        if centered:
            torch._foreach_lerp_(run_mus, run_gs, 1 - alpha)  # (2)
            mu_sq += sum_of_squares(run_mus, like=nu)
    nu.mul_(alpha).add_(sq, alpha=1 - alpha)  # (1)
    c = _bias(alpha, count, bias_correction)  # (3)
    v = nu / c
    if centered:
        v = v - mu_sq / c**2  # (4)
    inv = _denominator(v, eps, eps_in_sqrt).reciprocal()  # (5)
    for run_ps, run_gs, run_bufs, _ in _chunks([ps, gs, bufs]):
        d = torch._foreach_mul(
            _effective_grads(run_ps, run_gs, **wd), inv.to(run_ps[0].device)
        )  # (6)
        if momentum > 0:
            torch._foreach_mul_(run_bufs, momentum)
            torch._foreach_add_(run_bufs, d)
            d = run_bufs
        torch._foreach_add_(run_ps, d, alpha=-lr)  # (7)


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
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        super().__init__(params, {"lr": lr, "max_scale": max_scale, "min_loss": min_loss})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**self.defaults, **param_group}
        check_nonnegative("lr", merged["lr"])
        check_nonnegative("max_scale", merged["max_scale"])
        super().add_param_group(param_group)

    @torch.no_grad()
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
