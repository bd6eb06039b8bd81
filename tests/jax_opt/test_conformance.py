"""The optax drop-in contract (contracts.md §3.4) checked uniformly over every jax_opt
transformation.

``CASES`` is the table: one row per transformation, saying how to build it, which extra
arguments its ``update`` needs (a function of the parameters) and which checks do not apply,
with the reason (a skipped check always states it). Every check is parametrized over the
table. The sharding checks need ``XLA_FLAGS`` set before jax is imported, so one subprocess
(this module run as a script) checks every row over a 4-device forced host mesh and reports a
JSON line per row; the parametrized items assert those reports.

The per-transformation files (``test_amos.py``, ...) test the math; this file tests only the
plumbing, on a tiny two-leaf pytree.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_opt
from tests.backends import explicit_sharding_missing

ROOT = Path(__file__).resolve().parents[2]
UNKNOWN = {"unexpected_extra_args_your_optimizer_doesnt_expect": 1}


# ------------------------------------------------------------------------------ the problem


def loss(params: Any) -> jax.Array:
    """A quadratic over every leaf, accumulated in float32 (the gradient keeps each dtype)."""
    return sum(
        0.5 * jnp.sum(jnp.square(x.astype(jnp.float32) - 0.5)) for x in jax.tree.leaves(params)
    )


GRAD = jax.grad(loss)  # one object, so a jit with grad_fn static does not recompile


def make_params(dtype: Any = jnp.float32) -> dict[str, jax.Array]:
    """``w`` (4, 3), shardable over 4 devices along its first axis, and an all-zero ``b``."""
    w = jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(4, 3)
    return {"w": w.astype(dtype), "b": jnp.zeros(3, dtype)}


def no_extras(params: Any) -> dict[str, Any]:
    return {}


def value_extras(params: Any) -> dict[str, Any]:
    return {"value": loss(params)}


def grad_fn_extras(params: Any) -> dict[str, Any]:
    return {"grad_fn": GRAD}


def value_fn_extras(params: Any) -> dict[str, Any]:
    return {"value_fn": loss}


def reduced_shape(name: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Amos's ``shape_fn`` reducing every state to one scalar per leaf."""
    return ()


def kept_rows(name: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Amos's ``shape_fn`` keeping only the first axis (the sharded one of ``w``)."""
    return shape[:1] + (1,) * (len(shape) - 1)


def half_eta(name: tuple[str, ...], shape: tuple[int, ...]) -> float:
    return 0.5


# -------------------------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class Case:
    """One transformation under test.

    ``factory(**kwargs)`` builds it; ``optax.inject_hyperparams(factory, static_args)`` must
    build the same one. ``extras(params)`` gives the extra arguments its ``update`` needs;
    those that are callables are passed as static arguments under ``jit``. ``not_applicable``
    maps a check's name to the reason it does not apply.
    """

    name: str
    factory: Callable[..., optax.GradientTransformation]
    kwargs: dict[str, Any]
    extras: Callable[[Any], dict[str, Any]] = no_extras
    static_args: tuple[str, ...] = ()
    inject_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    not_applicable: dict[str, str] = dataclasses.field(default_factory=dict)

    def build(self) -> optax.GradientTransformation:
        return self.factory(**self.kwargs)

    def inject(self) -> optax.GradientTransformation:
        """The same transformation under ``inject_hyperparams``; ``inject_kwargs`` replace
        arguments that must be spelled differently there (documented by the factory)."""
        kwargs = {**self.kwargs, **self.inject_kwargs}
        return optax.inject_hyperparams(self.factory, static_args=self.static_args)(**kwargs)


_LR, _WD = jax_opt.amos_decay_schedules(0.1, 10.0)
_AMOS_LR = optax.linear_schedule(0.1, 0.05, 4)

CASES = [
    Case("rmsprop_ode", jax_opt.rmsprop_ode, {"learning_rate": 0.1, "momentum": 0.9}),
    Case(
        "rmsprop_ode_global",
        jax_opt.rmsprop_ode,
        {"learning_rate": optax.linear_schedule(0.1, 0.05, 4), "scale": "global", "centered": True},
    ),
    Case(
        "scale_by_rmsprop_ode",
        jax_opt.scale_by_rmsprop_ode,
        {"decay": 0.9, "eps_in_sqrt": False, "bias_correction": True},
    ),
    Case("loss_tied_ode", jax_opt.loss_tied_ode, {"learning_rate": 0.1}, value_extras),
    Case(
        "scale_by_loss_tied_ode", jax_opt.scale_by_loss_tied_ode, {"min_loss": 0.01}, value_extras
    ),
    Case(
        "amos",
        jax_opt.amos,
        {"learning_rate": 0.1, "momentum": 0.9, "clip_value": 1.0},
        static_args=("eta_fn", "shape_fn"),
    ),
    Case(
        "amos_reduced",
        jax_opt.amos,
        {"learning_rate": 0.1, "shape_fn": reduced_shape, "eta_fn": half_eta},
        static_args=("eta_fn", "shape_fn"),
    ),
    Case(
        "amos_reduced_rows",
        jax_opt.amos,
        {"learning_rate": 0.1, "shape_fn": kept_rows, "momentum": 0.9},
        static_args=("eta_fn", "shape_fn"),
    ),
    Case(
        "scale_by_amos",
        jax_opt.scale_by_amos,
        {"learning_rate": _AMOS_LR, "beta": 0.9},
        static_args=("eta_fn", "shape_fn"),
        # Amos calls its schedule with the 1-based count, inject_hyperparams with optax's
        # 0-based one: the docstring says to shift the schedule there.
        inject_kwargs={"learning_rate": lambda count: _AMOS_LR(count + 1)},
    ),
    Case("su_amos_schedule", jax_opt.su_amos_schedule, {"lr": 0.1, "half_life": 10.0}),
    Case("amos_decay_schedules+adamw", optax.adamw, {"learning_rate": _LR, "weight_decay": _WD}),
    Case("flood_gradients", jax_opt.flood_gradients, {"level": 0.05}, value_extras),
    Case(
        "finite_difference_penalty",
        jax_opt.finite_difference_penalty,
        {"mu": 0.1, "delta": 0.01},
        grad_fn_extras,
    ),
    Case(
        "mgs",
        jax_opt.mgs,
        {"lr": 0.5, "num_samples": 4, "noise": 0.5, "seed": 1},
        value_fn_extras,
        static_args=("num_samples", "mix"),
    ),
]
BY_NAME = {case.name: case for case in CASES}


def cases(check: str) -> list:
    """The table as pytest parameters for ``check``; a row that does not apply is skipped
    with its reason."""
    return [
        pytest.param(
            case,
            id=case.name,
            marks=[pytest.mark.skip(reason=case.not_applicable[check])]
            if check in case.not_applicable
            else [],
        )
        for case in CASES
    ]


# ------------------------------------------------------------------------------------ helpers


def static_names(extras: dict[str, Any]) -> tuple[str, ...]:
    return tuple(k for k, v in extras.items() if callable(v))


def jit_update(opt: optax.GradientTransformation, extras: dict[str, Any]) -> Callable:
    return jax.jit(opt.update, static_argnames=static_names(extras))


@functools.cache
def built(name: str) -> tuple[optax.GradientTransformation, Callable]:
    """The row's transformation and its jitted ``update``, shared by the checks (one compile
    per row for float32 parameters; a recompile shows in the jit's cache size)."""
    case = BY_NAME[name]
    opt = case.build()
    return opt, jit_update(opt, case.extras(make_params()))


def run(opt: optax.GradientTransformation, case: Case, params: Any, steps: int = 3) -> tuple:
    """``steps`` updates from ``opt.init(params)``, inside one ``jit``: ``(params, state)``."""

    def body(params):
        state = opt.init(params)
        for _ in range(steps):
            updates, state = opt.update(GRAD(params), state, params, **case.extras(params))
            params = optax.apply_updates(params, updates)
        return params, state

    return jax.jit(body)(params)


def types(tree: Any) -> Any:
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


def assert_close(a: Any, b: Any, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------- checks


@pytest.mark.parametrize("case", cases("extra_args"))
def test_unknown_extra_args_are_accepted_and_ignored(case):
    """``update`` takes an unknown keyword and computes exactly what it computes without it:
    the two traced programs are the same (tracing, not compiling, keeps this cheap)."""
    opt, params = case.build(), make_params()
    state = opt.init(params)
    extras = case.extras(params)

    def program(**unknown):
        update = functools.partial(opt.update, **extras, **unknown)
        return str(jax.make_jaxpr(update)(GRAD(params), state, params))

    assert program(**UNKNOWN) == program()


@pytest.mark.parametrize("case", cases("no_recompile"))
def test_the_second_jitted_update_does_not_recompile(case):
    """The state that ``init`` returns and the one ``update`` returns have the same types
    (weak types included), so the second call hits the cache."""
    opt, step = built(case.name)
    params = make_params()
    state = opt.init(params)
    for _ in range(2):
        updates, state = step(GRAD(params), state, params, **case.extras(params))
        params = optax.apply_updates(params, updates)
    assert step._cache_size() == 1


@pytest.mark.parametrize("case", cases("inject_hyperparams"))
def test_inject_hyperparams_equals_the_plain_factory(case):
    """Three steps: the same parameters, and the same state where its structure is the same
    (``inject_hyperparams`` hands a schedule's value to the factory as a number, so optax's
    ``scale_by_learning_rate`` keeps no schedule count inside it)."""
    params = make_params()
    plain_params, plain_state = run(case.build(), case, params)
    injected_params, injected_state = run(case.inject(), case, params)
    assert_close(injected_params, plain_params)
    if jax.tree.structure(injected_state.inner_state) == jax.tree.structure(plain_state):
        assert_close(injected_state.inner_state, plain_state)


@pytest.mark.parametrize("case", cases("multi_steps"))
def test_multi_steps_returns_zeros_then_the_update_of_the_mean_gradient(case):
    opt, step = built(case.name)
    params = make_params()
    multi = optax.MultiSteps(opt, every_k_schedule=4)
    extras = case.extras(params)
    grads = GRAD(params)
    multi_step = jit_update(multi, extras)
    state = multi.init(params)
    for _ in range(3):
        updates, state = multi_step(grads, state, params, **extras)
        for u in jax.tree.leaves(updates):
            np.testing.assert_array_equal(u, np.zeros_like(u))
    updates, state = multi_step(grads, state, params, **extras)
    expected, _ = step(grads, opt.init(params), params, **extras)
    assert any(np.any(np.asarray(u) != 0) for u in jax.tree.leaves(updates))
    assert_close(updates, expected)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "f32"])
@pytest.mark.parametrize("case", cases("dtype"))
def test_updates_keep_the_dtype_and_the_state_keeps_its_types(case, dtype):
    """Updates in the parameters' dtype; the state's shapes and dtypes survive ``update``,
    checked as optax does, by a ``lax.cond`` between the old and the new state."""
    opt, params = case.build(), make_params(dtype)
    state = opt.init(params)

    @jax.jit
    def step(pred, state, params):
        updates, new_state = opt.update(GRAD(params), state, params, **case.extras(params))
        return updates, jax.lax.cond(pred, lambda: new_state, lambda: state)

    updates, new_state = step(jnp.asarray(True), state, params)
    assert types(updates) == types(params)
    assert types(new_state) == types(state)


@pytest.mark.parametrize("case", cases("eval_shape"))
def test_init_works_on_abstract_parameters(case):
    opt, params = case.build(), make_params()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    assert types(jax.eval_shape(opt.init, abstract)) == types(opt.init(params))


@pytest.mark.parametrize("case", cases("map_params"))
def test_tree_map_params_is_a_no_op_with_the_identity(case):
    opt, params = case.build(), make_params()
    state = opt.init(params)
    mapped = optax.tree.map_params(opt, lambda p: p, state)
    assert_close(mapped, state, rtol=0, atol=0)


# -------------------------------------------------------------------------------- flax.nnx


@pytest.mark.parametrize("case", cases("nnx"))
@pytest.mark.slow
def test_flax_nnx_optimizer_forwards_the_extra_args(case):
    """``nnx.Optimizer.update(model, grads, **extras)`` (under ``nnx.jit``) passes ``value=``,
    ``grad_fn=``, ``value_fn=`` through to ``update``; one step equals the plain optax step."""
    nnx = pytest.importorskip("flax.nnx")
    if not hasattr(nnx, "as_pure"):  # flax 0.10 has neither it nor update(model, grads)
        pytest.skip(f"flax {importlib.metadata.version('flax')} has no nnx.as_pure")

    class Model(nnx.Module):
        def __init__(self):
            params = make_params()
            self.w, self.b = nnx.Param(params["w"]), nnx.Param(params["b"])

    def model_params(model):
        return nnx.as_pure(nnx.state(model, nnx.Param))

    model = Model()
    optimizer = nnx.Optimizer(model, case.build(), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer):
        grads = nnx.grad(lambda m: loss(model_params(m)))(model)
        optimizer.update(model, grads, **case.extras(model_params(model)))

    train_step(model, optimizer)
    opt, step = built(case.name)
    params = make_params()
    updates, _ = step(GRAD(params), opt.init(params), params, **case.extras(params))
    expected = optax.apply_updates(params, updates)
    assert_close({"w": model.w[...], "b": model.b[...]}, expected)
    assert int(optimizer.step[...]) == 1


# -------------------------------------------------------------------------------- sharding

MESH_DEVICES = 4


def check_sharded(case: Case, mesh: jax.sharding.Mesh) -> None:
    """Three jitted steps on parameters sharded over an explicit mesh (``w`` along its first
    axis, ``b`` replicated): ``init`` (eager and jitted) and every ``update`` give the same
    state types (shapes, dtypes and shardings), the updates have the parameters' types, the
    parameters keep their sharding, and the result is the unsharded one."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    opt = case.build()
    step = jit_update(opt, case.extras(make_params()))

    def steps(params):
        state = opt.init(params)
        state_types = jax.tree.map(jax.typeof, state)
        assert jax.tree.map(jax.typeof, jax.jit(opt.init)(params)) == state_types, "jit(init)"
        for _ in range(3):
            updates, state = step(GRAD(params), state, params, **case.extras(params))
            assert jax.tree.map(jax.typeof, state) == state_types, "the state's types changed"
            assert jax.tree.map(jax.typeof, updates) == jax.tree.map(jax.typeof, params)
            params = optax.apply_updates(params, updates)
        return params

    expected = steps(make_params())
    with jax.set_mesh(mesh):
        shardings = {"w": NamedSharding(mesh, P("d", None)), "b": NamedSharding(mesh, P())}
        got = steps(jax.device_put(make_params(), shardings))
    assert got["w"].sharding.is_equivalent_to(shardings["w"], 2), got["w"].sharding
    assert_close(got, expected)


def sharding_report() -> dict[str, str]:
    """Every row's :func:`check_sharded`: ``"ok"`` or the error."""
    assert jax.device_count() == MESH_DEVICES, jax.devices()
    mesh = jax.make_mesh((MESH_DEVICES,), ("d",), axis_types=(jax.sharding.AxisType.Explicit,))
    report = {}
    for case in CASES:
        try:
            check_sharded(case, mesh)
            report[case.name] = "ok"
        except Exception as error:  # reported per row, asserted by the pytest items
            report[case.name] = f"{type(error).__name__}: {error}"[:3000]
    return report


@pytest.fixture(scope="module")
def sharded_results() -> dict[str, str]:
    """:func:`sharding_report` in a subprocess with 4 forced host devices (``XLA_FLAGS`` must be
    set before jax is imported), once for the module."""
    flags = os.environ.get("XLA_FLAGS", "")
    env = {
        **os.environ,
        "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={MESH_DEVICES}".strip(),
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tests.jax_opt.test_conformance"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", cases("sharding"))
@pytest.mark.slow
@pytest.mark.skipif(bool(explicit_sharding_missing()), reason=str(explicit_sharding_missing()))
def test_sharded_parameters_keep_their_shardings_and_the_result(case, sharded_results):
    assert sharded_results[case.name] == "ok"


if __name__ == "__main__":
    print(json.dumps(sharding_report()))
