r"""Su's Amos-derived learning-rate and weight-decay schedules (math.md §2.1).

Twin of ``torch_opt/schedules.py``: the same kernel names, signatures and equation tags.

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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import GradientTransformationExtraArgs

from jax_opt._math import increment, path_names, reject_sparse, resolve_scale, stat_dtype
from twinopt._checks import check_nonnegative, check_positive, missing
from twinopt.schedules import MODES, amos_decay  # the schedule is framework-free

__all__ = [
    "MODES",
    "SuAmosScheduleState",
    "amos_decay",
    "amos_decay_schedules",
    "su_amos_schedule",
    "su_amos_update",
]

SigmaFn = Callable[[tuple[str, ...], tuple[int, ...]], Any]


# ------------------------------------------------------------------------------------- kernels


def _unit(u: jax.Array) -> jax.Array:
    """``u / ||u||``, 0 for ``u = 0``; scaled by ``max |u|`` first, so the squares neither
    underflow nor overflow."""
    if u.size == 0:
        return u
    peak = jnp.max(jnp.abs(u))
    v = u / jnp.where(peak > 0, peak, 1)
    norm = jnp.sqrt(jnp.sum(v * v))
    return v / jnp.where(norm > 0, norm, 1)


def su_amos_update(
    direction: jax.Array, param: jax.Array, *, lr: Any, scale: Any, decay: Any, q: Any
) -> jax.Array:
    """Su's per-tensor rule (6): the update to add to the parameter.

    Computed in float32 at least (float64 for float64 inputs).

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
    direction, param = jnp.asarray(direction), jnp.asarray(param)
    dtype = stat_dtype([direction, param])
    unit = _unit(direction.astype(dtype))
    step = jnp.asarray(lr * scale * decay).astype(dtype)
    rho = jnp.asarray(lr * lr / (2 * q) * decay).astype(dtype)  # (4)
    return -step * unit - rho * param.astype(dtype)  # (6)


# -------------------------------------------------------------------------------------- shells


def amos_decay_schedules(
    lr: float, half_life: float, *, mode: str = "inverse_time", q: float = 1.0
) -> tuple[optax.Schedule, float]:
    """The learning rate (3) and the weight decay (5) for optax's decoupled weight decay.

    ``optax.adamw(learning_rate, weight_decay=weight_decay)`` (and any chain
    ``scale_by_* -> add_decayed_weights(weight_decay) -> scale_by_learning_rate(learning_rate)``)
    decays the parameters by ``learning_rate(t) * weight_decay``, which is ``rho_t`` of (4): so
    the pair realizes Su's schedules, ``alpha_t = lr s(t)`` and ``rho_t = lr^2 / (2 q) s(t)``.
    optax counts from 0, as ``s`` does.

    Args:
        lr: The initial learning rate ``alpha_0 >= 0``.
        half_life: The half-life ``T > 0`` in steps.
        mode: ``"inverse_time"`` (1) or ``"inverse_square"`` (2).
        q: Su's ``q > 0`` in (4).

    Returns:
        ``(learning_rate, weight_decay)``: an optax schedule ``count -> lr s(count)`` and the
        constant ``lr / (2 q)``.
    """
    check_nonnegative("lr", lr)
    check_positive("q", q)
    decay = amos_decay(half_life, mode)

    def learning_rate(count):
        return lr * decay(count)  # (3)

    return learning_rate, lr / (2 * q)  # (5)


class SuAmosScheduleState(NamedTuple):
    """State of :func:`su_amos_schedule`: the step count ``t`` (from 0) and each leaf's
    ``sigma`` (resolved at ``init``)."""

    count: jax.Array  # int32
    sigma: Any


def su_amos_schedule(
    lr: float,
    half_life: float,
    *,
    mode: str = "inverse_time",
    q: float = 1.0,
    sigma_fn: SigmaFn | None = None,
) -> GradientTransformationExtraArgs:
    """Su's per-tensor rule (6) around the direction of a base transformation.

    Chain it after a ``scale_by_*`` that produces the direction ``u_t`` (the sign of a
    gradient: descent subtracts it): ``optax.chain(optax.scale_by_adam(), su_amos_schedule(1e-3,
    10_000))``. Its output is the final update (learning rate and decay included), so no
    ``scale_by_learning_rate`` follows; the base must not decay the weights itself.

    ``sigma_fn(name, shape)`` gives each leaf's ``sigma``, the expected magnitude of its trained
    entries; ``name`` is the tuple of the leaf's pytree path keys as strings. It is called once,
    at ``init``, and ``sigma`` is stored in the state (float32 at least). Without ``sigma_fn`` a
    leaf's ``sigma`` is its RMS at ``init``, or 0.5 when it is all zeros: ``init`` then reads
    the parameters' values, so it must see the initial parameters; ``jax.eval_shape(opt.init,
    params)`` still gives the state's shapes and dtypes, but a state restored from a checkpoint
    must bring its ``sigma`` (re-running ``init`` on trained parameters gives different ones).
    ``optax.tree.map_params`` maps over ``sigma`` (a tree built from the parameters' tree, of
    0-d leaves): a function that derives shardings from the parameters' must look at the
    leaf's shape.
    Under ``optax.inject_hyperparams`` list the callable as static:
    ``inject_hyperparams(su_amos_schedule, static_args=("sigma_fn",))``.

    Args:
        lr: The initial learning rate ``alpha_0 >= 0``.
        half_life: The half-life ``T > 0`` in steps.
        mode: ``"inverse_time"`` (1) or ``"inverse_square"`` (2).
        q: Su's ``q > 0`` in (4).
        sigma_fn: ``(name, shape) -> sigma > 0``, or ``None`` for the RMS rule.

    Returns:
        An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.
    """
    check_nonnegative("lr", lr)
    check_positive("q", q)
    decay = amos_decay(half_life, mode)

    def init_fn(params):
        reject_sparse(params, "su_amos_schedule")
        leaves, treedef = jax.tree.flatten(params)
        sigmas = []
        for name, leaf in zip(path_names(params), leaves, strict=True):
            sigma = resolve_scale("sigma", sigma_fn, name, leaf)
            sigmas.append(jnp.asarray(sigma, stat_dtype([leaf])))
        return SuAmosScheduleState(count=jnp.zeros([], jnp.int32), sigma=treedef.unflatten(sigmas))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise missing("params", "su_amos_schedule", "the parameters", "pass params to update")
        reject_sparse(updates, "su_amos_schedule")
        s = decay(state.count)  # (1), (2)
        directions, treedef = jax.tree.flatten(updates)
        out = [
            su_amos_update(u, p, lr=lr, scale=sigma * math.sqrt(jnp.size(u)), decay=s, q=q).astype(
                u.dtype
            )
            for u, p, sigma in zip(
                directions,
                treedef.flatten_up_to(params),
                treedef.flatten_up_to(state.sigma),
                strict=True,
            )
        ]
        new_state = SuAmosScheduleState(count=increment(state.count), sigma=state.sigma)
        return treedef.unflatten(out), new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)
