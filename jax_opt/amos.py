r"""Amos (math.md §2.2), faithful to the reference implementation (jestimator 0.3.3).

Twin of ``torch_opt/amos.py``: the same kernel names, signatures and equation tags.

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

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import GradientTransformationExtraArgs

from jax_opt._math import increment, path_names, reject_sparse, resolve_scale, stat_dtype
from twinopt._checks import check_decay, check_nonnegative, fail, missing

__all__ = [
    "AmosMomentumState",
    "ClipByValueState",
    "ScaleByAmosState",
    "amos",
    "amos_update",
    "reduced_mean_square",
    "scale_by_amos",
]

ParamsFn = Callable[[tuple[str, ...], tuple[int, ...]], Any]


# ------------------------------------------------------------------------------------- kernels


def reduced_mean_square(grad: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """(1): the mean of ``grad**2`` over the axes where ``shape`` is smaller (kept as size-1
    axes), or over everything for ``shape == ()``."""
    if not shape:
        return jnp.mean(jnp.square(grad))
    axes = tuple(i for i, k in enumerate(grad.shape) if shape[i] < k)
    return jnp.mean(jnp.square(grad), axis=axes, keepdims=True)


def amos_update(
    grad: jax.Array,
    param: jax.Array,
    v: jax.Array,
    b: jax.Array,
    *,
    lr: Any,
    eta: Any,
    beta: float,
    extra_l2: float,
    c_coef: float,
    d_coef: float,
    eps: float,
    count: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
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
        ``(update, v, b)``: the update to add to the parameter and the new state.
    """
    dtype = v.dtype
    raw_grad, raw_param = grad, param
    grad, param = grad.astype(dtype), param.astype(dtype)
    m2 = reduced_mean_square(grad, v.shape)  # (1)
    v = v * beta + m2 * (1 - beta)  # (2)
    tail = functools.partial(
        _amos_tail,
        lr=lr,
        eta=eta,
        beta=beta,
        extra_l2=extra_l2,
        c_coef=c_coef,
        d_coef=d_coef,
        eps=eps,
        count=count,
    )
    if v.ndim == 0 or v.shape != grad.shape:  # reduced state: r, c, gamma, d are small
        update, b = tail(grad, param, v, b, m2)
        return update, v, b
    # Full state. XLA does not fuse an expensive op (the divide of (3), the rsqrt of (4)) into
    # two consumers: written once, r and c become full-size temporaries and the step takes 5
    # passes over memory with 3 parameter-sized temporaries (as the reference's does). Behind
    # the optimization barriers (which stop CSE from merging the two copies) the new b and
    # the update each recompute (3)-(5) from the same inputs, with the same operations, so the
    # same bits: the step is 3 fused passes (v; b; the update, fused with the caller's
    # parameter add) and one temporary (XLA's copy of the old b that a donated b overwrites).
    # The barriers also keep the new v materialized, so the later passes read it instead of
    # recomputing it from the v that its pass overwrites in place.
    # (The barriers take the uncast gradient and parameter, so that a cast stays fused.)
    g1, v1, b1 = jax.lax.optimization_barrier((raw_grad, v, b))
    g1 = g1.astype(dtype)
    _, new_b = tail(g1, None, v1, b1, reduced_mean_square(g1, v.shape))
    g2, p2, v2, b2 = jax.lax.optimization_barrier((raw_grad, raw_param, v, b))
    g2, p2 = g2.astype(dtype), p2.astype(dtype)
    update, _ = tail(g2, p2, v2, b2, reduced_mean_square(g2, v.shape))
    return update, v, new_b


def _amos_tail(
    grad, param, v, b, m2, *, lr, eta, beta, extra_l2, c_coef, d_coef, eps, count
) -> tuple[Any, Any]:
    """(3)-(8) of :func:`amos_update` from the updated ``v``: ``(update, b)``; without
    ``param`` (None) the update is not computed."""
    r = (1 - beta ** jnp.asarray(count, v.dtype)) / jnp.maximum(v, eps)  # (3)
    c = jax.lax.rsqrt(1 + c_coef * jnp.sqrt(lr) * b)  # (4)
    gamma = c * jnp.square(lr) * r * m2  # (5)
    update = None
    if param is not None:
        init_lr = lr * eta
        d = jnp.reciprocal(1 + d_coef * jnp.sqrt(init_lr) * b)  # (6)
        update = d * ((-0.5 * gamma - extra_l2) * param - init_lr * jnp.sqrt(r) * grad)  # (7)
    return update, b + gamma * (1 + b)  # (8)


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


class ScaleByAmosState(NamedTuple):
    """State of :func:`scale_by_amos`: the reference's ``count``, ``v``, ``b``, and each leaf's
    ``eta`` (resolved at ``init``)."""

    count: jax.Array  # int32
    v: Any
    b: Any
    eta: Any


def _check_amos(learning_rate, beta, extra_l2, c_coef, d_coef, epsilon) -> None:
    if not callable(learning_rate):
        check_nonnegative("learning_rate", learning_rate)
    check_decay("beta", beta)
    check_nonnegative("extra_l2", extra_l2)
    check_nonnegative("c_coef", c_coef)
    check_nonnegative("d_coef", d_coef)
    check_nonnegative("epsilon", epsilon)


def scale_by_amos(
    learning_rate: optax.ScalarOrSchedule,
    eta_fn: ParamsFn | None = None,
    shape_fn: ParamsFn | None = None,
    beta: float = 0.999,
    extra_l2: float = 0.0,
    d_coef: float = 0.25,
    c_coef: float = 0.25,
    epsilon: float = 2**-125,
) -> GradientTransformationExtraArgs:
    """Amos's update (1)-(8): the reference's ``scale_by_amos`` without flax.

    ``eta_fn(name, shape)`` and ``shape_fn(name, shape)`` take the reference's arguments:
    ``name`` is the tuple of the leaf's pytree path keys as strings, ``shape`` the parameter's
    shape. Both are called once, at ``init``; ``eta`` is stored in the state. Without
    ``eta_fn`` a leaf's eta is its model-oriented scale at ``init``: its RMS, or 0.5 when it is
    all zeros. The state (``v``, ``b``, ``eta``) is float32 at least (float32 for bf16/fp16
    parameters, which the reference keeps in their own dtype); updates are returned in the
    parameter's dtype.

    The state's ``v`` and ``b`` are created with the shape, dtype and sharding that ``update``
    gives them (a full state is sharded like its parameter), so the state's types are stable
    over a mesh. ``optax.tree.map_params`` maps over ``v``, ``b`` and ``eta`` (trees built
    from the parameters' tree) whatever their shapes: a function that derives shardings from
    the parameters' must look at the leaf's shape (``eta`` is 0-d, a reduced ``v`` may be).

    .. note::
        A schedule is called with the 1-based count ``t`` (the reference's convention), while
        ``optax.inject_hyperparams`` evaluates it itself with optax's 0-based count and hands
        the value over as a number. To get the same steps under ``inject_hyperparams``, shift
        it: ``inject_hyperparams(scale_by_amos, static_args=("eta_fn", "shape_fn"))(
        learning_rate=lambda n: schedule(n + 1), ...)``. A constant learning rate needs no
        shift.

    Args:
        learning_rate: The global learning rate ``xi`` (about 1/sqrt(number of independent
            batches)), or a schedule, called with the 1-based count.
        eta_fn: ``(name, shape) -> eta > 0``, or ``None`` for the RMS rule.
        shape_fn: ``(name, shape) -> reduced state shape``, or ``None`` for full state.
        beta: The EMA decay of ``v``, in ``[0, 1)``.
        extra_l2: Extra L2 regularization (the reference's, experimental).
        d_coef: Coefficient of the learning-rate decay factor ``d_t``.
        c_coef: Coefficient of the weight-decay decay factor ``c_t``.
        epsilon: Floor of ``v``.

    Returns:
        An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.
    """
    _check_amos(learning_rate, beta, extra_l2, c_coef, d_coef, epsilon)

    def init_fn(params):
        reject_sparse(params, "scale_by_amos")
        leaves, treedef = jax.tree.flatten(params)
        vs, etas = [], []
        for name, leaf in zip(path_names(params), leaves, strict=True):
            dtype = stat_dtype([leaf])
            shape = jnp.shape(leaf)
            if shape_fn is not None:
                shape = check_state_shape(f"parameter {name}", shape, shape_fn(name, shape))
            # (1) of zeros: the zero state with the shape, dtype and sharding that update
            # gives it (a sharded parameter keeps its sharding on the axes it keeps).
            vs.append(reduced_mean_square(jnp.zeros_like(leaf, dtype), shape))
            eta = resolve_scale("eta", eta_fn, name, leaf)
            etas.append(jnp.asarray(eta, dtype))
        return ScaleByAmosState(
            count=jnp.zeros([], jnp.int32),
            v=treedef.unflatten(vs),
            b=treedef.unflatten([jnp.zeros_like(v) for v in vs]),
            eta=treedef.unflatten(etas),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise missing("params", "scale_by_amos", "the parameters", "pass params to update")
        reject_sparse(updates, "scale_by_amos")
        count = increment(state.count)
        xi = learning_rate(count) if callable(learning_rate) else learning_rate
        grads, treedef = jax.tree.flatten(updates)
        outs = [
            amos_update(
                g,
                p,
                v,
                b,
                lr=xi,
                eta=eta,
                beta=beta,
                extra_l2=extra_l2,
                c_coef=c_coef,
                d_coef=d_coef,
                eps=epsilon,
                count=count,
            )
            for g, p, v, b, eta in zip(
                grads,
                treedef.flatten_up_to(params),
                treedef.flatten_up_to(state.v),
                treedef.flatten_up_to(state.b),
                treedef.flatten_up_to(state.eta),
                strict=True,
            )
        ]
        new_updates = [u.astype(g.dtype) for (u, _, _), g in zip(outs, grads, strict=True)]
        new_state = ScaleByAmosState(
            count=count,
            v=treedef.unflatten([v for _, v, _ in outs]),
            b=treedef.unflatten([b for _, _, b in outs]),
            eta=state.eta,
        )
        return treedef.unflatten(new_updates), new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)


class ClipByValueState(NamedTuple):
    """State of the element-wise clipping in :func:`amos` (none)."""


def _clip_by_value(clip_value: Any) -> GradientTransformationExtraArgs:
    """(0): element-wise clipping to ``[-clip_value, clip_value]``, none when ``clip_value``
    is 0 (equal to ``optax.clip`` otherwise; the test runs under tracing too)."""

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        c = jnp.asarray(clip_value)
        return jax.tree.map(lambda g: jnp.where(c > 0, jnp.clip(g, -c, c), g), updates), state

    return GradientTransformationExtraArgs(lambda params: ClipByValueState(), update_fn)


class AmosMomentumState(NamedTuple):
    """State of the update EMA in :func:`amos`: ``m``, float32 at least."""

    ema: Any


def _momentum(momentum: Any) -> GradientTransformationExtraArgs:
    """(9): the reference's ``optax.ema(momentum, debias=False)``, with the average kept in
    float32 at least and the output in the updates' dtype."""

    def init_fn(params):
        return AmosMomentumState(
            jax.tree.map(lambda p: jnp.zeros_like(p, stat_dtype([p])), params)  # p's sharding
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        ema = jax.tree.map(
            lambda u, m: momentum * m + (1 - momentum) * u.astype(m.dtype), updates, state.ema
        )  # (9)
        out = jax.tree.map(lambda m, u: m.astype(u.dtype), ema, updates)
        return out, AmosMomentumState(ema)

    return GradientTransformationExtraArgs(init_fn, update_fn)


def amos(
    learning_rate: optax.ScalarOrSchedule,
    eta_fn: ParamsFn | None = None,
    shape_fn: ParamsFn | None = None,
    beta: float = 0.999,
    momentum: float | None = None,
    clip_value: float | None = None,
    extra_l2: float = 0.0,
    d_coef: float = 0.25,
    c_coef: float = 0.25,
    epsilon: float = 2**-125,
) -> GradientTransformationExtraArgs:
    """The Amos optimizer (0)-(9), chained as the reference chains it: element-wise value
    clipping, :func:`scale_by_amos`, then an EMA of the updates.

    ``clip_value`` None or 0 means no clipping and ``momentum`` None or 0 no EMA, as in the
    reference (a 0 passed explicitly keeps the stage, which then changes nothing, so that
    ``optax.inject_hyperparams`` can drive the value). Under ``inject_hyperparams`` list the
    callables as static: ``inject_hyperparams(amos, static_args=("eta_fn", "shape_fn"))``, and
    shift a learning-rate schedule by one step (see :func:`scale_by_amos`).

    Args:
        learning_rate: The global learning rate ``xi``, or a schedule of the 1-based count.
        eta_fn: ``(name, shape) -> eta``, or ``None`` for the RMS rule (see
            :func:`scale_by_amos`).
        shape_fn: ``(name, shape) -> reduced state shape``, or ``None``.
        beta: The EMA decay of ``v`` (the reference advises ``1 - beta`` of the order of ``xi``).
        momentum: Decay of the EMA of the updates, or ``None``.
        clip_value: Element-wise gradient clipping bound, or ``None``.
        extra_l2: Extra L2 regularization.
        d_coef: Coefficient of ``d_t``.
        c_coef: Coefficient of ``c_t``.
        epsilon: Floor of ``v``.

    Returns:
        An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.
    """
    if momentum is not None:
        check_decay("momentum", momentum)
    if clip_value is not None:
        check_nonnegative("clip_value", clip_value)
    stages = []
    if clip_value is not None:
        stages.append(_clip_by_value(clip_value))  # (0)
    stages.append(
        scale_by_amos(learning_rate, eta_fn, shape_fn, beta, extra_l2, d_coef, c_coef, epsilon)
    )
    if momentum is not None:
        stages.append(_momentum(momentum))  # (9)
    return optax.chain(*stages)
