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
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from torch_opt._math import resolve_scale, sparse_grad_error, stat_dtype
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


# Entries per run of the large-tensor path (512 KiB of float32, the fastest of 2^16..2^20 for a
# 4096x4096 step on the 2-core CPU): a tensor with element-wise state and more entries than
# this is stepped run by run (see ``Amos._step_in_runs``).
_RUN = 1 << 17


def _runs_apply(p: Tensor, state: dict) -> bool:
    """Whether ``p`` takes the run-by-run path: element-wise state, large, all contiguous,
    plain tensors (not an FSDP2 shard), dense gradient."""
    v = state["v"]
    tensors = [p, p.grad, v, state["b"]]
    if "momentum_buffer" in state:
        tensors.append(state["momentum_buffer"])
    return (
        p.numel() > _RUN
        and v.shape == p.shape
        and not _is_dtensor(p)
        and not p.grad.is_sparse
        and all(t.is_contiguous() for t in tensors)
    )


def _is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a ``DTensor`` (an FSDP2 shard), without importing torch.distributed."""
    return type(t).__name__ == "DTensor" and hasattr(t, "full_tensor")


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
    check_nonnegative("lr", group["lr"])
    if group["eta"] is not None:
        check_positive("eta", group["eta"])
    check_decay("beta", group["beta"])
    check_decay("momentum", group["momentum"])
    if group["clip_value"] is not None:
        check_nonnegative("clip_value", group["clip_value"])
    check_nonnegative("extra_l2", group["extra_l2"])
    check_nonnegative("c_coef", group["c_coef"])
    check_nonnegative("d_coef", group["d_coef"])
    check_nonnegative("eps", group["eps"])


class Amos(Optimizer):
    r"""Amos (math.md §2.2), equal to the reference implementation's ``amos`` step for step.

    ``lr`` is the global learning rate ``xi`` (about 1/sqrt(number of independent batches)), so
    torch's LR schedulers drive it. Each parameter has a model-oriented scale ``eta`` (the
    expected magnitude of its trained entries) and a state shape, both resolved once, at
    construction, into the parameter's state (``"eta"``, ``"v"``, ``"b"``, with ``"step"`` and,
    once ``momentum`` is non-zero, ``"momentum_buffer"``), so ``state_dict()`` holds only
    tensors and numbers.

    - ``eta``: a float (every parameter), a per-group ``"eta"`` key, or a callable
      ``(name, param) -> float``; by default the parameter's RMS at construction, or 0.5 when it
      is all zeros (a zero-initialized bias).
    - ``shape``: a callable ``(name, param) -> shape`` for ``v`` and ``b``: the parameter's rank
      with some axes reduced to 1 (``v`` then holds means over them), or ``()`` for one value
      per tensor; by default the parameter's shape.

    Callables receive the name ``named_parameters()`` gave (pass ``model.named_parameters()``)
    or, for unnamed parameters, the parameter's index in its group as a string.

    ``momentum`` is the reference's EMA of the updates (9), like Adam's ``beta1``: schedulers
    that cycle ``"momentum"`` (OneCycleLR, CyclicLR) drive it, which is intended; its buffer is
    created when it first becomes non-zero. ``clip_value`` None or 0 means no clipping.

    For bf16 and fp16 parameters all state (momentum included) is float32 and the update is
    computed in float32 and rounded once into the parameter; ``load_state_dict`` keeps it
    float32 (torch's would cast it to the parameter's dtype).

    Plain contiguous float32/float64 CPU parameters with element-wise state or state shape
    ``()`` are stepped by the native kernels (``torch_opt/_native``: one pass over memory, equal
    to :func:`amos_update` in float64 up to rounding); every other parameter by
    :func:`amos_update`. Without a C compiler (one warning) or with ``TWINOPT_NATIVE=0`` all
    take :func:`amos_update`.

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
        shape: Callable[[str, Tensor], tuple[int, ...]] | None = None,
        beta: float = 0.999,
        momentum: float = 0.0,
        clip_value: float | None = None,
        extra_l2: float = 0.0,
        c_coef: float = 0.25,
        d_coef: float = 0.25,
        eps: float = 2**-125,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        self._eta_fn = eta if callable(eta) else None
        self._shape_fn = shape
        defaults = {
            "lr": lr,
            "eta": None if callable(eta) else eta,
            "beta": beta,
            "momentum": momentum,
            "clip_value": clip_value,
            "extra_l2": extra_l2,
            "c_coef": c_coef,
            "d_coef": d_coef,
            "eps": eps,
        }
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _check_amos_group({**self.defaults, **param_group})
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        names = group.get("param_names")
        for i, p in enumerate(group["params"]):
            name = names[i] if names is not None else str(i)
            self._init_state(p, name, group)

    def _init_state(self, p: Tensor, name: str, group: dict) -> None:
        """Resolve ``eta`` and the state shape of one parameter into its state."""
        if p.is_complex():
            raise TypeError(
                f"Amos does not support complex parameters ({name!r}): its reduced second "
                "moments and model-oriented scale are defined for real tensors; optimize "
                "torch.view_as_real(p) instead"
            )
        dtype = stat_dtype([p])
        eta = resolve_scale("eta", group["eta"], self.__dict__.get("_eta_fn"), name, p)
        shape = tuple(p.shape)
        if self.__dict__.get("_shape_fn") is not None:
            shape = check_state_shape(f"parameter {name!r}", shape, self._shape_fn(name, p))
        sharded = _is_dtensor(p)
        if sharded and shape != tuple(p.shape):
            raise TypeError(
                f"Amos does not support a reduced state shape {shape} for the DTensor "
                f"parameter {name!r} (FSDP2): a state tensor with reduced axes cannot be "
                "sharded like its parameter; use the default (parameter-shaped) state"
            )
        if sharded:  # parameter-shaped state, sharded as the parameter is
            eta = eta.full_tensor() if _is_dtensor(eta) else eta
            v = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        else:
            v = torch.zeros(shape, dtype=dtype, device=p.device)
        self.state[p] = {
            "step": torch.zeros((), dtype=torch.float32),
            "eta": torch.as_tensor(eta, dtype=dtype).to(p.device).clone(),
            "v": v,
            "b": v.clone(),
        }

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

    def _step_in_runs(
        self, p: Tensor, state: dict, xi: float, clip: Any, mu: float, hyper: dict
    ) -> None:
        """The same step on a large tensor with element-wise state, run by run of ``_RUN``
        entries: every entry goes through the same operations as in the whole-tensor step
        (so the result is identical), but each temporary is small instead of a fresh
        parameter-sized buffer per operation."""
        v_all, b_all = state["v"], state["b"]
        if mu > 0 or "momentum_buffer" in state:
            state.setdefault("momentum_buffer", torch.zeros_like(p, dtype=v_all.dtype))
        buf_all = state.get("momentum_buffer")
        runs = [t.view(-1).split(_RUN) for t in (p, p.grad, v_all, b_all)]
        bufs = buf_all.view(-1).split(_RUN) if buf_all is not None else [None] * len(runs[0])
        for pr, gr, vr, br, mr in zip(*runs, bufs, strict=True):
            if clip is not None and clip > 0:
                gr = gr.clamp(-clip, clip)  # (0)
            update, v, b = amos_update(
                gr, pr, vr, br, lr=xi, eta=state["eta"], count=state["step"], **hyper
            )
            vr.copy_(v)
            br.copy_(b)
            if mr is not None:
                update = mr.mul_(mu).add_(update, alpha=1 - mu)  # (9)
            if pr.dtype == update.dtype:
                pr.add_(update)
            else:
                pr.copy_(pr.to(update.dtype).add_(update))

    @torch.no_grad()
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
            xi = float(group["lr"])
            clip, mu = group["clip_value"], group["momentum"]
            hyper = {k: group[k] for k in ("beta", "extra_l2", "c_coef", "d_coef", "eps")}
            stepping = []
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise sparse_grad_error("Amos", self.param_groups, group, i)
                stepping.append(p)
            rest = native_amos(
                stepping, [self.state[p] for p in stepping], xi=xi, clip=clip, mu=mu, hyper=hyper
            )
            for p in (stepping[i] for i in rest):
                state = self.state[p]
                state["step"] += 1
                if _runs_apply(p, state):
                    self._step_in_runs(p, state, xi, clip, mu, hyper)
                    continue
                grad = p.grad
                if clip is not None and clip > 0:
                    grad = grad.clamp(-clip, clip)  # (0)
                update, v, b = amos_update(
                    grad,
                    p,
                    state["v"],
                    state["b"],
                    lr=xi,
                    eta=state["eta"],
                    count=state["step"],
                    **hyper,
                )
                state["v"].copy_(v)
                state["b"].copy_(b)
                if mu > 0 or "momentum_buffer" in state:
                    buf = state.setdefault("momentum_buffer", torch.zeros_like(update))
                    update = buf.mul_(mu).add_(update, alpha=1 - mu)  # (9)
                if p.dtype == update.dtype:
                    p.add_(update)
                else:  # computed in float32, rounded once into the parameter
                    p.copy_(p.to(update.dtype).add_(update))
        return loss
