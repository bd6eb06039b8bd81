"""Small helpers shared by the jax_opt modules (twin: ``torch_opt/_math.py``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from twinopt._checks import check_positive


def increment(count: jax.Array) -> jax.Array:
    """``optax.safe_increment(count)`` as an array (a step counter that saturates)."""
    return jnp.asarray(optax.safe_increment(count))


def abs_sq(x: jax.Array) -> jax.Array:
    """``|x|^2`` element-wise (``x * x`` for real ``x``; real-valued for complex ``x``)."""
    if jnp.iscomplexobj(x):
        return (x.real * x.real + x.imag * x.imag).astype(x.dtype)
    return x * x


def stat_dtype(leaves: Sequence[Any]) -> jnp.dtype:
    """The dtype of a statistic over ``leaves`` (a norm, a sum): float32 at least, float64 if any
    leaf is float64 (complex leaves count by their real dtype)."""
    dtype = jnp.dtype(jnp.float32)
    for x in leaves:
        real = jnp.finfo(jnp.result_type(x)).dtype
        dtype = jnp.promote_types(dtype, real)
    return dtype


def sum_of_squares(leaves: Sequence[jax.Array], dtype: Any) -> jax.Array:
    """``sum_i ||x_i||^2`` in ``dtype`` (complex leaves count ``|z|^2``)."""
    total = jnp.zeros((), dtype)
    for x in leaves:
        x = x.astype(jnp.promote_types(x.dtype, dtype))
        total = total + jnp.sum(jnp.real(abs_sq(x))).astype(dtype)
    return total


def reject_sparse(tree: Any, owner: str) -> None:
    """Raise ``TypeError`` when ``tree`` holds a sparse array, naming its path."""
    # Sparse arrays come from jax.experimental.sparse: where it was never imported there are
    # none (importing it here would load SciPy with every import of jax_opt).
    jsparse = sys.modules.get("jax.experimental.sparse")
    if jsparse is None:
        return

    def is_sparse(x: Any) -> bool:
        return isinstance(x, jsparse.JAXSparse)

    for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_sparse)[0]:
        if is_sparse(leaf):
            name = jax.tree_util.keystr(path) or "the parameter"
            raise TypeError(f"{owner} does not support sparse gradients ({name} is a sparse array)")


def resolve_scale(arg: str, fn: Any, name: tuple[str, ...], param: jax.Array) -> Any:
    """A per-leaf scale (Amos's ``eta``, Su's ``sigma``): ``fn(name, shape)`` (checked ``> 0``,
    the error naming ``arg``), or :func:`model_scale` without ``fn``."""
    if fn is None:
        return model_scale(param)
    scale = fn(name, jnp.shape(param))
    check_positive(arg, scale)
    return scale


def model_scale(param: jax.Array) -> jax.Array:
    """Amos's model-oriented scale of an array (math.md §2.4, §2.1 step 8): its RMS, or 0.5 when
    it is all zeros (a zero-initialized bias or shift). A 0-d float32 array (float64 for a
    float64 ``param``)."""
    dtype = stat_dtype([param])
    rms = jnp.sqrt(sum_of_squares([param], dtype) / max(jnp.size(param), 1))
    return jnp.where(rms > 0, rms, jnp.asarray(0.5, dtype))


def path_names(tree: Any) -> list[tuple[str, ...]]:
    """Each leaf's name as the reference gives it: the tuple of its pytree path's keys as
    strings (dict keys; sequence indices as ``'0'``, ``'1'``; attribute names)."""

    def key(entry: Any) -> str:
        for attr in ("key", "idx", "name"):
            if hasattr(entry, attr):
                return str(getattr(entry, attr))
        return str(entry)

    return [
        tuple(key(e) for e in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]
