r"""Amos (math.md §2.2), faithful to the reference implementation (jestimator 0.3.3).

Twin of ``jax_opt/amos.py``: the same kernel names, signatures and equation tags.

.. math::

    M_2 &= \operatorname{mean}_{\text{reduced axes}}(\tilde g^2)                     \tag{1}

    v &\leftarrow \beta v + (1 - \beta) M_2                                          \tag{2}

    r &= (1 - \beta^t) / \max(v, \epsilon)                                          \tag{3}

    c_t &= (1 + c_{coef} \sqrt{\xi_t}\, b)^{-1/2}                                   \tag{4}

    \gamma_t &= c_t\, \xi_t^2\, r\, M_2                                              \tag{5}

    d_t &= 1 / (1 + d_{coef} \sqrt{\xi_t \eta}\, b)                                 \tag{6}

    \Delta\theta &= d_t \big(-(\tfrac12 \gamma_t + \lambda_{extra})\, \theta
        - \xi_t \eta \sqrt{r}\, \tilde g\big)                                        \tag{7}

    b &\leftarrow b + \gamma_t (1 + b)                                               \tag{8}

    m &\leftarrow \mu m + (1 - \mu)\, \Delta\theta, \quad \Delta\theta \leftarrow m  \tag{9}

with ``g~`` the gradient clipped element-wise to ``[-clip_value, clip_value]`` (when
``clip_value > 0``), ``xi_t`` the global learning rate at the 1-based count ``t``, ``eta`` the
tensor's model-oriented scale, and ``v``, ``b`` of the tensor's reduced state shape (the mean in
(1) runs over the axes that shape reduces; all of them for ``()``).

References:
    Tian & Parikh, "Amos: An Adam-style Optimizer with Adaptive Weight Decay towards
    Model-Oriented Scale", arXiv:2210.11693, 2022; the reference implementation
    google-research/jestimator, ``jestimator/amos.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from torch_opt import _native as native
from torch_opt._math import (
    TORCH_WORDING,
    by_device_and_dtype,
    check_group_keys,
    default_foreach,
    grad_mode_of_step,
    is_dtensor,
    resolve_scale,
    sparse_grad_error,
    stat_dtype,
    whole,
)
from torch_opt._native.amos import native_amos
from twinopt._checks import check_decay, check_nonnegative, check_positive, fail

__all__ = ["Amos", "amos_update", "reduced_mean_square"]


# ------------------------------------------------------------------------------------- kernels


def reduced_mean_square(grad: Tensor, shape: tuple[int, ...]) -> Tensor:
    """(1): the mean of ``grad**2`` over the axes where ``shape`` is smaller (kept as size-1
    axes), or over everything for ``shape == ()``."""
    if not shape:
        return grad.square().mean()
    axes = tuple(i for i, k in enumerate(grad.shape) if shape[i] < k)
    return grad.square().mean(dim=axes, keepdim=True) if axes else grad.square()


def amos_update(
    grad: Tensor,
    param: Tensor,
    v: Tensor,
    b: Tensor,
    *,
    lr: Any,
    eta: Any,
    beta: float,
    extra_l2: float,
    c_coef: float,
    d_coef: float,
    eps: float,
    count: Any,
) -> tuple[Tensor, Tensor, Tensor]:
    """One tensor's Amos update, equations (1)-(8), computed in the dtype of ``v``.

    Args:
        grad: The (clipped) gradient.
        param: The parameter.
        v: The second-moment state (reduced shape).
        b: The decay state (shape of ``v``).
        lr: The global learning rate ``xi_t`` at this count.
        eta: The model-oriented scale of the tensor.
        beta: The EMA decay of ``v``.
        extra_l2: The extra L2 coefficient, inside the ``d_t`` factor.
        c_coef: The coefficient of ``c_t`` (4).
        d_coef: The coefficient of ``d_t`` (6).
        eps: The floor of ``v`` in (3).
        count: The 1-based step count ``t``.

    Returns:
        ``(update, v, b)``: the update to add to the parameter and the new state. Inputs are
        not modified.
    """
    dtype = v.dtype
    grad, param = grad.to(dtype), param.to(dtype)
    m2 = reduced_mean_square(grad, tuple(v.shape))  # (1)
    v = v * beta + m2 * (1 - beta)  # (2)
    if isinstance(count, Tensor):
        count = count.item()
    r = (1 - beta**count) / v.clamp_min(eps)  # (3)
    c = torch.rsqrt(1 + c_coef * math.sqrt(lr) * b)  # (4)
    gamma = c * lr**2 * r * m2  # (5)
    init_lr = lr * eta
    d = torch.reciprocal(1 + d_coef * torch.sqrt(torch.as_tensor(init_lr, dtype=dtype)) * b)  # (6)
    update = d * ((-0.5 * gamma - extra_l2) * param - init_lr * torch.sqrt(r) * grad)  # (7)
    b = b + gamma * (1 + b)  # (8)
    return update, v, b


# -------------------------------------------------------------------------------------- shells


def check_state_shape(name: str, param_shape: tuple[int, ...], shape: Any) -> tuple[int, ...]:
    """A reduced state shape: the parameter's rank with each axis its size or 1, or ``()``."""
    shape = tuple(int(s) for s in shape)
    if shape and (
        len(shape) != len(param_shape)
        or any(s not in (1, p) for s, p in zip(shape, param_shape, strict=True))
    ):
        raise fail(
            "shape",
            shape,
            f"() or the shape {tuple(param_shape)} of {name} with some axes reduced to 1",
        )
    return shape


def _check_amos_group(group: dict) -> None:
    if isinstance(group["lr"], Tensor) and group["lr"].numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    check_nonnegative(TORCH_WORDING["lr"], group["lr"])
    eta, shape = group["eta"], group["shape"]
    if eta is not None and not callable(eta):
        check_positive("eta", eta)
    # a tuple of types, not tuple | list: torch 2.6's TorchDynamo cannot trace the union
    if shape is not None and not callable(shape) and not isinstance(shape, (tuple, list)):
        raise fail("shape", shape, "None, a callable (name, param) -> shape, or a tuple")
    check_decay("beta", group["beta"])
    check_decay("momentum", group["momentum"])
    if group["clip_value"] is not None:
        check_nonnegative("clip_value", group["clip_value"])
    check_nonnegative("extra_l2", group["extra_l2"])
    check_nonnegative("c_coef", group["c_coef"])
    check_nonnegative("d_coef", group["d_coef"])
    check_nonnegative("eps", group["eps"])
    if group["foreach"] not in (None, True, False):
        raise fail("foreach", group["foreach"], "None, True or False")


class Amos(Optimizer):
    r"""Amos (math.md §2.2), equal to the reference implementation's ``amos`` step for step.

    ``lr`` is the global learning rate ``xi`` (about 1/sqrt(number of independent batches)), so
    torch's LR schedulers drive it. Each parameter has a model-oriented scale ``eta`` (the
    expected magnitude of its trained entries) and a state shape, both resolved once, when its
    param group is added, into the parameter's state (``"eta"``, ``"v"``, ``"b"``, with
    ``"step"`` and, once ``momentum`` is non-zero, ``"momentum_buffer"``), so ``state_dict()``
    holds only tensors and numbers.

    - ``eta``: a float, or a callable ``(name, param) -> float``; by default (``None``) the
      parameter's RMS at construction, or 0.5 when it is all zeros (a zero-initialized bias).
    - ``shape``: a callable ``(name, param) -> shape`` or one shape for every parameter of
      the group: the parameter's rank with some axes reduced to 1 (``v`` then holds means over
      them), or ``()`` for one value per tensor; by default (``None``) the parameter's shape.

    Both may also be given per param group (``{"params": ..., "eta": fn, "shape": ()}``).
    Callables receive the name ``named_parameters()`` gave (pass ``model.named_parameters()``)
    or, for unnamed parameters, the parameter's index in its group as a string. Being
    resolved into the state, callables are not saved: ``state_dict()`` lists them as ``None``.

    ``momentum`` is the reference's EMA of the updates (9), like Adam's ``beta1``: schedulers
    that cycle ``"momentum"`` (OneCycleLR, CyclicLR) drive it, which is intended; its buffer is
    created when it first becomes non-zero. ``clip_value`` None or 0 means no clipping.

    For bf16 and fp16 parameters all state (momentum included) is float32 and the update is
    computed in float32 and rounded once into the parameter; ``load_state_dict`` keeps it
    float32 (torch's would cast it to the parameter's dtype).

    Args:
        params: Parameters, named parameters or param groups.
        lr: The global learning rate ``xi``.
        eta: Model-oriented scale (see above), ``> 0``.
        shape: Reduced state shape rule (see above).
        beta: EMA decay of ``v``, in ``[0, 1)`` (the reference advises ``1 - beta`` of the
            order of ``lr``).
        momentum: EMA decay of the updates, in ``[0, 1)``.
        clip_value: Element-wise gradient clipping bound, or None.
        extra_l2: Extra L2 regularization (the reference's, inside ``d_t``).
        c_coef: Coefficient of the weight-decay decay factor ``c_t``.
        d_coef: Coefficient of the learning-rate decay factor ``d_t``.
        eps: Floor of ``v``.
        foreach: ``None`` (default): plain contiguous float32/float64 CPU parameters with
            element-wise state or state shape ``()`` take the native kernels
            (``torch_opt/_native``: one pass over memory, as a torch custom op; equal to
            :func:`amos_update` in float64 up to rounding), every other parameter the
            ``torch._foreach_*`` path (GPUs, other dtypes, reduced shapes, DTensor); without a
            C compiler (one warning) or with ``TWINOPT_NATIVE=0`` all take the foreach path.
            ``True``: the foreach path for every parameter. ``False``: the per-tensor
            reference, :func:`amos_update`.

    .. warning::
        State that is not parameter-shaped (``shape`` reducing an axis) is not accepted by
        FSDP1's optimizer-state utilities, and with FSDP2 (DTensor parameters) construction
        raises ``TypeError``; the default, parameter-shaped state is sharded like its
        parameter. Complex parameters raise ``TypeError`` (optimize their real view).

    References:
        Tian & Parikh, "Amos", arXiv:2210.11693, 2022; google-research/jestimator.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor,
        *,
        eta: float | Callable[[str, Tensor], float] | None = None,
        shape: Callable[[str, Tensor], tuple[int, ...]] | tuple[int, ...] | None = None,
        beta: float = 0.999,
        momentum: float = 0.0,
        clip_value: float | None = None,
        extra_l2: float = 0.0,
        c_coef: float = 0.25,
        d_coef: float = 0.25,
        eps: float = 2**-125,
        foreach: bool | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "eta": eta,
            "shape": shape,
            "beta": beta,
            "momentum": momentum,
            "clip_value": clip_value,
            "extra_l2": extra_l2,
            "c_coef": c_coef,
            "d_coef": d_coef,
            "eps": eps,
            "foreach": foreach,
        }
        _check_amos_group(defaults)  # before params is read
        super().__init__(params, defaults)
        if foreach is None and any(p.is_cpu for g in self.param_groups for p in g["params"]):
            native.available()  # build or load the native kernels now, not inside a step

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        check_group_keys("Amos", param_group, self.defaults)
        _check_amos_group({**self.defaults, **param_group})
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        names = group.get("param_names")
        for i, p in enumerate(group["params"]):
            self._init_state(p, names[i] if names is not None else str(i), group)

    def _init_state(self, p: Tensor, name: str, group: dict) -> None:
        """Resolve ``eta`` and the state shape of one parameter into its state."""
        if p.is_complex():
            raise TypeError(
                f"Amos does not support complex parameters ({name!r}): its reduced second "
                "moments and model-oriented scale are defined for real tensors; optimize "
                "torch.view_as_real(p) instead"
            )
        dtype = stat_dtype([p])
        eta_rule, shape_rule = group["eta"], group["shape"]
        eta = resolve_scale(
            "eta",
            None if callable(eta_rule) else eta_rule,
            eta_rule if callable(eta_rule) else None,
            name,
            p,
        )
        shape = tuple(p.shape)
        if shape_rule is not None:
            rule = shape_rule(name, p) if callable(shape_rule) else shape_rule
            shape = check_state_shape(f"parameter {name!r}", shape, rule)
        sharded = is_dtensor(p)
        if sharded and shape != tuple(p.shape):
            raise TypeError(
                f"Amos does not support a reduced state shape {shape} for the DTensor "
                f"parameter {name!r} (FSDP2): a state tensor with reduced axes cannot be "
                "sharded like its parameter; use the default (parameter-shaped) state"
            )
        if sharded:  # parameter-shaped state, sharded as the parameter is
            eta = whole(eta)
            v = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        else:
            v = torch.zeros(shape, dtype=dtype, device=p.device)
        self.state[p] = {
            "step": torch.zeros((), dtype=torch.float32),
            "eta": torch.as_tensor(eta, dtype=dtype).to(p.device).clone(),
            "v": v,
            "b": v.clone(),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("shape", None)
            group.setdefault("foreach", None)

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict, with callable ``eta`` and ``shape`` rules listed as ``None``
        (their values are in each parameter's state), so that it pickles and loads with
        ``torch.load(weights_only=True)``."""
        state = super().state_dict()
        for group in state["param_groups"]:
            for key in ("eta", "shape"):
                if callable(group.get(key)):
                    group[key] = None
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as torch does, but keep the state in its own dtype (float32 for bf16/fp16
        parameters) instead of casting it to the parameter's."""
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params, strict=True):
            for key, value in state_dict["state"].get(saved_id, {}).items():
                if key != "step" and torch.is_tensor(value) and value.is_floating_point():
                    self.state[p][key] = value.to(device=p.device, dtype=stat_dtype([p]))

    @grad_mode_of_step
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one Amos step.

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
            hyper = {k: group[k] for k in ("beta", "extra_l2", "c_coef", "d_coef", "eps")}
            clip, mu, foreach = group["clip_value"], group["momentum"], group["foreach"]
            clip = clip if clip is not None and clip > 0 else None
            stepping = []
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise sparse_grad_error("Amos", self.param_groups, group, i)
                stepping.append(p)
                step = self.state[p]["step"]
                if not isinstance(step, Tensor):  # a checkpoint with Python-number steps
                    self.state[p]["step"] = torch.tensor(float(step), dtype=torch.float32)
            # (9)'s buffer, for every stepping parameter once any needs one (a parameter
            # without one steps as with a fresh one at momentum 0: the same update)
            if mu > 0 or any("momentum_buffer" in self.state[p] for p in stepping):
                for p in stepping:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p, dtype=state["v"].dtype)
            states = [self.state[p] for p in stepping]
            if foreach is None:
                rest = native_amos(stepping, states, lr=group["lr"], clip=clip, mu=mu, **hyper)
                stepping, states = [stepping[i] for i in rest], [states[i] for i in rest]
                foreach = default_foreach(stepping, False)
            if not stepping:
                continue
            impl = _multi_tensor_amos if foreach else _single_tensor_amos
            impl(stepping, states, xi=float(group["lr"]), clip=clip, mu=mu, hyper=hyper)
        return loss


def _apply(p: Tensor, update: Tensor) -> None:
    """``p += update``; computed in float32 for half parameters, rounded once into ``p``."""
    if p.dtype == update.dtype:
        p.add_(update)
    else:
        p.copy_(p.to(update.dtype).add_(update))


def _single_tensor_amos(
    params: list[Tensor], states: list[dict], *, xi: float, clip: Any, mu: float, hyper: dict
) -> None:
    """The readable reference path: :func:`amos_update`, tensor by tensor."""
    for p, state in zip(params, states, strict=True):
        state["step"] += 1
        grad = cast(Tensor, p.grad)  # Amos.step passes parameters with a gradient only
        grad = grad if clip is None else grad.clamp(-clip, clip)  # (0)
        update, v, b = amos_update(
            grad, p, state["v"], state["b"], lr=xi, eta=state["eta"], count=state["step"], **hyper
        )
        state["v"].copy_(v)
        state["b"].copy_(b)
        if "momentum_buffer" in state:
            update = state["momentum_buffer"].mul_(mu).add_(update, alpha=1 - mu)  # (9)
        _apply(p, update)


TensorList = list[Tensor] | tuple[Tensor, ...]  # what the foreach ops take and return


def _clamp_min(tensors: TensorList, value: float) -> TensorList:
    """``max(t, value)`` of each tensor, as new tensors (torch 2.6-2.10's DTensor has only the
    in-place foreach op)."""
    if not is_dtensor(tensors[0]):
        return torch._foreach_clamp_min(tensors, value)
    out = [t.clone() for t in tensors]
    torch._foreach_clamp_min_(out, value)
    return out


def _rsqrt_(tensors: TensorList) -> None:
    """``t = 1 / sqrt(t)`` in place (torch 2.6-2.10's DTensor has no foreach rsqrt)."""
    if not is_dtensor(tensors[0]):
        torch._foreach_rsqrt_(tensors)
        return
    for t in tensors:
        t.rsqrt_()


def _multi_tensor_amos(
    params: list[Tensor], states: list[dict], *, xi: float, clip: Any, mu: float, hyper: dict
) -> None:
    """The ``torch._foreach_*`` path, by (device, dtype) group: the operations of
    :func:`amos_update` in its order, on lists (equal to it in float64). The reduced mean (1)
    runs per tensor where the state shape reduces axes."""
    beta, eps = hyper["beta"], hyper["eps"]
    for ps, sts in by_device_and_dtype([params, states]):
        steps = [s["step"] for s in sts]
        torch._foreach_add_(steps, 1.0)
        vs, bs = [s["v"] for s in sts], [s["b"] for s in sts]
        dtype = vs[0].dtype
        gs = [p.grad.to(dtype) for p in ps]
        if clip is not None:  # (0)
            gs = _clamp_min(gs, -clip)
            torch._foreach_clamp_max_(gs, clip)
        xs = ps if ps[0].dtype == dtype else [p.to(dtype) for p in ps]
        if all(v.shape == g.shape for v, g in zip(vs, gs, strict=True)):
            m2 = torch._foreach_mul(gs, gs)  # (1)
        else:
            m2 = [reduced_mean_square(g, tuple(v.shape)) for g, v in zip(gs, vs, strict=True)]
        torch._foreach_mul_(vs, beta)
        torch._foreach_add_(vs, torch._foreach_mul(m2, 1 - beta))  # (2)
        r = _clamp_min(vs, eps)
        torch._foreach_reciprocal_(r)
        torch._foreach_mul_(r, [1 - beta ** float(t) for t in steps])  # (3); steps on the CPU
        c = torch._foreach_mul(bs, hyper["c_coef"] * math.sqrt(xi))
        torch._foreach_add_(c, 1.0)
        _rsqrt_(c)  # (4)
        gamma = torch._foreach_mul(c, xi**2)
        torch._foreach_mul_(gamma, r)
        torch._foreach_mul_(gamma, m2)  # (5)
        init_lr = torch._foreach_mul([s["eta"] for s in sts], xi)  # 0-d, as in amos_update
        d = torch._foreach_sqrt(init_lr)
        torch._foreach_mul_(d, hyper["d_coef"])
        d = torch._foreach_mul(d, bs)
        torch._foreach_add_(d, 1.0)
        torch._foreach_reciprocal_(d)  # (6)
        coef = torch._foreach_mul(gamma, -0.5)
        torch._foreach_sub_(coef, hyper["extra_l2"])
        update = torch._foreach_mul(coef, xs)
        torch._foreach_sqrt_(r)
        torch._foreach_mul_(r, init_lr)
        torch._foreach_sub_(update, torch._foreach_mul(r, gs))
        torch._foreach_mul_(update, d)  # (7)
        torch._foreach_add_(bs, torch._foreach_mul(gamma, torch._foreach_add(bs, 1.0)))  # (8)
        if "momentum_buffer" in sts[0]:  # then in every state (see Amos.step)
            bufs = [s["momentum_buffer"] for s in sts]
            torch._foreach_mul_(bufs, mu)
            torch._foreach_add_(bufs, update, alpha=1 - mu)  # (9)
            update = bufs
        if ps[0].dtype == dtype:
            torch._foreach_add_(ps, update)
        else:
            for p, u in zip(ps, update, strict=True):
                _apply(p, u)
