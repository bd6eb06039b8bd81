"""Study ``ode_tracking``: does RMSprop follow its ODE, and at what order?

RMSprop with step ``lr`` and decay ``1 - rate * lr`` is the explicit Euler method for the
vector field ``rmsprop_vector_field(rate=rate)`` of each package (math.md §1.3). We integrate
the limit ODE (``lr = 0``) with scipy's ``solve_ivp`` to the ODE time ``T``, run each
package's optimizer for ``T / lr`` steps, and measure the error at ``T`` for a range of ``lr``.
A first-order method has error proportional to ``lr`` (log-log slope 1) once ``lr`` is below
the stability limit of the problem.

Run alone: ``python -m benchmarks --only ode_tracking``.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.integrate import solve_ivp

from benchmarks._common import (
    Context,
    StudyResult,
    frameworks,
    markdown_table,
    progress,
    pyplot,
    save_figure,
)
from benchmarks.problems import QUADRATIC_2D, ROSENBROCK_2D, Problem

NAME = "ode_tracking"
QUESTION = "Does RMSprop follow its ODE, and at what order?"

RATE = 2.0  # relaxation rate of the second moment in ODE time: decay = 1 - RATE * lr
EPS = 1e-8  # inside the square root (Su's form)
SPEC_LRS = [0.1, 0.05, 0.025, 0.0125]  # benchmarks.md
SCALES = ("elementwise", "global")
TAIL = 3  # the smallest lrs, where the asymptotic order shows


def initial_scale(problem: Problem, scale: str) -> float:
    """A warm second moment: the mean (elementwise) or the sum (global) of g(theta0)^2.

    With G0 = 0 the first step is sqrt(lr / rate) * sign(g), O(sqrt(lr)) instead of O(lr),
    which would hide the order of the method behind its start-up.
    """
    g2 = problem.grad(problem.theta0) ** 2
    return float(g2.mean() if scale == "elementwise" else g2.sum())


class TorchSide:
    name = "torch"

    def __init__(self):
        import torch

        import torch_opt

        self.torch, self.mod = torch, torch_opt

    def grad_fn(self, problem):
        torch = self.torch

        def grad(theta):
            theta = theta.detach().requires_grad_()
            with torch.enable_grad():
                (g,) = torch.autograd.grad(problem.f(theta), theta)
            return g

        return grad

    def field(self, problem, scale):
        f = self.mod.rmsprop_vector_field(
            self.grad_fn(problem), rate=RATE, eps=EPS, eps_in_sqrt=True, scale=scale
        )

        def numpy_field(theta, G):
            t = self.torch
            out = f(t.tensor(theta), t.tensor(G))
            return tuple(x.numpy() for x in out)

        return numpy_field

    def optimize(self, problem, scale, lr, steps, G0):
        torch = self.torch
        theta = torch.tensor(problem.theta0, dtype=torch.float64, requires_grad=True)
        opt = self.mod.RMSpropODE(
            [theta],
            lr=lr,
            alpha=1 - RATE * lr,
            eps=EPS,
            eps_in_sqrt=True,
            scale=scale,
            initial_scale=G0,
        )
        path = [problem.theta0.copy()]
        for _ in range(steps):
            opt.zero_grad()
            problem.f(theta).backward()
            opt.step()
            path.append(theta.detach().numpy().copy())
        return np.array(path)


class JaxSide:
    name = "jax"

    def __init__(self):
        import jax
        import optax

        import jax_opt

        self.jax, self.optax, self.mod = jax, optax, jax_opt
        self._steps = {}

    def field(self, problem, scale):
        jax = self.jax
        with jax.enable_x64(True):
            f = jax.jit(
                self.mod.rmsprop_vector_field(
                    jax.grad(problem.f), rate=RATE, eps=EPS, eps_in_sqrt=True, scale=scale
                )
            )

        def numpy_field(theta, G):
            with jax.enable_x64(True):
                return tuple(np.asarray(x) for x in f(theta, G))

        return numpy_field

    def _opt_and_step(self, problem, scale, G0):
        """One optimizer and one jitted step per (problem, scale); lr and decay are injected
        hyperparameters, so changing them does not recompile."""
        key = (problem.name, scale)
        if key not in self._steps:
            jax, optax = self.jax, self.optax
            opt = optax.inject_hyperparams(self.mod.rmsprop_ode)(
                learning_rate=0.1,
                decay=0.8,
                eps=EPS,
                initial_scale=G0,
                eps_in_sqrt=True,
                scale=scale,
            )

            def step(theta, state):
                updates, state = opt.update(jax.grad(problem.f)(theta), state, theta)
                return optax.apply_updates(theta, updates), state

            self._steps[key] = (opt, jax.jit(step))
        return self._steps[key]

    def optimize(self, problem, scale, lr, steps, G0):
        jax = self.jax
        with jax.enable_x64(True):
            opt, step = self._opt_and_step(problem, scale, G0)
            theta = jax.numpy.asarray(problem.theta0)
            state = opt.init(theta)
            for name, value in (("learning_rate", lr), ("decay", 1 - RATE * lr)):
                state.hyperparams[name] = jax.numpy.asarray(value, state.hyperparams[name].dtype)
            path = [problem.theta0.copy()]
            for _ in range(steps):
                theta, state = step(theta, state)
                path.append(np.asarray(theta))
        return np.array(path)


def integrate(field, theta0, G0, t_end, t_eval=None):
    theta0 = np.asarray(theta0, np.float64)
    G0 = np.asarray(G0, np.float64)
    n = theta0.size

    def rhs(_t, y):
        dth, dG = field(y[:n].reshape(theta0.shape), y[n:].reshape(G0.shape))
        return np.concatenate([np.ravel(dth), np.ravel(dG)])

    sol = solve_ivp(
        rhs,
        (0.0, t_end),
        np.concatenate([theta0.ravel(), G0.ravel()]),
        method="DOP853",
        rtol=1e-11,
        atol=1e-13,
        t_eval=t_eval,
    )
    if not sol.success:
        raise RuntimeError(sol.message)
    return sol.y[:n].T


def slope(lrs, errors) -> float:
    return float(np.polyfit(np.log(lrs), np.log(errors), 1)[0])


def run(ctx: Context) -> StudyResult:
    t_end = 0.5 if ctx.quick else 1.0
    lrs = SPEC_LRS + [SPEC_LRS[-1] / 2**k for k in range(1, 5 if ctx.quick else 8)]
    sides = {"torch": TorchSide, "jax": JaxSide}
    sides = [sides[name]() for name in frameworks()]
    problems = (QUADRATIC_2D, ROSENBROCK_2D)
    records, paths = [], {}
    jobs = [(p, s, side) for p in problems for s in SCALES for side in sides]
    for problem, scale, side in progress(jobs, NAME):
        G0 = initial_scale(problem, scale)
        G_init = np.full(problem.theta0.shape, G0) if scale == "elementwise" else np.float64(G0)
        grid = np.linspace(0.0, t_end, 201)
        ode_path = integrate(side.field(problem, scale), problem.theta0, G_init, t_end, grid)
        exact = ode_path[-1]
        errors, seconds = [], []
        for lr in lrs:
            start = time.perf_counter()
            path = side.optimize(problem, scale, lr, round(t_end / lr), G0)
            seconds.append(time.perf_counter() - start)
            errors.append(float(np.linalg.norm(path[-1] - exact)))
            if lr in (lrs[0], SPEC_LRS[-1], lrs[-1]):
                paths[(problem.name, scale, side.name, lr)] = path
        paths[(problem.name, scale, side.name, "ode")] = ode_path
        records.append(
            {
                "problem": problem.name,
                "scale": scale,
                "framework": side.name,
                "initial_scale": G0,
                "theta_ode": exact.tolist(),
                "lrs": lrs,
                "errors": errors,
                "seconds": seconds,
                "slope_spec": slope(SPEC_LRS, errors[: len(SPEC_LRS)]),
                "slope_tail": slope(lrs[-TAIL:], errors[-TAIL:]),
            }
        )

    figures = [plot_errors(ctx, records), plot_paths(ctx, paths, lrs, t_end)]
    rows = [
        (
            r["problem"],
            r["scale"],
            r["framework"],
            r["slope_spec"],
            r["slope_tail"],
            r["errors"][len(SPEC_LRS) - 1],
            r["errors"][-1],
        )
        for r in records
    ]
    table = markdown_table(
        [
            "problem",
            "scale",
            "framework",
            "slope, lr 0.1 to 0.0125",
            f"slope, lr {lrs[-TAIL]:.2g} to {lrs[-1]:.2g}",
            "error at lr 0.0125",
            f"error at lr {lrs[-1]:.3g}",
        ],
        rows,
    )
    agree = _framework_agreement(records)
    notes = [
        f"Errors at ODE time T = {t_end} against scipy DOP853 (rtol 1e-11) on each "
        f"package's own vector field; decay = 1 - {RATE} lr, eps = {EPS} inside the root, "
        "second moment warm-started from g(theta0)^2."
    ]
    if agree is not None:
        notes.append(f"torch and JAX errors agree to a relative {agree:.1e} (float64).")
    return StudyResult(
        name=NAME,
        question=QUESTION,
        verdict=_verdict(records, lrs),
        settings={
            "t_end": t_end,
            "rate": RATE,
            "eps": EPS,
            "eps_in_sqrt": True,
            "lrs": lrs,
            "problems": {p.name: p.description for p in problems},
        },
        data={"records": records},
        tables=[table],
        figures=figures,
        notes=notes,
    )


def _framework_agreement(records):
    by_key = {}
    for r in records:
        by_key.setdefault((r["problem"], r["scale"]), []).append(np.array(r["errors"]))
    diffs = [
        np.max(np.abs(a - b) / np.abs(b))
        for a, b in (pair for pair in by_key.values() if len(pair) == 2)
    ]
    return float(max(diffs)) if diffs else None


def _verdict(records, lrs) -> str:
    def span(problem, key):
        values = [r[key] for r in records if r["problem"] == problem]
        return min(values), max(values)

    def show(bounds):
        return f"{bounds[0]:.2f}-{bounds[1]:.2f}"

    quad, tail = span("quadratic2d", "slope_spec"), span("rosenbrock2d", "slope_tail")
    order = "first order" if all(0.8 <= v <= 1.2 for v in (*quad, *tail)) else "not first order"
    return (
        f"{order}: the error at fixed ODE time falls as lr^{show(quad)} on the quadratic "
        f"(lr 0.1 to 0.0125) and as lr^{show(tail)} on Rosenbrock for lr {lrs[-TAIL]:.2g} to "
        f"{lrs[-1]:.2g}; at lr 0.1 to 0.0125 Rosenbrock's curved valley is beyond the Euler "
        f"stability limit (slope {show(span('rosenbrock2d', 'slope_spec'))})"
    )


def plot_errors(ctx: Context, records) -> str:
    plt = pyplot()
    problems = sorted({r["problem"] for r in records})
    fig, axes = plt.subplots(1, len(problems), figsize=(5.5 * len(problems), 4.2))
    for ax, problem in zip(np.atleast_1d(axes), problems, strict=True):
        for r in (r for r in records if r["problem"] == problem):
            marker = "o" if r["framework"] == "torch" else "x"
            label = f"{r['scale']} ({r['framework']})"
            ax.loglog(r["lrs"], r["errors"], marker=marker, label=label)
        lrs = np.array(records[0]["lrs"])
        ref_err = min(r["errors"][-1] for r in records if r["problem"] == problem)
        ax.loglog(lrs, ref_err * lrs / lrs[-1], "k--", lw=1, label="slope 1")
        ax.axvspan(SPEC_LRS[-1], SPEC_LRS[0], color="0.9", zorder=0)
        ax.set(title=problem, xlabel="lr (Euler step in ODE time)", ylabel="error at T")
        ax.legend(fontsize=8)
    return save_figure(ctx, fig, "ode_tracking_errors.png")


def plot_paths(ctx: Context, paths, lrs, t_end) -> str:
    plt = pyplot()
    side = next(iter({k[2] for k in paths}))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, problem in zip(axes, (QUADRATIC_2D, ROSENBROCK_2D), strict=True):
        ode = paths[(problem.name, "elementwise", side, "ode")]
        pts = np.concatenate(
            [ode]
            + [paths[(problem.name, "elementwise", side, lr)] for lr in (lrs[0], SPEC_LRS[-1])]
        )
        lo, hi = pts.min(0), pts.max(0)
        pad = 0.15 * (hi - lo) + 1e-3
        x, y = np.meshgrid(
            np.linspace(lo[0] - pad[0], hi[0] + pad[0], 200),
            np.linspace(lo[1] - pad[1], hi[1] + pad[1], 200),
        )
        z = problem.f(np.stack([x, y]))
        ax.contour(x, y, np.log1p(z), levels=25, cmap="Greys", linewidths=0.6)
        ax.plot(ode[:, 0], ode[:, 1], "k-", lw=2, label=f"ODE flow to T = {t_end}")
        for lr, style in ((lrs[0], "o-"), (SPEC_LRS[-1], ".-"), (lrs[-1], "-")):
            path = paths[(problem.name, "elementwise", side, lr)]
            ax.plot(path[:, 0], path[:, 1], style, ms=3, lw=1, label=f"RMSprop, lr = {lr:.3g}")
        ax.set(title=f"{problem.name}, elementwise ({side})", xlabel="x", ylabel="y")
        ax.legend(fontsize=8)
    return save_figure(ctx, fig, "ode_tracking_paths.png")
