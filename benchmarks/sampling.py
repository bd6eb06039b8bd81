"""Study ``sampling``: can the sampling optimizer optimize what gradients cannot?

All three parts use MLE-guided parameter search (MGS, math.md §4: ``MGS`` / ``mgs``).

(a) Guided ES's biased quadratic: A (2000 x 1000) and b with N(0, 1) entries, loss
|A x - b|^2 / (2 m) from x = 0; the observed gradient is the true one plus |true gradient| u for
a fixed unit vector u, so SGD on it stalls above f*. MGS takes the biased gradient times
1 / lambda_max as its surrogate (a step: MGS evaluates candidates at theta + eps) and evaluates
the true loss at K = 4 candidates per iteration, half of them around the surrogate step (guided)
or none (zero-centred), with constant noise; evosax GuidedES (the surrogate as its guiding
subspace) is the peer. JAX runs every grid point and seed in one program, in the eigenbasis of
A^T A (an orthogonal change of variables that makes the loss O(n)).
(b) The 0-1 error of a linear classifier on two noisy Gaussian blobs (zero gradient wherever it
exists): black-box MGS (JAX and torch) against evosax OpenES and random search at equal numbers
of loss evaluations; logistic regression (Newton on the smooth surrogate) as the reference.
(c) Candidates per second: one MGS step with K = 16 candidates of two one-hidden-layer MLPs, by
the looped ``step(closure)``, by ``step(population=functional_population(...))`` eager and
with ``compile=True``, interleaved in one run, one thread.
"""

from __future__ import annotations

import contextlib
import time
from itertools import product

import numpy as np

from benchmarks import problems
from benchmarks._common import (
    Context,
    StudyResult,
    geo_mean,
    installed,
    interleaved_medians,
    jit_run,
    log_steps,
    torch_threads,
    torch_timer,
)
from benchmarks._report import curve, figure, panel, pm, record_curve, rounded, table
from benchmarks.problems import biased_gradient, zero_one_error

NAME = "sampling"
QUESTION = "Can the sampling optimizer optimize what gradients cannot?"

A_M, A_N, A_K, GES_POP, GES_STD = 2000, 1000, 4, 4, 1e-2
A_ROWS = {  # key: (label, loss + gradient evaluations per iteration)
    "sgd": ("SGD on the biased gradient", 1), "mgs_guided": ("MGS guided (mix 0.5)", A_K + 2),
    "mgs_zero": ("MGS zero-centred (mix 0)", A_K + 1),
    "guided_es": ("evosax GuidedES", GES_POP + 1),
}  # fmt: skip
A_GRID = {
    "sgd": [0.003, 0.01, 0.03, 0.1, 0.3, 0.6], "noise": [1e-4, 3e-4, 1e-3], "lr": [0.1, 0.3, 1.0],
    "temperature": [1e-8, 1e-6], "ges_lr": [0.1, 0.3, 0.6],
}  # fmt: skip
A_QUICK = {"sgd": [0.1, 0.3], "noise": [1e-3], "lr": [0.3], "temperature": [1e-6], "ges_lr": [0.3]}
B_DIM, B_TRAIN, B_TEST, B_K, B_POP, B_RS_K = 20, 1000, 10_000, 4, 8, 4
B_ROWS = {  # key: (label, evaluations per iteration)
    "mgs": ("MGS black-box", B_K + 1), "openes": ("evosax OpenES", B_POP),
    "random_search": ("random search", B_RS_K),
}  # fmt: skip
B_GRID = {  # MGS: (noise, lr, temperature); OpenES: (std, lr); random search: (std,)
    "mgs": list(product((0.1, 0.3, 1.0), (0.03, 0.1, 0.3), (1e-4, 1e-3, 1e-2))),
    "openes": list(product((0.1, 0.3, 1.0), (0.01, 0.1, 1.0))),
    "random_search": list(product((0.3, 1.0, 3.0, 10.0))),
}
B_QUICK = {"mgs": [(0.3, 0.1, 1e-3)], "openes": [(0.3, 0.1)], "random_search": [(0.3,)]}
C_K, C_MODELS = 16, {"small": ((64, 32, 10), 64), "study": ((64, 128, 10), 256)}  # sizes, batch
C_PATHS = {"loop": "looped: step(closure)",
           "eager": "vectorized: step(population=functional_population(...))",
           "compiled": "vectorized: functional_population(compile=True)"}  # fmt: skip


def mgs_args(cfg, mix: float = 0.0) -> dict:
    """MGS's arguments at a grid point ``(noise, lr, temperature)``: constant noise, no
    gradient clipping."""
    fixed = {"noise_scale": "constant", "max_grad_norm": None}
    return fixed | {"noise": cfg[0], "lr": cfg[1], "temperature": cfg[2], "mix": mix}


def best_of(finals: np.ndarray) -> int:
    """The grid point (first axis) with the lowest geometric-mean final value over seeds."""
    return int(np.argmin(geo_mean(finals, axis=-1, floor=1e-6)))


def quadratic() -> dict:
    """The instance in the eigenbasis V of A^T A / m: eigenvalues, y* = V^T x*, V^T u."""
    limit = contextlib.nullcontext()
    if installed("threadpoolctl"):  # a threaded eigh on a shared 2-core machine can take 10 s
        limit = __import__("threadpoolctl").threadpool_limits(1)
    rng = np.random.default_rng([0, 7])  # Guided ES's perturbed quadratic (see the top)
    a, b, u = rng.standard_normal((A_M, A_N)), rng.standard_normal(A_M), rng.standard_normal(A_N)
    u = u / np.linalg.norm(u)
    with limit:
        h = a.T @ a / A_M
        lam, v = np.linalg.eigh(h)
        y_star = (v.T @ (a.T @ b / A_M)) / lam
    return {"lam": lam, "y_star": y_star, "u_eig": v.T @ u}


def a_jax(q, grid, steps, seeds, quick) -> dict:
    """Per row: the gaps f - f* ``(configs, seeds, steps + 1)`` and the configs."""
    import jax
    import optax

    import jax_opt

    jnp = jax.numpy
    lam, y_star, u = (jnp.asarray(q[k], jnp.float32) for k in ("lam", "y_star", "u_eig"))
    y0, eta = jnp.zeros(A_N), float(1 / q["lam"].max())

    def gap(y):
        return 0.5 * jnp.sum(lam * (y - y_star) ** 2)

    def surrogate(y):
        return biased_gradient(lam * (y - y_star), u)

    def scan(body, carry, xs=None):
        carry, gaps = jax.lax.scan(body, carry, xs, length=steps)
        return jnp.append(gaps, gap(carry[0]))

    def sgd(cfg, key):
        return scan(lambda c, _: ((c[0] - cfg[0] * surrogate(c[0]),), gap(c[0])), (y0,))

    def mgs(mix):
        def run(cfg, key):
            tx = jax_opt.mgs(num_samples=A_K, **mgs_args(cfg, mix))

            def body(c, _):
                step, state = tx.update(eta * surrogate(c[0]), c[1], c[0], value_fn=gap)
                return (c[0] + step, state), gap(c[0])

            return scan(body, (y0, tx.init(y0)._replace(key=key)))

        return run

    def guided_es(cfg, key):
        from evosax.algorithms import GuidedES

        std = optax.constant_schedule(GES_STD)
        es = GuidedES(GES_POP, y0, subspace_dims=1, optimizer=optax.sgd(cfg[0]), std_schedule=std)
        params, (k0, key) = es.default_params, jax.random.split(key)

        def body(c, k):
            ask, tell = jax.random.split(k)
            population, state = es.ask(ask, c[1].replace(grad=surrogate(c[1].mean)), params)
            state = es.tell(tell, population, jax.vmap(gap)(population), state, params)[0]
            return (state.mean, state), gap(c[0])

        return scan(body, (y0, es.init(k0, y0, params)), jax.random.split(key, steps))

    mgs_cfgs = list(product(grid["noise"], grid["lr"], grid["temperature"]))
    rows = {"sgd": (sgd, list(product(grid["sgd"])))}
    rows |= {"mgs_guided": (mgs(0.5), mgs_cfgs), "mgs_zero": (mgs(0.0), mgs_cfgs)}
    if installed("evosax"):
        rows["guided_es"] = (guided_es, list(product(grid["ges_lr"])))
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    arrays = {k: jnp.asarray(cfgs, jnp.float32) for k, (_, cfgs) in rows.items()}

    def program(arrays, keys):  # grid points outside, seeds inside
        runs = {k: jax.vmap(jax.vmap(rows[k][0], (None, 0)), (0, None)) for k in arrays}
        return {k: runs[k](a, keys) for k, a in arrays.items()}

    out = jit_run(program, arrays, keys, quick=quick)
    return {k: (np.asarray(out[k], np.float64), rows[k][1]) for k in rows}


def b_data(seeds) -> dict:
    """Per seed: train and test sets (with a bias column), a start, logistic regression's
    train error."""
    out = {k: [] for k in ("x", "y", "x_test", "y_test", "theta0", "logistic")}
    for seed in seeds:
        rng = np.random.default_rng([seed, 11])
        x, y, _ = problems.two_blobs(B_TRAIN + B_TEST, B_DIM, rng, 3.0, 0.1)
        x, n = np.hstack([x, np.ones((len(x), 1), x.dtype)]), B_TRAIN  # a bias column
        for k, v in (("x", x[:n]), ("y", y[:n]), ("x_test", x[n:]), ("y_test", y[n:])):
            out[k].append(v)
        out["theta0"].append(rng.standard_normal(B_DIM + 1).astype(np.float32))
        theta = problems.logistic_minimum(*(v[:n].astype(np.float64) for v in (x, y)), 1e-3)[0]
        out["logistic"].append(float(zero_one_error(theta, x[:n], y[:n])))
    return {k: np.stack(v) for k, v in out.items()}


def b_jax(data, grid, evals, seeds, quick) -> dict:
    """Per method: train-error curves ``(configs, seeds, steps + 1)``, final test errors
    ``(configs, seeds)`` and the configs."""
    import jax
    import optax

    import jax_opt

    jnp = jax.numpy

    def mgs(cfg, key, x, y, x_test, y_test, theta0):
        tx = jax_opt.mgs(num_samples=B_K, **mgs_args(cfg))

        def error(t):
            return zero_one_error(t, x, y)

        def body(c, _):
            step, state = tx.update(jnp.zeros_like(c[0]), c[1], c[0], value_fn=error)
            return (c[0] + step, state), error(c[0])

        init = (theta0, tx.init(theta0)._replace(key=key))
        (theta, _), errors = jax.lax.scan(body, init, None, length=evals // (B_K + 1))
        return jnp.append(errors, error(theta)), zero_one_error(theta, x_test, y_test)

    def openes(cfg, key, x, y, x_test, y_test, theta0):
        from evosax.algorithms import Open_ES

        std = optax.constant_schedule(cfg[0])
        es = Open_ES(B_POP, theta0, optimizer=optax.sgd(cfg[1]), std_schedule=std)
        params, (k0, key) = es.default_params, jax.random.split(key)

        def body(state, k):
            ask, tell = jax.random.split(k)
            population, new = es.ask(ask, state, params)
            errors = jax.vmap(lambda t: zero_one_error(t, x, y))(population)
            new = es.tell(tell, population, errors, new, params)[0]
            return new, zero_one_error(state.mean, x, y)

        keys = jax.random.split(key, evals // B_POP)
        state, errors = jax.lax.scan(body, es.init(k0, theta0, params), keys)
        end = state.mean
        return jnp.append(errors, zero_one_error(end, x, y)), zero_one_error(end, x_test, y_test)

    def random_search(cfg, key, x, y, x_test, y_test, theta0):
        def body(c, k):  # keep the best of K perturbations when no worse (ties cross plateaus)
            cand = c[0] + cfg[0] * jax.random.normal(k, (B_RS_K, c[0].shape[0]))
            errors = jax.vmap(lambda t: zero_one_error(t, x, y))(cand)
            take = errors.min() <= c[1]
            theta = jnp.where(take, cand[errors.argmin()], c[0])
            return (theta, jnp.minimum(errors.min(), c[1])), c[1]

        keys = jax.random.split(key, (evals - 1) // B_RS_K)  # one evaluation for the start
        (theta, best), errors = jax.lax.scan(body, (theta0, zero_one_error(theta0, x, y)), keys)
        return jnp.append(errors, best), zero_one_error(theta, x_test, y_test)

    runs = {"mgs": mgs, "random_search": random_search}
    runs |= {"openes": openes} if installed("evosax") else {}
    keys = jnp.stack([jax.random.PRNGKey(1000 + s) for s in seeds])
    per_seed = (keys, *(jnp.asarray(data[k]) for k in ("x", "y", "x_test", "y_test", "theta0")))
    arrays = {k: jnp.asarray(grid[k], jnp.float32) for k in runs}

    def program(arrays, per_seed):  # grid points outside, seeds inside
        inner = {k: jax.vmap(runs[k], (None,) + (0,) * 6) for k in arrays}
        return {k: jax.vmap(inner[k], (0,) + (None,) * 6)(a, *per_seed) for k, a in arrays.items()}

    out = jit_run(program, arrays, per_seed, quick=quick)
    return {k: (np.asarray(c), np.asarray(t), grid[k]) for k, (c, t) in out.items()}


def b_torch(data, cfg, evals) -> np.ndarray:
    """Black-box MGS in torch with the chosen setting, every seed: train-error curves."""
    import torch

    import torch_opt

    curves = []
    for i in range(len(data["x"])):
        x, y = torch.as_tensor(data["x"][i]), torch.as_tensor(data["y"][i])
        theta = torch.tensor(data["theta0"][i], requires_grad=True)
        opt = torch_opt.MGS([theta], num_samples=B_K, **mgs_args(cfg), seed=i)
        population = lambda s, x=x, y=y: zero_one_error(s[0], x, y)  # noqa: E731
        c = [float(opt.step(population=population)) for _ in range(evals // (B_K + 1))]
        curves.append(c + [float(zero_one_error(theta.detach(), x, y))])
    return np.array(curves)


def c_torch(sizes, batch, repeats, device) -> dict:
    """Seconds per step of each torch path (medians, interleaved) and the first compiled call."""
    import torch
    from torch import nn

    import torch_opt

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.ReLU(), nn.Linear(sizes[1], sizes[2]))
    model.to(device)
    x = torch.randn(batch, sizes[0], device=device)
    y = torch.randint(0, sizes[2], (batch,), device=device)
    ce = nn.functional.cross_entropy
    ce(model(x), y).backward()  # a surrogate in .grad, kept for every step
    opt = torch_opt.MGS(model.parameters(), num_samples=C_K, lr=0.0, seed=0)  # lr 0: same model

    def loss(forward, x, y):
        return ce(forward(x), y)

    eager = torch_opt.functional_population(model, loss)
    compiled = torch_opt.functional_population(model, loss, compile=True)
    fns = {
        "loop": lambda: opt.step(lambda: ce(model(x), y)),
        "eager": lambda: opt.step(population=lambda s: eager(s, x, y)),
        "compiled": lambda: opt.step(population=lambda s: compiled(s, x, y)),
    }
    start = time.perf_counter()
    fns["compiled"]()  # the first call compiles
    compile_s = time.perf_counter() - start
    return interleaved_medians(fns, repeats, timer=torch_timer(device)) | {"compile_s": compile_s}


def run(ctx: Context) -> StudyResult:
    seeds, steps, evals = ctx.seed_list, ctx.sized(10_000, 300), ctx.sized(4000, 500)
    a_grid, b_grid = ctx.sized(A_GRID, A_QUICK), ctx.sized(B_GRID, B_QUICK)
    q, data, keep = quadratic(), b_data(seeds), log_steps(steps)
    a_recs, b_recs, c_recs = [], [], []

    def rec(rows, key, fw, setting):
        return {"method": key, "label": rows[key][0], "framework": fw, "setting": [*setting]}

    for key, (g, cfgs) in a_jax(q, a_grid, steps, seeds, ctx.quick).items():
        i = best_of(g[..., -1])
        gaps = {"final_gap": g[i, :, -1].tolist(), "tenth_gap": g[i, :, steps // 10].tolist()}
        gaps |= {"curve_step": keep.tolist(), "curve_gap": rounded(geo_mean(g[i][:, keep]))}
        a_recs.append(rec(A_ROWS, key, "jax", cfgs[i]) | gaps)
    for key, (c, test, cfgs) in b_jax(data, b_grid, evals, seeds, ctx.quick).items():
        i = best_of(c[..., -1] + 1e-6)  # errors can be exactly 0
        errors = {"train_error": c[i, :, -1].tolist(), "test_error": test[i].tolist()}
        b_recs.append(rec(B_ROWS, key, "jax", cfgs[i]) | errors | {"curve": rounded(c[i].mean(0))})
    with torch_threads(1):  # small tensors: a second thread only adds waiting
        c = b_torch(data, b_recs[0]["setting"], evals)
        errors = {"test_error": None, "train_error": c[:, -1].tolist(), "curve": rounded(c.mean(0))}
        b_recs.append(rec(B_ROWS, "mgs", "torch", b_recs[0]["setting"]) | errors)
        for model, (sizes, batch) in list(C_MODELS.items())[: ctx.sized(2, 1)]:
            t = c_torch(sizes, batch, ctx.sized(30, 5), ctx.device)
            mlp = {"model": model, "mlp": "-".join(map(str, sizes)), "batch": batch}
            for k, path in C_PATHS.items():
                row = mlp | {"path": path, "ms": 1e3 * t[k], "candidates_per_s": C_K / t[k]}
                first = t["compile_s"] if k == "compiled" else None
                c_recs.append(row | {"vs_loop": t["loop"] / t[k], "first_call_s": first})
    a = {r["method"]: geo_mean(r["final_gap"]) for r in a_recs}
    b = {r["method"]: np.mean(r["train_error"]) for r in b_recs[::-1]}
    c = {r["path"]: r["vs_loop"] for r in c_recs if r["model"] == "small"}
    ges = f" (GuidedES {a['guided_es']:.1e})" if "guided_es" in a else ""
    others = " and ".join(f"{B_ROWS[k][0]} {v:.3f}" for k, v in b.items() if k != "mgs")
    verdict = (
        f"Guided MGS reaches f - f* = {a['mgs_guided']:.1e} on the biased quadratic where "
        f"SGD stalls at {a['sgd']:.1e}{ges}; on the 0-1 error it ends at {b['mgs']:.3f} "
        f"against {others}; a compiled population steps {c[C_PATHS['compiled']]:.2f}x as "
        f"fast as the looped closure ({c[C_PATHS['eager']]:.2f}x eager; small MLP)."
    )
    first = {"method": "label", "framework": "framework"}
    first["setting"] = lambda r: ", ".join(f"{v:g}" for v in r["setting"])
    a_columns = first | {"f - f* at 1/10 of the run": lambda r: geo_mean(r["tenth_gap"]).item()}
    a_columns["f - f* at the end"] = lambda r: geo_mean(r["final_gap"]).item()
    b_columns = first | {"train 0-1 error": lambda r: pm(r["train_error"])}
    b_columns["test 0-1 error"] = lambda r: pm(r["test_error"]) if r["test_error"] else None
    c_columns = {"path": "path", "MLP": "mlp", "batch": "batch", "ms / step": "ms:.3f"}
    c_columns |= {"candidates / s": "candidates_per_s:,.0f", "x looped": "vs_loop:.2f"}
    c_columns["first call (compiles), s"] = "first_call_s:.1f"
    logistic = f"logistic regression: {pm(data['logistic'])}"
    tables = [
        table(a_recs, a_columns, f"(a) Biased quadratic, {steps} iterations, {len(seeds)} seed(s)"),
        table(b_recs, b_columns, f"(b) 0-1 error after {evals} loss evaluations; {logistic}"),
        table(c_recs, c_columns, f"(c) One MGS step, K = {C_K}, one thread, torch on {ctx.device}"),
    ]

    def evaluations(r, rows, iterations):
        return np.maximum(1, np.multiply(iterations, rows[r["method"]][1]))

    a_curves = [
        curve(r["label"], evaluations(r, A_ROWS, r["curve_step"]), r["curve_gap"], "-", i)
        for i, r in enumerate(a_recs)
    ]
    b_curves = [
        record_curve(r, evaluations(r, B_ROWS, np.arange(len(r["curve"]))), r["curve"], B_ROWS)
        for r in b_recs
    ]
    c_bars = [
        curve(f"{r['path'][:40]} ({r['model']})", [r["candidates_per_s"]], [0], color=i)
        for i, r in enumerate(c_recs)
    ]
    logistic = [(float(np.mean(data["logistic"])), "logistic regression")]
    a_axes = {"xlabel": "loss + gradient evaluations", "ylabel": "f - f*", "yscale": "log"}
    b_axes = {"xlabel": "loss evaluations", "ylabel": "train 0-1 error (mean)", "hlines": logistic}
    panels = [
        panel(a_curves, "(a) biased quadratic", xscale="log", **a_axes),
        panel(b_curves, "(b) 0-1 error of a linear classifier", xscale="log", **b_axes),
        panel(c_bars, "(c) candidates per second", xlabel="candidates / s", kind="barh"),
    ]
    records = {"quadratic": a_recs, "zero_one": b_recs, "throughput": c_recs}
    records["logistic_train_error"] = data["logistic"].tolist()
    settings = {"seeds": seeds, "torch_threads": 1, "mgs_setting": "noise, lr, temperature"}
    settings["quadratic"] = {"m": A_M, "n": A_N, "K": A_K, "iterations": steps, "grid": a_grid}
    settings["quadratic"]["guided_es_std"] = GES_STD
    settings["zero_one"] = {"dim": B_DIM, "train": B_TRAIN, "test": B_TEST, "evaluations": evals}
    settings["zero_one"]["grid"] = b_grid
    settings["throughput"] = {"K": C_K, "models": C_MODELS}
    return StudyResult(verdict, records, tables, [figure("sampling", panels)], settings)
