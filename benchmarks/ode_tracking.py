"""Study ``ode_tracking``: does RMSprop follow its ODE, and at what order?

RMSprop with step ``lr`` and decay ``1 - rate * lr`` is the explicit Euler method for the vector
field ``rmsprop_vector_field(rate=rate)`` of each package (math.md §1.3). The study integrates
that field with scipy's ``solve_ivp`` (DOP853) to ODE time ``T``, runs each package's optimizer
for ``T / lr`` steps and fits the order of the error at ``T`` in ``lr`` (a first-order method:
log-log slope 1, once ``lr`` is below the problem's stability limit).
"""

from __future__ import annotations

import contextlib

import numpy as np
from scipy.integrate import solve_ivp

from benchmarks._common import Context, StudyResult, frameworks, jax_x64, torch_threads
from benchmarks._report import FW_STYLE, curve, figure, panel, span, table
from benchmarks.problems import QUADRATIC_2D, ROSENBROCK_2D, Problem

NAME = "ode_tracking"
QUESTION = "Does RMSprop follow its ODE, and at what order?"

RATE, EPS = 2.0, 1e-8  # decay = 1 - RATE * lr; eps inside the square root (Su's form)
SPEC_LRS = [0.1, 0.05, 0.025, 0.0125]  # benchmarks.md
SCALES = ("elementwise", "global")
TAIL = 3  # the smallest lrs, where the asymptotic order shows


def initial_scale(problem: Problem, scale: str) -> float:
    """A warm second moment from g(theta0)^2 (mean or sum): with G0 = 0 the first step is
    O(sqrt(lr)), which would hide the method's order behind its start-up."""
    g2 = problem.grad(problem.theta0) ** 2
    return float(g2.mean() if scale == "elementwise" else g2.sum())


def rmsprop_args(scale: str) -> dict:
    """The arguments the field and the optimizer share (eps inside the square root)."""
    return {"eps": EPS, "eps_in_sqrt": True, "scale": scale}


def torch_side():
    import torch

    import torch_opt

    def field(problem, scale):
        def grad(theta):
            theta = theta.detach().requires_grad_()
            with torch.enable_grad():
                return torch.autograd.grad(problem.f(theta), theta)[0]

        f = torch_opt.rmsprop_vector_field(grad, rate=RATE, **rmsprop_args(scale))
        return lambda theta, G: [x.numpy() for x in f(torch.tensor(theta), torch.tensor(G))]

    @torch_threads(1)  # tiny tensors: a second thread only adds waiting
    def optimize(problem, scale, lr, steps, G0):
        theta = torch.tensor(problem.theta0, dtype=torch.float64, requires_grad=True)
        args = {"lr": lr, "alpha": 1 - RATE * lr, "initial_scale": G0} | rmsprop_args(scale)
        opt = torch_opt.RMSpropODE([theta], **args)
        path = [problem.theta0.copy()]
        for _ in range(steps):
            opt.zero_grad()
            problem.f(theta).backward()
            opt.step()
            path.append(theta.detach().numpy().copy())
        return np.array(path)

    return field, optimize, contextlib.nullcontext


def jax_side():
    import jax
    import optax

    import jax_opt

    compiled = {}

    def field(problem, scale):
        with jax_x64():
            f = jax_opt.rmsprop_vector_field(jax.grad(problem.f), rate=RATE, **rmsprop_args(scale))
            f = jax.jit(f)
        return lambda theta, G: [np.asarray(x) for x in f(theta, G)]

    def optimize(problem, scale, lr, steps, G0):
        """The last iterate only (a ``fori_loop``: lr, decay and steps are traced, so one
        compilation serves every lr)."""
        key = (problem.name, scale)
        if key not in compiled:
            rmsprop = optax.inject_hyperparams(jax_opt.rmsprop_ode)  # lr and decay traced
            opt = rmsprop(learning_rate=0.1, decay=0.8, initial_scale=G0, **rmsprop_args(scale))

            def body(_, carry):
                theta, state = carry
                updates, state = opt.update(jax.grad(problem.f)(theta), state, theta)
                return optax.apply_updates(theta, updates), state

            def last(theta, lr, steps):
                state = opt.init(theta)
                state.hyperparams["learning_rate"] = lr
                state.hyperparams["decay"] = 1 - RATE * lr
                return jax.lax.fori_loop(0, steps, body, (theta, state))[0]

            compiled[key] = jax.jit(last)
        with jax_x64():
            return np.asarray(compiled[key](problem.theta0, lr, steps))[None]

    return field, optimize, lambda: jax_x64()


def integrate(field, theta0, G0, t_end, grid):
    n = theta0.size

    def rhs(_t, y):
        dth, dG = field(y[:n], y[n:] if np.ndim(G0) else y[n])
        return np.concatenate([np.ravel(dth), np.ravel(dG)])

    y0 = np.concatenate([theta0, np.ravel(G0)])
    sol = solve_ivp(rhs, (0, t_end), y0, method="DOP853", rtol=1e-11, atol=1e-13, t_eval=grid)
    if not sol.success:
        raise RuntimeError(sol.message)
    return sol.y[:n].T


def slope(lrs, errors) -> float:
    return float(np.polyfit(np.log(lrs), np.log(errors), 1)[0])


def run(ctx: Context) -> StudyResult:
    t_end, fws, problems = ctx.sized(1.0, 0.25), frameworks(), (QUADRATIC_2D, ROSENBROCK_2D)
    lrs = SPEC_LRS + [SPEC_LRS[-1] / 2**k for k in range(1, ctx.sized(8, 6))]
    records, paths = [], {p.name: [] for p in problems}
    for fw in fws:
        field, optimize, context = {"torch": torch_side, "jax": jax_side}[fw]()
        for problem, scale in ((p, s) for p in problems for s in SCALES):
            G0 = initial_scale(problem, scale)
            G_init = np.full(2, G0) if scale == "elementwise" else np.float64(G0)
            with context():
                grid = np.linspace(0, t_end, 201)
                flow = integrate(field(problem, scale), problem.theta0, G_init, t_end, grid)
            errors, plot = [], scale == "elementwise" and fw == fws[0]
            for lr in lrs:
                path = optimize(problem, scale, lr, round(t_end / lr), G0)
                errors.append(float(np.linalg.norm(path[-1] - flow[-1])))
                if plot and lr in (lrs[0], SPEC_LRS[-1]):
                    paths[problem.name].append(curve(f"RMSprop, lr {lr:g}", *path.T, ".-"))
            if plot:
                paths[problem.name].append(curve(f"ODE flow to T = {t_end}", *flow.T, "k-"))
            spec, tail = slope(SPEC_LRS, errors[:4]), slope(lrs[-TAIL:], errors[-TAIL:])
            run = {"problem": problem.name, "scale": scale, "framework": fw, "lrs": lrs}
            records.append(run | {"errors": errors, "slope_spec": spec, "slope_tail": tail})

    def order(problem):
        return span([r["slope_tail"] for r in records if r["problem"] == problem])

    first = all(0.8 <= r["slope_tail"] <= 1.2 for r in records)
    verdict = (
        f"RMSprop {'is' if first else 'is not'} first order in lr: at fixed ODE time its error "
        f"falls as lr^{order('quadratic2d')} on the quadratic and as lr^{order('rosenbrock2d')} on "
        f"Rosenbrock for lr {lrs[-TAIL]:.2g} to {lrs[-1]:.2g}, element-wise and global, in "
        f"{' and '.join(fws)}."
    )
    columns = {"problem": "problem", "scale": "scale", "framework": "framework",
               "slope, lr 0.1 to 0.0125": "slope_spec:.2f",
               f"slope, lr {lrs[-TAIL]:.2g} to {lrs[-1]:.2g}": "slope_tail:.2f",
               "error at lr 0.0125": lambda r: r["errors"][len(SPEC_LRS) - 1],
               f"error at lr {lrs[-1]:.2g}": lambda r: r["errors"][-1]}  # fmt: skip
    error_panels = []
    for p in problems:
        mine = [r for r in records if r["problem"] == p.name]
        curves = []
        for r in mine:
            style, color = "o" + FW_STYLE[r["framework"]], SCALES.index(r["scale"])
            curves.append(curve(f"{r['scale']} ({r['framework']})", lrs, r["errors"], style, color))
        axes = {"xlabel": "lr (Euler step in ODE time)", "ylabel": f"error at T = {t_end}"}
        error_panels.append(panel(curves, p.name, xscale="log", yscale="log", **axes))
    path_panels = [
        panel(c, f"{name}, element-wise ({fws[0]})", xlabel="x", ylabel="y")
        for name, c in paths.items()
    ]
    figures = [
        figure("ode_tracking_errors", error_panels),
        figure("ode_tracking_paths", path_panels),
    ]
    settings = {"t_end": t_end, "rate": RATE, "eps": EPS, "eps_in_sqrt": True, "lrs": lrs}
    settings["reference"] = "scipy solve_ivp DOP853, rtol 1e-11, on each package's field"
    settings["problems"] = {p.name: p.description for p in problems}
    tables = [table(records, columns)]
    return StudyResult(verdict, {"runs": records}, tables, figures, settings)
