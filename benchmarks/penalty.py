"""Study ``penalty``: what does the explicit gradient-norm penalty cost and do?

(a) The IGR paper's two-parameter model (math.md §5.6): ``E(a, b) = (y - a b x)^2 / 2`` with
``x = 2, y = 3/2``, whose global minima form the hyperbola ``a b = 0.75``, from
``(a0, b0) = (2.8, 3.5)``, in float64. Gradient descent with step ``h`` follows, to second order,
the gradient flow of ``E + (h/4) ||grad E||^2`` (math.md §5.1) rather than that of ``E``: we
integrate both flows with scipy's ``solve_ivp`` and measure the distance from the iterates to
each at matching times ``t = n h``, for a few ``h``. At one ``h`` we also run descent on the
explicitly penalized loss ``E + mu ||grad E||^2`` with ``mu = igr_coefficient(h) = h/4``, exactly
(double backprop) and by finite differences, in each package, and report where every
trajectory ends on the line of minima: the penalty favours the flatter minima (smaller
``a^2 + b^2``, hence a smaller Hessian eigenvalue ``x^2 (a^2 + b^2)`` there).

(b) A tanh MLP (2 hidden layers of 64) on a NumPy-generated regression task, full batch, float32:
the time of one step of plain gradient descent, of descent on the exact penalty (torch:
``gradient_norm_penalty`` then ``backward``; JAX: ``jax.grad(penalized(loss, mu))`` under jit) and
on the finite-difference penalty (torch: ``FiniteDifferencePenalty(SGD)``; JAX:
``optax.chain(finite_difference_penalty(mu), optax.sgd(lr))`` under jit), as ratios against the
plain step measured in the same run; and, after a fixed number of steps from the same start,
the train loss, ``||grad L||^2`` and the top Hessian eigenvalue with and without the penalty.

Run alone: ``python -m benchmarks --only penalty``.
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
from benchmarks.problems import (
    IGR_MODEL,
    IGR_START,
    IGR_X,
    IGR_Y,
    igr_model,
    igr_model_grad,
    igr_model_penalty_grad,
    mlp_params,
    smooth_regression,
)

NAME = "penalty"
QUESTION = "What does the explicit gradient-norm penalty cost and do?"

# (a) the two-parameter model
IGR_T = 5.0  # flow time: every trajectory has reached the line of minima by then
IGR_LR = 0.005  # the lr of the penalized runs and of the trajectory plot
IGR_LRS = {True: [0.002, 0.005, 0.01], False: [0.001, 0.002, 0.005, 0.01]}
DELTA = 1e-2  # the library's default finite-difference step
KEEP = 250  # points per trajectory kept in the JSON data
# (b) the MLP
MLP_SIZES = [8, 64, 64, 1]
MLP_SAMPLES = 512
MLP_LR = 0.2
METHODS = ("plain", "exact penalty", "finite-difference penalty")


def igr_mu(lr: float) -> float:
    from twinopt import igr_coefficient

    return float(igr_coefficient(lr))


# ------------------------------------------------------------------------------------------
# (a) the two-parameter model: flows (NumPy + scipy) and descent paths (each package)


def igr_flow(mu: float, lr: float, steps: int) -> np.ndarray:
    """The gradient flow of ``E + mu ||grad E||^2`` at the times ``n lr``, ``n = 0..steps``."""

    def rhs(_t, theta):
        return -(igr_model_grad(theta) + mu * igr_model_penalty_grad(theta))

    sol = solve_ivp(
        rhs,
        (0.0, lr * steps),
        IGR_START,
        method="DOP853",
        rtol=1e-11,
        atol=1e-13,
        t_eval=lr * np.arange(steps + 1),
    )
    if not sol.success:
        raise RuntimeError(sol.message)
    return sol.y.T


def torch_igr_path(method: str, lr: float, steps: int) -> np.ndarray:
    import torch

    import torch_opt

    theta = torch.tensor(IGR_START, dtype=torch.float64, requires_grad=True)
    sgd = torch.optim.SGD([theta], lr=lr)
    mu = igr_mu(lr)
    fd = torch_opt.FiniteDifferencePenalty(sgd, mu, delta=DELTA)  # used by that method only

    def closure():
        sgd.zero_grad()
        loss = igr_model(theta)
        loss.backward()
        return loss

    path = np.empty((steps + 1, 2))
    path[0] = IGR_START
    for k in range(steps):
        if method == "finite-difference penalty":
            fd.step(closure)
        else:
            sgd.zero_grad()
            loss = igr_model(theta)
            if method == "exact penalty":
                loss = loss + mu * torch_opt.gradient_norm_penalty(loss, [theta])
            loss.backward()
            sgd.step()
        path[k + 1] = theta.detach().numpy()
    return path


def jax_igr_path(method: str, lr: float, steps: int) -> np.ndarray:
    import jax
    import optax

    import jax_opt

    mu = igr_mu(lr)
    grad = jax.grad(igr_model)
    if method == "finite-difference penalty":
        opt = optax.chain(jax_opt.finite_difference_penalty(mu, delta=DELTA), optax.sgd(lr))
    else:
        opt = optax.sgd(lr)
        if method == "exact penalty":
            grad = jax.grad(jax_opt.penalized(igr_model, mu))

    def body(carry, _):
        theta, state = carry
        updates, state = opt.update(grad(theta), state, theta, grad_fn=jax.grad(igr_model))
        theta = optax.apply_updates(theta, updates)
        return (theta, state), theta

    with jax.enable_x64(True):
        theta0 = jax.numpy.asarray(IGR_START)
        scan = jax.jit(lambda t: jax.lax.scan(body, (t, opt.init(t)), length=steps)[1])
        return np.concatenate([IGR_START[None], np.asarray(scan(theta0))])


IGR_PATHS = {"torch": torch_igr_path, "jax": jax_igr_path}


def loglog_slope(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def max_distance(path: np.ndarray, flow: np.ndarray) -> float:
    return float(np.linalg.norm(path - flow, axis=1).max())


def end_point(path: np.ndarray) -> dict:
    a, b = (float(v) for v in path[-1])
    return {
        "a": a,
        "b": b,
        "ab": a * b,
        "a2_b2": a * a + b * b,
        # the Hessian's top eigenvalue; on the line of minima it is x^2 (a^2 + b^2)
        "sharpness": float(np.linalg.eigvalsh(igr_hessian(a, b))[-1]),
        "loss": float(igr_model(path[-1])),
    }


def igr_hessian(a: float, b: float) -> np.ndarray:
    r = a * b * IGR_X - IGR_Y
    off = IGR_X**2 * a * b + r * IGR_X
    return np.array([[IGR_X**2 * b * b, off], [off, IGR_X**2 * a * a]])


def thin(path: np.ndarray) -> list:
    keep = np.unique(np.linspace(0, len(path) - 1, KEEP).astype(int))
    return path[keep].tolist()


def igr_part(ctx: Context, fws: list[str]):
    lrs = IGR_LRS[ctx.quick]
    flows, sweep, runs = {}, [], []
    for lr in progress(lrs, f"{NAME} (a)"):
        steps = round(IGR_T / lr)
        plain, modified = igr_flow(0.0, lr, steps), igr_flow(igr_mu(lr), lr, steps)
        flows[lr] = {"plain": plain, "modified": modified}
        for fw in fws:
            path = IGR_PATHS[fw]("plain", lr, steps)
            d_plain, d_mod = max_distance(path, plain), max_distance(path, modified)
            sweep.append(
                {
                    "framework": fw,
                    "lr": lr,
                    "steps": steps,
                    "to_plain_flow": d_plain,
                    "to_modified_flow": d_mod,
                    "closer": d_plain / d_mod,
                    "end_to_plain_flow": float(np.linalg.norm(path[-1] - plain[-1])),
                    "end_to_modified_flow": float(np.linalg.norm(path[-1] - modified[-1])),
                }
            )
            if lr == IGR_LR:
                runs.append({"framework": fw, "method": "plain", "path": path})
    steps = round(IGR_T / IGR_LR)
    doubled = igr_flow(2 * igr_mu(IGR_LR), IGR_LR, steps)
    for fw in fws:
        for method in METHODS[1:]:
            runs.append(
                {"framework": fw, "method": method, "path": IGR_PATHS[fw](method, IGR_LR, steps)}
            )
    flow = flows[IGR_LR]
    references = {"plain": flow["plain"], "modified": flow["modified"], "doubled": doubled}
    records = []
    for run_ in runs:
        path = run_["path"]
        records.append(
            {
                "framework": run_["framework"],
                "method": run_["method"],
                **end_point(path),
                **{f"to_{k}_flow": max_distance(path, v) for k, v in references.items()},
                "path": thin(path),
            }
        )
    flow_records = [
        {"flow": name, "mu": mu, **end_point(references[name]), "path": thin(references[name])}
        for name, mu in (
            ("plain", 0.0),
            ("modified", igr_mu(IGR_LR)),
            ("doubled", 2 * igr_mu(IGR_LR)),
        )
    ]
    paths = {(r["framework"], r["method"]): r["path"] for r in runs}
    fd_vs_exact = {
        fw: max_distance(paths[(fw, "finite-difference penalty")], paths[(fw, "exact penalty")])
        for fw in fws
    }
    slopes = {}
    for fw in fws:
        rs = [r for r in sweep if r["framework"] == fw]
        slopes[fw] = {
            key: loglog_slope([r["lr"] for r in rs], [r[f"to_{key}_flow"] for r in rs])
            for key in ("plain", "modified")
        }
    return {
        "sweep": sweep,
        "slopes": slopes,
        "runs": records,
        "flows": flow_records,
        "fd_vs_exact": fd_vs_exact,
        "initial_ascent_step": DELTA * float(np.linalg.norm(igr_model_grad(IGR_START))),
    }


# ------------------------------------------------------------------------------------------
# (b) the MLP: one side per framework, each with step functions and metrics


def mlp_task(seed: int):
    rng = np.random.default_rng(seed)
    x, y = smooth_regression(MLP_SAMPLES, MLP_SIZES[0], rng)
    return x, y, mlp_params(MLP_SIZES, rng)


class TorchMLP:
    name = "torch"

    def __init__(self):
        import torch

        import torch_opt

        self.torch, self.mod = torch, torch_opt

    def loss(self, ps, x, y):
        torch = self.torch
        h = torch.tanh(torch.addmm(ps[1], x, ps[0]))
        h = torch.tanh(torch.addmm(ps[3], h, ps[2]))
        out = torch.addmm(ps[5], h, ps[4]).squeeze(-1)
        return 0.5 * (out - y).square().mean()

    def stepper(self, method: str, task, lr: float, mu: float):
        """``(step, state)``: ``step()`` makes one step and returns the loss before it."""
        torch, mod = self.torch, self.mod
        x, y = (torch.from_numpy(a) for a in task[:2])
        ps = [torch.tensor(p, requires_grad=True) for p in task[2]]
        sgd = torch.optim.SGD(ps, lr=lr)
        if method == "finite-difference penalty":
            fd = mod.FiniteDifferencePenalty(sgd, mu, delta=DELTA)

            def closure():
                fd.zero_grad()
                loss = self.loss(ps, x, y)
                loss.backward()
                return loss

            return (lambda: fd.step(closure).detach()), (ps, x, y)

        def step():
            sgd.zero_grad()
            loss = self.loss(ps, x, y)
            total = loss
            if method == "exact penalty":
                total = loss + mu * mod.gradient_norm_penalty(loss, ps)
            total.backward()
            sgd.step()
            return loss.detach()

        return step, (ps, x, y)

    def metrics(self, state, iterations: int) -> dict:
        torch = self.torch
        ps, x, y = state
        ps = [p.detach().requires_grad_() for p in ps]
        loss = self.loss(ps, x, y)
        grads = torch.autograd.grad(loss, ps, create_graph=True)
        sizes = [p.numel() for p in ps]

        def hvp(v):
            vs = [c.view_as(p) for c, p in zip(torch.split(v, sizes), ps, strict=True)]
            hv = torch.autograd.grad(grads, ps, vs, retain_graph=True)
            return torch.cat([h.reshape(-1) for h in hv])

        v0 = torch.from_numpy(power_start(sum(sizes)))
        return {
            "loss": float(loss.detach()),
            "grad_norm2": float(sum(g.detach().square().sum() for g in grads)),
            "sharpness": power_iteration(
                lambda v: hvp(torch.from_numpy(v)).numpy(), v0.numpy(), iterations
            ),
        }


class JaxMLP:
    name = "jax"

    def __init__(self):
        import jax
        from jax.flatten_util import ravel_pytree

        self.jax = jax
        self._cache = {}

        def hvp(ps, x, y, v):
            flat, unravel = ravel_pytree(ps)
            grad = jax.grad(lambda p: self.loss(p, x, y))
            return ravel_pytree(jax.jvp(grad, (ps,), (unravel(v),))[1])[0]

        self._hvp = jax.jit(hvp)

    @staticmethod
    def loss(ps, x, y):
        import jax.numpy as jnp

        h = jnp.tanh(x @ ps[0] + ps[1])
        h = jnp.tanh(h @ ps[2] + ps[3])
        out = (h @ ps[4] + ps[5])[:, 0]
        return 0.5 * jnp.mean((out - y) ** 2)

    def _compiled(self, method: str, lr: float, mu: float):
        key = (method, lr, mu)
        if key in self._cache:
            return self._cache[key]
        import optax

        import jax_opt

        jax, loss = self.jax, self.loss
        if method == "finite-difference penalty":
            opt = optax.chain(jax_opt.finite_difference_penalty(mu, delta=DELTA), optax.sgd(lr))
        else:
            opt = optax.sgd(lr)

        def step(ps, state, x, y):
            if method == "exact penalty":
                # has_aux carries the unpenalized loss through ``penalized``
                (_, value), grads = jax.value_and_grad(
                    jax_opt.penalized(lambda p: (loss(p, x, y),) * 2, mu, has_aux=True),
                    has_aux=True,
                )(ps)
            else:
                value, grads = jax.value_and_grad(loss)(ps, x, y)
            updates, state = opt.update(grads, state, ps, grad_fn=lambda q: jax.grad(loss)(q, x, y))
            return optax.apply_updates(ps, updates), state, value

        self._cache[key] = (opt, jax.jit(step, donate_argnums=(0, 1)))
        return self._cache[key]

    def stepper(self, method: str, task, lr: float, mu: float):
        jax = self.jax
        opt, jstep = self._compiled(method, lr, mu)
        x, y = (jax.numpy.asarray(a) for a in task[:2])
        box = {"ps": [jax.numpy.asarray(p) for p in task[2]], "x": x, "y": y}
        box["state"] = opt.init(box["ps"])

        def step():
            box["ps"], box["state"], value = jstep(box["ps"], box["state"], x, y)
            return jax.block_until_ready(value)

        return step, box

    def metrics(self, box, iterations: int) -> dict:
        jax = self.jax
        ps, x, y = box["ps"], box["x"], box["y"]
        size = sum(p.size for p in ps)

        def hvp(v):
            return np.asarray(self._hvp(ps, x, y, jax.numpy.asarray(v)))

        loss, grads = jax.value_and_grad(self.loss)(ps, x, y)
        return {
            "loss": float(loss),
            "grad_norm2": float(
                sum(np.square(np.asarray(g, np.float64)).sum() for g in jax.tree.leaves(grads))
            ),
            "sharpness": power_iteration(hvp, power_start(size), iterations),
        }


MLP_SIDES = {"torch": TorchMLP, "jax": JaxMLP}


def power_start(n: int) -> np.ndarray:
    v = np.random.default_rng(12345).standard_normal(n).astype(np.float32)
    return v / np.linalg.norm(v)


def power_iteration(hvp, v, iterations: int) -> float:
    """The Rayleigh quotient after ``iterations`` power steps: the top Hessian eigenvalue when
    it dominates in magnitude (it does near a minimum)."""
    value = 0.0
    for _ in range(iterations):
        w = hvp(v)
        value = float(np.dot(v, w))
        v = w / np.linalg.norm(w)
    return value


def interleaved_ms(steps: dict, rounds: int, block: int, warmup: int = 3) -> dict:
    """Per-round ms per step of each callable, timed in blocks of ``block`` steps, the methods
    interleaved (and their order rotated) within each round so that a change of machine load
    hits all of them alike."""
    for fn in steps.values():
        for _ in range(warmup * block):
            fn()
    names = list(steps)
    out = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = steps[name]
            start = time.perf_counter()
            for _ in range(block):
                fn()
            out[name].append((time.perf_counter() - start) / block * 1e3)
    return out


def mlp_part(ctx: Context, fws: list[str]):
    rounds, block = (5, 5) if ctx.quick else (40, 10)
    train_steps, power_its = (100, 30) if ctx.quick else (2000, 100)
    mu = igr_mu(MLP_LR)
    timing, training = [], []
    jobs = [(fw, "timing", 0) for fw in fws] + [
        (fw, "training", seed) for fw in fws for seed in range(ctx.seeds)
    ]
    sides = {fw: MLP_SIDES[fw]() for fw in fws}
    for fw, what, seed in progress(jobs, f"{NAME} (b)"):
        side, task = sides[fw], mlp_task(seed)
        if what == "timing":
            steps = {m: side.stepper(m, task, MLP_LR, mu)[0] for m in METHODS}
            ms = interleaved_ms(steps, rounds, block)
            for m in METHODS:
                per_round = np.array(ms[m]) / np.array(ms["plain"])
                timing.append(
                    {
                        "framework": fw,
                        "method": m,
                        "ms": float(np.median(ms[m])),
                        "ms_q25_q75": [float(q) for q in np.percentile(ms[m], [25, 75])],
                        "ratio": float(np.median(per_round)),
                        "ratio_q25_q75": [float(q) for q in np.percentile(per_round, [25, 75])],
                        "ms_per_round": ms[m],
                    }
                )
            continue
        for m in METHODS:
            step, state = side.stepper(m, task, MLP_LR, mu)
            losses = [float(step()) for _ in range(train_steps)]
            training.append(
                {
                    "framework": fw,
                    "method": m,
                    "seed": seed,
                    **side.metrics(state, power_its),
                    "losses": losses[:: max(1, train_steps // 200)],
                }
            )
    settings = {
        "sizes": MLP_SIZES,
        "samples": MLP_SAMPLES,
        "activation": "tanh",
        "lr": MLP_LR,
        "mu": mu,
        "delta": DELTA,
        "rounds": rounds,
        "block": block,
        "train_steps": train_steps,
        "power_iterations": power_its,
        "dtype": "float32",
    }
    return {"timing": timing, "training": training}, settings


# ------------------------------------------------------------------------------------------


def run(ctx: Context) -> StudyResult:
    fws = frameworks()
    igr = igr_part(ctx, fws)
    mlp, mlp_settings = mlp_part(ctx, fws)
    tables = [igr_table(igr), sweep_table(igr), timing_table(mlp), training_table(mlp)]
    figures = [plot_igr(ctx, igr), plot_mlp(ctx, mlp, mlp_settings)]
    notes = [
        f"(a) {IGR_MODEL}, from (a0, b0) = ({IGR_START[0]}, {IGR_START[1]}), float64, to flow "
        f"time T = {IGR_T}. 'modified flow' is the gradient flow of E + (h/4) ||grad E||^2, "
        "'doubled flow' that of E + (h/2) ||grad E||^2 (the explicit mu = h/4 plus the implicit "
        "h/4 of descent); distances are the largest over the matching times t = n h. "
        f"Finite differences use the library default delta = {DELTA}.",
        f"(b) MLP {MLP_SIZES} (tanh), {MLP_SAMPLES} samples, full batch, float32, lr "
        f"{MLP_LR}, mu = igr_coefficient(lr) = {mlp_settings['mu']}; times are medians over "
        f"{mlp_settings['rounds']} interleaved rounds of {mlp_settings['block']} steps after "
        "warm-up, ratios the median of the per-round ratios to the plain step (interquartile "
        f"range in brackets). Sharpness: {mlp_settings['power_iterations']} power iterations on "
        f"Hessian-vector products; 2 / lr = {2 / MLP_LR:g} is the stability limit of plain "
        "descent.",
    ]
    for fw, sl in igr["slopes"].items():
        notes.append(
            f"(a) {fw}: the largest distance from GD to the plain flow grows as h^"
            f"{sl['plain']:.2f}, to the modified flow as h^{sl['modified']:.2f} "
            f"(h = {', '.join(f'{lr:g}' for lr in IGR_LRS[ctx.quick])})."
        )
        break  # the frameworks agree (see below); one line is enough
    if igr["fd_vs_exact"]:
        notes.append(
            f"(a) The finite-difference path strays up to "
            f"{max(igr['fd_vs_exact'].values()):.3g} from the exact-penalty path: the ascent "
            f"point theta + delta grad E is {igr['initial_ascent_step']:.3g} away from theta at "
            "the start (delta is absolute, not relative to ||grad E||)."
        )
    notes.append(
        f"(b) Descent on the penalized loss is stable only where lr (lambda + 2 mu lambda^2) < 2 "
        f"(the Hessian of L + mu ||grad L||^2 at a minimum is H + 2 mu H^2), i.e. for "
        f"lambda < {penalized_limit(MLP_LR, mlp_settings['mu']):.3g} against 2 / lr = "
        f"{2 / MLP_LR:g} without the penalty."
    )
    agree = framework_agreement(igr)
    if agree is not None:
        same = "bit for bit" if agree == 0 else f"to {agree:.1e}"
        notes.append(f"(a) torch and JAX trajectories agree {same} (float64).")
    return StudyResult(
        name=NAME,
        question=QUESTION,
        verdict=_verdict(igr, mlp),
        settings={
            "igr_model": IGR_MODEL,
            "igr_start": IGR_START.tolist(),
            "igr_T": IGR_T,
            "igr_lr": IGR_LR,
            "igr_lrs": IGR_LRS[ctx.quick],
            "igr_delta": DELTA,
            "mlp": mlp_settings,
            "seeds": ctx.seeds,
        },
        data={"igr": igr, "mlp": mlp},
        tables=tables,
        figures=figures,
        notes=notes,
    )


def penalized_limit(lr: float, mu: float) -> float:
    """The largest Hessian eigenvalue lambda with lr (lambda + 2 mu lambda^2) <= 2."""
    if mu == 0:
        return 2 / lr
    return (np.sqrt(1 + 16 * mu / lr) - 1) / (4 * mu)


def framework_agreement(igr):
    by_method = {}
    for r in igr["runs"]:
        by_method.setdefault(r["method"], []).append(np.array(r["path"]))
    diffs = [np.abs(p[0] - p[1]).max() for p in by_method.values() if len(p) == 2]
    return float(max(diffs)) if diffs else None


def _mean_std(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.3g} ± {values.std():.2g}"


def igr_table(igr) -> str:
    rows = [
        (
            f"{f['flow']} flow (mu = {f['mu']:.3g})",
            "scipy",
            f"({f['a']:.4f}, {f['b']:.4f})",
            f"{f['a2_b2']:.3f}",
            f"{f['sharpness']:.2f}",
            "",
            "",
            "",
        )
        for f in igr["flows"]
    ]
    rows += [
        (
            f"GD{'' if r['method'] == 'plain' else ' + ' + r['method']}",
            r["framework"],
            f"({r['a']:.4f}, {r['b']:.4f})",
            f"{r['a2_b2']:.3f}",
            f"{r['sharpness']:.2f}",
            f"{r['to_plain_flow']:.3g}",
            f"{r['to_modified_flow']:.3g}",
            f"{r['to_doubled_flow']:.3g}",
        )
        for r in igr["runs"]
    ]
    return markdown_table(
        [
            f"(a) lr h = {IGR_LR}",
            "framework",
            f"(a, b) at T = {IGR_T}",
            "a^2 + b^2",
            "top Hessian eigenvalue",
            "max distance to plain flow",
            "to modified flow (h/4)",
            "to doubled flow (h/2)",
        ],
        rows,
    )


def sweep_table(igr) -> str:
    return markdown_table(
        [
            "(a) lr h",
            "framework",
            "GD steps",
            "max distance to plain flow",
            "to modified flow",
            "x closer to modified",
            "at T: to plain",
            "at T: to modified",
        ],
        [
            (
                r["lr"],
                r["framework"],
                r["steps"],
                f"{r['to_plain_flow']:.3g}",
                f"{r['to_modified_flow']:.3g}",
                f"{r['closer']:.1f}",
                f"{r['end_to_plain_flow']:.3g}",
                f"{r['end_to_modified_flow']:.3g}",
            )
            for r in igr["sweep"]
        ],
    )


def timing_table(mlp) -> str:
    return markdown_table(
        ["(b) MLP step", "framework", "ms / step", "x plain step (same run)"],
        [
            (
                r["method"],
                r["framework"],
                f"{r['ms']:.3g} [{r['ms_q25_q75'][0]:.3g}, {r['ms_q25_q75'][1]:.3g}]",
                f"{r['ratio']:.2f} [{r['ratio_q25_q75'][0]:.2f}, {r['ratio_q25_q75'][1]:.2f}]",
            )
            for r in mlp["timing"]
        ],
    )


def training_summary(mlp):
    out = []
    for fw in dict.fromkeys(r["framework"] for r in mlp["training"]):
        for m in METHODS:
            rs = [r for r in mlp["training"] if r["framework"] == fw and r["method"] == m]
            out.append(
                {
                    "framework": fw,
                    "method": m,
                    **{k: [r[k] for r in rs] for k in ("loss", "grad_norm2", "sharpness")},
                }
            )
    return out


def training_table(mlp) -> str:
    seeds = len({r["seed"] for r in mlp["training"]})
    return markdown_table(
        [
            f"(b) MLP after training ({seeds} seed{'s' * (seeds > 1)})",
            "framework",
            "train loss",
            "||grad L||^2",
            "top Hessian eigenvalue",
        ],
        [
            (
                s["method"],
                s["framework"],
                _mean_std(s["loss"]),
                _mean_std(s["grad_norm2"]),
                _mean_std(s["sharpness"]),
            )
            for s in training_summary(mlp)
        ],
    )


def _verdict(igr, mlp) -> str:
    def ratio(method):
        rs = [r for r in mlp["timing"] if r["method"] == method]
        return " / ".join(f"{r['ratio']:.1f}x" for r in rs), ", ".join(r["framework"] for r in rs)

    exact, fws = ratio("exact penalty")
    fd, _ = ratio("finite-difference penalty")
    at_lr = [r["closer"] for r in igr["sweep"] if r["lr"] == IGR_LR]
    smallest = min(r["lr"] for r in igr["sweep"])
    at_small = [r["closer"] for r in igr["sweep"] if r["lr"] == smallest]
    ends = {f["flow"]: f["a2_b2"] for f in igr["flows"]}
    first = igr["runs"][0]["framework"]
    runs = {r["method"]: r["a2_b2"] for r in igr["runs"] if r["framework"] == first}
    sharp = {
        s["method"]: np.mean(s["sharpness"])
        for s in training_summary(mlp)
        if s["framework"] == first
    }
    return (
        f"a step on the exact (double-backprop) penalty costs {exact} a plain step ({fws}; "
        f"~5x reported for a ResNet-18), on the finite-difference penalty {fd}; GD at lr "
        f"{IGR_LR} stays {min(at_lr):.1f}x closer to the modified flow than to the plain flow "
        f"({min(at_small):.0f}x at lr {smallest}) and ends flatter on the line of minima "
        f"(a^2 + b^2 = {runs['plain']:.2f} vs {ends['plain']:.2f} for the plain flow; "
        f"{runs['exact penalty']:.2f} with the explicit penalty mu = lr/4); on the MLP "
        f"({first}) the penalty lowers the top Hessian eigenvalue from {sharp['plain']:.1f} to "
        f"{sharp['exact penalty']:.1f} (exact) / {sharp['finite-difference penalty']:.1f} "
        f"(finite differences), at the stability limits 2/lr = {2 / MLP_LR:g} and "
        f"{penalized_limit(MLP_LR, igr_mu(MLP_LR)):.2g} (with the penalty)"
    )


# ------------------------------------------------------------------------------------------
# figures


STYLES = {
    "plain": ("C0", "GD"),
    "exact penalty": ("C1", "GD + exact penalty (mu = h/4)"),
    "finite-difference penalty": ("C2", "GD + finite-difference penalty (mu = h/4)"),
}
FLOW_STYLES = {
    "plain": ("k", "-", "plain flow of E"),
    "modified": ("k", "--", "flow of E + (h/4)||grad E||^2"),
    "doubled": ("0.5", ":", "flow of E + (h/2)||grad E||^2"),
}


def plot_igr(ctx: Context, igr) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    first = igr["runs"][0]["framework"]
    runs = [r for r in igr["runs"] if r["framework"] == first]
    for ax, zoom in zip(axes[:2], (False, True), strict=True):
        for f in igr["flows"]:
            color, ls, label = FLOW_STYLES[f["flow"]]
            p = np.array(f["path"])
            ax.plot(p[:, 0], p[:, 1], color=color, ls=ls, lw=1.5, label=label)
        for r in runs:
            color, label = STYLES[r["method"]]
            p = np.array(r["path"])
            ax.plot(p[:, 0], p[:, 1], "o", color=color, ms=2.5, alpha=0.6, label=f"{label}")
        ends = np.array([[r["a"], r["b"]] for r in (*runs, *igr["flows"])])
        if zoom:
            lo, hi = ends.min(0), ends.max(0)
            pad = 0.35 * (hi - lo).max() + 1e-3
            xlim, ylim = (lo[0] - pad, hi[0] + pad), (lo[1] - pad, hi[1] + pad)
            for r in (*runs, *igr["flows"]):
                color = STYLES[r["method"]][0] if "method" in r else "k"
                marker = "o" if "method" in r else "x"
                ax.plot(r["a"], r["b"], marker, color=color, ms=8, mfc="none", mew=1.5)
                ax.annotate(
                    f"{r['a2_b2']:.2f}",
                    (r["a"], r["b"]),
                    textcoords="offset points",
                    xytext=(-30, 3),
                    fontsize=7,
                    color=color,
                )
            title = "end points on the line of minima (labels: a^2 + b^2)"
        else:
            xlim, ylim = (-0.2, 3.4), (-0.2, 4.0)
            a, b = np.meshgrid(np.linspace(*xlim, 200), np.linspace(*ylim, 200))
            ax.contour(
                a, b, np.log1p(igr_model(np.stack([a, b]))), levels=20, cmap="Greys", linewidths=0.5
            )
            title = f"IGR model from ({IGR_START[0]}, {IGR_START[1]}), h = {IGR_LR} ({first})"
        a = np.linspace(0.05, 3.4, 400)
        ax.plot(a, 0.75 / a, color="C3", lw=1, alpha=0.7, label="minima a b = 0.75")
        ax.set(xlim=xlim, ylim=ylim, xlabel="a", ylabel="b", title=title)
        if not zoom:
            ax.legend(fontsize=7, loc="upper left")
    ax = axes[2]
    for fw, marker in (("torch", "o"), ("jax", "x")):
        rs = [r for r in igr["sweep"] if r["framework"] == fw]
        if not rs:
            continue
        lrs = [r["lr"] for r in rs]
        ax.loglog(
            lrs,
            [r["to_plain_flow"] for r in rs],
            marker + "-",
            color="C0",
            label=f"GD to plain flow ({fw}), slope {igr['slopes'][fw]['plain']:.2f}",
        )
        ax.loglog(
            lrs,
            [r["to_modified_flow"] for r in rs],
            marker + "--",
            color="C1",
            label=f"GD to modified flow ({fw}), slope {igr['slopes'][fw]['modified']:.2f}",
        )
    ax.set(
        xlabel="lr h", ylabel="max distance at matching times t = n h", title="GD vs the two flows"
    )
    ax.legend(fontsize=7)
    return save_figure(ctx, fig, "penalty_igr.png")


def plot_mlp(ctx: Context, mlp, settings) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.4), width_ratios=[1, 1.3, 0.9])
    ax = axes[0]
    fws = list(dict.fromkeys(r["framework"] for r in mlp["timing"]))
    width = 0.8 / len(METHODS)
    for i, m in enumerate(METHODS):
        rs = [
            next(r for r in mlp["timing"] if r["framework"] == fw and r["method"] == m)
            for fw in fws
        ]
        pos = np.arange(len(fws)) + (i - 1) * width
        err = np.array(
            [[r["ratio"] - r["ratio_q25_q75"][0], r["ratio_q25_q75"][1] - r["ratio"]] for r in rs]
        ).T
        bars = ax.bar(pos, [r["ratio"] for r in rs], width, yerr=err, color=STYLES[m][0], label=m)
        ax.bar_label(
            bars,
            labels=[f"{r['ratio']:.2f}x\n{r['ms']:.3g} ms" for r in rs],
            label_type="center",
            fontsize=7,
        )
    ax.axhline(1, color="k", lw=0.6)
    ax.set_xticks(np.arange(len(fws)), fws)
    ax.set(
        ylabel="step time / plain step (same run)",
        title=f"MLP {settings['sizes']} step cost, float32, CPU",
    )
    ax.set_ylim(0, 1.25 * max(r["ratio_q25_q75"][1] for r in mlp["timing"]))
    ax.legend(fontsize=8, loc="upper left")
    ax = axes[1]
    for fw, ls in (("torch", "-"), ("jax", "--")):
        for m in METHODS:
            rs = [r for r in mlp["training"] if r["framework"] == fw and r["method"] == m]
            if not rs:
                continue
            curve = np.mean([r["losses"] for r in rs], axis=0)
            stride = max(1, settings["train_steps"] // 200)
            ax.semilogy(
                np.arange(len(curve)) * stride, curve, ls, color=STYLES[m][0], label=f"{m} ({fw})"
            )
    ax.set(
        xlabel="step",
        ylabel="train loss (mean over seeds)",
        title=f"full-batch GD, lr {settings['lr']}, mu = {settings['mu']:g}",
    )
    ax.legend(fontsize=7)
    ax = axes[2]
    summary = training_summary(mlp)
    fws = list(dict.fromkeys(s["framework"] for s in summary))
    for i, m in enumerate(METHODS):
        rs = [next(s for s in summary if s["framework"] == fw and s["method"] == m) for fw in fws]
        ax.bar(
            np.arange(len(fws)) + (i - 1) * width,
            [np.mean(s["sharpness"]) for s in rs],
            width,
            yerr=[np.std(s["sharpness"]) for s in rs],
            color=STYLES[m][0],
            label=m,
        )
    ax.axhline(2 / settings["lr"], color="k", ls="--", lw=1, label="2 / lr")
    ax.axhline(
        penalized_limit(settings["lr"], settings["mu"]),
        color="k",
        ls=":",
        lw=1,
        label="stability limit with the penalty",
    )
    ax.set_xticks(np.arange(len(fws)), fws)
    ax.set(
        ylabel="top Hessian eigenvalue (mean ± std)",
        title=f"sharpness after {settings['train_steps']} steps",
    )
    ax.set_ylim(0, 1.4 * 2 / settings["lr"])
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    return save_figure(ctx, fig, "penalty_mlp.png")
