"""Study ``penalty``: what does the explicit gradient-norm penalty cost and do?

(a) The IGR paper's two-parameter model (math.md §5.6), E(a, b) = (y - a b x)^2 / 2, x = 2,
y = 3/2, from (2.8, 3.5), float64: gradient descent with step h follows, to second order, the
flow of E + (h/4) |grad E|^2 (math.md §5.1) rather than that of E. Both flows are integrated with
scipy; the study measures the distance from the iterates to each, for a few h, and where descent
on the explicitly penalized loss (mu = h/4; exact by double backprop and by finite differences)
ends on the line of minima a b = 0.75 (the penalty favours flatter minima, smaller a^2 + b^2).
(b) A tanh MLP (8-64-64-1) on a synthetic regression, full batch, float32: the time of a plain,
an exact-penalty and a finite-difference-penalty step, as ratios in one run, and the top
Hessian eigenvalue after training with and without the penalty.
"""

from __future__ import annotations

import contextlib

import numpy as np
from scipy.integrate import solve_ivp

from benchmarks import problems
from benchmarks._common import (
    Context,
    StudyResult,
    frameworks,
    interleaved_times,
    jax_x64,
    torch_threads,
)
from benchmarks._report import FW_STYLE, curve, figure, panel, record_curve, rounded, table
from benchmarks.problems import IGR_START, igr_model

NAME = "penalty"
QUESTION = "What does the explicit gradient-norm penalty cost and do?"
IGR_T, IGR_LR, DELTA = 5.0, 0.005, 1e-2  # flow time, lr of the penalized runs, FD step
METHODS = ("plain", "exact penalty", "finite-difference penalty")
MLP_SIZES, MLP_SAMPLES, MLP_LR = [8, 64, 64, 1], 512, 0.2


def igr_mu(lr: float) -> float:
    from twinopt import igr_coefficient

    return float(igr_coefficient(lr))


def igr_flow(mu: float, lr: float, steps: int) -> np.ndarray:
    """The gradient flow of E + mu |grad E|^2 at the times n lr, n = 0..steps."""

    def rhs(_t, theta):
        return -(problems.igr_model_grad(theta) + mu * problems.igr_model_penalty_grad(theta))

    t = lr * np.arange(steps + 1)
    sol = solve_ivp(rhs, (0, t[-1]), IGR_START, "DOP853", t, rtol=1e-11, atol=1e-13)
    return sol.y.T


def stepper(fw: str, method: str, loss, params: list, lr: float, mu: float):
    """``(step, current)``: ``step()`` makes one gradient-descent step on ``loss(params)``
    (plain, with the exact or the finite-difference penalty) and returns the loss before it;
    ``current()`` the parameters as NumPy arrays."""
    if fw == "torch":
        import torch

        import torch_opt

        ps = [torch.tensor(p, requires_grad=True) for p in params]
        sgd = torch.optim.SGD(ps, lr=lr)
        fd = torch_opt.FiniteDifferencePenalty(sgd, mu, delta=DELTA)

        def closure():
            fd.zero_grad()
            value = loss(ps)
            value.backward()
            return value

        def step():
            if method == METHODS[2]:
                return fd.step(closure).item()
            sgd.zero_grad()
            value = loss(ps)
            exact = method == METHODS[1]
            (value + mu * torch_opt.gradient_norm_penalty(value, ps) if exact else value).backward()
            sgd.step()
            return value.item()

        return step, lambda: [p.detach().numpy().copy() for p in ps]
    import jax
    import optax

    import jax_opt

    opt, both = optax.sgd(lr), lambda p: (loss(p),) * 2  # the aux value: the loss itself
    if method == METHODS[2]:
        opt = optax.chain(jax_opt.finite_difference_penalty(mu, delta=DELTA), opt)
    if method == METHODS[1]:
        both = jax_opt.penalized(both, mu, has_aux=True)
    grad = jax.value_and_grad(both, has_aux=True)

    @jax.jit
    def jstep(ps, state):
        (_, value), g = grad(ps)
        updates, state = opt.update(g, state, ps, grad_fn=jax.grad(loss))
        return optax.apply_updates(ps, updates), state, value

    box = {"ps": [jax.numpy.asarray(p) for p in params]}
    box["state"] = opt.init(box["ps"])

    def step():
        box["ps"], box["state"], value = jstep(box["ps"], box["state"])
        return float(value)

    return step, lambda: [np.asarray(p) for p in box["ps"]]


def igr_path(fw, method, lr, steps) -> np.ndarray:
    """The iterates of gradient descent on the IGR model (float64)."""
    with jax_x64() if fw == "jax" else contextlib.nullcontext():
        step, now = stepper(fw, method, lambda ps: igr_model(ps[0]), [IGR_START], lr, igr_mu(lr))
        return np.array([IGR_START] + [(step(), now()[0])[1] for _ in range(steps)])


def distance(path, flow) -> float:
    return float(np.linalg.norm(path - flow, axis=1).max())


def end_point(path) -> dict:
    a, b = (float(v) for v in path[-1])
    return {"a": a, "b": b, "a2_b2": a * a + b * b}


def igr_part(ctx: Context, fws) -> tuple[list, list]:
    sweep, t_end = [], ctx.sized(IGR_T, IGR_T / 2)
    for lr in ctx.sized([0.001, 0.002, 0.005, 0.01], [0.005, 0.01]):
        steps = round(t_end / lr)
        plain, modified = igr_flow(0.0, lr, steps), igr_flow(igr_mu(lr), lr, steps)
        for fw in fws:
            path = igr_path(fw, "plain", lr, steps)
            to = {"to_plain": distance(path, plain), "to_modified": distance(path, modified)}
            sweep.append({"framework": fw, "lr": lr} | to)
    steps = round(t_end / IGR_LR)
    paths = {("plain flow", "scipy"): igr_flow(0.0, IGR_LR, steps)}
    paths["modified (h/4) flow", "scipy"] = igr_flow(igr_mu(IGR_LR), IGR_LR, steps)
    paths |= {(f"GD, {m}", fw): igr_path(fw, m, IGR_LR, steps) for fw in fws for m in METHODS}
    runs = [{"name": n, "framework": fw, **end_point(p), "path": p} for (n, fw), p in paths.items()]
    return sweep, runs


def mlp(fw: str, seed: int):
    """``(loss, params, sharpness)`` of the regression MLP in ``fw``; ``sharpness(params,
    iterations)``: the top Hessian eigenvalue by power iteration on Hessian-vector products."""
    rng = np.random.default_rng(seed)
    x, y = problems.smooth_regression(MLP_SAMPLES, MLP_SIZES[0], rng)
    params = problems.mlp_params(MLP_SIZES, rng)
    v0 = np.random.default_rng(1).standard_normal(sum(p.size for p in params)).astype(np.float32)
    if fw == "torch":
        import torch

        x, y = torch.from_numpy(x), torch.from_numpy(y)

        def loss(ps):
            return 0.5 * (problems.mlp_apply(ps, x, torch.tanh)[:, 0] - y).square().mean()

        def hvp(ps, v):
            qs = [torch.tensor(p, requires_grad=True) for p in ps]
            grads = torch.autograd.grad(loss(qs), qs, create_graph=True)
            vs = torch.split(torch.as_tensor(v), [q.numel() for q in qs])
            hv = torch.autograd.grad(grads, qs, [a.view_as(q) for a, q in zip(vs, qs, strict=True)])
            return torch.cat([h.reshape(-1) for h in hv]).numpy()
    else:
        import jax
        from jax.flatten_util import ravel_pytree

        def loss(ps):
            return 0.5 * jax.numpy.mean((problems.mlp_apply(ps, x, jax.numpy.tanh)[:, 0] - y) ** 2)

        @jax.jit
        def hvp(ps, v):
            tangent = ravel_pytree(ps)[1](v)
            return ravel_pytree(jax.jvp(jax.grad(loss), (ps,), (tangent,))[1])[0]

    def sharpness(ps, iterations: int) -> float:
        value, v = 0.0, v0 / np.linalg.norm(v0)
        for _ in range(iterations):
            w = np.asarray(hvp(ps, v))
            value, v = float(np.dot(v, w)), w / np.linalg.norm(w)
        return value

    return loss, params, sharpness


def mlp_part(ctx: Context, fws) -> list[dict]:
    """Per framework and method: ms per step and its ratio to the plain step (one interleaved
    run), the train loss and top Hessian eigenvalue after training (mean over seeds)."""
    mu, out = igr_mu(MLP_LR), []
    train_steps, power_its = ctx.sized((2000, 100), (100, 20))
    for fw in fws:
        loss, params, _ = mlp(fw, 0)
        steps = {m: stepper(fw, m, loss, params, MLP_LR, mu)[0] for m in METHODS}
        times = interleaved_times(steps, ctx.sized(200, 20), warmup=5)
        for m in METHODS:
            trained = []
            for seed in ctx.seed_list:
                loss, params, sharpness = mlp(fw, seed)
                step, now = stepper(fw, m, loss, params, MLP_LR, mu)
                losses = [step() for _ in range(train_steps)]
                trained.append((step(), sharpness(now(), power_its), losses[::10]))
            ms = 1e3 * float(np.median(times[m]))
            ratio = float(np.median(np.divide(times[m], times["plain"])))
            row = {"framework": fw, "method": m, "ms": ms, "ratio": ratio}
            final, sharp = (float(np.mean([t[i] for t in trained])) for i in (0, 1))
            out.append(row | {"loss": final, "sharpness": sharp, "losses": rounded(trained[0][2])})
    return out


def run(ctx: Context) -> StudyResult:
    fws = frameworks()
    with torch_threads(1):  # tiny tensors: a second thread only adds waiting
        sweep, runs = igr_part(ctx, fws)
        mlp = mlp_part(ctx, fws)
    fw, get = fws[0], {(r["framework"], r["method"]): r for r in mlp}
    for r in sweep:
        r["closer"] = r["to_plain"] / r["to_modified"]
    closer = next(r["closer"] for r in sweep if r["lr"] == IGR_LR)

    def ratios(m):
        return " / ".join(f"{get[(f, m)]['ratio']:.1f}x" for f in fws)

    verdict = (
        f"An exact-penalty step costs {ratios(METHODS[1])} a plain step and a finite-difference "
        f"one {ratios(METHODS[2])} ({', '.join(fws)}); GD at h = {IGR_LR} stays {closer:.1f}x "
        f"closer to the flow of E + (h/4)|grad E|^2 than to E's, and the penalty lowers the MLP's "
        f"top Hessian eigenvalue from {get[(fw, 'plain')]['sharpness']:.1f} to "
        f"{get[(fw, 'exact penalty')]['sharpness']:.1f}."
    )
    sweep_columns = {"h": "lr", "framework": "framework",
                     "max distance of GD to the flow of E": "to_plain:.3g",
                     "to the flow of E + (h/4)|grad E|^2": "to_modified:.3g",
                     "x closer to the latter": "closer:.1f"}  # fmt: skip
    end_columns = {"run": "name", "framework": "framework", "a": "a:.4f", "b": "b:.4f"}
    end_columns["a^2 + b^2 (flatter: smaller)"] = "a2_b2:.3f"
    mlp_columns = {"method": "method", "framework": "framework", "ms / step": "ms:.3g",
                   "x plain step": "ratio:.2f", "train loss": "loss:.3g",
                   "top Hessian eigenvalue": "sharpness:.3g"}  # fmt: skip
    mlp_title = f"(b) MLP: step cost (one run) and the state after training (2/lr = {2 / MLP_LR:g})"
    tables = [
        table(sweep, sweep_columns, "(a) GD against the two flows"),
        table(runs, end_columns, f"(a) End points on the line of minima, h = {IGR_LR}, mu = h/4"),
        table(mlp, mlp_columns, mlp_title),
    ]
    a, scipy = np.linspace(0.2, 3.4, 200), [r for r in runs if r["framework"] == "scipy"]
    traj = [curve(r["name"], *r["path"].T, "k-" if "plain" in r["name"] else "k--") for r in scipy]
    traj += [
        curve(f"{r['name']} ({fw})", *r["path"].T, ".", METHODS.index(r["name"][4:]))
        for r in runs
        if r["framework"] == fw
    ]
    traj.append(curve("minima a b = 0.75", a, 0.75 / a, "-", "C3", lw=0.8))
    dist = []
    for f in fws:
        lrs = [r["lr"] for r in sweep if r["framework"] == f]
        for i, key in enumerate(("to_plain", "to_modified")):
            values = [r[key] for r in sweep if r["framework"] == f]
            dist.append(curve(f"GD {key[3:]} ({f})", lrs, values, "o" + FW_STYLE[f], i))
    losses = [record_curve(r, np.arange(len(r["losses"])) * 10, r["losses"], METHODS) for r in mlp]
    for r in runs:
        r["path"] = rounded(r["path"][:: max(1, len(r["path"]) // 200)])
    log = {"xscale": "log", "yscale": "log"}
    igr = [
        panel(traj, f"IGR model, h = {IGR_LR} ({fw})", xlabel="a", ylabel="b", ylim=(0, 4)),
        panel(dist, "GD against the flows", xlabel="h", ylabel="max distance", **log),
    ]
    title = f"MLP, full-batch GD, lr {MLP_LR}"
    figures = [
        figure("penalty_igr", igr),
        figure("penalty_mlp", [panel(losses, title, ylabel="train loss", yscale="log")]),
    ]
    mlp_settings = {"sizes": MLP_SIZES, "samples": MLP_SAMPLES, "lr": MLP_LR, "mu": igr_mu(MLP_LR)}
    settings = {"igr_start": list(IGR_START), "igr_T": IGR_T, "igr_lr": IGR_LR, "delta": DELTA}
    settings |= {"mlp": mlp_settings, "torch_threads": 1}
    records = {"igr_sweep": sweep, "igr_runs": runs, "mlp": mlp}
    return StudyResult(verdict, records, tables, figures, settings)
