"""Study ``convergence``: how do our optimizers compare on classic toys?

Four deterministic toys in float64 (every seed draws a new start, and new data where there are
data): 2-D and 10-D Rosenbrock from a start uniform in ``[-2, 2]^d``; a 10-D quadratic whose
Hessian has eigenvalues log-spaced from 1 to 1e3 (condition number 1e3) in a random rotation,
around a random centre; and L2-regularized logistic regression (``l2 = 1e-3``) on 500
NumPy-generated points with 20 features of scales 0.1 to 10 plus a bias, from zero, whose
minimum comes from Newton's method. Optimizers, each in every installed framework:
``RMSpropODE`` / ``rmsprop_ode`` element-wise (ours; equal to its peer by design) and global
(Su's one second moment per parameter group / pytree), against ``torch.optim.RMSprop`` and
``optax.rmsprop``; ``Amos`` / ``amos`` (ours) against ``pytorch_optimizer.Amos`` and the
reference ``jestimator`` amos; Adam (``torch.optim.Adam``, ``optax.adam``) as the common
baseline. Every optimizer runs a small learning-rate grid (the same grid for the twins and
peers of one family) for a fixed number of steps; per problem and optimizer we keep the grid
point that settles below the target gap ``f - f*`` (stays there to the end of the run) on the
most seeds, then in the fewest steps, then with the lowest final gap, and report its steps to
settle and its final gap over the seeds. Amos runs in the configuration that every
implementation can express: one ``v``, ``b`` per tensor (``shape=()``) and ``eta = 0.5`` (what
``pytorch_optimizer`` guesses for a 1-D tensor). We also measure how closely our Amos (torch
and JAX) follows the reference on every run whose outcome is not decided by rounding, and
rerun the reference's own parabola and Rosenbrock tests.

Run alone: ``python -m benchmarks --only convergence``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

from benchmarks._common import (
    Context,
    StudyResult,
    frameworks,
    markdown_table,
    progress,
    pyplot,
    save_figure,
)
from benchmarks.peers import reference_amos
from benchmarks.problems import (
    logistic_data,
    logistic_loss,
    logistic_minimum,
    quadratic_loss,
    rosenbrock,
    rotated_quadratic_matrix,
)

NAME = "convergence"
QUESTION = "How do our optimizers compare on classic toys?"

GRIDS = {  # the lr grid of each family (for Amos: the global learning rate xi)
    "rmsprop": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
    "adam": [3e-3, 1e-2, 3e-2, 1e-1, 3e-1],
    "amos": [0.01, 0.03, 0.1, 0.3, 1.0],
}
QUICK_GRIDS = {"rmsprop": [3e-3, 1e-2], "adam": [1e-2, 1e-1], "amos": [0.1, 0.3]}
ALPHA, EPS = 0.99, 1e-8  # RMSprop decay (torch's default) and epsilon, for every RMSprop
AMOS_ETA = 0.5  # pytorch_optimizer's guess for a 1-D tensor


def amos_beta(xi):
    """The reference's advice: ``1 - beta`` of the order of the global lr ``xi``."""
    return 1 - xi


N_POINTS, N_FEATURES, L2 = 500, 20, 1e-3  # logistic regression
FLOOR = 1e-18  # gaps are clipped here for logs and plots
KEEP = 160  # log-spaced points per curve kept in the data
PERTURB = 1e-15  # relative move of every iterate (a few ulps) that probes rounding sensitivity
SENSITIVE = 1e-9  # a run is rounding-decided when those moves change its end by more


def nudge(jnp, theta, on):
    """``theta`` moved by ``PERTURB (1 + |theta|)`` along alternating signs where ``on``: the
    size of the rounding differences between two implementations of one step."""
    signs = (-1.0) ** jnp.arange(theta.shape[-1])
    return jnp.where(on, theta + PERTURB * (1 + jnp.abs(theta)) * signs, theta)


@dataclass(frozen=True)
class Method:
    key: str
    family: str
    ours: bool
    labels: dict  # framework -> label
    # torch: one (seeds, d) tensor per lr ("stacked", for element-wise state), one tensor per
    # seed and a param group per lr ("tensor", for per-tensor state), or a param group per
    # (lr, seed) ("group", for per-group state)
    layout: str = "tensor"


METHODS = [
    Method(
        "rmsprop",
        "rmsprop",
        False,
        {"torch": "torch.optim.RMSprop", "jax": "optax.rmsprop"},
        layout="stacked",
    ),
    Method(
        "rmsprop_ode",
        "rmsprop",
        True,
        {"torch": "RMSpropODE (ours)", "jax": "rmsprop_ode (ours)"},
        layout="stacked",
    ),
    Method(
        "rmsprop_ode_global",
        "rmsprop",
        True,
        {"torch": "RMSpropODE global (ours)", "jax": "rmsprop_ode global (ours)"},
        layout="group",  # the global second moment spans a param group
    ),
    Method(
        "adam",
        "adam",
        False,
        {"torch": "torch.optim.Adam", "jax": "optax.adam"},
        layout="stacked",
    ),
    Method("amos", "amos", True, {"torch": "Amos (ours)", "jax": "amos (ours)"}),
    Method(
        "amos_full",
        "amos",
        True,
        {"torch": "Amos, element-wise v (ours)", "jax": "amos, element-wise v (ours)"},
        layout="stacked",
    ),
    Method("amos_port", "amos", False, {"torch": "pytorch_optimizer.Amos"}),
    Method("amos_ref", "amos", False, {"jax": "jestimator amos (reference)"}),
]
METHOD = {m.key: m for m in METHODS}
COLORS = {m.key: f"C{i}" for i, m in enumerate(METHODS)}


# ---------------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True)
class Toy:
    name: str
    description: str
    target: float  # on the gap f - f*
    index: int  # mixed into every seed's RNG

    def instance(self, seed: int) -> tuple[np.ndarray, tuple, float]:
        """``(theta0, data, f*)`` of one seed."""
        rng = np.random.default_rng([seed, self.index])
        if self.name.startswith("rosenbrock"):
            return rng.uniform(-2.0, 2.0, int(self.name[10:-1])), (), 0.0
        if self.name == "quadratic10d":
            a = rotated_quadratic_matrix(10, 1e3, rng)
            return rng.standard_normal(10), (a, rng.standard_normal(10)), 0.0
        x, y = logistic_data(N_POINTS, N_FEATURES, rng)
        return np.zeros(x.shape[1]), (x, y), logistic_minimum(x, y, L2)[1]

    def loss(self, theta, data, softplus):
        if self.name.startswith("rosenbrock"):
            return rosenbrock(theta)
        if self.name == "quadratic10d":
            return quadratic_loss(theta, *data)
        return logistic_loss(theta, *data, L2, softplus)


TOYS = [
    Toy("rosenbrock2d", "2-D Rosenbrock, start U[-2, 2]^2", 1e-3, 0),
    Toy("rosenbrock10d", "10-D Rosenbrock, start U[-2, 2]^10", 1e-2, 1),
    Toy(
        "quadratic10d",
        "10-D quadratic, eigenvalues 1..1e3 (log-spaced) in a random rotation, random centre "
        "and start N(0, I)",
        1e-3,
        2,
    ),
    Toy(
        "logistic",
        f"logistic regression, {N_POINTS} points, {N_FEATURES} features (scales 0.1..10) + "
        f"bias, l2 = {L2}, start 0",
        1e-5,
        3,
    ),
]


# ---------------------------------------------------------------------------------------------
# The two sides: each runs one method on one toy for a grid of lrs x seeds at once


class TorchSide:
    name = "torch"

    def __init__(self):
        import torch

        import torch_opt

        self.torch, self.mod = torch, torch_opt
        self.port = None
        if importlib.util.find_spec("pytorch_optimizer") is not None:
            import pytorch_optimizer

            self.port = pytorch_optimizer

    def has(self, key: str) -> bool:
        return "torch" in METHOD[key].labels and (key != "amos_port" or self.port is not None)

    def optimizer(self, key: str, groups: list[dict]):
        torch, mod = self.torch, self.mod
        if key == "rmsprop":
            return torch.optim.RMSprop(groups, lr=1.0, alpha=ALPHA, eps=EPS)
        if key == "rmsprop_ode":
            return mod.RMSpropODE(groups, lr=1.0, alpha=ALPHA, eps=EPS)
        if key == "rmsprop_ode_global":
            return mod.RMSpropODE(groups, lr=1.0, alpha=ALPHA, eps=EPS, scale="global")
        if key == "adam":
            return torch.optim.Adam(groups, lr=1.0)
        if key == "amos":
            return mod.Amos(groups, lr=1.0, eta=AMOS_ETA, shape=lambda name, p: ())
        if key == "amos_full":
            return mod.Amos(groups, lr=1.0, eta=AMOS_ETA)
        if key == "amos_port":
            return self.port.Amos(groups, lr=1.0)  # eta guessed by rank: 0.5 for 1-D
        raise KeyError(key)

    def run(self, key, toy, instances, lrs, steps):
        """Losses ``(len(lrs), seeds, steps + 1)``, final parameters ``(lrs, seeds, d)`` and
        ``None`` (the JAX side's perturbed runs)."""
        torch = self.torch
        n_lr, n_seed = len(lrs), len(instances)
        start = np.stack([inst[0] for inst in instances])
        layout = METHOD[key].layout
        if layout == "stacked":  # element-wise state: the seeds' rows are independent
            params = [[torch.tensor(start, requires_grad=True)] for _ in lrs]
        else:
            params = [[torch.tensor(x, requires_grad=True) for x in start] for _ in lrs]
        if layout == "group":
            groups = [
                {"params": [p], "lr": lr} for lr, ps in zip(lrs, params, strict=True) for p in ps
            ]
        else:
            groups = [{"params": ps, "lr": lr} for lr, ps in zip(lrs, params, strict=True)]
        if METHOD[key].family == "amos":
            groups = [g | {"beta": amos_beta(g["lr"])} for g in groups]
        flat = [p for ps in params for p in ps]

        def theta():
            return torch.cat(flat) if layout == "stacked" else torch.stack(flat)

        data = tuple(
            torch.as_tensor(np.stack([inst[1][i] for _ in lrs for inst in instances]))
            for i in range(len(instances[0][1]))
        )
        opt = self.optimizer(key, groups)
        losses = torch.empty(steps + 1, n_lr * n_seed, dtype=torch.float64)
        softplus = torch.nn.functional.softplus
        for t in range(steps + 1):
            opt.zero_grad(set_to_none=True)
            f = toy.loss(theta(), data, softplus)
            losses[t] = f.detach()
            if t == steps:
                break
            f.sum().backward()
            opt.step()
        final = theta().detach().numpy().reshape(n_lr, n_seed, -1)
        return losses.T.numpy().reshape(n_lr, n_seed, -1), final, None

    def amos_path(self, setting, steps):
        """The reference's own test setting (one float64 vector): the path of iterates."""
        torch = self.torch
        theta = torch.tensor(setting["start"], dtype=torch.float64, requires_grad=True)
        opt = self.mod.Amos(
            [theta],
            lr=setting["lr"],
            eta=setting["eta"],
            shape=lambda name, p: (),
            beta=setting.get("beta", 0.999),  # the reference's default
            momentum=setting.get("momentum", 0.0),
            clip_value=setting.get("clip_value"),
        )
        path = np.empty((steps + 1, len(setting["start"])))
        path[0] = setting["start"]
        for t in range(steps):
            opt.zero_grad(set_to_none=True)
            setting["f"](theta).backward()
            opt.step()
            path[t + 1] = theta.detach().numpy()
        return path


class JaxSide:
    name = "jax"

    def __init__(self):
        import jax
        import optax

        import jax_opt

        self.jax, self.optax, self.mod = jax, optax, jax_opt
        self.ref = reference_amos()

    def has(self, key: str) -> bool:
        return "jax" in METHOD[key].labels and (key != "amos_ref" or self.ref is not None)

    def optimizer(self, key: str, lr, **amos):
        """The method with ``lr`` (a traced value under vmap), given as a constant schedule:
        learning-rate checks of a float argument do not apply to a tracer."""
        optax, mod = self.optax, self.mod

        def schedule(count):
            return lr

        eta = amos.pop("eta", AMOS_ETA)
        amos.setdefault("beta", amos_beta(lr))
        amos_args = {"eta_fn": lambda name, shape: eta, "shape_fn": lambda name, shape: ()}
        if key == "rmsprop":
            return optax.rmsprop(schedule, decay=ALPHA, eps=EPS)
        if key == "rmsprop_ode":
            return mod.rmsprop_ode(schedule, decay=ALPHA, eps=EPS)
        if key == "rmsprop_ode_global":
            return mod.rmsprop_ode(schedule, decay=ALPHA, eps=EPS, scale="global")
        if key == "adam":
            return optax.adam(schedule)
        if key == "amos":
            return mod.amos(schedule, **amos_args, **amos)
        if key == "amos_full":
            return mod.amos(schedule, eta_fn=amos_args["eta_fn"], **amos)
        if key == "amos_ref":
            return self.ref.amos(schedule, **amos_args, **amos)
        raise KeyError(key)

    def run_all(self, keys, toy, instances, grids, steps) -> dict:
        """Every method in ``keys`` on one toy, as the torch side's ``run`` per method, in one
        compiled program (one XLA compile per toy, not per method). Each grid point runs a
        second time with every iterate moved by a few ulps (``nudge``): where the two ends
        differ, the run's outcome is decided by rounding, and no two implementations of the
        algorithm can be expected to agree on it."""
        jax, optax = self.jax, self.optax
        jnp = jax.numpy
        n_seed = len(instances)

        def f(theta, *data):
            return toy.loss(theta, data, jax.nn.softplus)

        def one(key, theta0, lr, moved, *data):
            opt = self.optimizer(key, lr)

            def body(carry, _):
                theta, state = carry
                loss, grad = jax.value_and_grad(f)(theta, *data)
                updates, state = opt.update(grad, state, theta)
                theta = nudge(jnp, optax.apply_updates(theta, updates), moved)
                return (theta, state), loss

            (theta, _), losses = jax.lax.scan(body, (theta0, opt.init(theta0)), length=steps)
            return jnp.append(losses, f(theta, *data)), theta

        def program(theta0, lrs, moved, data):
            return {
                key: jax.vmap(lambda t, lr, m, *d, key=key: one(key, t, lr, m, *d))(
                    theta0[key], lrs[key], moved[key], *data[key]
                )
                for key in keys
            }

        theta0, lrs, moved, data = {}, {}, {}, {}
        for key in keys:
            grid = grids[METHOD[key].family]
            theta0[key] = np.stack([inst[0] for _ in range(2) for _ in grid for inst in instances])
            lrs[key] = np.tile(np.repeat(np.asarray(grid, np.float64), n_seed), 2)
            moved[key] = np.repeat([False, True], len(grid) * n_seed)
            data[key] = [
                np.stack([inst[1][i] for _ in range(2) for _ in grid for inst in instances])
                for i in range(len(instances[0][1]))
            ]
        with jax.enable_x64(True):
            out = jax.jit(program)(theta0, lrs, moved, data)
            out = jax.tree.map(np.asarray, out)
        results = {}
        for key, (losses, final) in out.items():
            n_lr = len(grids[METHOD[key].family])
            g, shape = n_lr * n_seed, (n_lr, n_seed, -1)
            results[key] = (
                losses[:g].reshape(shape),
                final[:g].reshape(shape),
                final[g:].reshape(shape),
            )
        return results

    def amos_paths(self, setting, steps) -> dict:
        """Paths of ours, the reference, and the reference with every iterate moved by a few
        ulps, on one of the reference's tests (one compiled program)."""
        jax, optax = self.jax, self.optax
        hyper = {k: setting[k] for k in ("momentum", "clip_value") if k in setting}
        hyper["beta"] = setting.get("beta", 0.999)  # the reference's default
        runs = {"ours (jax)": ("amos", False)}
        if self.ref is not None:
            runs |= {"reference": ("amos_ref", False), "moved": ("amos_ref", True)}

        def path(key, moved, start):
            opt = self.optimizer(key, setting["lr"], **hyper, eta=setting["eta"])

            def body(carry, _):
                theta, state = carry
                updates, state = opt.update(jax.grad(setting["f"])(theta), state, theta)
                theta = nudge(jax.numpy, optax.apply_updates(theta, updates), moved)
                return (theta, state), theta

            _, out = jax.lax.scan(body, (start, opt.init(start)), length=steps)
            return jax.numpy.concatenate([start[None], out])

        start = np.asarray(setting["start"], np.float64)
        with jax.enable_x64(True):
            out = jax.jit(lambda st: {n: path(*runs[n], st) for n in runs})(start)
            return {name: np.asarray(p) for name, p in out.items()}


# ---------------------------------------------------------------------------------------------
# The reference's own tests (math.md §2.6 (5))


def _parabola(theta):
    return (theta[0] - 1) ** 2 + (theta[1] + 1) ** 2 + (theta[2] - 1) ** 2


def _rosenbrock_ab(theta):
    return (1 - theta[0]) ** 2 + 100 * (theta[1] - theta[0] ** 2) ** 2


REFERENCE_TESTS = {
    "parabola": {
        "f": _parabola,
        "start": [-1.0, 10.0, 1.0],
        "target": [1.0, -1.0, 1.0],
        "lr": 1.0,
        "eta": 1.0,
        "text": "f = |theta - (1, -1, 1)|^2 from (-1, 10, 1), xi 1, eta 1, shape ()",
    },
    "rosenbrock": {
        "f": _rosenbrock_ab,
        "start": [0.0, 0.0],
        "target": [1.0, 1.0],
        "lr": 0.5,
        "eta": 1.0,
        "beta": 0.5,
        "clip_value": 1.0,
        "momentum": 0.9,
        "text": "Rosenbrock from (0, 0), xi 0.5, eta 1, shape (), beta 0.5, clip 1, momentum 0.9",
    },
}
REFERENCE_STEPS, REFERENCE_ATOL = 10_000, 1e-6


def reference_tests(sides, steps: int) -> list[dict]:
    """Each implementation's path on the reference's own tests, its distance to the
    reference's path, and how far the reference's own path moves when every iterate moves by a
    few ulps (the agreement one can expect)."""
    out = []
    for test, setting in REFERENCE_TESTS.items():
        paths = {}
        for side in sides:
            if side.name == "torch":
                paths["ours (torch)"] = side.amos_path(setting, steps)
            else:
                paths |= side.amos_paths(setting, steps)
        moved, ref = paths.pop("moved", None), paths.get("reference")
        for impl, path in paths.items():
            out.append(
                {
                    "test": test,
                    "implementation": impl,
                    "steps": steps,
                    "theta": path[-1].tolist(),
                    "error": float(np.abs(path[-1] - setting["target"]).max()),
                    "max_diff_vs_reference": None
                    if ref is None
                    else float(np.abs(path - ref).max()),
                    "reference_sensitivity": None
                    if moved is None
                    else float(np.abs(moved - ref).max()),
                }
            )
    return out


# ---------------------------------------------------------------------------------------------
# Summaries


def settled(gap: np.ndarray, target: float) -> int | None:
    """The step from which on the gap stays at or below ``target`` to the end of the run."""
    above = np.flatnonzero(~(gap <= target))
    if not above.size:
        return 0
    return int(above[-1]) + 1 if above[-1] + 1 < gap.size else None


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def summarize_grid(losses, f_star, target, lrs) -> list[dict]:
    """Per lr: per-seed steps to target and final gap."""
    out = []
    for i, lr in enumerate(lrs):
        gaps = np.maximum(losses[i] - np.asarray(f_star)[:, None], 0.0)
        gaps = np.where(np.isfinite(gaps), gaps, np.inf)
        out.append(
            {
                "lr": lr,
                "steps": [settled(g, target) for g in gaps],
                "final_gap": [_finite(g[-1]) for g in gaps],
            }
        )
    return out


def choose(grid: list[dict]) -> int:
    """The grid point reaching the target on the most seeds, then in the fewest mean steps,
    then with the lowest mean log final gap (diverged runs count as +inf)."""

    def key(i):
        steps = [s for s in grid[i]["steps"] if s is not None]
        logs = [np.log10(max(g, FLOOR)) if g is not None else np.inf for g in grid[i]["final_gap"]]
        return (-len(steps), np.mean(steps) if steps else np.inf, np.mean(logs), i)

    return min(range(len(grid)), key=key)


def geo_curve(losses, f_star, steps) -> tuple[list[int], list[float]]:
    """The geometric mean over seeds of the gap, at log-spaced steps."""
    keep = np.unique(np.concatenate([[0], np.geomspace(1, steps, KEEP).astype(int)]))
    gaps = np.maximum(losses[:, keep] - np.asarray(f_star)[:, None], FLOOR)
    gaps = np.where(np.isfinite(gaps), gaps, 1e300)
    return keep.tolist(), [float(f"{v:.4g}") for v in 10 ** np.log10(gaps).mean(0)]


def pm(values, digits=0) -> str:
    v = np.asarray(values, np.float64)
    s = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return f"{v.mean():.{digits}f} ± {s:.{digits}f}"


def steps_text(steps: list, n_steps: int) -> str:
    hit = [s for s in steps if s is not None]
    if not hit:
        return f"> {n_steps}"
    text = pm(hit)
    return text if len(hit) == len(steps) else f"{text} ({len(hit)}/{len(steps)} seeds)"


def gap_text(gaps: list) -> str:
    if any(g is None for g in gaps):
        return "diverged" if all(g is None for g in gaps) else "diverged on some seeds"
    g = np.maximum(np.asarray(gaps), FLOOR)
    geo = 10 ** np.log10(g).mean()
    return f"{geo:.1e}" if g.size == 1 else f"{geo:.1e} [{g.min():.0e}, {g.max():.0e}]"


# ---------------------------------------------------------------------------------------------


def run(ctx: Context) -> StudyResult:
    steps = 300 if ctx.quick else 4000
    n_seeds = 1 if ctx.quick else ctx.seeds
    grids = QUICK_GRIDS if ctx.quick else GRIDS
    seeds = list(range(n_seeds))
    instances = {toy.name: [toy.instance(s) for s in seeds] for toy in TOYS}
    sides = {"torch": TorchSide, "jax": JaxSide}
    sides = [sides[name]() for name in frameworks()]
    jobs = [(side, toy) for toy in TOYS for side in sides]

    records, raw = [], {}
    for side, toy in progress(jobs, NAME):
        insts = instances[toy.name]
        keys = [m.key for m in METHODS if side.has(m.key)]
        if side.name == "torch":
            runs = {k: side.run(k, toy, insts, grids[METHOD[k].family], steps) for k in keys}
        else:
            runs = side.run_all(keys, toy, insts, grids, steps)
        for key, (losses, final, moved) in runs.items():
            raw[(key, side.name, toy.name)] = (losses, final, moved)
    for toy, method, side in ((t, m, s) for t in TOYS for m in METHODS for s in sides):
        if (method.key, side.name, toy.name) not in raw:
            continue
        losses = raw[(method.key, side.name, toy.name)][0]
        lrs = grids[method.family]
        f_star = [inst[2] for inst in instances[toy.name]]
        grid = summarize_grid(losses, f_star, toy.target, lrs)
        best = choose(grid)
        step, curve = geo_curve(losses[best], f_star, steps)
        records.append(
            {
                "problem": toy.name,
                "method": method.key,
                "label": method.labels[side.name],
                "framework": side.name,
                "ours": method.ours,
                "grid": grid,
                "lr": lrs[best],
                "steps_to_target": grid[best]["steps"],
                "final_gap": grid[best]["final_gap"],
                "curve_step": step,
                "curve_gap": curve,
            }
        )

    ref_steps = 1000 if ctx.quick else REFERENCE_STEPS
    ref_tests = reference_tests(sides, ref_steps)
    agreement = agreements(raw)
    tables = [
        main_table(records, steps),
        gap_table(records),
        agreement_table(agreement),
        reference_table(ref_tests),
    ]
    figures = [plot_curves(ctx, records), plot_grid(ctx, records)]
    return StudyResult(
        name=NAME,
        question=QUESTION,
        verdict=_verdict(records, agreement, ref_tests, steps),
        settings={
            "steps": steps,
            "seeds": seeds,
            "dtype": "float64",
            "problems": {t.name: {"description": t.description, "target": t.target} for t in TOYS},
            "lr_grids": grids,
            "lr_choice": "per problem and optimizer: most seeds reaching the target, then fewest "
            "mean steps, then lowest mean log10 final gap",
            "rmsprop": {"alpha": ALPHA, "eps": EPS},
            "adam": "framework defaults (betas 0.9, 0.999, eps 1e-8)",
            "amos": {
                "eta": AMOS_ETA,
                "shape": "() (element-wise rows: the parameter's shape)",
                "beta": "1 - xi",
                "momentum": 0,
            },
            "reference_tests": {
                k: {kk: v for kk, v in s.items() if kk != "f"} for k, s in REFERENCE_TESTS.items()
            },
        },
        data={"records": records, "agreement": agreement, "reference_tests": ref_tests},
        tables=tables,
        figures=figures,
        notes=_notes(ctx, steps, n_seeds),
    )


# ---------------------------------------------------------------------------------------------
# Agreement between implementations of one algorithm


PAIRS = [  # (a, b, what to expect)
    (("amos", "torch"), ("amos_ref", "jax"), "equal to rounding"),
    (("amos", "jax"), ("amos_ref", "jax"), "equal to rounding"),
    (("amos", "torch"), ("amos", "jax"), "equal to rounding"),
    (("amos_full", "torch"), ("amos_full", "jax"), "equal to rounding"),
    (("amos_port", "torch"), ("amos_ref", "jax"), "port: eps added to v (1e-18), not a floor"),
    (("rmsprop_ode", "torch"), ("rmsprop", "torch"), "equal (drop-in)"),
    (("rmsprop_ode", "jax"), ("rmsprop", "jax"), "equal (drop-in)"),
    (("rmsprop_ode_global", "torch"), ("rmsprop_ode_global", "jax"), "eps outside / inside sqrt"),
    (("adam", "torch"), ("adam", "jax"), "equal to rounding"),
]


def agreements(raw) -> list[dict]:
    """Max differences over the grid points and seeds of one method pair, per problem: of the
    final parameters, and of the loss along the run relative to ``max(1, |f|)``. Runs decided
    by rounding (the JAX run of the algorithm ends elsewhere when every iterate is moved by a
    few ulps) or not finite are counted and left out."""
    out = []
    for a, b, expect in PAIRS:
        for toy in TOYS:
            ka, kb = (*a, toy.name), (*b, toy.name)
            if ka not in raw or kb not in raw:
                continue
            (la, fa, _), (lb, fb, _) = raw[ka], raw[kb]
            probe = next(
                (raw[k] for k in ((b[0], "jax", toy.name), (a[0], "jax", toy.name)) if k in raw),
                None,
            )
            finite = np.isfinite(la).all(-1) & np.isfinite(lb).all(-1)
            stable = np.ones_like(finite)
            if probe is not None:
                _, end, moved = probe
                scale = np.maximum(1.0, np.abs(end)).max(-1)
                stable = np.abs(moved - end).max(-1) / scale <= SENSITIVE
            ok = finite & stable
            dtheta = np.abs(fa - fb).max(-1)[ok]
            dloss = (np.abs(la - lb) / np.maximum(1.0, np.abs(lb))).max(-1)[ok]
            out.append(
                {
                    "a": f"{METHOD[a[0]].labels[a[1]]} ({a[1]})",
                    "b": f"{METHOD[b[0]].labels[b[1]]} ({b[1]})",
                    "expect": expect,
                    "problem": toy.name,
                    "runs": int(ok.sum()),
                    "rounding_decided_runs": int((finite & ~stable).sum()),
                    "non_finite_runs": int((~finite).sum()),
                    "max_dtheta": float(dtheta.max()) if dtheta.size else None,
                    "max_rel_dloss": float(dloss.max()) if dloss.size else None,
                    "max_dtheta_all_finite": float(np.abs(fa - fb).max(-1)[finite].max())
                    if finite.any()
                    else None,
                }
            )
    return out


# ---------------------------------------------------------------------------------------------
# Tables


def _row_order(records):
    order = {m.key: i for i, m in enumerate(METHODS)}
    keys = dict.fromkeys((r["method"], r["framework"]) for r in records)
    return sorted(keys, key=lambda k: (order[k[0]], k[1] != "torch"))


def _cells(records, fn):
    by = {(r["method"], r["framework"], r["problem"]): r for r in records}
    rows = []
    for key, fw in _row_order(records):
        label = METHOD[key].labels[fw]
        rows.append(
            [label, fw]
            + [fn(by[(key, fw, t.name)]) if (key, fw, t.name) in by else "" for t in TOYS]
        )
    return rows


def main_table(records, steps) -> str:
    headers = ["optimizer", "framework"] + [
        f"{t.name}: steps to settle below gap {t.target:g}" for t in TOYS
    ]
    rows = _cells(records, lambda r: f"{steps_text(r['steps_to_target'], steps)} (lr {r['lr']:g})")
    return markdown_table(headers, rows)


def gap_table(records) -> str:
    headers = ["optimizer", "framework"] + [f"{t.name}: final f - f*" for t in TOYS]
    return markdown_table(headers, _cells(records, lambda r: gap_text(r["final_gap"])))


def agreement_table(agreement) -> str:
    def cell(a):
        if a["max_dtheta"] is None:
            text = "n/a"
        else:
            text = f"{a['max_dtheta']:.1e}"
        if a["rounding_decided_runs"]:
            text += (
                f" ({a['rounding_decided_runs']} rounding-decided runs left out; with them "
                f"{a['max_dtheta_all_finite']:.1e})"
            )
        if a["non_finite_runs"]:
            text += f" ({a['non_finite_runs']} non-finite runs left out)"
        return text

    pairs = list(dict.fromkeys((a["a"], a["b"], a["expect"]) for a in agreement))
    by = {(a["a"], a["b"], a["problem"]): a for a in agreement}
    rows = [
        [name_a, name_b]
        + [
            cell(by[(name_a, name_b, t.name)]) if (name_a, name_b, t.name) in by else ""
            for t in TOYS
        ]
        + [expect]
        for name_a, name_b, expect in pairs
    ]
    return markdown_table(
        ["implementation", "vs"] + [f"{t.name}: max |Δθ| at the end" for t in TOYS] + ["expected"],
        rows,
    )


def reference_table(ref_tests) -> str:
    rows = [
        (
            f"{r['test']}: {REFERENCE_TESTS[r['test']]['text']}",
            r["implementation"],
            "(" + ", ".join(f"{x:.8f}" for x in r["theta"]) + ")",
            f"{r['error']:.1e}",
            "yes" if r["error"] <= REFERENCE_ATOL else "no",
            "" if r["max_diff_vs_reference"] is None else f"{r['max_diff_vs_reference']:.1e}",
            "" if r["reference_sensitivity"] is None else f"{r['reference_sensitivity']:.1e}",
        )
        for r in ref_tests
    ]
    return markdown_table(
        [
            f"Amos reference test ({ref_tests[0]['steps']} steps, float64)",
            "implementation",
            "theta at the end",
            "max |theta - target|",
            f"within {REFERENCE_ATOL:g}",
            "max |Δθ| vs reference along the path",
            f"reference vs itself with every iterate moved by {PERTURB:g} (relative)",
        ],
        rows,
    )


# ---------------------------------------------------------------------------------------------
# Verdict and notes


def _verdict(records, agreement, ref_tests, steps) -> str:
    parts = []
    for toy in TOYS:
        mine = [r for r in records if r["problem"] == toy.name]
        hit = [r for r in mine if all(s is not None for s in r["steps_to_target"])]
        if not hit:
            best = min(
                mine,
                key=lambda r: np.mean([np.log10(max(g or 1e300, FLOOR)) for g in r["final_gap"]]),
            )
            parts.append(
                f"{toy.name}: none settles below gap {toy.target:g} on every seed in {steps} steps "
                f"(lowest final gap: {best['label']}, {best['framework']})"
            )
            continue
        best = min(hit, key=lambda r: np.mean(r["steps_to_target"]))
        ours = [r for r in hit if r["ours"]]
        text = (
            f"{toy.name}: first to settle below gap {toy.target:g} is {best['label']} "
            f"({best['framework']}, "
            f"{np.mean(best['steps_to_target']):.0f} steps)"
        )
        if ours and not best["ours"]:
            o = min(ours, key=lambda r: np.mean(r["steps_to_target"]))
            text += f", ours best {o['label']} ({np.mean(o['steps_to_target']):.0f})"
        parts.append(text)
    amos = [
        a
        for a in agreement
        if "reference" in a["b"] and "ours" in a["a"] and a["max_dtheta"] is not None
    ]
    if amos:
        worst = max(a["max_dtheta"] for a in amos)
        runs = sum(a["runs"] for a in amos)
        left = sum(a["rounding_decided_runs"] + a["non_finite_runs"] for a in amos)
        parts.append(
            f"our Amos (torch, JAX) follows the reference to max |Δθ| {worst:.1e} in float64 "
            f"over {runs} runs ({left} runs decided by rounding or diverged left out)"
        )
    if ref_tests:
        passed = [r["implementation"] for r in ref_tests if r["error"] <= REFERENCE_ATOL]
        every = {r["implementation"] for r in ref_tests}
        ok = {i for i in every if passed.count(i) == len(REFERENCE_TESTS)}
        parts.append(
            "the reference's parabola and Rosenbrock tests pass for "
            + (", ".join(sorted(ok)) if ok else "none")
        )
    return "; ".join(parts)


def _notes(ctx, steps, n_seeds) -> list[str]:
    notes = [
        "All runs in float64 from the same starts and data in both frameworks. 'steps to "
        "settle' counts gradient steps until f - f* drops to the target and stays there to the "
        "end of the run (mean ± std over the seeds that settle); the final gap is the geometric "
        f"mean over seeds [min, max] after {steps} steps. Each optimizer's lr is the grid point "
        "chosen per problem (see settings); the twins and peers of a family share its grid.",
        "Rounding-decided runs: each JAX run is repeated with every iterate moved by "
        f"{PERTURB:g} (1 + |theta|) (a few ulps, the size of the difference between two "
        "implementations of one step); where that changes the end by more than "
        f"{SENSITIVE:g}, the run is chaotic (typically an lr at the edge of stability) and two "
        "implementations of the algorithm cannot agree on it, so the agreement table leaves it "
        "out. Such runs also explain small torch/JAX differences in the first two tables.",
        f"RMSprop everywhere: decay {ALPHA}, eps {EPS}, no momentum. torch.optim.RMSprop and "
        "RMSpropODE put eps outside the square root, optax.rmsprop and rmsprop_ode inside "
        "(each framework's drop-in convention), so the torch and JAX RMSprop rows differ where "
        "the second moment falls below ~eps. Without a decaying lr, RMSprop's normalized step "
        "does not shrink at the minimum: it ends in a limit cycle whose size scales with lr, "
        "hence its floors in the final-gap table.",
        f"Amos everywhere: eta {AMOS_ETA}, beta = 1 - xi (the reference's advice: 1 - beta of "
        "the order of xi), no momentum, no clipping, one v and b per tensor (ours: shape=() / "
        "shape_fn -> ()), except the 'element-wise v' rows: our Amos in its default state "
        "shape (one v, b per entry), which no peer offers. pytorch_optimizer.Amos guesses eta "
        "by rank (0.5 for these 1-D parameters, so the same) and adds eps = 1e-18 to v where "
        "the reference floors v at 2^-125.",
        "Adam is the common baseline (framework defaults). AdamW's decoupled weight decay would "
        "move the toys' minima, so it appears in the amos_mlp study instead.",
    ]
    if ctx.quick:
        notes.append(
            f"--quick: 1 seed, {steps} steps, a 2-point lr grid per family: a smoke run, not "
            "a result."
        )
    elif n_seeds < 2:
        notes.append("One seed: no spread across seeds.")
    return notes


# ---------------------------------------------------------------------------------------------
# Figures


def plot_curves(ctx, records) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    for ax, toy in zip(axes.ravel(), TOYS, strict=True):
        for r in (r for r in records if r["problem"] == toy.name):
            style = "-" if r["framework"] == "torch" else "--"
            ax.plot(
                np.maximum(r["curve_step"], 1),
                r["curve_gap"],
                style,
                color=COLORS[r["method"]],
                lw=1.6 if r["ours"] else 1.0,
                label=f"{r['label']} [{r['framework']}], lr {r['lr']:g}",
            )
        ax.axhline(toy.target, color="k", lw=0.8, ls=":")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="step",
            ylabel="f - f* (geometric mean over seeds)",
            title=f"{toy.name} (dotted: target {toy.target:g})",
        )
        ax.title.set_fontsize(10)
        ax.legend(fontsize=6.5, ncol=2)
    fig.suptitle("Loss gap at each optimizer's chosen lr; solid torch, dashed JAX", fontsize=10)
    return save_figure(ctx, fig, "convergence_curves.png")


def plot_grid(ctx, records) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    for ax, toy in zip(axes.ravel(), TOYS, strict=True):
        for r in (r for r in records if r["problem"] == toy.name):
            lrs = [g["lr"] for g in r["grid"]]
            geo = [
                10
                ** np.mean(
                    [
                        np.log10(min(max(x, FLOOR), 1e30)) if x is not None else 30
                        for x in g["final_gap"]
                    ]
                )
                for g in r["grid"]
            ]
            style = "o-" if r["framework"] == "torch" else "x--"
            ax.plot(
                lrs,
                geo,
                style,
                color=COLORS[r["method"]],
                ms=4,
                label=f"{r['label']} [{r['framework']}]",
            )
        ax.axhline(toy.target, color="k", lw=0.8, ls=":")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="lr (the global lr xi for Amos)",
            ylabel="final f - f* (geometric mean over seeds)",
            title=f"{toy.name}: the lr grid",
        )
        ax.title.set_fontsize(10)
        ax.legend(fontsize=6.5, ncol=2)
    return save_figure(ctx, fig, "convergence_lr_grid.png")
