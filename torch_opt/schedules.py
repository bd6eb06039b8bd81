r"""Su's Amos-derived learning-rate and weight-decay schedules (math.md §2.1).

Twin of ``jax_opt/schedules.py``: the same kernel names, signatures and equation tags.

.. math::

    s(t) &= \frac{1}{1 + t / T}
        \quad (\text{inverse\_time}: 2 \alpha_0 p_0 T = 1)                          \tag{1}

    s(t) &= \frac{1}{\big(1 + (\sqrt{2} - 1)\, t / T\big)^2}
        \quad (\text{inverse\_square}: \alpha_0 p T = \sqrt{2} - 1)                 \tag{2}

    \alpha_t &= \alpha_0\, s(t)                                                      \tag{3}

    \rho_t &= \frac{\alpha_0^2}{2 q}\, s(t)                                          \tag{4}

    \lambda_t &= \rho_t / \alpha_t = \frac{\alpha_0}{2 q}
        \quad (\text{AdamW: } \theta \leftarrow \theta\, (1 - \alpha_t \lambda_t))   \tag{5}

    \Delta\theta &= -\alpha_0 \sqrt{k}\, \sigma\, s(t)\, \frac{u_t}{\lVert u_t \rVert}
        - \rho_t\, \theta                                                            \tag{6}

``T`` is the half-life in steps (``s(0) = 1``, ``s(T) = 1/2``) and the step ``t`` counts from 0.
(3)-(5) drive any optimizer with decoupled weight decay: ``alpha_t`` is its learning rate,
``rho_t`` the fraction of the parameters it decays per step (``O(rho) = O(alpha^2)``: Su's
"decay must not dominate"), ``lambda_t`` the ``weight_decay`` that realizes it where the decay is
scaled by the learning rate. (6) is Su's per-tensor rule around a base direction ``u_t`` with
``k`` entries and scale ``sigma`` (``sqrt(k) sigma`` estimates the distance to the solution); its
learning-rate term is 0 where ``u_t = 0``.

References:
    Su Jianlin, kexue.fm/archives/9344, 2022. Tian & Parikh, "Amos: An Adam-style Optimizer
    with Adaptive Weight Decay towards Model-Oriented Scale", arXiv:2210.11693, 2022.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.optimizer import Optimizer

from torch_opt._math import (
    as_real,
    check_group_keys,
    is_dtensor,
    resolve_scale,
    stat_dtype,
    whole,
)
from torch_opt._wrapper import SharesBase
from twinopt._checks import check_choice, check_nonnegative, check_positive, fail
from twinopt.schedules import MODES, amos_decay, decay_factor  # the schedule is framework-free

__all__ = [
    "DECAY_CONVENTIONS",
    "MODES",
    "AmosDecayScheduler",
    "SuAmosSchedule",
    "amos_decay",
    "su_amos_update",
]

DECAY_CONVENTIONS = ("lr_scaled", "absolute")

# The keys SuAmosSchedule adds to each parameter's entry of state_dict()["state"].
STATE_KEYS = ("su_step", "su_sigma")


# ------------------------------------------------------------------------------------- kernels


def _unit(u: Tensor) -> Tensor:
    """``u / ||u||``, 0 for ``u = 0``; scaled by ``max |u|`` first, so the squares neither
    underflow nor overflow."""
    if u.numel() == 0:
        return u.clone()
    one = torch.ones((), dtype=u.dtype, device=u.device)
    if is_dtensor(u):  # FSDP2: a rank's shard may be empty, where amax fails
        norm = whole(torch.linalg.vector_norm(u))
        return u / torch.where(norm > 0, norm, one)
    peak = u.abs().amax()
    v = u / torch.where(peak > 0, peak, one)
    norm = torch.linalg.vector_norm(v)
    return v / torch.where(norm > 0, norm, one)


def su_amos_update(
    direction: Tensor, param: Tensor, *, lr: Any, scale: Any, decay: Any, q: Any
) -> Tensor:
    """Su's per-tensor rule (6): the update to add to the parameter.

    Computed in float32 at least (float64 for float64 inputs); inputs are not modified.

    Args:
        direction: The base update direction ``u_t`` (descent subtracts it: a gradient, an
            Adam direction ``m / (sqrt(v) + eps)``, ...); only its direction matters.
        param: The parameter ``theta``.
        lr: The initial learning rate ``alpha_0``.
        scale: ``sqrt(k) sigma``, the estimated distance of the tensor to its solution.
        decay: The decay factor ``s(t)`` of (1) or (2).
        q: Su's ``q > 0`` in (4) (``theta . eps ~ q ||eps||^2``; 1 is fine).

    Returns:
        ``-lr scale decay u / ||u|| - lr^2 / (2 q) decay theta``; the first term is exactly 0
        where ``u = 0``.
    """
    dtype = stat_dtype([direction, param])
    unit = _unit(direction.to(dtype))
    return -(lr * scale * decay) * unit - (lr * lr / (2 * q) * decay) * param.to(dtype)  # (6)


# -------------------------------------------------------------------------------------- shells


def _set(group: dict[str, Any], key: str, value: float) -> None:
    if isinstance(group[key], Tensor):
        group[key].fill_(value)
    else:
        group[key] = value


class AmosDecayScheduler(LRScheduler):
    r"""Drive the learning rate (3) and the weight decay (4) of an optimizer with decoupled
    weight decay: ``torch.optim.AdamW`` and the like.

    After ``t`` calls of ``step()`` (one per optimizer step, as for any scheduler), each group's
    ``lr`` is ``alpha_t = lr * s(t)`` and its ``weight_decay`` is set so that the optimizer
    decays the parameters by the fraction ``rho_t`` of (4) in its next step:

    - ``decay_convention="lr_scaled"``: the optimizer decays by ``lr * weight_decay``
      (``torch.optim.AdamW``: ``theta <- theta (1 - lr * weight_decay)``), so ``weight_decay`` is
      the constant ``lr / (2 q)`` of (5).
    - ``decay_convention="absolute"``: the optimizer decays by ``weight_decay`` itself
      (``theta <- theta (1 - weight_decay)``), so ``weight_decay = rho_t``.

    ``lr`` is absolute: it replaces the groups' own learning rates (their ``initial_lr`` is not
    used), one value for all groups or a list with one per group. The learning rate is set, not
    multiplied, so this scheduler does not compose with others the way ``LambdaLR`` does.
    Optimizers whose ``weight_decay`` is an L2 term added to the gradient (``Adam``, ``SGD``,
    ``RMSprop``) do not decay by a fraction per step: use their decoupled variants.

    Args:
        optimizer: The optimizer; each param group needs a ``weight_decay`` key.
        lr: The initial learning rate ``alpha_0 >= 0`` (a float, or a list of one per group).
        half_life: The half-life ``T > 0`` in steps.
        mode: ``"inverse_time"`` (1) or ``"inverse_square"`` (2).
        q: Su's ``q > 0`` in (4).
        decay_convention: ``"lr_scaled"`` or ``"absolute"`` (see above).
        last_epoch: As for every ``LRScheduler`` (``-1`` to start).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        lr: float | list[float] | tuple[float, ...],
        half_life: float,
        *,
        mode: str = "inverse_time",
        q: float = 1.0,
        decay_convention: str = "lr_scaled",
        last_epoch: int = -1,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        groups = optimizer.param_groups
        if isinstance(lr, (list, tuple)):
            if len(lr) != len(groups):
                raise fail(
                    "lr", list(lr), f"a number or a list of one per param group ({len(groups)})"
                )
            lrs = [float(v) for v in lr]
        else:
            lrs = [float(lr)] * len(groups)
        for v in lrs:
            check_nonnegative("lr", v)
        check_positive("half_life", half_life)
        check_choice("mode", mode, MODES)
        check_positive("q", q)
        check_choice("decay_convention", decay_convention, DECAY_CONVENTIONS)
        for i, group in enumerate(groups):
            if "weight_decay" not in group:
                raise ValueError(
                    f"Invalid optimizer: {type(optimizer).__name__} has no 'weight_decay' in "
                    f"param group {i} (must have decoupled weight decay)"
                )
        self.peak_lrs = lrs
        self.half_life = float(half_life)
        self.mode = mode
        self.q = float(q)
        self.decay_convention = decay_convention
        super().__init__(optimizer, last_epoch)

    def _decay(self) -> float:
        return decay_factor(self.last_epoch, self.half_life, self.mode)  # (1), (2)

    def get_lr(self) -> list[float]:
        """``alpha_t`` (3) for each group, at ``t = last_epoch``."""
        s = self._decay()
        return [a * s for a in self.peak_lrs]  # (3)

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def weight_decays(self) -> list[float]:
        """The ``weight_decay`` of each group at ``t = last_epoch``: (5) or (4)."""
        s = self._decay()
        if self.decay_convention == "lr_scaled":
            return [a / (2 * self.q) for a in self.peak_lrs]  # (5)
        return [a * a / (2 * self.q) * s for a in self.peak_lrs]  # (4)

    def step(self, epoch: int | None = None) -> None:
        """Advance ``t`` and set each group's ``lr`` and ``weight_decay``."""
        super().step(epoch)
        for group, wd in zip(self.optimizer.param_groups, self.weight_decays(), strict=True):
            _set(group, "weight_decay", wd)


def _check_group(group: dict[str, Any]) -> None:
    check_nonnegative("lr", group["lr"])
    check_positive("half_life", group["half_life"])
    check_choice("mode", group["mode"], MODES)
    check_positive("q", group["q"])
    if group["sigma"] is not None:
        check_positive("sigma", group["sigma"])


def _check_no_weight_decay(weight_decay: Any) -> None:
    if not isinstance(weight_decay, Tensor) and weight_decay != 0:
        raise fail(
            "weight_decay",
            weight_decay,
            "0 in the base optimizer: SuAmosSchedule applies its own decay",
        )


class SuAmosSchedule(SharesBase):
    r"""Su's per-tensor rule (6) around the direction of any base optimizer.

    ``step()`` lets the base optimizer take its step, reads each tensor's direction
    ``u_t = theta_before - theta_after``, puts the parameters back and applies (6). Only the
    direction of the base's step is used: the base steps with ``lr = 1`` (its own learning rate
    never matters, and a step of the parameters' size keeps the difference precise), and its
    state (moments, ...) evolves as usual. The base must not decay the parameters itself
    (``weight_decay=0``: use ``Adam``, not ``AdamW``), must not need a closure, and should not
    depend on the parameters' values beyond its update direction.

    The wrapper shares the base's param groups, whose ``lr`` becomes ``alpha_0`` (an LR scheduler
    on the wrapper scales it, e.g. for a warm-up, in both terms of (6)); the groups also hold
    ``half_life``, ``mode``, ``q`` and ``sigma``. It shares the base's state too, and adds per
    parameter the step count ``t`` (counting from 0) and ``sigma``, both resolved at
    construction and saved by ``state_dict()`` (keys ``"su_step"``, ``"su_sigma"``: 0-d
    tensors, so ``torch.load(weights_only=True)`` reads them; ``sigma`` is float32 at least and
    stays so on reload). These live next to the base's state rather than in it, so that bases
    that create their state lazily (``if len(state) == 0``) are not disturbed.

    ``sigma`` is the expected magnitude of the tensor's trained entries:

    - a float (every parameter) or a per-group ``"sigma"`` key;
    - a callable ``(name, param) -> float``, called once per parameter with the name
      ``named_parameters()`` gave (pass ``model.named_parameters()``) or, for unnamed
      parameters, the parameter's index in its group as a string;
    - ``None``: the parameter's RMS at construction, or 0.5 when it is all zeros (a
      zero-initialized bias).

    Parameters whose gradient is ``None`` are skipped: no decay, and their ``t`` stays.

    Args:
        base_optimizer: The optimizer that provides the direction (``torch.optim.Adam``,
            ``torch.optim.SGD``, a torch_opt optimizer without decay, ...).
        lr: The initial learning rate ``alpha_0 >= 0``.
        half_life: The half-life ``T > 0`` in steps.
        mode: ``"inverse_time"`` (1) or ``"inverse_square"`` (2).
        q: Su's ``q > 0`` in (4).
        sigma: The per-tensor scale (see above), ``> 0``.
    """

    def __init__(
        self,
        base_optimizer: Optimizer,
        lr: float,
        half_life: float,
        *,
        mode: str = "inverse_time",
        q: float = 1.0,
        sigma: float | Callable[[str, Tensor], float] | None = None,
    ) -> None:
        if not isinstance(base_optimizer, Optimizer):
            raise TypeError(
                f"base_optimizer must be a torch.optim.Optimizer, got "
                f"{type(base_optimizer).__name__}"
            )
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        self._sigma_fn = sigma if callable(sigma) else None
        self.schedule_state: dict[Tensor, dict[str, Tensor]] = {}
        defaults = {
            "lr": lr,
            "half_life": half_life,
            "mode": mode,
            "q": q,
            "sigma": None if callable(sigma) else sigma,
        }
        _check_group(defaults)
        # Adds the keys to the base optimizer's own param group dicts (lr: replaced by alpha_0).
        super().__init__(base_optimizer.param_groups, defaults)
        self._adopt(base_optimizer)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        constructing = "base_optimizer" not in self.__dict__
        if constructing:  # the base's own groups: alpha_0 replaces their lr
            param_group["lr"] = self.defaults["lr"]
            _check_no_weight_decay(param_group.get("weight_decay", 0.0))
        else:
            known = {*self.base_optimizer.defaults, *self.defaults}
            check_group_keys("SuAmosSchedule", param_group, known)
            param_group.setdefault("lr", self.defaults["lr"])
            base_default = self.base_optimizer.defaults.get("weight_decay", 0.0)
            _check_no_weight_decay(param_group.get("weight_decay", base_default))
        _check_group({**self.defaults, **param_group})
        if constructing:
            super().add_param_group(param_group)
        else:
            self.base_optimizer.add_param_group(param_group)
            for key, value in self.defaults.items():
                self.param_groups[-1].setdefault(key, value)
        group = self.param_groups[-1]
        names = group.get("param_names")
        for i, p in enumerate(group["params"]):
            self._init_schedule_state(p, names[i] if names is not None else str(i), group)

    def _init_schedule_state(self, p: Tensor, name: str, group: dict[str, Any]) -> None:
        """Resolve ``sigma`` of one parameter; its step count starts at 0."""
        dtype = stat_dtype([p])
        sigma = resolve_scale("sigma", group["sigma"], self.__dict__.get("_sigma_fn"), name, p)
        self.schedule_state[p] = {
            "su_step": torch.zeros((), dtype=torch.int64),
            "su_sigma": torch.as_tensor(sigma, dtype=dtype, device=p.device).clone(),
        }

    def __getstate__(self) -> dict[str, Any]:
        return {
            **super().__getstate__(),
            "schedule_state": self.schedule_state,
            "_sigma_fn": self._sigma_fn,
        }

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> dict[str, Any]:
        """The base's state dict, its groups' entries included, with ``"su_step"`` and
        ``"su_sigma"`` added to each parameter's state."""
        packed = super().state_dict()
        ids = [i for group in packed["param_groups"] for i in group["params"]]
        state = dict(packed["state"])
        for i, p in zip(ids, self._params(), strict=True):
            state[i] = {**state.get(i, {}), **self.schedule_state[p]}
        return {**packed, "state": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`: the base's part as torch does, ``t`` and ``sigma`` into the
        wrapper (``sigma`` float32 at least, on the parameter's device)."""
        ours, theirs = {}, {}
        for i, entry in state_dict["state"].items():
            ours[i] = {k: v for k, v in entry.items() if k in STATE_KEYS}
            rest = {k: v for k, v in entry.items() if k not in STATE_KEYS}
            if rest:
                theirs[i] = rest
        super().load_state_dict({**state_dict, "state": theirs})
        ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        for i, p in zip(ids, self._params(), strict=True):
            saved = ours.get(i, {})
            entry = self.schedule_state[p]
            if "su_step" in saved:
                entry["su_step"] = torch.as_tensor(saved["su_step"]).to("cpu", torch.int64)
            if "su_sigma" in saved:
                sigma = torch.as_tensor(saved["su_sigma"])
                entry["su_sigma"] = sigma.to(device=p.device, dtype=stat_dtype([p])).clone()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One step of (6) along the base optimizer's direction.

        Args:
            closure: Optional callable that re-evaluates the model and returns the loss (called
                once, before the base's step, which gets no closure).

        Returns:
            The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pairs = [
            (group, p) for group in self.param_groups for p in group["params"] if p.grad is not None
        ]
        saved = [p.detach().clone() for _, p in pairs]
        lrs = [group["lr"] for group in self.param_groups]
        try:
            for group in self.param_groups:
                group["lr"] = 1.0  # only the direction is used
            self.base_optimizer.step()
            directions = []
            for (_, p), s in zip(pairs, saved, strict=True):
                dtype = stat_dtype([p])
                p, s = as_real([p, s])  # complex: as the real view (torch's convention)
                directions.append(s.to(dtype) - p.to(dtype))  # u = theta_before - theta_after
        finally:
            for group, lr in zip(self.param_groups, lrs, strict=True):
                group["lr"] = lr
            for (_, p), s in zip(pairs, saved, strict=True):
                p.copy_(s)
        for (group, p), s, u in zip(pairs, saved, directions, strict=True):
            entry = self.schedule_state[p]
            t = int(entry["su_step"])
            p, s = as_real([p, s])
            update = su_amos_update(
                u,
                s,
                lr=float(group["lr"]),
                scale=entry["su_sigma"] * math.sqrt(p.numel()),
                decay=decay_factor(t, group["half_life"], group["mode"]),  # (1), (2)
                q=group["q"],
            )
            entry["su_step"] = entry["su_step"] + 1
            if p.dtype == update.dtype:
                p.add_(update)
            else:  # computed in float32, rounded once into the parameter
                p.copy_(s.to(update.dtype).add_(update))
        return loss
