"""The two frameworks behind one interface, and the per-dtype tolerance table.

Tests written against :class:`Backend` run once per framework (the ``backend`` fixture in
``conftest.py``). Inputs are NumPy arrays; a backend converts them, runs the package's kernels
or shells, and converts the results back.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Sequence

import numpy as np

from benchmarks._common import jax_x64  # float64 blocks in JAX, for the tests too

# One table of tolerances for comparisons against the float64 oracle and between frameworks.
TOLERANCES = {
    "float64": {"rtol": 1e-10, "atol": 1e-12},
    "float32": {"rtol": 2e-5, "atol": 1e-6},
}


def assert_close(
    actual, expected, dtype: str = "float64", err_msg: str = "", magnitude=None
) -> None:
    """Element-wise closeness under the tolerance of ``dtype``; NaNs must match NaNs.

    ``magnitude`` (optional, broadcastable): the largest value each element was computed
    through; it adds an absolute tolerance of ``rtol / 1000`` of it (the rounding a sum of
    large terms leaves in a small result).
    """
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    tol = TOLERANCES[dtype]
    if magnitude is None:
        np.testing.assert_allclose(actual, expected, equal_nan=True, err_msg=err_msg, **tol)
        return
    atol = tol["atol"] + tol["rtol"] * 1e-3 * np.asarray(magnitude, np.float64)
    bad = ~(
        (np.abs(actual - expected) <= atol + tol["rtol"] * np.abs(expected))
        | (np.isnan(actual) & np.isnan(expected))
        | (actual == expected)
    )
    assert not bad.any(), (
        f"{err_msg}: {int(bad.sum())} of {bad.size} elements differ beyond tolerance\n"
        f"actual:   {actual[bad]}\nexpected: {expected[bad]}\n"
        f"atol:     {np.broadcast_to(atol, bad.shape)[bad]}"
    )


def assert_all_close(actual: Sequence, expected: Sequence, dtype: str = "float64") -> None:
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert_close(a, e, dtype, err_msg=f"array {i}")


def assert_trajectory_close(
    actual: Sequence[Sequence],
    steps: Sequence[tuple],
    *,
    scale: str = "elementwise",
    dtype: str = "float64",
    expected: Sequence[Sequence] | None = None,
) -> None:
    """Compare parameters after every step with the oracle's ``trajectory`` output (or with
    ``expected``, e.g. a peer's trajectory), where the oracle marks the trajectory reliable
    (see ``reference.rmsprop_ode.reliable``)."""
    from tests.reference.rmsprop_ode import reliable

    assert len(actual) == len(steps)
    masks = reliable([state for _, state in steps], scale)
    if expected is None:
        expected = [params for params, _ in steps]
    scales = [state["theta_scale"] for _, state in steps]
    for k, (got, want, mask, scale_k) in enumerate(
        zip(actual, expected, masks, scales, strict=True)
    ):
        for i, (a, e, m, sc) in enumerate(zip(got, want, mask, scale_k, strict=True)):
            assert_close(
                np.asarray(a)[m],
                np.asarray(e)[m],
                dtype,
                err_msg=f"step {k + 1}, array {i}",
                magnitude=np.asarray(sc)[m],
            )


def explicit_sharding_missing() -> str | None:
    """Why this jax cannot run the explicit-sharding tests (the APIs they use: meshes with
    ``jax.sharding.AxisType`` axes, ``jax.set_mesh``, ``jax.typeof``, ``jax.sharding.reshard``),
    or None. The library itself needs none of them (``jax_opt`` falls back to
    ``with_sharding_constraint``)."""
    import jax

    needed = {"jax.sharding.AxisType": jax.sharding, "jax.set_mesh": jax, "jax.typeof": jax}
    needed["jax.sharding.reshard"] = jax.sharding
    missing = [n for n, mod in needed.items() if not hasattr(mod, n.rsplit(".", 1)[1])]
    return f"jax {jax.__version__} has no {', '.join(missing)}" if missing else None


def available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


class Backend:
    """A framework as the tests see it."""

    name: str
    mod: object  # torch_opt or jax_opt

    def x64(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def asarray(self, x):
        raise NotImplementedError

    def to_numpy(self, x) -> np.ndarray:
        raise NotImplementedError

    def run_rmsprop(self, params, grad_seq, **hyper) -> list[list[np.ndarray]]:
        """Run the package's RMSprop-ODE optimizer; returns the parameters after each step."""
        raise NotImplementedError

    def run_loss_tied(self, params, grad_seq, losses, **hyper) -> list[list[np.ndarray]]:
        raise NotImplementedError

    def run_amos(self, params, grad_seq, *, lr, etas=None, shapes=None, **hyper):
        """Run the package's Amos over ``grad_seq``; ``lr`` a number or a schedule of the
        1-based count; ``etas``/``shapes`` per parameter (None: the defaults)."""
        raise NotImplementedError

    def value_and_grad(self, f, x) -> tuple[float, np.ndarray]:
        """``f(x)`` and its gradient by the framework's autodiff (``f`` takes a framework
        array and returns a scalar)."""
        raise NotImplementedError

    def penalized_value_and_grad(self, f, x, mu) -> tuple[float, np.ndarray]:
        """``f + mu ||grad f||^2`` at ``x`` and its gradient, by the package's exact penalty."""
        raise NotImplementedError

    def fd_penalty_step(self, f, x, *, mu, delta, lr) -> np.ndarray:
        """One SGD step (lr) on the package's finite-difference penalized gradient of ``f``."""
        raise NotImplementedError


class TorchBackend(Backend):
    name = "torch"

    def __init__(self):
        import torch

        import torch_opt

        self.torch = torch
        self.xp = torch
        self.mod = torch_opt

    def asarray(self, x):
        return self.torch.tensor(np.asarray(x, np.float64))  # a copy: steps are in place

    def to_numpy(self, x) -> np.ndarray:
        return x.detach().cpu().numpy().copy()

    def _drive(self, opt, ps, grad_seq, losses=None) -> list[list[np.ndarray]]:
        out = []
        for k, grads in enumerate(grad_seq):
            for p, g in zip(ps, grads, strict=True):
                p.grad = self.asarray(g)
            if losses is None:
                opt.step()
            else:
                opt.step(lambda k=k: losses[k])
            out.append([self.to_numpy(p) for p in ps])
        return out

    def run_rmsprop(self, params, grad_seq, *, lr, decay, momentum=0.0, foreach=None, **hyper):
        ps = [self.asarray(p).requires_grad_() for p in params]
        opt = self.mod.RMSpropODE(
            ps, lr=lr, alpha=decay, momentum=momentum or 0.0, foreach=foreach, **hyper
        )
        return self._drive(opt, ps, grad_seq)

    def run_loss_tied(self, params, grad_seq, losses, **hyper):
        ps = [self.asarray(p).requires_grad_() for p in params]
        return self._drive(self.mod.LossTiedODE(ps, **hyper), ps, grad_seq, losses)

    def run_amos(self, params, grad_seq, *, lr, etas=None, shapes=None, **hyper):
        ps = [self.asarray(p).requires_grad_() for p in params]
        names = [str(i) for i in range(len(ps))]
        eta = None if etas is None else (lambda name, p: etas[int(name)])
        shape = None if shapes is None else (lambda name, p: shapes[int(name)])
        opt = self.mod.Amos(
            [{"params": ps, "param_names": names}],
            lr=lr(1) if callable(lr) else lr,
            eta=eta,
            shape=shape,
            **hyper,
        )
        out = []
        for k, grads in enumerate(grad_seq, start=1):
            if callable(lr):
                opt.param_groups[0]["lr"] = lr(k)
            for p, g in zip(ps, grads, strict=True):
                p.grad = self.asarray(g)
            opt.step()
            out.append([self.to_numpy(p) for p in ps])
        return out

    def value_and_grad(self, f, x):
        x = self.asarray(x).requires_grad_()
        value = f(x)
        (g,) = self.torch.autograd.grad(value, x)
        return float(value.detach()), self.to_numpy(g)

    def penalized_value_and_grad(self, f, x, mu):
        x = self.asarray(x).requires_grad_()
        loss = f(x)
        total = loss + mu * self.mod.gradient_norm_penalty(loss, [x])
        total.backward()
        return float(total.detach()), self.to_numpy(x.grad)

    def fd_penalty_step(self, f, x, *, mu, delta, lr):
        x = self.asarray(x).requires_grad_()
        opt = self.mod.FiniteDifferencePenalty(self.torch.optim.SGD([x], lr=lr), mu, delta)

        def closure():
            opt.zero_grad()
            loss = f(x)
            loss.backward()
            return loss

        opt.step(closure)
        return self.to_numpy(x)


class JaxBackend(Backend):
    name = "jax"

    def __init__(self):
        import jax
        import jax.numpy as jnp
        import optax

        import jax_opt

        self.jax, self.jnp, self.optax = jax, jnp, optax
        self.xp = jnp
        self.mod = jax_opt

    def x64(self) -> contextlib.AbstractContextManager[None]:
        return jax_x64()

    def asarray(self, x):
        return self.jnp.asarray(np.asarray(x, np.float64))

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def _drive(self, opt, params, grad_seq, losses=None) -> list[list[np.ndarray]]:
        ps = [self.asarray(p) for p in params]
        state = opt.init(ps)
        update = self.jax.jit(opt.update)
        out = []
        for k, grads in enumerate(grad_seq):
            extra = {} if losses is None else {"value": losses[k]}
            updates, state = update([self.asarray(g) for g in grads], state, ps, **extra)
            ps = self.optax.apply_updates(ps, updates)
            out.append([self.to_numpy(p) for p in ps])
        return out

    def run_rmsprop(self, params, grad_seq, *, lr, momentum=0.0, **hyper):
        hyper.pop("foreach", None)
        opt = self.mod.rmsprop_ode(lr, momentum=momentum or None, **hyper)
        return self._drive(opt, params, grad_seq)

    def run_loss_tied(self, params, grad_seq, losses, *, lr, **hyper):
        return self._drive(self.mod.loss_tied_ode(lr, **hyper), params, grad_seq, losses)

    def run_amos(self, params, grad_seq, *, lr, etas=None, shapes=None, **hyper):
        eta_fn = None if etas is None else (lambda name, shape: etas[int(name[0])])
        shape_fn = None if shapes is None else (lambda name, shape: shapes[int(name[0])])
        opt = self.mod.amos(lr, eta_fn=eta_fn, shape_fn=shape_fn, **hyper)
        return self._drive(opt, params, grad_seq)

    def value_and_grad(self, f, x):
        value, g = self.jax.value_and_grad(f)(self.asarray(x))
        return float(value), self.to_numpy(g)

    def penalized_value_and_grad(self, f, x, mu):
        value, g = self.jax.value_and_grad(self.mod.penalized(f, mu))(self.asarray(x))
        return float(value), self.to_numpy(g)

    def fd_penalty_step(self, f, x, *, mu, delta, lr):
        opt = self.optax.chain(self.mod.finite_difference_penalty(mu, delta), self.optax.sgd(lr))
        x = self.asarray(x)
        grad_fn = self.jax.grad(f)
        updates, _ = opt.update(grad_fn(x), opt.init(x), x, grad_fn=grad_fn)
        return self.to_numpy(self.optax.apply_updates(x, updates))


BACKENDS = {"torch": TorchBackend, "jax": JaxBackend}
MODULES = {"torch": "torch", "jax": "jax"}
