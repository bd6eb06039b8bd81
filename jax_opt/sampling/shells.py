"""The MGS shells (math.md §4): ``mgs``, the ask/tell pair ``mgs_ask`` / ``mgs_tell`` for custom
loops, and their states. The math is in ``jax_opt.sampling``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import GradientTransformationExtraArgs

from jax_opt._math import increment, reject_sparse
from jax_opt.sampling.kernels import (
    _noise_scale,
    clip_surrogate,
    importance_weights,
    log_proposal,
    perturbations,
    weighted_direction,
)
from twinopt._checks import check_positive, concrete, fail, missing
from twinopt.sampling import check_mgs_args, mixture_mask

__all__ = [
    "MGSAsk",
    "MGSState",
    "mgs",
    "mgs_ask",
    "mgs_tell",
]


# -------------------------------------------------------------------------------- ask / tell


def _draw(
    key: jax.Array, params: Any, num_samples: int, antithetic: bool, random_mix: bool, mix: Any
) -> tuple[jax.Array, list]:
    """The randomness of one step, from ``key``: which candidates are guided (``(K,)``, bool)
    and one block of standard normals per leaf of ``params`` (``(K, *shape)``, or
    ``(K // 2, *shape)`` under ``antithetic``, in the leaf's dtype; half dtypes are drawn in
    float32 and cast).

    ``key`` is split into ``1 + number of leaves`` keys: the first draws the ``random_mix``
    uniforms (float32, one per centre), the others one leaf's normals each."""
    leaves = jax.tree.leaves(params)
    rows = num_samples // 2 if antithetic else num_samples
    mix_key, *leaf_keys = jax.random.split(key, 1 + len(leaves))
    if random_mix:
        guided = jax.random.uniform(mix_key, (rows,), jnp.float32) < mix
        if antithetic:
            guided = jnp.repeat(guided, 2)
    else:
        guided = jnp.asarray(mixture_mask(num_samples, _static_mix(mix), antithetic=antithetic))
    normals = []
    for k, leaf in zip(leaf_keys, leaves, strict=True):
        dtype = jnp.result_type(leaf)
        draw = dtype if jnp.finfo(dtype).bits >= 32 else jnp.float32
        normals.append(jax.random.normal(k, (rows, *jnp.shape(leaf)), draw).astype(dtype))
    return guided, normals


def _static_mix(mix: Any) -> float:
    value = concrete(mix)
    if value is None:
        raise TypeError(
            "mix must be a concrete number unless random_mix=True (under "
            "optax.inject_hyperparams, list 'mix' in static_args)"
        )
    return value


def _check_floating(params: Any, owner: str) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            name = jax.tree_util.keystr(path) or "the parameter"
            raise TypeError(
                f"{owner} needs real floating-point parameters ({name} is {jnp.result_type(leaf)})"
            )


def _shard(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """``tree`` laid out by ``sharding``: ``jax.sharding.reshard`` over a mesh with explicit
    axes (where ``with_sharding_constraint`` only asserts), ``with_sharding_constraint``
    otherwise (always on a jax without `jax.sharding.AxisType`)."""
    explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
    types = getattr(getattr(sharding, "mesh", None), "axis_types", ())
    if explicit is not None and any(t == explicit for t in types):
        return jax.sharding.reshard(tree, sharding)
    return jax.lax.with_sharding_constraint(tree, sharding)


class MGSAsk(NamedTuple):
    """What :func:`mgs_tell` needs from :func:`mgs_ask`: the perturbations ``eps`` (the
    parameters' pytree, each leaf with a leading ``K`` axis) and their log proposal density
    ``log_q`` (``(K,)``)."""

    eps: Any
    log_q: jax.Array


def mgs_ask(
    key: jax.Array,
    params: Any,
    surrogate: Any,
    *,
    num_samples: int,
    noise: Any,
    noise_scale: str,
    mix: Any,
    random_mix: bool,
    proposal_density: str,
    antithetic: bool,
    max_grad_norm: Any,
) -> tuple[Any, MGSAsk]:
    """The candidates of one MGS step, (1)-(4), for a loop that evaluates them itself.

    Args:
        key: A PRNG key; the step's randomness is drawn from it alone.
        params: The parameters ``theta`` (a pytree of floating arrays).
        surrogate: The surrogate gradient ``g`` (a pytree like ``params``; ``None``, or
            ``None`` leaves, for no surrogate: the centres are 0 and ``s = noise``).
        num_samples, noise, noise_scale, mix, random_mix, proposal_density, antithetic,
            max_grad_norm: As in :func:`mgs`.

    Returns:
        ``(candidates, ask)``: ``candidates`` the pytree of ``params`` with a leading ``K``
        axis (``theta + eps_k``, in each parameter's dtype), ``ask`` an :class:`MGSAsk` for
        :func:`mgs_tell`.
    """
    check_mgs_args(
        num_samples=num_samples,
        noise=noise,
        noise_scale=noise_scale,
        mix=mix,
        temperature=1.0,  # told later, to mgs_tell
        proposal_density=proposal_density,
        antithetic=antithetic,
        max_grad_norm=max_grad_norm,
        lr=0.0,  # not used here
    )
    _check_floating(params, "mgs_ask")
    leaves, treedef = jax.tree.flatten(params)
    grads = [None] * len(leaves) if surrogate is None else treedef.flatten_up_to(surrogate)
    guides = clip_surrogate(grads, max_grad_norm)  # (1)
    scales = [_noise_scale(g, noise=noise, noise_scale=noise_scale) for g in guides]  # (2)
    guided, normals = _draw(key, params, num_samples, antithetic, random_mix, mix)
    eps = [
        perturbations(g, z, guided, scale=s, antithetic=antithetic).astype(p.dtype)  # (3)
        for g, z, s, p in zip(guides, normals, scales, leaves, strict=True)
    ]
    log_q = log_proposal(eps, guides, scales, mix=mix, proposal_density=proposal_density)  # (4)
    candidates = [(p[None] + e).astype(p.dtype) for p, e in zip(leaves, eps, strict=True)]
    return treedef.unflatten(candidates), MGSAsk(treedef.unflatten(eps), log_q)


def mgs_tell(ask_state: MGSAsk, losses: jax.Array, loss0: Any, *, temperature: Any) -> Any:
    """The direction ``Delta`` of one MGS step, (5)-(6), from the candidates' losses.

    Args:
        ask_state: The :class:`MGSAsk` of :func:`mgs_ask`.
        losses: ``(K,)``, the task loss of each candidate (a non-finite one gets weight 0).
        loss0: The task loss at ``theta``; when it is not finite ``Delta`` is zero.
        temperature: ``alpha > 0``.

    Returns:
        ``Delta``, a pytree like the parameters (add ``lr * Delta`` to them, or feed
        ``-Delta`` to an optimizer as its gradient).
    """
    check_positive("temperature", temperature)
    eps, treedef = jax.tree.flatten(ask_state.eps)
    w = importance_weights(losses, loss0, ask_state.log_q, temperature=temperature)  # (5)
    ok = jnp.isfinite(loss0)
    delta = [jnp.where(ok, d, jnp.zeros_like(d)) for d in weighted_direction(w, eps)]  # (6)
    return treedef.unflatten(delta)


# --------------------------------------------------------------------------------------- shell


class MGSState(NamedTuple):
    """State of :func:`mgs`: the step ``count`` (int32, every call), the raw uint32 PRNG
    ``key``, ``nonfinite_count`` (int32, steps skipped for a non-finite loss at ``theta``)
    and the base optimizer's state (``optax.EmptyState()`` without one)."""

    count: jax.Array
    key: jax.Array
    nonfinite_count: jax.Array
    base_state: Any


def mgs(
    base: optax.GradientTransformation | None = None,
    *,
    lr: optax.ScalarOrSchedule = 1.0,
    num_samples: int = 4,
    noise: float = 1.0,
    noise_scale: str = "grad",
    mix: float = 0.5,
    random_mix: bool = False,
    temperature: float = 1.0,
    proposal_density: str = "exact",
    antithetic: bool = False,
    max_grad_norm: float | None = 1.0,
    seed: int = 0,
    candidate_sharding: jax.sharding.Sharding | None = None,
) -> GradientTransformationExtraArgs:
    """MLE-guided parameter search (1)-(7) as an optax transformation.

    ``update(updates, state, params, value_fn=f)``: ``updates`` is the surrogate gradient
    (e.g. of a differentiable MLE loss; zeros, or ``None``, for a black-box search, where
    every centre is 0 and ``s = noise``) and ``f(params) -> scalar`` the task loss, which
    need not be differentiable. Each step draws fresh noise from a split of the key in the
    state, evaluates ``f`` at ``theta`` and, through ``jax.vmap``, at the ``K`` candidates
    ``theta + eps_k``, and returns ``lr * Delta`` (7), or with ``base`` the base's update of
    the pseudo-gradient ``-Delta`` (the reference code feeds AdamW); ``lr`` is then not used.
    Other extra arguments are not passed to ``f`` (they reach ``base``, as in
    ``optax.chain``). A non-finite loss at ``theta`` gives a zero update, leaves the base's
    state as it was and counts in ``nonfinite_count``; a candidate with a non-finite loss
    gets weight 0. Under ``jit`` pass ``f`` as a static argument or close over it.

    Under ``optax.inject_hyperparams``, list the structural arguments as static:
    ``inject_hyperparams(mgs, static_args=("num_samples", "mix"))(lr=..., temperature=...)``
    (``num_samples`` is an integer, which would be traced, and the deterministic mixture
    needs a concrete ``mix``; ``lr``, ``noise``, ``temperature`` and ``max_grad_norm`` can be
    injected; strings, booleans and ``base`` stay static by themselves).

    Args:
        base: An optax transformation fed ``-Delta`` as its gradient, or ``None``.
        lr: The step size ``eta`` of (7), or a schedule of the 0-based count (as optax's);
            must be 1 with ``base``.
        num_samples: The number of candidates ``K >= 1`` (even under ``antithetic``).
        noise: The relative noise ``sigma > 0`` of (2).
        noise_scale: ``"grad"`` (``s_P = sigma mean|g_hat_P|``, the reference code's) or
            ``"constant"`` (``s_P = sigma``).
        mix: The proportion ``lambda`` of guided candidates, in ``[0, 1]``.
        random_mix: Draw each candidate's centre (each pair's, under ``antithetic``) with
            probability ``mix`` instead of the deterministic proportion.
        temperature: ``alpha > 0`` of (5) (the reference code's ``1 / beta``).
        proposal_density: ``"exact"`` or ``"unit_variance"`` (the reference code's), see (4).
        antithetic: Draw the candidates in pairs ``c +- s z``.
        max_grad_norm: The clipping norm of the surrogate (1), or ``None``.
        seed: The seed of the PRNG key kept in the state.
        candidate_sharding: A sharding for the stacked candidates' leading axis (e.g.
            ``NamedSharding(mesh, PartitionSpec("pop"))``), applied with
            ``jax.lax.with_sharding_constraint`` before they are evaluated, or ``None``.

    Returns:
        An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params`` and
        ``value_fn``.

    Example::

        opt = mgs(optax.adamw(6.25e-5), temperature=0.01)  # the reference code's setup
        state = opt.init(params)
        step = jax.jit(opt.update, static_argnames="value_fn")
        updates, state = step(jax.grad(mle_loss)(params), state, params, value_fn=task_loss)
        params = optax.apply_updates(params, updates)
    """
    check_mgs_args(
        num_samples=num_samples,
        noise=noise,
        noise_scale=noise_scale,
        mix=mix,
        temperature=temperature,
        proposal_density=proposal_density,
        antithetic=antithetic,
        max_grad_norm=max_grad_norm,
        lr=lr,
    )
    if base is not None and (callable(lr) or concrete(lr) not in (None, 1.0)):
        raise fail("lr", lr, "1 with a base optimizer, which has its own learning rate")
    if not random_mix:
        _static_mix(mix)
    hyper = {
        "num_samples": num_samples,
        "noise": noise,
        "noise_scale": noise_scale,
        "mix": mix,
        "random_mix": random_mix,
        "proposal_density": proposal_density,
        "antithetic": antithetic,
        "max_grad_norm": max_grad_norm,
    }

    def init_fn(params):
        reject_sparse(params, "mgs")
        _check_floating(params, "mgs")
        return MGSState(
            count=jnp.zeros([], jnp.int32),
            key=jax.random.PRNGKey(seed),
            nonfinite_count=jnp.zeros([], jnp.int32),
            base_state=optax.EmptyState() if base is None else base.init(params),
        )

    def update_fn(updates, state, params=None, *, value_fn: Callable | None = None, **extra):
        if params is None:
            raise missing("params", "mgs", "the parameters", "pass params to update")
        if value_fn is None:
            raise missing(
                "value_fn", "mgs", "the task loss", "pass value_fn=f, f(params) -> loss, to update"
            )
        reject_sparse(updates, "mgs")
        key, draw_key = jax.random.split(state.key)
        candidates, ask = mgs_ask(draw_key, params, updates, **hyper)
        if candidate_sharding is not None:
            candidates = _shard(candidates, candidate_sharding)
        loss0 = value_fn(params)
        losses = jax.vmap(value_fn)(candidates)
        delta = mgs_tell(ask, losses, loss0, temperature=temperature)
        finite = jnp.isfinite(loss0)
        if base is None:
            step = lr(state.count) if callable(lr) else lr
            new_updates = jax.tree.map(lambda d: (step * d).astype(d.dtype), delta)  # (7)
            base_state = state.base_state
        else:
            pseudo_grad = jax.tree.map(jnp.negative, delta)
            new_updates, new_base = optax.with_extra_args_support(base).update(
                pseudo_grad, state.base_state, params, **extra
            )
            new_updates = jax.tree.map(
                lambda u: jnp.where(finite, u, jnp.zeros_like(u)), new_updates
            )
            base_state = jax.tree.map(
                lambda new, old: jnp.where(finite, new, old), new_base, state.base_state
            )
        return new_updates, MGSState(
            count=increment(state.count),
            key=key,
            nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32),
            base_state=base_state,
        )

    return GradientTransformationExtraArgs(init_fn, update_fn)
