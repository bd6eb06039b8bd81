"""NumPy float64 oracle for math.md §2.2: Amos as the reference implementation (jestimator 0.3.3)
runs it, with clipping before and an EMA of the updates after.

Per tensor theta with gradient g, model-oriented scale eta, global learning rate xi_t (at the
1-based count t), state v and b of the reduced shape (count t incremented first)::

    g     <- clip(g, -clip_value, clip_value)           if clip_value > 0        (0)
    M2     = mean of g^2 over the axes where v is reduced (all, for shape ())    (1)
    v     <- beta v + (1 - beta) M2                                               (2)
    r      = (1 - beta^t) / max(v, eps)                                           (3)
    c      = (1 + c_coef sqrt(xi) b)^(-1/2)             (old b)                   (4)
    gamma  = c xi^2 r M2                                                          (5)
    d      = 1 / (1 + d_coef sqrt(xi eta) b)             (old b)                  (6)
    u      = d (-(gamma / 2 + extra_l2) theta - xi eta sqrt(r) g)                 (7)
    b     <- b + gamma (1 + b)                                                    (8)
    m     <- mu m + (1 - mu) u;  u = m                  if momentum mu > 0        (9)
    theta <- theta + u                                                            (10)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EPS = 2.0**-125


def reduced_mean_square(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(1): the mean of g^2 over the axes that ``shape`` reduces (keepdims), or over all of g."""
    if not shape:
        return np.mean(np.square(g))
    axes = tuple(i for i, k in enumerate(g.shape) if shape[i] < k)
    return np.mean(np.square(g), axis=axes, keepdims=True)


def init_state(params: Sequence[np.ndarray], shapes: Sequence[tuple] | None = None) -> dict:
    shapes = [np.shape(p) for p in params] if shapes is None else list(shapes)
    return {
        "count": 0,
        "v": [np.zeros(s) for s in shapes],
        "b": [np.zeros(s) for s in shapes],
        "m": [np.zeros(np.shape(p)) for p in params],
    }


def step(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    state: dict,
    *,
    lr: float,
    etas: Sequence[float],
    beta: float = 0.999,
    extra_l2: float = 0.0,
    c_coef: float = 0.25,
    d_coef: float = 0.25,
    eps: float = EPS,
    momentum: float = 0.0,
    clip_value: float | None = None,
) -> tuple[list[np.ndarray], dict]:
    """One Amos step with learning rate ``lr`` (xi at this count); returns new params, state."""
    t = state["count"] + 1
    new_params, new_v, new_b, new_m = [], [], [], []
    for theta, g, v, b, m, eta in zip(
        params, grads, state["v"], state["b"], state["m"], etas, strict=True
    ):
        theta, g = np.asarray(theta, np.float64), np.asarray(g, np.float64)
        if clip_value is not None and clip_value > 0:
            g = np.clip(g, -clip_value, clip_value)  # (0)
        m2 = reduced_mean_square(g, np.shape(v))  # (1)
        v = beta * v + (1 - beta) * m2  # (2)
        r = (1 - beta**t) / np.maximum(v, eps)  # (3)
        c = (1 + c_coef * np.sqrt(lr) * b) ** -0.5  # (4)
        gamma = c * lr**2 * r * m2  # (5)
        d = 1 / (1 + d_coef * np.sqrt(lr * eta) * b)  # (6)
        u = d * (-(0.5 * gamma + extra_l2) * theta - lr * eta * np.sqrt(r) * g)  # (7)
        b = b + gamma * (1 + b)  # (8)
        if momentum > 0:
            m = momentum * m + (1 - momentum) * u  # (9)
            u = m
        new_params.append(theta + u)  # (10)
        new_v.append(v)
        new_b.append(b)
        new_m.append(m)
    return new_params, {"count": t, "v": new_v, "b": new_b, "m": new_m}


def run(params, grad_seq, *, lrs=None, shapes=None, **hyper) -> list[tuple[list, dict]]:
    """:func:`step` once per gradient list (``lrs``: a learning rate per step, else
    ``hyper["lr"]``); returns ``(params, state)`` after every step."""
    state = init_state(params, shapes)
    out = []
    for k, grads in enumerate(grad_seq):
        if lrs is not None:
            hyper = {**hyper, "lr": lrs[k]}
        params, state = step(params, grads, state, **hyper)
        out.append((params, state))
    return out


def model_scale(theta: np.ndarray) -> float:
    """The default eta (math.md §2.4): the RMS of the tensor, or 0.5 when it is all zeros."""
    rms = float(np.sqrt(np.mean(np.square(np.asarray(theta, np.float64)))))
    return rms if rms > 0 else 0.5


# The reference's own convergence settings (jestimator amos_test.py, benchmarks.md).
PARABOLA = {
    "start": np.array([-1.0, 10.0, 1.0]),
    "target": np.array([1.0, -1.0, 1.0]),
    "lr": 1.0,
    "eta": 1.0,
    "steps": 10_000,
}
ROSENBROCK = {
    "start": np.array([0.0, 0.0]),
    "target": np.array([1.0, 1.0]),
    "lr": 0.5,
    "eta": 1.0,
    "beta": 0.5,
    "clip_value": 1.0,
    "momentum": 0.9,
    "steps": 10_000,
}


def parabola_grad(theta):
    return 2 * (theta - PARABOLA["target"])


def rosenbrock_grad(theta):
    x, y = theta[0], theta[1]
    return np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])


# Scenarios of issue 3, shared by the oracle's check against the reference implementation and
# the packages' checks against the oracle: full state, reduced state ((), (1, out)), momentum,
# clip_value, extra_l2 != 0, a schedule (called with the 1-based count), and all at once.
SCENARIO_PARAMS = {
    "w": np.linspace(-1.0, 1.0, 12).reshape(3, 4),
    "b": np.zeros(4),
    "s": np.array(0.7),
}
SCENARIO_ETAS = {"w": 0.3, "b": 0.5, "s": 1.0}
SCENARIOS = {
    "full": {},
    "scalar_state": {"shape": "scalar"},
    "reduced_state": {"shape": "reduced"},
    "momentum": {"momentum": 0.9},
    "clip": {"clip_value": 0.3},
    "extra_l2": {"extra_l2": 0.01},
    "schedule": {"schedule": True},
    "everything": {
        "shape": "reduced",
        "momentum": 0.5,
        "clip_value": 0.5,
        "extra_l2": 0.003,
        "schedule": True,
        "beta": 0.9,
        "c_coef": 0.5,
        "d_coef": 0.1,
    },
}


def scenario_shape(shape: tuple[int, ...], mode: str | None) -> tuple[int, ...]:
    if mode == "scalar":
        return ()
    if mode == "reduced":
        return (1, shape[1]) if len(shape) == 2 else ()
    return tuple(shape)


def scenario_schedule(count):
    return 0.05 / (1.0 + 0.01 * count)


def scenario_gradients(steps: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            k: rng.normal(size=np.shape(v)) * (6.0 if k == "b" else 1.0)
            for k, v in SCENARIO_PARAMS.items()
        }
        for _ in range(steps)
    ]


def scenario(name: str, steps: int = 120):
    """``(keys, options, oracle_run)`` for a scenario: ``options`` are Amos's keyword
    arguments (``lr`` a number or the schedule), ``oracle_run`` the oracle's trajectory."""
    cfg = dict(SCENARIOS[name])
    mode, use_schedule = cfg.pop("shape", None), cfg.pop("schedule", False)
    keys = sorted(SCENARIO_PARAMS)
    grads = scenario_gradients(steps)
    shapes = [scenario_shape(np.shape(SCENARIO_PARAMS[k]), mode) for k in keys]
    hyper = {k: cfg[k] for k in ("beta", "c_coef", "d_coef", "extra_l2") if k in cfg}
    options = {
        "lr": scenario_schedule if use_schedule else 0.05,
        "mode": mode,
        "momentum": cfg.get("momentum"),
        "clip_value": cfg.get("clip_value"),
        **hyper,
    }
    oracle_run = run(
        [SCENARIO_PARAMS[k] for k in keys],
        [[g[k] for k in keys] for g in grads],
        lrs=[scenario_schedule(k + 1) for k in range(steps)] if use_schedule else None,
        lr=0.05,
        shapes=shapes,
        etas=[SCENARIO_ETAS[k] for k in keys],
        momentum=cfg.get("momentum") or 0.0,
        clip_value=cfg.get("clip_value"),
        **hyper,
    )
    return keys, grads, shapes, options, oracle_run
