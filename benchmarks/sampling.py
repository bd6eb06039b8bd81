"""Study ``sampling``: can the sampling optimizer optimize what gradients cannot?

Three parts, all with MLE-guided parameter search (MGS, math.md §4: ``MGS`` / ``mgs``).

(a) Guided ES's biased quadratic (``problems.biased_quadratic``): ``A`` in R^{2000x1000} and
``b`` with N(0, 1) entries (one fixed instance), loss ``|A x - b|^2 / (2 m)`` from ``x = 0``;
the gradient one observes is the true one plus ``|true gradient| u`` for a fixed random unit
vector ``u``. SGD on that biased gradient (lr from a grid) converges to a point where the
biased gradient vanishes and the true one does not: it stalls above ``f*``. MGS gets the same
biased gradient as its surrogate, times ``eta = 1 / lambda_max(A^T A / m)`` (the classic step
``1 / L``: MGS evaluates its candidates at ``theta + eps`` with no step size, so the surrogate
must already be a step; no clipping), and evaluates the true loss at ``K = 4`` candidates per
iteration: half of them around the surrogate step (``mix = 0.5``, guided) or none (``mix = 0``,
zero-centred only), with the reference's noise scale (``"grad"``: ``noise * mean|surrogate|``)
or a constant one; each of the four rows takes the grid point (noise, lr, temperature) with the
lowest final gap. evosax's GuidedES (population 4, the surrogate as its one-dimensional guiding
subspace) is the peer. JAX runs every grid point and seed of every row in one jitted program
(vmap over grid points and seeds, ``lax.scan`` over 10k iterations) in the eigenbasis of ``A^T A``:
an orthogonal change of variables, under which the loss, the gradient, the bias (a random unit
vector), SGD and isotropic noise are the same in distribution, and which makes a loss
evaluation O(n) instead of O(n^2). The loss is evaluated as ``f - f* = (x - x*)^T A^T A
(x - x*) / (2 m)``, the same function up to the constant ``f*``, without cancellation. torch
runs the chosen settings in the original coordinates (fewer iterations, one seed): a check of
the change of variables and of the twin.

(b) A non-differentiable objective: the 0-1 training error of a linear classifier
(``problems.zero_one_error``) on two noisy Gaussian blobs (``problems.two_blobs``), whose
gradient is 0 wherever it exists. Black-box MGS (no surrogate: every candidate around 0,
constant noise) against evosax's OpenES and plain random search (keep the best of ``K``
perturbations of the incumbent when it is no worse), at equal numbers of loss evaluations, each
with its grid point of lowest mean final training error; several seeds (new data, start and
noise each). Logistic regression (Newton on the smooth surrogate) is the reference a gradient
method reaches through a surrogate.

(c) Candidates per second: one MGS step with ``K = 16`` candidates of two MLPs with one hidden
layer (random data, cross-entropy as the task loss): the study's (64-128-10, batch 256) and a
small one (64-32-10, batch 64). torch's looped ``step(closure)`` (a plain ``nn.Module``
closure), the vectorized ``step(population=functional_population(...))``, the reference code's
way (a loop over ``copy.deepcopy(model)`` candidates, with our kernels for the math), and JAX's
vmapped ``mgs`` update under ``jit``; medians over interleaved repeats after warm-up (the
deepcopy path in a group of its own with the looped one: it slows whatever follows it). The
vectorized step runs eager and compiled (``functional_population(..., compile=True)``; the
compile time is reported apart). The claim checked: the vectorized evaluation of the small
MLP's candidates >= 5x the looped closure path (the evaluations alone, each path repeated back
to back: their throughput; a ratio within one run). The whole steps and the evaluations
interleaved with other work are reported beside it.

Run alone: ``python -m benchmarks --only sampling``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import importlib.util
import time
from dataclasses import dataclass

import numpy as np

from benchmarks._common import (
    Context,
    StudyResult,
    frameworks,
    interleaved_medians,
    markdown_table,
    progress,
    pyplot,
    save_figure,
    torch_timer,
)
from benchmarks.problems import (
    BIASED_QUADRATIC,
    TWO_BLOBS,
    biased_gradient,
    biased_quadratic,
    logistic_minimum,
    two_blobs,
    with_bias_column,
    zero_one_error,
)

NAME = "sampling"
QUESTION = "Can the sampling optimizer optimize what gradients cannot?"

FLOOR = 1e-18  # gaps are clipped here for logs and plots
KEEP = 160  # log-spaced points per curve kept in the data

# ---------------------------------------------------------------------------------------------
# (a) the biased quadratic

A_M, A_N = 2000, 1000
A_INSTANCE = 0  # the one instance (A, b, bias)
A_K = 4  # MGS candidates per iteration: the paper's
A_STEPS = {"full": 10_000, "quick": 300}
A_TORCH_STEPS = {"full": 2000, "quick": 100}
A_GRIDS = {
    "full": {
        "sgd_lr": [0.003, 0.01, 0.03, 0.1, 0.3, 0.6],  # stable below 2 / lambda_max ~ 0.7
        "noise": {"grad": [0.3, 1.0, 3.0], "constant": [1e-4, 3e-4, 1e-3]},
        "lr": [0.1, 0.3, 1.0],
        "temperature": [1e-8, 1e-6],
        "ges_lr": [0.1, 0.3, 0.6],
    },
    "quick": {  # the 'grad' rows and GuidedES left out: compiling dominates a smoke run
        "rows": ["sgd", "mgs_guided_const", "mgs_zero_const"],
        "sgd_lr": [0.1, 0.3],
        "noise": {"grad": [1.0], "constant": [1e-3]},
        "lr": [0.3],
        "temperature": [1e-6],
        "ges_lr": [0.3],
    },
}
GES_STD = 1e-2  # GuidedES's perturbation norm (central differences are exact on a quadratic)
GES_POP = 4  # two antithetic pairs: as many loss evaluations per iteration as MGS's candidates


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    mix: float | None = None  # MGS rows
    noise_scale: str | None = None


A_ROWS = [
    Row("sgd", "SGD on the biased gradient"),
    Row("mgs_guided_grad", "MGS guided (mix 0.5), noise 'grad'", 0.5, "grad"),
    Row("mgs_guided_const", "MGS guided (mix 0.5), noise 'constant'", 0.5, "constant"),
    Row("mgs_zero_grad", "MGS zero-centred only (mix 0), noise 'grad'", 0.0, "grad"),
    Row("mgs_zero_const", "MGS zero-centred only (mix 0), noise 'constant'", 0.0, "constant"),
    Row("guided_es", "evosax GuidedES (peer)"),
]
A_ROW = {r.key: r for r in A_ROWS}
A_COLORS = {r.key: f"C{i}" for i, r in enumerate(A_ROWS)}


def a_evals_per_step(key: str) -> int:
    """Loss or gradient evaluations per iteration: SGD one gradient; MGS ``K + 1`` losses plus
    the surrogate gradient, except zero-centred MGS with constant noise, which never reads it;
    GuidedES its population plus the surrogate gradient."""
    if key == "sgd":
        return 1
    if key == "guided_es":
        return GES_POP + 1
    return A_K + 1 + (0 if key == "mgs_zero_const" else 1)


@contextlib.contextmanager
def _one_blas_thread():
    """NumPy's BLAS on one thread where threadpoolctl is installed: on a shared 2-core machine a
    threaded ``eigh`` of the 1000 x 1000 matrix swings from 0.4 s to over 10 s."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1):
        yield


def jit_run(fn, *args, quick: bool = False):
    """``jax.jit(fn)(*args)``; under ``--quick`` compiled without XLA's backend optimizations
    (compiling dominates a smoke run: about 3x faster to compile, several times slower to
    run)."""
    import jax

    lowered = jax.jit(fn).lower(*args)
    options = {"xla_backend_optimization_level": 0} if quick else None
    return lowered.compile(compiler_options=options)(*args)


@contextlib.contextmanager
def torch_threads(n: int):
    """torch on ``n`` intra-op threads, restored afterwards: on the shared 2-core machine two
    threads made a (5, 1000) x (1000, 1000) matmul 50x slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Quadratic:
    """The instance, in the original coordinates (``h = A^T A / m``, ``x_star``, ``bias``) and in
    the eigenbasis ``V`` of ``h`` (``lam``, ``y_star = V^T x_star``, ``bias_eig = V^T bias``)."""

    h: np.ndarray
    x_star: np.ndarray
    bias: np.ndarray
    lam: np.ndarray
    y_star: np.ndarray
    bias_eig: np.ndarray
    f_star: float
    gap0: float

    @property
    def eta(self) -> float:
        """The surrogate's scale for MGS: ``1 / lambda_max``, the classic step ``1 / L`` of an
        ``L``-smooth loss."""
        return float(1.0 / self.lam.max())


def quadratic_instance() -> Quadratic:
    a, b, bias = biased_quadratic(A_M, A_N, np.random.default_rng([A_INSTANCE, 7]))
    with _one_blas_thread():
        h = a.T @ a / A_M
        lam, v = np.linalg.eigh(h)
        y_star = (v.T @ (a.T @ b / A_M)) / lam
        x_star = v @ y_star
        f_star = float(0.5 * np.sum((a @ x_star - b) ** 2) / A_M)
    return Quadratic(
        h=h,
        x_star=x_star,
        bias=bias,
        lam=lam,
        y_star=y_star,
        bias_eig=v.T @ bias,
        f_star=f_star,
        gap0=float(0.5 * np.sum(lam * y_star**2)),
    )


def a_configs(grid: dict, key: str) -> list[dict]:
    """The grid points of one row."""
    if key == "sgd":
        return [{"lr": lr} for lr in grid["sgd_lr"]]
    if key == "guided_es":
        return [{"lr": lr, "std": GES_STD} for lr in grid["ges_lr"]]
    row = A_ROW[key]
    return [
        {"noise": s, "lr": lr, "temperature": t}
        for s in grid["noise"][row.noise_scale]
        for lr in grid["lr"]
        for t in grid["temperature"]
    ]


def a_jax(inst, grid: dict, steps: int, seeds: list[int], has_evosax: bool, quick: bool):
    """Every row's grid x seeds in JAX (eigenbasis). Returns ``{key: (gaps (configs, seeds,
    steps + 1), configs)}``."""
    import jax
    import jax.numpy as jnp
    import optax

    import jax_opt

    f32 = jnp.float32
    lam, y_star, u = (jnp.asarray(x, f32) for x in (inst.lam, inst.y_star, inst.bias_eig))
    y0 = jnp.zeros(A_N, f32)

    def gap(y):
        e = y - y_star
        return 0.5 * jnp.sum(lam * e * e)

    def surrogate(y):
        return biased_gradient(lam * (y - y_star), u)

    def scan_gaps(body, carry, xs):
        carry, gaps = jax.lax.scan(body, carry, xs, length=steps)
        return jnp.append(gaps, gap(carry[0]))

    out = {}

    def sgd(lr):
        def body(c, _):
            (y,) = c
            return (y - lr * surrogate(y),), gap(y)

        return scan_gaps(body, (y0,), None)

    cfgs = a_configs(grid, "sgd")
    gaps = jit_run(jax.vmap(sgd), jnp.asarray([c["lr"] for c in cfgs], f32), quick=quick)
    out["sgd"] = (np.asarray(gaps, np.float64)[:, None, :], cfgs)  # deterministic: one "seed"
    eta = inst.eta

    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])  # shared by every grid point

    def mgs_row(row: Row):
        def run(cfg, key):
            tx = jax_opt.mgs(
                lr=cfg[1],
                num_samples=A_K,
                noise=cfg[0],
                noise_scale=row.noise_scale,
                mix=row.mix,
                temperature=cfg[2],
                max_grad_norm=None,
            )
            state = tx.init(y0)._replace(key=key)

            def body(c, _):
                y, state = c
                step, state = tx.update(eta * surrogate(y), state, y, value_fn=gap)
                return (y + step, state), gap(y)

            return scan_gaps(body, (y0, state), None)

        return run

    def ges_run(cfg, key):
        from evosax.algorithms import GuidedES

        es = GuidedES(
            population_size=GES_POP,
            solution=y0,
            subspace_dims=1,
            optimizer=optax.sgd(cfg[0]),
            std_schedule=optax.constant_schedule(cfg[1]),
        )
        params = es.default_params
        init_key, key = jax.random.split(key)
        state = es.init(init_key, y0, params)

        def body(c, k):
            (y, state) = c
            ask_key, tell_key = jax.random.split(k)
            state = state.replace(grad=surrogate(state.mean))
            population, state = es.ask(ask_key, state, params)
            state, _ = es.tell(tell_key, population, jax.vmap(gap)(population), state, params)
            return (state.mean, state), gap(y)

        return scan_gaps(body, (y0, state), jax.random.split(key, steps))

    runs, arrays, configs = {}, {}, {}
    for row in A_ROWS[1:]:
        if row.key not in grid.get("rows", A_ROW):
            continue
        cfgs = a_configs(grid, row.key)
        if row.key == "guided_es":
            if not has_evosax:
                continue
            runs[row.key] = ges_run
            arrays[row.key] = jnp.asarray([[c["lr"], c["std"]] for c in cfgs], f32)
        else:
            runs[row.key] = mgs_row(row)
            arrays[row.key] = jnp.asarray(
                [[c["noise"], c["lr"], c["temperature"]] for c in cfgs], f32
            )
        configs[row.key] = cfgs

    def every_row(arrays, keys):  # one program: one compilation
        return {
            key: jax.vmap(jax.vmap(runs[key], in_axes=(None, 0)), in_axes=(0, None))(arr, keys)
            for key, arr in arrays.items()
        }

    for key, gaps in jit_run(every_row, arrays, keys, quick=quick).items():
        out[key] = (np.asarray(gaps, np.float64), configs[key])
    return out


def a_torch(inst: Quadratic, chosen: dict, eta: float, steps: int) -> dict:
    """The chosen settings in torch, original coordinates, seed 0: ``{key: (gaps (steps + 1),
    setting)}``."""
    import torch

    import torch_opt

    f32 = torch.float32
    h = torch.as_tensor(inst.h, dtype=f32)
    x_star = torch.as_tensor(inst.x_star, dtype=f32)
    u = torch.as_tensor(inst.bias, dtype=f32)

    def gap(x):  # (n,) or (B, n)
        e = x - x_star
        return 0.5 * (e * (e @ h)).sum(-1)

    def surrogate(x):
        return biased_gradient((x - x_star) @ h, u)

    out = {}
    for key, cfg in chosen.items():
        if key == "guided_es":
            continue
        x = torch.zeros(A_N, dtype=f32, requires_grad=True)
        gaps = np.empty(steps + 1)
        if key == "sgd":
            opt = torch.optim.SGD([x], lr=cfg["lr"])
            for t in range(steps):
                with torch.no_grad():
                    x.grad = surrogate(x)
                    gaps[t] = float(gap(x))
                opt.step()
        else:
            row = A_ROW[key]
            opt = torch_opt.MGS(
                [x],
                lr=cfg["lr"],
                num_samples=A_K,
                noise=cfg["noise"],
                noise_scale=row.noise_scale,
                mix=row.mix,
                temperature=cfg["temperature"],
                max_grad_norm=None,
                seed=0,
            )
            for t in range(steps):
                with torch.no_grad():
                    x.grad = eta * surrogate(x)
                gaps[t] = float(opt.step(population=lambda stacked: gap(stacked[0])))
        with torch.no_grad():
            gaps[steps] = float(gap(x))
        out[key] = (gaps, cfg)
    return out


# ---------------------------------------------------------------------------------------------
# (b) the 0-1 error of a linear classifier

B_DIM, B_TRAIN, B_TEST = 20, 1000, 10_000
B_SEPARATION, B_LABEL_NOISE = 3.0, 0.1
B_EVALS = {"full": 4000, "quick": 500}
B_K = 4  # MGS candidates
B_POP = 8  # OpenES population (antithetic)
B_RS_K = 4  # random search: perturbations of the incumbent per iteration
B_GRIDS = {
    "full": {
        "mgs": [
            {"noise": s, "lr": lr, "temperature": t}
            for s in (0.1, 0.3, 1.0)
            for lr in (0.03, 0.1, 0.3)
            for t in (1e-4, 1e-3, 1e-2)
        ],
        "openes": [{"std": s, "lr": lr} for s in (0.1, 0.3, 1.0) for lr in (0.01, 0.1, 1.0)],
        "random_search": [{"std": s} for s in (0.3, 1.0, 3.0, 10.0)],
    },
    "quick": {
        "mgs": [{"noise": 0.3, "lr": 0.1, "temperature": 1e-3}],
        "openes": [{"std": 0.3, "lr": 0.1}],
        "random_search": [{"std": 0.3}],
    },
}
B_LABELS = {
    "mgs": "MGS black-box (no surrogate)",
    "openes": "evosax OpenES (peer)",
    "random_search": "random search (best of K perturbations)",
}
B_COLORS = {"mgs": "C2", "openes": "C5", "random_search": "C7"}


def b_evals_per_step(key: str) -> int:
    return {"mgs": B_K + 1, "openes": B_POP, "random_search": B_RS_K}[key]


def b_data(seeds: list[int]) -> dict:
    """Per seed: train and test sets (with a bias column), the start and the logistic
    regression reference."""
    out = {"x": [], "y": [], "x_test": [], "y_test": [], "theta0": [], "logistic": []}
    for seed in seeds:
        rng = np.random.default_rng([seed, 11])
        x, y, _ = two_blobs(B_TRAIN + B_TEST, B_DIM, rng, B_SEPARATION, B_LABEL_NOISE)
        x = with_bias_column(x)
        out["x"].append(x[:B_TRAIN])
        out["y"].append(y[:B_TRAIN])
        out["x_test"].append(x[B_TRAIN:])
        out["y_test"].append(y[B_TRAIN:])
        out["theta0"].append(rng.standard_normal(B_DIM + 1).astype(np.float32))
        theta, _ = logistic_minimum(
            x[:B_TRAIN].astype(np.float64), y[:B_TRAIN].astype(np.float64), 1e-3
        )
        out["logistic"].append(
            (
                float(zero_one_error(theta, x[:B_TRAIN], y[:B_TRAIN])),
                float(zero_one_error(theta, x[B_TRAIN:], y[B_TRAIN:])),
            )
        )
    return {k: np.stack(v) if k != "logistic" else np.asarray(v) for k, v in out.items()}


def b_jax(data: dict, grid: dict, evals: int, seeds: list[int], has_evosax: bool, quick: bool):
    """Every method's grid x seeds: ``{key: (train error curve (configs, seeds, steps + 1),
    test error at the end (configs, seeds), configs)}`` and ``"gd_grad"``, the largest
    ``|jax.grad|`` of the 0-1 error at the starts."""
    import jax
    import jax.numpy as jnp
    import optax

    import jax_opt

    arrays = {k: jnp.asarray(data[k]) for k in ("x", "y", "x_test", "y_test", "theta0")}
    keys = jnp.stack([jax.random.PRNGKey(1000 + s) for s in seeds])
    per_seed = (keys, arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"])
    per_seed += (arrays["theta0"],)

    def mgs_run(cfg, key, x, y, x_test, y_test, theta0):
        def err(theta):
            return zero_one_error(theta, x, y)

        tx = jax_opt.mgs(
            lr=cfg[1],
            num_samples=B_K,
            noise=cfg[0],
            noise_scale="constant",
            mix=0.0,
            temperature=cfg[2],
            max_grad_norm=None,
        )
        state = tx.init(theta0)._replace(key=key)

        def body(c, _):
            theta, state = c
            step, state = tx.update(jnp.zeros_like(theta), state, theta, value_fn=err)
            return (theta + step, state), err(theta)

        (theta, _), curve = jax.lax.scan(body, (theta0, state), None, length=evals // (B_K + 1))
        return jnp.append(curve, err(theta)), zero_one_error(theta, x_test, y_test)

    def openes_run(cfg, key, x, y, x_test, y_test, theta0):
        from evosax.algorithms import Open_ES

        def err(theta):
            return zero_one_error(theta, x, y)

        es = Open_ES(
            population_size=B_POP,
            solution=theta0,
            optimizer=optax.sgd(cfg[1]),
            std_schedule=optax.constant_schedule(cfg[0]),
        )
        params = es.default_params
        init_key, key = jax.random.split(key)
        state = es.init(init_key, theta0, params)

        def body(state, k):
            ask_key, tell_key = jax.random.split(k)
            mean = state.mean
            population, state = es.ask(ask_key, state, params)
            state, _ = es.tell(tell_key, population, jax.vmap(err)(population), state, params)
            return state, err(mean)

        state, curve = jax.lax.scan(body, state, jax.random.split(key, evals // B_POP))
        return jnp.append(curve, err(state.mean)), zero_one_error(state.mean, x_test, y_test)

    def rs_run(cfg, key, x, y, x_test, y_test, theta0):
        def err(theta):
            return zero_one_error(theta, x, y)

        def body(c, k):
            theta, best = c
            cand = theta + cfg[0] * jax.random.normal(k, (B_RS_K, theta.shape[0]))
            errs = jax.vmap(err)(cand)
            i = jnp.argmin(errs)
            take = errs[i] <= best
            return (jnp.where(take, cand[i], theta), jnp.where(take, errs[i], best)), best

        steps = (evals - 1) // B_RS_K  # one evaluation for the start
        (theta, best), curve = jax.lax.scan(
            body, (theta0, err(theta0)), jax.random.split(key, steps)
        )
        return jnp.append(curve, best), zero_one_error(theta, x_test, y_test)

    runs = {"mgs": mgs_run, "random_search": rs_run}
    if has_evosax:
        runs["openes"] = openes_run
    fields = {
        "mgs": ("noise", "lr", "temperature"),
        "openes": ("std", "lr"),
        "random_search": ("std",),
    }
    grid_arrays = {
        key: jnp.asarray([[c[f] for f in fields[key]] for c in grid[key]], jnp.float32)
        for key in runs
    }

    def every_method(grid_arrays, per_seed):  # one program: one compilation
        out = {}
        for key, arr in grid_arrays.items():
            inner = jax.vmap(runs[key], in_axes=(None, 0, 0, 0, 0, 0, 0))
            out[key] = jax.vmap(inner, in_axes=(0, None, None, None, None, None, None))(
                arr, *per_seed
            )
        _, x, y, _, _, theta0 = per_seed
        grads = jax.vmap(jax.grad(zero_one_error))(theta0, x, y)  # gradient descent's view
        return out, jnp.abs(grads).max()

    results, gd_grad = jit_run(every_method, grid_arrays, per_seed, quick=quick)
    out = {
        key: (np.asarray(curves, np.float64), np.asarray(test, np.float64), grid[key])
        for key, (curves, test) in results.items()
    }
    out["gd_grad"] = float(gd_grad)
    return out


def b_torch(data: dict, cfg: dict, evals: int) -> np.ndarray:
    """Black-box MGS in torch with the chosen setting, every seed: train error curves."""
    import torch

    import torch_opt

    steps = evals // (B_K + 1)
    curves = []
    for i in range(len(data["x"])):
        x, y = torch.as_tensor(data["x"][i]), torch.as_tensor(data["y"][i])
        theta = torch.tensor(data["theta0"][i], requires_grad=True)
        opt = torch_opt.MGS(
            [theta],
            lr=cfg["lr"],
            num_samples=B_K,
            noise=cfg["noise"],
            noise_scale="constant",
            mix=0.0,
            temperature=cfg["temperature"],
            max_grad_norm=None,
            seed=i,
        )
        curve = np.empty(steps + 1)
        for t in range(steps):
            curve[t] = float(opt.step(population=lambda s, x=x, y=y: zero_one_error(s[0], x, y)))
        with torch.no_grad():
            curve[steps] = float(zero_one_error(theta, x, y))
        curves.append(curve)
    return np.stack(curves)


# ---------------------------------------------------------------------------------------------
# (c) candidates per second

C_K = 16
C_MODELS = (  # key, MLP sizes (inputs, hidden, classes), batch
    ("study", (64, 128, 10), 256),
    ("small", (64, 32, 10), 64),
)
C_TARGET = "small"  # the model of the speed issue's ">= 5x" row
C_REPEATS = {"full": 30, "quick": 5}
C_WARMUP = 3
# Back to back means the steady state, timed in blocks: each path alone, C_HOT_WARMUP untimed
# calls then C_HOT_BLOCK timed ones, the paths' blocks alternating for C_HOT_ROUNDS rounds;
# medians over all timed calls (300 per path in a full run). The warm-up: on this machine a
# compiled call's time kept falling over its first 30-60 calls after other work (about 0.105
# ms over the first 30 calls, 0.094-0.099 ms from the 60th on; the looped evaluations stayed
# flat; development runs), and a call after as little as a 17 ms sleep took 4-5x its steady
# time. The alternation: the load of other jobs on this shared machine comes and goes over
# seconds (one full run measured every row of the small MLP 20-55% slower than the runs
# before and after it), so that each path is timed in every stretch of it, as in the
# interleaved rows.
C_HOT_ROUNDS = {"full": 5, "quick": 1}
C_HOT_BLOCK = {"full": 60, "quick": 5}
C_HOT_WARMUP = {"full": 100, "quick": 5}


def c_mlp_name(sizes, batch) -> str:
    return f"MLP {'-'.join(map(str, sizes))}, batch {batch}"


def c_parameters(sizes) -> int:
    d_in, hidden, d_out = sizes
    return (d_in + 1) * hidden + (hidden + 1) * d_out


def c_torch(
    repeats: int, sizes, batch, device: str = "cpu", all_threads: int = 1, size: str = "quick"
) -> dict:
    import torch
    from torch import nn

    import torch_opt
    from torch_opt.sampling import (
        clip_surrogate,
        functional_population,
        importance_weights,
        log_proposal,
        noise_scale,
        perturbations,
        weighted_direction,
    )
    from torch_opt.sampling._products import thin
    from twinopt.sampling import mixture_mask

    gen = torch.Generator().manual_seed(0)
    d_in, hidden, d_out = sizes
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))
    model.to(device)
    x = torch.randn(batch, d_in, generator=gen).to(device)
    y = torch.randint(0, d_out, (batch,), generator=gen).to(device)
    gen = torch.Generator(device=device).manual_seed(0)  # the noise of the deepcopy path
    ce = nn.functional.cross_entropy
    ce(model(x), y).backward()  # the surrogate gradient, kept in .grad for every step
    # lr = 0: the model stays the same across repeats (the step's cost does not depend on lr)
    opt = torch_opt.MGS(model.parameters(), num_samples=C_K, lr=0.0, seed=0)
    batched = functional_population(model, lambda forward, x, y: ce(forward(x), y))
    compiled_batched = functional_population(
        model, lambda forward, x, y: ce(forward(x), y), compile=True
    )

    def population(stacked):  # the batch as arguments (how a loop over batches passes it)
        return batched(stacked, x, y)

    def compiled(stacked):
        return compiled_batched(stacked, x, y)

    # The batch read from the enclosing scope instead: the compiled population then runs
    # under torch.compile's guards (functional_population's docstring), timed for comparison.
    guarded = functional_population(model, lambda forward: ce(forward(x), y), compile=True)
    params = list(model.parameters())

    def closure():
        return ce(model(x), y)

    def deepcopy_step():
        """One MGS step the reference code's way: a deep copy of the model per candidate."""
        with torch.no_grad():
            guides = clip_surrogate([p.grad for p in params], 1.0)
            scales = [noise_scale(g, noise=1.0, noise_scale="grad") for g in guides]
            mask = mixture_mask(C_K, 0.5)
            eps = [
                perturbations(
                    g, torch.randn(C_K, *p.shape, generator=gen, device=device), mask, scale=s
                )
                for g, s, p in zip(guides, scales, params, strict=True)
            ]
            d0 = float(closure())
            losses = []
            for k in range(C_K):
                candidate = copy.deepcopy(model)
                for p, e in zip(candidate.parameters(), eps, strict=True):
                    p.add_(e[k])
                losses.append(float(ce(candidate(x), y)))
            log_q = log_proposal(eps, guides, scales, mix=0.5, proposal_density="exact")
            w = importance_weights(torch.tensor(losses), d0, log_q, temperature=1.0)
            for p, d in zip(params, weighted_direction(w, eps), strict=True):
                p.add_(d, alpha=0.0)

    def stack(tensors):  # K + 1 copies of each tensor: a population's input
        return [t.detach().unsqueeze(0).repeat(C_K + 1, *([1] * t.dim())) for t in tensors]

    stacked = stack(params)

    eps = [1e-2 * torch.randn(C_K, *p.shape, generator=gen, device=device) for p in params]
    rows = [[e[k] for e in eps] for k in range(C_K)]
    saved = [p.detach().clone() for p in params]

    def eval_loop():  # what step(closure) does around its closure calls
        with torch.no_grad():
            closure().item()
            for k in range(C_K):
                torch._foreach_add_(params, rows[k])
                closure().item()
                torch._foreach_copy_(params, saved)

    def evaluate(fn):
        with torch.no_grad():
            return fn(stacked).tolist()

    w1, b1, w2, b2 = stacked  # the MLP's two layers, stacked over the K + 1 parameter sets

    def matmuls():
        """The arithmetic that dominates the batched evaluation, with nothing around it: both
        layers of all K + 1 forward passes as two batched matmuls (bias and ReLU included, no
        loss, no vmap, no compiled call), each in the layout the compiled population runs it
        (the output layer's thin product transposed: torch_opt/sampling/_products.py)."""
        with torch.no_grad():
            h = torch.baddbmm(b1.unsqueeze(1), x.expand(C_K + 1, *x.shape), w1.mT).relu_()
            if thin((C_K + 1, batch, d_out), h.dtype) and h.device.type == "cpu":
                return torch.baddbmm(b2.unsqueeze(2), w2, h.mT).mT
            return torch.baddbmm(b2.unsqueeze(1), h, w2.mT)

    with torch.no_grad():  # the bound computes the model (every stacked set is theta)
        torch.testing.assert_close(matmuls(), model(x).expand(C_K + 1, batch, d_out))

    # A compiled call's fixed cost (the wrapper, the kernel launches; no TorchDynamo): the
    # same compiled population over a 2-2-2 MLP with a batch of 4, whose arithmetic is nil.
    tiny = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)).to(device)
    x_tiny, y_tiny = x[:4, :2].contiguous(), y[:4] % 2
    tiny_population = functional_population(
        tiny, lambda forward, x, y: ce(forward(x), y), compile=True
    )
    tiny_stacked = stack(tiny.parameters())

    def tiny_call():
        with torch.no_grad():
            return tiny_population(tiny_stacked, x_tiny, y_tiny).tolist()

    started = time.perf_counter()
    evaluate(compiled)  # the first call compiles: timed apart from the medians
    compile_s = time.perf_counter() - started
    evaluate(guarded)
    zeros = torch.zeros(C_K + 1)
    fns = {
        "torch_loop": lambda: opt.step(closure),
        "torch_vectorized": lambda: opt.step(population=population),
        "torch_compiled": lambda: opt.step(population=compiled),
        "torch_overhead": lambda: opt.step(population=lambda s: zeros),
        "torch_eval_loop": eval_loop,
        "torch_eval_vectorized": lambda: evaluate(population),
        "torch_eval_compiled": lambda: evaluate(compiled),
    }
    timer = torch_timer(device)
    medians = interleaved_medians(fns, repeats, C_WARMUP, timer=timer)
    # The deepcopy path (16 model copies per step) slows whatever runs right after it (a
    # compiled evaluation by up to 3x in development runs), so it is timed in a group of its
    # own, interleaved with the looped path it is compared with.
    pair = interleaved_medians(
        {"torch_loop": fns["torch_loop"], "torch_deepcopy": deepcopy_step},
        repeats,
        C_WARMUP,
        timer=timer,
    )
    medians["torch_deepcopy"] = pair["torch_deepcopy"]
    medians["torch_loop_beside_deepcopy"] = pair["torch_loop"]
    # The same evaluations back to back (each path repeated alone, caches warm from its own
    # previous call): what a tight loop sees, against the interleaved figures above, where
    # each call follows other work as inside a training step.
    # The two limiting rows (not parts of a step) are timed the same way.
    alone = {f"{key}_hot": fns[key] for key in ("torch_eval_loop", "torch_eval_compiled")}
    alone["torch_eval_guarded_hot"] = lambda: evaluate(guarded)
    alone |= {"torch_eval_matmuls_hot": matmuls, "torch_compiled_call_hot": tiny_call}
    blocks = {
        "repeats": C_HOT_ROUNDS[size],
        "warmup": 0,
        "timer": timer,
        "block": C_HOT_BLOCK[size],
        "block_warmup": C_HOT_WARMUP[size],
    }
    hot = interleaved_medians(alone, **blocks)
    if all_threads > torch.get_num_threads() and device == "cpu":
        # The evaluations back to back again with torch's default thread count (the study
        # runs on one): what a user's process gets, where the batched products can use
        # every core and the loop's small ones hardly can.
        with torch_threads(all_threads):
            keys = ("torch_eval_loop_hot", "torch_eval_compiled_hot")
            times = interleaved_medians({f"{key}_all": alone[key] for key in keys}, **blocks)
        hot |= times
    return medians | hot | {"torch_compile_s": compile_s}


def c_jax(repeats: int, quick: bool, sizes, batch) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    import jax_opt
    from benchmarks.problems import mlp_params

    d_in, _, d_out = sizes
    rng = np.random.default_rng(0)
    params = [jnp.asarray(p) for p in mlp_params(sizes, rng)]
    x = jnp.asarray(rng.standard_normal((batch, d_in)), jnp.float32)
    y = jnp.asarray(rng.integers(0, d_out, batch))

    def loss(p):
        h = jax.nn.relu(x @ p[0] + p[1])
        return optax.softmax_cross_entropy_with_integer_labels(h @ p[2] + p[3], y).mean()

    grads = jax.jit(jax.grad(loss))(params)
    tx = jax_opt.mgs(num_samples=C_K, lr=0.0, seed=0)
    box = {"state": tx.init(params)}
    lowered = jax.jit(lambda g, s, p: tx.update(g, s, p, value_fn=loss)).lower(
        grads, box["state"], params
    )
    update = lowered.compile({"xla_backend_optimization_level": 0} if quick else None)

    def step():
        u, box["state"] = update(grads, box["state"], params)
        return u

    return interleaved_medians({"jax_vmap": step}, repeats, C_WARMUP, jax.block_until_ready)


C_ROWS = [  # key, path, framework
    ("torch_loop", "looped: step(closure), K + 1 closure calls", "torch"),
    ("torch_vectorized", "vectorized: step(population=functional_population(...))", "torch"),
    (
        "torch_compiled",
        "vectorized, compiled: functional_population(..., compile=True), batch as arguments",
        "torch",
    ),
    ("torch_deepcopy", "reference code's way: a deepcopy of the model per candidate", "torch"),
    ("jax_vmap", "mgs update under jit, value_fn vmapped over the candidates", "jax"),
]
C_PARTS = [  # the breakdown of the torch step
    ("torch_overhead", "step(population=...) returning zeros: the step without evaluations"),
    ("torch_eval_loop", "the K + 1 evaluations alone, looped (perturb, closure, restore)"),
    ("torch_eval_vectorized", "the K + 1 evaluations alone, vectorized (the population call)"),
    ("torch_eval_compiled", "the K + 1 evaluations alone, vectorized and compiled"),
    ("torch_eval_loop_hot", "the K + 1 evaluations alone, looped, repeated back to back"),
    ("torch_eval_compiled_hot", "the K + 1 evaluations alone, compiled, repeated back to back"),
    (
        "torch_eval_guarded_hot",
        "the same, compiled with the batch read from the enclosing scope (so under "
        "torch.compile's guards), back to back",
    ),
    (
        "torch_eval_loop_hot_all",
        "the K + 1 evaluations alone, looped, back to back, with torch's default thread count",
    ),
    (
        "torch_eval_compiled_hot_all",
        "the K + 1 evaluations alone, compiled, back to back, with torch's default thread count",
    ),
]
C_BOUNDS = [  # not part of a step: what limits the evaluations' speed-up
    (
        "torch_eval_matmuls_hot",
        "the two batched matmuls of the K + 1 forward passes alone (baddbmm, bias and ReLU, "
        "in the compiled population's layouts; no loss, no call around them), repeated back "
        "to back",
    ),
    (
        "torch_compiled_call_hot",
        "a compiled population's fixed cost: the same call over a 2-2-2 MLP (batch 4), "
        "repeated back to back",
    ),
]


# ---------------------------------------------------------------------------------------------
# Summaries


def choose(values: np.ndarray) -> int:
    """The grid point (first axis) with the lowest mean log10 final value over seeds (second
    axis); non-finite runs count as +inf."""
    final = values[..., -1]
    logs = np.where(np.isfinite(final), np.log10(np.maximum(final, FLOOR)), np.inf)
    return int(np.argmin(logs.mean(axis=1)))


def log_steps(steps: int) -> np.ndarray:
    return np.unique(np.concatenate([[0], np.geomspace(1, steps, KEEP).astype(int)]))


def geo(values: np.ndarray, axis=0) -> np.ndarray:
    v = np.where(np.isfinite(values), np.maximum(values, FLOOR), 1e300)
    return 10 ** np.log10(v).mean(axis=axis)


def gap_text(gaps) -> str:
    g = np.asarray(gaps, np.float64)
    if not np.isfinite(g).all():
        return "diverged" if not np.isfinite(g).any() else "diverged on some seeds"
    g = np.maximum(g, FLOOR)
    m = geo(g)
    return f"{m:.2e}" if g.size == 1 else f"{m:.2e} [{g.min():.1e}, {g.max():.1e}]"


def pm(values, digits=3) -> str:
    v = np.asarray(values, np.float64)
    s = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return f"{v.mean():.{digits}f} ± {s:.{digits}f}"


def edge_fields(cfgs: list[dict], chosen: dict) -> list[str]:
    """The hyperparameters whose chosen value is the smallest or largest of the grid's."""
    out = []
    for field, value in chosen.items():
        values = sorted({c[field] for c in cfgs})
        if len(values) > 1 and value in (values[0], values[-1]):
            out.append(field)
    return out


def chosen_text(cfgs: list[dict], chosen: dict) -> str:
    edges = edge_fields(cfgs, chosen)
    return " (chosen" + (f"; at the grid's edge in {', '.join(edges)})" if edges else ")")


def setting_text(cfg: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in cfg.items())


def a_records(jax_out: dict, torch_out: dict, steps: int, torch_steps: int) -> list[dict]:
    keep = log_steps(steps)
    records = []
    for row in A_ROWS:
        if row.key in jax_out:
            gaps, cfgs = jax_out[row.key]
            best = choose(gaps)
            records.append(
                {
                    "method": row.key,
                    "label": row.label,
                    "framework": "jax",
                    "coordinates": "eigenbasis of A^T A",
                    "setting": cfgs[best],
                    "evals_per_step": a_evals_per_step(row.key),
                    "steps": steps,
                    "seeds": int(gaps.shape[1]),
                    "gaps_at": {
                        str(t): gaps[best, :, t].tolist()
                        for t in sorted({steps // 10, min(torch_steps, steps), steps})
                    },
                    "curve_step": keep.tolist(),
                    "curve_gap": [float(f"{g:.4g}") for g in geo(gaps[best][:, keep])],
                    "grid": [
                        {"setting": c, "final_gap": gaps[i, :, -1].tolist()}
                        for i, c in enumerate(cfgs)
                    ],
                }
            )
    for row in A_ROWS:
        if row.key in torch_out:
            gaps, cfg = torch_out[row.key]
            keep_t = log_steps(torch_steps)
            records.append(
                {
                    "method": row.key,
                    "label": row.label,
                    "framework": "torch",
                    "coordinates": "original",
                    "setting": cfg,
                    "evals_per_step": a_evals_per_step(row.key),
                    "steps": torch_steps,
                    "seeds": 1,
                    "gaps_at": {
                        str(t): [float(gaps[t])]
                        for t in sorted({steps // 10, torch_steps // 10, torch_steps})
                    },
                    "curve_step": keep_t.tolist(),
                    "curve_gap": [float(f"{g:.4g}") for g in gaps[keep_t]],
                }
            )
    return records


def a_table(records, steps, torch_steps, eta) -> str:
    points = sorted({steps // 10, min(torch_steps, steps), steps})
    headers = ["method", "framework", "chosen setting", "evaluations / iteration"] + [
        f"f - f* at iteration {t:,}" for t in points
    ]
    rows = []
    for r in records:
        setting = setting_text(r["setting"])
        if r["method"].startswith("mgs"):
            setting += f" (surrogate: {eta:.3g} x biased gradient)"
        rows.append(
            [r["label"], f"{r['framework']} ({r['coordinates']})", setting, r["evals_per_step"]]
            + [gap_text(r["gaps_at"][str(t)]) if str(t) in r["gaps_at"] else "" for t in points]
        )
    return markdown_table(headers, rows)


def a_grid_table(records) -> str:
    rows = []
    for r in records:
        if r["framework"] != "jax" or "grid" not in r:
            continue
        cfgs = [g["setting"] for g in r["grid"]]
        cells = [
            f"{setting_text(g['setting'])}: {gap_text(g['final_gap'])}"
            + (chosen_text(cfgs, r["setting"]) if g["setting"] == r["setting"] else "")
            for g in r["grid"]
        ]
        rows.append([r["label"], "<br>".join(cells)])
    return markdown_table(["(a) grid, JAX", "final f - f* per grid point (geometric mean)"], rows)


def b_records(jax_out: dict, torch_out, data: dict, evals: int) -> list[dict]:
    records = []
    for key in ("mgs", "openes", "random_search"):
        if key not in jax_out:
            continue
        curves, test, cfgs = jax_out[key]
        best = choose(curves + 1e-6)  # errors can be exactly 0
        per = b_evals_per_step(key)
        n = curves.shape[-1]
        evals_axis = (
            np.arange(n) * per + (1 if key == "random_search" else 0)
        ).tolist()  # random search spends one evaluation on its start
        records.append(
            {
                "method": key,
                "label": B_LABELS[key],
                "framework": "jax",
                "setting": cfgs[best],
                "evals_per_step": per,
                "evaluations": int(evals_axis[-1]),
                "train_error": curves[best, :, -1].tolist(),
                "test_error": test[best].tolist(),
                "curve_evals": evals_axis,
                "curve_mean": curves[best].mean(0).round(5).tolist(),
                "curve_std": curves[best].std(0).round(5).tolist(),
                "grid": [
                    {
                        "setting": c,
                        "train_error": curves[i, :, -1].tolist(),
                        "test_error": test[i].tolist(),
                    }
                    for i, c in enumerate(cfgs)
                ],
            }
        )
    if torch_out is not None:
        torch_curves, cfg = torch_out
        n = torch_curves.shape[-1]
        records.append(
            {
                "method": "mgs",
                "label": B_LABELS["mgs"],
                "framework": "torch",
                "setting": cfg,
                "evals_per_step": B_K + 1,
                "evaluations": int((n - 1) * (B_K + 1)),
                "train_error": torch_curves[:, -1].tolist(),
                "test_error": None,
                "curve_evals": (np.arange(n) * (B_K + 1)).tolist(),
                "curve_mean": torch_curves.mean(0).round(5).tolist(),
                "curve_std": torch_curves.std(0).round(5).tolist(),
            }
        )
    return records


def b_table(records, data, gd_grad) -> str:
    start = [float(zero_one_error(t, x, y)) for t, x, y in zip(*_b_arrays(data), strict=True)]
    logistic = data["logistic"]
    rows = [
        ["start (random theta0)", "", "", 0, pm(start), ""],
        [
            "gradient descent on the 0-1 error"
            + ("" if gd_grad is None else f" (max |jax.grad| at the starts: {gd_grad:g})"),
            "jax",
            "any lr: it never moves",
            "",
            pm(start),
            "",
        ],
    ]
    for r in records:
        quarter = _curve_at(r, r["evaluations"] // 4)
        rows.append(
            [
                r["label"],
                r["framework"],
                setting_text(r["setting"]),
                r["evaluations"],
                f"{pm(r['train_error'])} (at {r['evaluations'] // 4}: {quarter:.3f})",
                pm(r["test_error"]) if r["test_error"] is not None else "",
            ]
        )
    rows.append(
        [
            "logistic regression, l2 1e-3 (Newton on the smooth surrogate; reference)",
            "numpy",
            "",
            "",
            pm(logistic[:, 0]),
            pm(logistic[:, 1]),
        ]
    )
    return markdown_table(
        [
            "method",
            "framework",
            "chosen setting",
            "loss evaluations",
            "train 0-1 error (mean ± std; mean at a quarter of the budget)",
            "test 0-1 error",
        ],
        rows,
    )


def _b_arrays(data):
    return data["theta0"], data["x"], data["y"]


def _curve_at(record, evals: int) -> float:
    i = int(np.searchsorted(record["curve_evals"], evals, side="right")) - 1
    return float(record["curve_mean"][max(i, 0)])


def b_grid_table(records) -> str:
    rows = []
    for r in records:
        if "grid" not in r:
            continue
        cfgs = [g["setting"] for g in r["grid"]]
        cells = [
            f"{setting_text(g['setting'])}: {np.mean(g['train_error']):.3f}"
            + (chosen_text(cfgs, r["setting"]) if g["setting"] == r["setting"] else "")
            for g in r["grid"]
        ]
        rows.append([r["label"], "<br>".join(cells)])
    return markdown_table(["(b) grid, JAX", "mean final train 0-1 error per grid point"], rows)


def c_records(timings: dict) -> list[dict]:
    records = []
    for model, sizes, batch in C_MODELS:
        t = timings.get(model, {})
        for key, path, fw in C_ROWS:
            if key not in t:
                continue
            s = t[key]
            # each path against the looped path timed in the same interleaved group
            base = t.get("torch_loop_beside_deepcopy" if key == "torch_deepcopy" else "torch_loop")
            records.append(
                {
                    "model": model,
                    "mlp": list(sizes),
                    "batch": batch,
                    "parameters": c_parameters(sizes),
                    "path": key,
                    "description": path,
                    "framework": fw,
                    "ms_per_step": s * 1e3,
                    "candidates_per_s": C_K / s,
                    "speedup_vs_loop": None if base is None else base / s,
                }
            )
    return records


def c_tables(records, timings) -> list[str]:
    tables = []
    for model, sizes, batch in C_MODELS:
        mine = [r for r in records if r["model"] == model]
        if not mine:
            continue
        t = timings[model]
        rows = [
            [
                r["description"],
                r["framework"],
                f"{r['ms_per_step']:.2f}",
                f"{r['candidates_per_s']:,.0f}",
                "" if r["speedup_vs_loop"] is None else f"{r['speedup_vs_loop']:.2f}x",
            ]
            for r in mine
        ]
        rows += [
            [f"(part of the torch step) {text}", "torch", f"{t[k] * 1e3:.3f}", "", ""]
            for k, text in C_PARTS
            if k in t
        ]
        rows += [
            [f"(bound, not a step) {text}", "torch", f"{t[k] * 1e3:.3f}", "", ""]
            for k, text in C_BOUNDS
            if k in t
        ]
        tables.append(
            markdown_table(
                [
                    f"({model}) one MGS step, K = {C_K} candidates, {c_mlp_name(sizes, batch)} "
                    f"({c_parameters(sizes):,} parameters)",
                    "framework",
                    "ms per step (median)",
                    "candidates per second",
                    "vs looped closure path",
                ],
                rows,
            )
        )
    return tables


# ---------------------------------------------------------------------------------------------
# Verdict and notes


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def _c_all_threads(t: dict) -> tuple[float, float] | None:
    """The compiled evaluations back to back with torch's default thread count against the
    loop on that count and against the loop at whichever thread count ran it faster (a second
    thread can slow the loop's small products); ``None`` where the run lacks a timing."""
    keys = ("torch_eval_loop_hot", "torch_eval_loop_hot_all", "torch_eval_compiled_hot_all")
    if not all(k in t for k in keys):
        return None
    loop_one, loop_all, comp_all = (t[k] for k in keys)
    return loop_all / comp_all, min(loop_one, loop_all) / comp_all


def _c_bounds(t: dict) -> tuple[float, float] | None:
    """The looped evaluations over the batched matmuls alone and over the matmuls plus a
    compiled call's fixed cost (all back to back); ``None`` where the run lacks a timing."""
    keys = ("torch_eval_loop_hot", "torch_eval_matmuls_hot", "torch_compiled_call_hot")
    if not all(k in t for k in keys):
        return None
    loop, mm, call = (t[k] for k in keys)
    return loop / mm, loop / (mm + call)


def _verdict(a_recs, b_recs, c_recs, b_logistic, timings) -> str:
    parts = []
    fw = "jax" if any(r["framework"] == "jax" for r in a_recs) else "torch"
    rows_a = {r["method"]: r for r in a_recs if r["framework"] == fw}
    if "sgd" in rows_a:
        steps = rows_a["sgd"]["steps"]

        def final(key):
            return geo(np.asarray(rows_a[key]["gaps_at"][str(steps)]))

        guided = min((k for k in rows_a if k.startswith("mgs_guided")), key=final)
        zero = min((k for k in rows_a if k.startswith("mgs_zero")), key=final)
        early = str(steps // 10)
        text = (
            f"(a) after {steps:,} iterations guided MGS (noise {_mode(guided)}) reaches "
            f"f - f* = {final(guided):.1e} where SGD on the biased gradient stalls at "
            f"{final('sgd'):.1e}; zero-centred only: {final(zero):.1e} (and slower on the way: "
            f"{geo(np.asarray(rows_a[zero]['gaps_at'][early])):.1e} vs "
            f"{geo(np.asarray(rows_a[guided]['gaps_at'][early])):.1e} at iteration "
            f"{steps // 10:,})"
        )
        other = "mgs_guided_grad" if guided == "mgs_guided_const" else "mgs_guided_const"
        if other in rows_a:
            text += f"; guided with noise {_mode(other)}: {final(other):.1e}"
        if "guided_es" in rows_a:
            text += f"; evosax GuidedES {final('guided_es'):.1e}"
        parts.append(text + ("" if fw == "jax" else " (torch)"))
    fw = "jax" if any(r["framework"] == "jax" for r in b_recs) else "torch"
    rows_b = {r["method"]: r for r in b_recs if r["framework"] == fw}
    if "mgs" in rows_b:
        evals = rows_b["mgs"]["evaluations"]
        text = (
            f"(b) 0-1 train error after ~{evals} evaluations: "
            f"MGS {pm(rows_b['mgs']['train_error'])}"
        )
        for key, name in (("openes", "OpenES"), ("random_search", "random search")):
            if key in rows_b:
                text += f", {name} {pm(rows_b[key]['train_error'])}"
        logistic = np.mean(b_logistic[:, 0])
        parts.append(
            text + f" (logistic regression through its smooth surrogate: {logistic:.3f}; "
            "gradient descent on the 0-1 error cannot move: its gradient is 0)"
        )
    texts, target = [], None
    for model, sizes, batch in C_MODELS:
        by = {r["path"]: r for r in c_recs if r["model"] == model}
        paths = [k for k in ("torch_vectorized", "torch_compiled") if k in by]
        if paths and "torch_loop" in by:
            kinds = {"torch_vectorized": "eager", "torch_compiled": "compiled"}
            steps = ", ".join(f"{by[k]['speedup_vs_loop']:.2f}x {kinds[k]}" for k in paths)
            text = (
                f"{steps} on the {model} {c_mlp_name(sizes, batch)} "
                f"(looped {by['torch_loop']['candidates_per_s']:,.0f} candidates/s"
            )
            if "jax_vmap" in by:
                text += f"; JAX vmapped {by['jax_vmap']['candidates_per_s']:,.0f}/s"
            t = timings.get(model, {})
            if "torch_eval_loop" in t and "torch_eval_compiled" in t:
                text += (
                    "; the evaluations alone, compiled vs looped: "
                    f"{t['torch_eval_loop'] / t['torch_eval_compiled']:.2f}x"
                )
                if "torch_eval_loop_hot" in t and "torch_eval_compiled_hot" in t:
                    hot = t["torch_eval_loop_hot"] / t["torch_eval_compiled_hot"]
                    text += f", {hot:.2f}x back to back"
                    if model == C_TARGET:
                        target = [f"{hot:.2f}x back to back on {_threads(timings['threads'])}"]
                        target[0] += f" ({'met' if hot >= 5 else 'not met'})"
                        wide = _c_all_threads(t)
                        if wide is not None:
                            ratio = wide[1]
                            target.append(
                                f"{ratio:.2f}x compiled on torch's default "
                                f"{_threads(timings['threads_all'])} against the loop at its "
                                f"faster thread count ({'met' if ratio >= 5 else 'not met'})"
                            )
                        target.append(
                            f"{t['torch_eval_loop'] / t['torch_eval_compiled']:.2f}x where each "
                            f"call follows other work ({_threads(timings['threads'])})"
                        )
            texts.append(text + ")")
    if texts:
        # The speed issue's target: the vectorized evaluation of the small MLP's K
        # candidates >= 5x the looped closure path. Candidates per second of evaluation is
        # the evaluations' throughput, repeated back to back; the interleaved figure (each
        # call after a step's other work) is given beside it, the whole steps above.
        claim = "no timing of the evaluations" if target is None else ", ".join(target)
        parts.append(
            f"(c) K = {C_K}, speed of the vectorized torch step relative to the looped "
            f"closure path: {'; '.join(texts)} (target: the {C_TARGET} MLP's evaluations "
            f">= 5x: {claim}; torch on {timings.get('torch_device', 'cpu')})"
        )
    return "; ".join(parts)


def _c_note(timings: dict) -> str:
    models = "; ".join(
        f"the {model} one, {'-'.join(map(str, sizes))} with batch {batch} "
        f"({c_parameters(sizes):,} parameters)"
        for model, sizes, batch in C_MODELS
    )
    rounds, block = timings.get("hot_blocks", ("?", "?"))
    text = (
        f"(c) Two MLPs with one hidden layer (ReLU) and cross-entropy on random labels as the "
        f"task loss: {models}; K = {C_K} candidates, so K + 1 = {C_K + 1} evaluations per step "
        "(theta first). lr = 0 (the parameters stay put across repeats; the cost of a step "
        "does not depend on lr), one surrogate gradient in .grad for every step. 'candidates "
        "per second' is K over the median time of one whole step; the torch breakdown rows "
        "time the step with no evaluations and the evaluations alone (the looped one replays "
        "what step(closure) does around its closure calls: one foreach add to perturb, the "
        "closure, one foreach copy to restore). Back to back, each path runs alone in blocks "
        f"({timings.get('hot_warmup', '?')} warm-up calls, then {block} timed ones), the "
        f"paths' blocks alternating for {rounds} rounds (medians over all "
        "timed calls), so that the load of other jobs, which comes and goes over seconds, "
        "hits every path alike. The deepcopy path is the reference code's "
        "loop (a deep copy per candidate) around our kernels, timed in a group of its own "
        "beside the looped path (its ratio is against that group's loop): in development runs "
        "a compiled evaluation right after it took up to 3x as long. torch ran on "
        f"{timings.get('torch_device', 'cpu')} (JAX on {timings.get('jax_backend', '?')}) "
        f"with {timings.get('threads', '?')} CPU thread(s) (the study sets 1 and restores it: "
        "on this shared 2-core machine two threads made small matmuls up to 50x slower); "
        "the evaluations back to back are timed once more with torch's default thread count "
        f"({timings.get('threads_all', '?')} here), what a user's process gets; "
        "absolute times vary between runs with the load of other jobs, the interleaved "
        "repeats keep the ratios fair."
    )
    parts = []
    for model, _, _ in C_MODELS:
        t = timings.get(model, {})
        keys = ("torch_overhead", "torch_eval_loop", "torch_eval_vectorized")
        if all(k in t for k in keys):
            text_part = (
                f"{model}: {t['torch_overhead'] * 1e3:.2f} ms without evaluations, evaluations "
                f"{t['torch_eval_loop'] * 1e3:.2f} ms looped vs "
                f"{t['torch_eval_vectorized'] * 1e3:.2f} ms vectorized "
                f"({t['torch_eval_loop'] / t['torch_eval_vectorized']:.2f}x)"
            )
            hot = ("torch_eval_compiled", "torch_eval_loop_hot", "torch_eval_compiled_hot")
            if all(k in t for k in hot):
                text_part += (
                    f" and {t['torch_eval_compiled'] * 1e3:.2f} ms compiled "
                    f"({t['torch_eval_loop'] / t['torch_eval_compiled']:.2f}x; compiling took "
                    f"{t['torch_compile_s']:.1f} s once); each repeated back to back instead "
                    f"of interleaved: {t['torch_eval_loop_hot'] * 1e3:.2f} ms looped vs "
                    f"{t['torch_eval_compiled_hot'] * 1e3:.2f} ms compiled "
                    f"({t['torch_eval_loop_hot'] / t['torch_eval_compiled_hot']:.2f}x)"
                )
            if "torch_eval_guarded_hot" in t and "torch_eval_loop_hot" in t:
                guarded = t["torch_eval_guarded_hot"]
                text_part += (
                    f", {guarded * 1e3:.3f} ms compiled with the batch read from the enclosing "
                    f"scope, under torch.compile's guards "
                    f"({t['torch_eval_loop_hot'] / guarded:.2f}x)"
                )
            wide = _c_all_threads(t)
            if wide is not None:
                loop, comp = t["torch_eval_loop_hot_all"], t["torch_eval_compiled_hot_all"]
                text_part += (
                    f"; back to back with torch's default "
                    f"{_threads(timings['threads_all'])}: {loop * 1e3:.2f} ms looped vs "
                    f"{comp * 1e3:.2f} ms compiled ({wide[0]:.2f}x; {wide[1]:.2f}x against the "
                    "loop at its faster thread count)"
                )
            bounds = _c_bounds(t)
            if bounds is not None:
                text_part += (
                    f"; the two batched matmuls alone {t['torch_eval_matmuls_hot'] * 1e3:.3f} ms "
                    f"and a compiled call's fixed cost {t['torch_compiled_call_hot'] * 1e3:.3f} "
                    f"ms: the looped evaluations take {bounds[0]:.2f}x the matmuls and "
                    f"{bounds[1]:.2f}x both (the compiled evaluation, whose C++ wrapper calls "
                    "the products without the matmul row's eager dispatch, can come in under "
                    "both)"
                )
            parts.append(text_part)
    if parts:
        text += (
            " A whole step is the step's own work (drawing K x n normals, the perturbations, "
            "the float64 log densities (4), the weights and the update; both paths share it) "
            "plus the evaluations, so the ratio of whole steps is (own work + looped "
            "evaluations) / (own work + vectorized evaluations). This run: "
            + "; ".join(parts)
            + ". On the CPU the vmapped forward passes and losses of such MLPs are "
            "compute-bound: batching the 17 evaluations saves the loop's per-call Python and "
            "dispatch overhead, not arithmetic (checked while building the study, not rerun "
            "here: under vmap the cross-entropy of 17 x 64 rows took longer than 17 separate "
            "calls). Compiling the batched evaluation (torch.compile, TorchInductor) removes "
            "the per-operation overhead of vmap and functional_call, and the compiled "
            "population computes a thin output layer's product transposed (10 columns of 64 or "
            "256 rows: MKL ran it about 1.8x faster so; python -m benchmarks.product_layout); "
            "what is left is the compiled call's fixed cost and two batched matmuls. With the "
            "batch passed as arguments the compiled graph is called without TorchDynamo (no "
            "guards checked, no frame evaluated at each call), with the batch read from the "
            "enclosing scope under torch.compile's guards (functional_population's docstring): "
            "the difference between the two compiled rows. A "
            "single call right after other work runs slower than the same call repeated back "
            "to back, by an amount that grows with the time since its previous call rather "
            "than with the work in between (development checks on this shared virtual "
            "machine: after a 17 ms sleep, or a 17 ms Python busy loop that touches almost no "
            "memory, the compiled evaluation took 4-5x its steady time; after 30 looped "
            "evaluations, a compiled call of one addition took 0.19 ms instead of 0.016): "
            "hence the gap between the interleaved and the back to back figures. Two rows "
            "show what limits a vectorized "
            "evaluation's gain over the loop here: the batched matmuls alone (the same "
            "arithmetic as two baddbmm calls in the compiled population's layouts, with nothing "
            "around them) and a compiled call's "
            "fixed cost (the same compiled population over a 2-2-2 MLP, whose arithmetic is "
            "nil). The looped evaluations over the matmuls alone is about the most any "
            "vectorized evaluation on torch's matmul kernels could reach if the loss and the "
            "call cost nothing (the matmul row runs its three calls eagerly, each with torch's "
            "dispatch cost of a few us, so it is not a strict bound; regrouping the products, "
            "e.g. the first layer as one matmul of the shared batch with all candidates' "
            "weights side by side, took 7% less in a development check at one thread)."
        )
    return text


def _mode(key: str) -> str:
    return "'grad'" if key.endswith("grad") else "'constant'"


def _notes(ctx, steps, torch_steps, seeds, eta, inst, has_evosax, evosax_error, timings) -> list:
    notes = [
        f"(a) One instance ({BIASED_QUADRATIC}; m = {A_M}, n = {A_N}), float32, start x = 0 "
        f"(f - f* = {inst.gap0:.3f}, f* = {inst.f_star:.4f}); the eigenvalues of A^T A / m run "
        f"from {inst.lam.min():.3f} to {inst.lam.max():.3f}. SGD is deterministic here (one "
        f"run per lr), and its floor barely depends on its lr, so its grid choice hardly "
        f"matters; MGS and GuidedES runs differ by their noise (seeds {seeds}, the same "
        "noise for every grid point of a seed). Each row keeps the grid point with the lowest "
        "geometric-mean final gap over the seeds (so the reported seeds are also the ones the "
        "grid was chosen on, as in the convergence study); every grid point's result is in "
        "the grid table and the JSON.",
        f"(a) The surrogate MGS sees is {eta:.3g} x the biased gradient (1 / lambda_max, the "
        "classic step 1 / L, fixed before any run, not tuned): MGS evaluates its candidates "
        "at theta + eps with no step size, so a guided candidate is a gradient step on the "
        "biased gradient plus noise; max_grad_norm is None (no clipping), num_samples 4 (the "
        "paper's), proposal_density 'exact'. Noise 'grad' is the reference code's scale, "
        "noise x mean|surrogate|: it shrinks with the biased gradient, which vanishes exactly "
        "where SGD stalls, so MGS with it stalls there too; 'constant' noise keeps searching "
        "and is what lets the sampler get below the SGD's floor (its own floor is set by the "
        "noise level, hence the noise grid). Zero-centred only (mix 0) searches around theta "
        "alone: with constant noise it never reads the surrogate (5 evaluations per "
        "iteration), with 'grad' noise only through the noise scale.",
        "(a) Why the temperature grid is so low: the candidates' losses differ by 1e-6 to "
        "1e-3 here, while -log q (4) of a candidate in 1000 dimensions varies by tens "
        "between candidates (a chi-square with 1000 degrees of freedom, halved); a "
        "temperature of 1e-4, tried while building the study, was worse on every row by "
        "10x or more, because the weights (5) then follow the proposal density instead of "
        "the loss. At 1e-6 to 1e-8 the weights are nearly one-hot on the best candidate.",
        "(a) JAX runs in the eigenbasis of A^T A: x = V y is an orthogonal change of "
        "variables, so the loss, the gradient, the bias direction (a random unit vector), SGD "
        "and MGS's isotropic noise are the same in distribution; the one coordinate-dependent "
        "quantity is the 'grad' noise scale's mean|surrogate| (a mean absolute value, which "
        "a rotation changes by a factor near 1). torch runs the chosen settings in the original "
        f"coordinates for {torch_steps:,} iterations (one seed; its own random numbers) as the "
        "check: compare its gaps with the JAX rows at the same iteration.",
        "(a) evaluations count loss evaluations plus surrogate-gradient evaluations (the "
        "'vs evaluations' panel of the figure); f - f* is evaluated as (x - x*)^T A^T A "
        "(x - x*) / (2 m), the loss minus the constant f*, so small gaps keep their digits in "
        f"float32. GuidedES: population {GES_POP} (antithetic), subspace of dimension 1 (the "
        f"current surrogate), alpha 0.5, beta 1 (evosax's defaults), perturbation norm "
        f"{GES_STD:g} (central differences are exact on a quadratic), SGD with the lr grid.",
        f"(b) {TWO_BLOBS}; d = {B_DIM} (+ a bias weight), separation {B_SEPARATION}, "
        f"{B_LABEL_NOISE:.0%} flipped labels, {B_TRAIN} training and {B_TEST} test points per "
        f"seed; seeds {seeds} each draw new data, a new start theta0 ~ N(0, I) and new noise. "
        f"Equal budgets of loss evaluations: MGS {B_K} candidates + theta per iteration, "
        f"OpenES a population of {B_POP} (antithetic, centred ranks, SGD on the mean; its "
        f"curve is the error of the mean, which the search itself never evaluates), random "
        f"search {B_RS_K} perturbations of the incumbent per iteration, accepted when no "
        "worse (ties move it across the error's plateaus). MGS has no surrogate (zeros), so "
        "every candidate is centred on theta, noise 'constant'. The 0-1 error is scale "
        "invariant in theta, so the noise level is relative to |theta|, which drifts.",
        "Grid edges: where a row's choice sits at an edge of its grid, the grid tables say "
        "so. Checked while building the study (not rerun here): in (a) temperature 1e-10 "
        "gives the same gaps as 1e-8 (the greedy limit); for the zero-centred rows noise "
        "3e-3 ('constant') and lr 0.03 were worse than the points chosen here, while with "
        "noise 'grad' the good settings lie on a ridge lr x noise ~ 0.1 (noise 0.1 with lr 1 "
        "ends about 10% lower than the point chosen here); in (b) a "
        "temperature of 1e-4 is already greedy (one training point moves the error by 1e-3, "
        "10 logits).",
        _c_note(timings),
    ]
    if not has_evosax:
        notes.append(
            "evosax is not usable here"
            + (f" ({evosax_error})" if evosax_error else "")
            + ": the OpenES and GuidedES rows are missing (pip install evosax, or the bench "
            "extra)."
        )
    if ctx.quick:
        notes.append(
            f"--quick: {steps} iterations, one seed, a one-point grid per row, no 'grad' rows "
            "and no GuidedES in (a), and JAX compiled without XLA's optimizations (so its "
            "candidates per second in (c) are not representative): a smoke run, not a result."
        )
    return notes


# ---------------------------------------------------------------------------------------------
# Figures


def plot_quadratic(ctx, records) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, xkey in zip(axes, ("iteration", "evaluations"), strict=True):
        for r in records:
            step = np.asarray(r["curve_step"])
            x = step if xkey == "iteration" else step * r["evals_per_step"]
            ax.plot(
                np.maximum(x, 1),
                r["curve_gap"],
                "-" if r["framework"] == "jax" else "--",
                color=A_COLORS[r["method"]],
                lw=1.5 if r["framework"] == "jax" else 1.0,
                label=f"{r['label']} [{r['framework']}]",
            )
        ax.set(
            xscale="log",
            yscale="log",
            xlabel=xkey if xkey == "iteration" else "loss + gradient evaluations",
            ylabel="f - f* (geometric mean over seeds)",
            title=f"(a) biased quadratic: f - f* vs {xkey}",
        )
        ax.legend(fontsize=7)
    fig.suptitle("solid: JAX (eigenbasis, all seeds); dashed: torch (original coordinates, seed 0)")
    return save_figure(ctx, fig, "sampling_quadratic.png")


def plot_zero_one(ctx, records, data) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in records:
        x = np.maximum(np.asarray(r["curve_evals"]), 1)
        mean, std = np.asarray(r["curve_mean"]), np.asarray(r["curve_std"])
        color = B_COLORS[r["method"]]
        ax.plot(
            x,
            mean,
            "-" if r["framework"] == "jax" else "--",
            color=color,
            label=f"{r['label']} [{r['framework']}], {setting_text(r['setting'])}",
        )
        if r["framework"] == "jax":
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15)
    ax.axhline(
        data["logistic"][:, 0].mean(),
        color="k",
        ls=":",
        label="logistic regression (smooth surrogate), train",
    )
    ax.set(
        xscale="log",
        xlabel="loss evaluations",
        ylabel="train 0-1 error (mean ± std over seeds)",
        title="(b) 0-1 error of a linear classifier",
    )
    ax.legend(fontsize=7)
    return save_figure(ctx, fig, "sampling_zero_one.png")


def plot_throughput(ctx, records) -> str:
    plt = pyplot()
    models = [m for m in C_MODELS if any(r["model"] == m[0] for r in records)]
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 4), squeeze=False)
    for ax, (model, sizes, batch) in zip(axes[0], models, strict=True):
        mine = [r for r in records if r["model"] == model]
        names = [r["path"] for r in mine]
        values = [r["candidates_per_s"] for r in mine]
        ax.barh(names, values, color=[f"C{i}" for i in range(len(mine))])
        for i, (v, r) in enumerate(zip(values, mine, strict=True)):
            ratio = "" if r["speedup_vs_loop"] is None else f" ({r['speedup_vs_loop']:.2f}x)"
            ax.text(v, i, f" {v:,.0f}{ratio}", va="center", fontsize=8)
        ax.set(
            xlabel="candidates per second (K / median step time)",
            title=f"(c) {model}: K = {C_K}, {c_mlp_name(sizes, batch)}",
        )
        ax.set_xlim(0, max(values) * 1.35)
    fig.tight_layout()
    return save_figure(ctx, fig, "sampling_throughput.png")


# ---------------------------------------------------------------------------------------------


def _evosax() -> tuple[bool, str | None]:
    if importlib.util.find_spec("evosax") is None:
        return False, "not installed"
    try:
        from evosax.algorithms import GuidedES, Open_ES  # noqa: F401
    except Exception as exc:  # an evosax that does not import with this JAX
        return False, f"{type(exc).__name__}: {exc}"
    return True, None


def _evosax_version() -> str:
    try:
        return importlib.metadata.version("evosax")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def run(ctx: Context) -> StudyResult:
    size = "quick" if ctx.quick else "full"
    steps, torch_steps = A_STEPS[size], A_TORCH_STEPS[size]
    seeds = list(range(1 if ctx.quick else ctx.seeds))
    fws = frameworks()
    has_evosax, evosax_error = _evosax() if "jax" in fws else (False, "JAX is not installed")
    inst = quadratic_instance()
    data = b_data(seeds)
    evals = B_EVALS[size]

    a_jax_out, a_torch_out, b_jax_out, b_torch_out, timings = {}, {}, {}, None, {}
    part_seconds = {}  # wall seconds per part (compilation included)
    eta = inst.eta
    jobs = [("a", "jax"), ("a", "torch"), ("b", "jax"), ("b", "torch"), ("c", "")]
    jobs = [f"{part}_{fw}" if fw else part for part, fw in jobs if not fw or fw in fws]
    threads = torch_threads(1) if "torch" in fws else contextlib.nullcontext()
    all_threads = 1
    if "torch" in fws:
        import torch

        all_threads = torch.get_num_threads()  # torch's default: the study runs on one
    with threads:
        for job in progress(jobs, NAME):
            started = time.perf_counter()
            if job == "a_jax":
                a_jax_out = a_jax(inst, A_GRIDS[size], steps, seeds, has_evosax, ctx.quick)
            elif job == "a_torch":
                chosen = {}
                for row in A_ROWS:
                    if row.key in a_jax_out:
                        gaps, cfgs = a_jax_out[row.key]
                        chosen[row.key] = cfgs[choose(gaps)]
                    elif row.key != "guided_es" and row.key in A_GRIDS[size].get("rows", A_ROW):
                        chosen[row.key] = a_configs(A_GRIDS[size], row.key)[0]  # no JAX grid
                a_torch_out = a_torch(inst, chosen, eta, torch_steps)
            elif job == "b_jax":
                b_jax_out = b_jax(data, B_GRIDS[size], evals, seeds, has_evosax, ctx.quick)
            elif job == "b_torch":
                if "mgs" in b_jax_out:
                    curves, _, cfgs = b_jax_out["mgs"]
                    cfg = cfgs[choose(curves + 1e-6)]
                else:
                    cfg = B_GRIDS[size]["mgs"][0]
                b_torch_out = (b_torch(data, cfg, evals), cfg)
            else:
                repeats = C_REPEATS[size]
                for model, sizes, batch in C_MODELS:
                    timings[model] = {}
                    if "torch" in fws:
                        timings[model] |= c_torch(
                            repeats, sizes, batch, ctx.device, all_threads, size
                        )
                    if "jax" in fws:
                        timings[model] |= c_jax(repeats, ctx.quick, sizes, batch)
                if "torch" in fws:
                    import torch

                    timings["threads"] = torch.get_num_threads()
                    timings["threads_all"] = all_threads
                    timings["hot_blocks"] = [C_HOT_ROUNDS[size], C_HOT_BLOCK[size]]
                    timings["hot_warmup"] = C_HOT_WARMUP[size]
                    timings["torch_device"] = ctx.device
                if "jax" in fws:
                    import jax

                    timings["jax_backend"] = jax.default_backend()
            part_seconds[job] = round(time.perf_counter() - started, 2)

    a_recs = a_records(a_jax_out, a_torch_out, steps, torch_steps)
    b_recs = b_records(b_jax_out, b_torch_out, data, evals)
    c_recs = c_records(timings)
    tables, figures = [], []
    if a_recs:
        tables += [a_table(a_recs, steps, torch_steps, eta)]
        tables += [a_grid_table(a_recs)] if any("grid" in r for r in a_recs) else []
        figures.append(plot_quadratic(ctx, a_recs))
    if b_recs:
        tables += [b_table(b_recs, data, b_jax_out.get("gd_grad"))]
        tables += [b_grid_table(b_recs)] if any("grid" in r for r in b_recs) else []
        figures.append(plot_zero_one(ctx, b_recs, data))
    if c_recs:
        tables += c_tables(c_recs, timings)
        figures.append(plot_throughput(ctx, c_recs))
    return StudyResult(
        name=NAME,
        question=QUESTION,
        verdict=_verdict(a_recs, b_recs, c_recs, data["logistic"], timings),
        settings={
            "seeds": seeds,
            "evosax": _evosax_version() + ("" if has_evosax else f" (not usable: {evosax_error})"),
            "quadratic": {
                "problem": BIASED_QUADRATIC,
                "m": A_M,
                "n": A_N,
                "instance_seed": A_INSTANCE,
                "dtype": "float32",
                "start": "x = 0",
                "iterations": steps,
                "torch_iterations": torch_steps,
                "num_samples": A_K,
                "surrogate_scale_eta": eta,
                "max_grad_norm": None,
                "proposal_density": "exact",
                "grid": A_GRIDS[size],
                "guided_es": {"population": GES_POP, "std": GES_STD, "alpha": 0.5, "beta": 1.0},
                "choice": "lowest geometric-mean final f - f* over the seeds",
            },
            "zero_one": {
                "problem": TWO_BLOBS,
                "dim": B_DIM,
                "separation": B_SEPARATION,
                "label_noise": B_LABEL_NOISE,
                "train": B_TRAIN,
                "test": B_TEST,
                "evaluations": evals,
                "mgs_num_samples": B_K,
                "openes_population": B_POP,
                "random_search_k": B_RS_K,
                "grid": B_GRIDS[size],
                "choice": "lowest mean log10 (final train error + 1e-6) over the seeds",
            },
            "throughput": {
                "num_samples": C_K,
                "models": {
                    model: {
                        "mlp": list(sizes),
                        "batch": batch,
                        "parameters": c_parameters(sizes),
                        "hidden_layers": 1,
                        "activation": "relu",
                    }
                    for model, sizes, batch in C_MODELS
                },
                "repeats": C_REPEATS[size],
                "warmup": C_WARMUP,
                "back_to_back": {
                    "rounds": C_HOT_ROUNDS[size],
                    "timed_calls_per_block": C_HOT_BLOCK[size],
                    "warmup_calls_per_block": C_HOT_WARMUP[size],
                },
                "loss": "cross-entropy on random labels",
            },
        },
        data={
            "quadratic": {"f_star": inst.f_star, "gap0": inst.gap0, "records": a_recs},
            "zero_one": {
                "records": b_recs,
                "logistic_train_test": data["logistic"].tolist(),
                "gd_max_abs_grad": b_jax_out.get("gd_grad"),
            },
            "throughput": {"records": c_recs, "timings_s": timings},
            "part_seconds": part_seconds,
        },
        tables=tables,
        figures=figures,
        notes=_notes(ctx, steps, torch_steps, seeds, eta, inst, has_evosax, evosax_error, timings),
    )
