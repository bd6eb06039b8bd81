"""Study ``convergence``: how do our optimizers compare on classic toys?

Four float64 toys (each seed draws a new start, and new data where there are data): 2-D and
10-D Rosenbrock from U[-2, 2]^d; a 10-D quadratic with Hessian eigenvalues log-spaced from 1 to
1e3 in a random rotation; L2-regularized logistic regression on 500 synthetic points (minimum by
Newton's method). RMSpropODE element-wise and global, against torch.optim.RMSprop / optax.rmsprop;
Amos (one v, b per tensor, eta 0.5, the configuration every peer can express, and element-wise),
against pytorch_optimizer.Amos and the reference jestimator amos; Adam as the common baseline.
Every optimizer runs a small lr grid (shared within a family); per toy and optimizer the grid
point that settles below the target gap f - f* on the most seeds, then in the fewest steps,
then with the lowest final gap, is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks import problems
from benchmarks._common import (
    Context,
    StudyResult,
    frameworks,
    geo_mean,
    installed,
    jax_x64,
    jit_run,
    log_steps,
    torch_threads,
)
from benchmarks._report import figure, panel, record_curve, rounded, table
from benchmarks.peers import reference_amos

NAME = "convergence"
QUESTION = "How do our optimizers compare on classic toys?"

GRIDS = {"rmsprop": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1], "adam": [3e-3, 1e-2, 3e-2, 1e-1, 3e-1],
         "amos": [0.01, 0.03, 0.1, 0.3, 1.0]}  # per family; for Amos the global lr xi # fmt: skip
QUICK_GRIDS = {"rmsprop": [3e-3, 1e-2], "adam": [1e-2, 1e-1], "amos": [0.1, 0.3]}
ALPHA, EPS, AMOS_ETA = 0.99, 1e-8, 0.5  # RMSprop decay and eps; Amos eta (pytorch_optimizer's)
N_POINTS, N_FEATURES, L2 = 500, 20, 1e-3
METHODS = {  # key: (family, torch label, JAX label, torch layout)
    "rmsprop": ("rmsprop", "torch.optim.RMSprop", "optax.rmsprop", "stacked"),
    "rmsprop_ode": ("rmsprop", "RMSpropODE", "rmsprop_ode", "stacked"),
    "rmsprop_ode_global": ("rmsprop", "RMSpropODE global", "rmsprop_ode global", "group"),
    "adam": ("adam", "torch.optim.Adam", "optax.adam", "stacked"),
    "amos": ("amos", "Amos, shape ()", "amos, shape ()", "tensor"),
    "amos_full": ("amos", "Amos, element-wise", "amos, element-wise", "stacked"),
    "amos_port": ("amos", "pytorch_optimizer.Amos", None, "tensor"),
    "amos_ref": ("amos", None, "jestimator amos (reference)", None),
}  # layouts: one (seeds, d) tensor per lr (element-wise state), a tensor per seed, or a group


def label(key: str, fw: str) -> str | None:
    return METHODS[key][1 if fw == "torch" else 2]


@dataclass(frozen=True)
class Toy:
    name: str
    target: float  # on the gap f - f*
    index: int  # mixed into every seed's RNG

    def instance(self, seed: int):
        """``(theta0, data, f*)`` of one seed."""
        rng = np.random.default_rng([seed, self.index])
        if self.name.startswith("rosenbrock"):
            return rng.uniform(-2.0, 2.0, int(self.name[10:-1])), (), 0.0
        if self.name == "quadratic10d":
            a = problems.rotated_quadratic_matrix(10, 1e3, rng)
            return rng.standard_normal(10), (a, rng.standard_normal(10)), 0.0
        x, y = problems.logistic_data(N_POINTS, N_FEATURES, rng)
        return np.zeros(x.shape[1]), (x, y), problems.logistic_minimum(x, y, L2)[1]

    def loss(self, theta, data, softplus):
        if self.name.startswith("rosenbrock"):
            return problems.rosenbrock(theta)
        if self.name == "quadratic10d":
            return problems.quadratic_loss(theta, *data)
        return problems.logistic_loss(theta, *data, L2, softplus)


TOYS = [Toy("rosenbrock2d", 1e-3, 0), Toy("rosenbrock10d", 1e-2, 1), Toy("quadratic10d", 1e-3, 2),
        Toy("logistic", 1e-5, 3)]  # fmt: skip


def torch_runs(keys, toy, insts, grids, steps) -> dict:
    """Losses ``(lrs, seeds, steps + 1)`` per method, every lr and seed in one optimizer."""
    import torch

    import torch_opt

    port = __import__("pytorch_optimizer") if installed("pytorch_optimizer") else None
    rms = {"alpha": ALPHA, "eps": EPS}
    make = {
        "rmsprop": lambda g: torch.optim.RMSprop(g, lr=1.0, **rms),
        "rmsprop_ode": lambda g: torch_opt.RMSpropODE(g, lr=1.0, **rms),
        "rmsprop_ode_global": lambda g: torch_opt.RMSpropODE(g, lr=1.0, **rms, scale="global"),
        "adam": lambda g: torch.optim.Adam(g, lr=1.0),
        "amos": lambda g: torch_opt.Amos(g, lr=1.0, eta=AMOS_ETA, shape=lambda n, p: ()),
        "amos_full": lambda g: torch_opt.Amos(g, lr=1.0, eta=AMOS_ETA),
        "amos_port": lambda g: port.Amos(g, lr=1.0),  # eta guessed by rank: 0.5 for 1-D
    }
    start = np.stack([inst[0] for inst in insts])
    data = [np.stack([inst[1][i] for inst in insts]) for i in range(len(insts[0][1]))]
    out = {}
    for key in (k for k in keys if k != "amos_port" or port is not None):
        lrs, layout = grids[METHODS[key][0]], METHODS[key][3]
        if layout == "stacked":  # element-wise state: the seeds' rows are independent
            params = [[torch.tensor(start, requires_grad=True)] for _ in lrs]
        else:
            params = [[torch.tensor(x, requires_grad=True) for x in start] for _ in lrs]
        pairs = list(zip(lrs, params, strict=True))
        if layout == "group":  # the global second moment spans a param group
            groups = [{"params": [p], "lr": lr} for lr, ps in pairs for p in ps]
        else:
            groups = [{"params": ps, "lr": lr} for lr, ps in pairs]
        if METHODS[key][0] == "amos":  # the reference's advice: 1 - beta of the order of xi
            groups = [g | {"beta": 1 - g["lr"]} for g in groups]
        opt, flat = make[key](groups), [p for ps in params for p in ps]
        batch = tuple(torch.as_tensor(np.concatenate([d] * len(lrs))) for d in data)
        losses = torch.empty(steps + 1, len(lrs) * len(insts), dtype=torch.float64)
        for t in range(steps + 1):
            opt.zero_grad(set_to_none=True)
            theta = torch.cat(flat) if layout == "stacked" else torch.stack(flat)
            f = toy.loss(theta, batch, torch.nn.functional.softplus)
            losses[t] = f.detach()
            if t < steps:
                f.sum().backward()
                opt.step()
        out[key] = losses.T.numpy().reshape(len(lrs), len(insts), -1)
    return out


def jax_optimizer(key: str, lr, ref=None, **amos):
    """The JAX method with ``lr`` (traced under vmap) as a constant schedule."""
    import optax

    import jax_opt

    schedule = optax.constant_schedule(lr)
    eta, rms = amos.pop("eta", AMOS_ETA), {"decay": ALPHA, "eps": EPS}
    amos.setdefault("beta", 1 - lr)
    eta_fn, per_tensor = lambda n, s: eta, {"shape_fn": lambda n, s: ()}
    return {
        "rmsprop": lambda: optax.rmsprop(schedule, **rms),
        "rmsprop_ode": lambda: jax_opt.rmsprop_ode(schedule, **rms),
        "rmsprop_ode_global": lambda: jax_opt.rmsprop_ode(schedule, **rms, scale="global"),
        "adam": lambda: optax.adam(schedule),
        "amos": lambda: jax_opt.amos(schedule, eta_fn=eta_fn, **per_tensor, **amos),
        "amos_full": lambda: jax_opt.amos(schedule, eta_fn=eta_fn, **amos),
        "amos_ref": lambda: ref.amos(schedule, eta_fn=eta_fn, **per_tensor, **amos),
    }[key]()


def jax_runs(keys, toy, insts, grids, steps, ref, quick) -> dict:
    """As :func:`torch_runs`, every method of one toy in one compiled program."""
    import jax
    import optax

    def run_one(key, theta0, lr, *data):
        opt = jax_optimizer(key, lr, ref)

        def f(theta):
            return toy.loss(theta, data, jax.nn.softplus)

        def body(carry, _):
            loss, grad = jax.value_and_grad(f)(carry[0])
            updates, state = opt.update(grad, carry[1], carry[0])
            return (optax.apply_updates(carry[0], updates), state), loss

        (theta, _), losses = jax.lax.scan(body, (theta0, opt.init(theta0)), length=steps)
        return jax.numpy.append(losses, f(theta))

    args = {}
    for key in (k for k in keys if k != "amos_ref" or ref is not None):
        lrs = grids[METHODS[key][0]]
        rep = [inst for _ in lrs for inst in insts]
        data = [np.stack([inst[1][i] for inst in rep]) for i in range(len(insts[0][1]))]
        args[key] = (np.stack([i[0] for i in rep]), np.repeat(lrs, len(insts)), *data)

    def program(args):
        return {k: jax.vmap(lambda *a, k=k: run_one(k, *a))(*v) for k, v in args.items()}

    with jax_x64():
        out = jit_run(program, args, quick=quick)
    return {k: np.asarray(v).reshape(-1, len(insts), steps + 1) for k, v in out.items()}


def settled(gap: np.ndarray, target: float) -> int | None:
    """The step from which on the gap stays at or below ``target`` to the end of the run."""
    above = np.flatnonzero(~(gap <= target))
    if not above.size:
        return 0
    return int(above[-1]) + 1 if above[-1] + 1 < gap.size else None


def summarize(losses, f_star, toy, lrs, key, fw, steps) -> dict:
    """The chosen grid point's steps to settle and final gap per seed, and its gap curve."""
    gaps = np.maximum(losses - np.asarray(f_star)[None, :, None], 0.0)
    gaps = np.where(np.isfinite(gaps), gaps, np.inf)
    hit = [[settled(g, toy.target) for g in per_lr] for per_lr in gaps]

    def rank(i):
        s = [x for x in hit[i] if x is not None]
        return (-len(s), np.mean(s) if s else np.inf, np.log10(geo_mean(gaps[i, :, -1])), i)

    best, keep = min(range(len(lrs)), key=rank), log_steps(steps)
    s = [x for x in hit[best] if x is not None]
    text = f"{np.mean(s):.0f}" if len(s) == len(hit[best]) else f"{len(s)}/{len(hit[best])} seeds"
    final = gaps[best, :, -1]
    run = {"problem": toy.name, "method": key, "framework": fw, "label": label(key, fw)}
    run |= {"lr": lrs[best], "steps_to_target": hit[best]}
    run["steps_text"] = f"{text if s else f'> {steps}'} (lr {lrs[best]:g})"
    run["final_gap"] = [float(g) if np.isfinite(g) else None for g in final]
    run["final_gap_geo"] = float(geo_mean(final)) if np.isfinite(final).all() else float("nan")
    run["grid_final_gap"] = rounded(geo_mean(gaps[..., -1], 1))
    return run | {"curve_step": keep.tolist(), "curve_gap": rounded(geo_mean(gaps[best][:, keep]))}


def run(ctx: Context) -> StudyResult:
    steps, grids = ctx.sized(4000, 150), ctx.sized(GRIDS, QUICK_GRIDS)
    insts = {toy.name: [toy.instance(s) for s in ctx.seed_list] for toy in TOYS}
    fws, ref, records = frameworks(), reference_amos(), []
    for fw in fws:
        for toy in TOYS:
            keys = [k for k in METHODS if label(k, fw)]
            if fw == "torch":
                with torch_threads(1):  # tiny tensors: a second thread only adds waiting
                    runs = torch_runs(keys, toy, insts[toy.name], grids, steps)
            else:
                runs = jax_runs(keys, toy, insts[toy.name], grids, steps, ref, ctx.quick)
            f_star = [inst[2] for inst in insts[toy.name]]
            for key in (k for k in keys if k in runs):
                lrs = grids[METHODS[key][0]]
                records.append(summarize(runs[key], f_star, toy, lrs, key, fw, steps))

    def mean_steps(r):
        s = r["steps_to_target"]
        return np.mean(s) if None not in s else np.inf

    firsts = []
    for toy in TOYS:
        best = min((r for r in records if r["problem"] == toy.name), key=mean_steps)
        done = np.isfinite(mean_steps(best))
        text = f"{best['label']} ({mean_steps(best):.0f})" if done else "none"
        firsts.append(f"{toy.name} {text}")
    n = len(ctx.seed_list)
    verdict = f"First to settle below the target gap (mean steps, {n} seed{'s' * (n > 1)}): "
    verdict += ", ".join(firsts) + "."
    rows = {}
    for r in records:
        first = {"optimizer": r["label"], "framework": r["framework"]}
        row = rows.setdefault((r["method"], r["framework"]), first)
        row[r["problem"]], row[r["problem"] + "_gap"] = r["steps_text"], r["final_gap_geo"]
    rows, first = list(rows.values()), {"optimizer": "optimizer", "framework": "framework"}
    steps_columns = first | {f"{t.name}: steps to gap {t.target:g}": t.name for t in TOYS}
    gap_columns = first | {f"{t.name}: final f - f*": f"{t.name}_gap:.1e" for t in TOYS}
    title = "Mean steps to settle below the target gap, at each optimizer's chosen lr"
    tables = [
        table(rows, steps_columns, title),
        table(rows, gap_columns, f"Final gap after {steps} steps (geometric mean over seeds)"),
    ]
    panels = []
    for toy in TOYS:
        mine = [r for r in records if r["problem"] == toy.name]
        curves = [
            record_curve(r, np.maximum(r["curve_step"], 1), r["curve_gap"], METHODS) for r in mine
        ]
        axes = {"ylabel": "f - f* (geometric mean over seeds)", "xscale": "log", "yscale": "log"}
        title = f"{toy.name} (dotted: target)"
        panels.append(panel(curves, title, hlines=[(toy.target, "")], **axes))
    settings = {"steps": steps, "seeds": ctx.seed_list, "dtype": "float64", "lr_grids": grids}
    settings["targets"] = {t.name: t.target for t in TOYS}
    settings |= {"rmsprop": {"alpha": ALPHA}, "eps": EPS}
    settings["amos"] = {"eta": AMOS_ETA, "beta": "1 - xi", "momentum": 0}
    notes = [
        "RMSprop puts eps outside the square root in torch and inside in optax (each "
        "framework's drop-in convention), so its torch and JAX rows can differ."
    ]
    figures = [figure("convergence_curves", panels, "Loss gap at each optimizer's chosen lr")]
    return StudyResult(verdict, {"runs": records}, tables, figures, settings, notes)
