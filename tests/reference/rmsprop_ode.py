"""NumPy float64 oracle for math.md §1: RMSprop as an ODE, Su's loss-tied step, damped-ODE momentum.

A plain transcription of the equations, written for reading, not speed. The equation tags
``(n)`` are the ones used in the docstrings of ``torch_opt.rmsprop_ode`` and
``jax_opt.rmsprop_ode``. Parameters and gradients are lists of float64 arrays.

One optimizer step, for gradients ``g_i`` of the parameters ``theta_i`` at count ``t``
(1-based, after the increment)::

    g_i   <- -g_i                      if maximize                          (M)
    g_i   <- g_i + wd * theta_i                                             (W)
    nu_i  <- decay * nu_i + (1 - decay) * g_i**2        scale="elementwise" (1)
    nu    <- decay * nu + (1 - decay) * sum_i ||g_i||^2 scale="global"      (1g)
    mu_i  <- decay * mu_i + (1 - decay) * g_i           if centered         (2)
    c     =  1 - decay**t if bias_correction else 1                         (3)
    v_i   =  nu_i / c - (mu_i / c)**2                   (elementwise)       (4)
    v     =  nu / c - sum_i ||mu_i / c||^2              (global)            (4g)
    s     =  sqrt(v + eps) if eps_in_sqrt else sqrt(v) + eps                (5)
    d_i   =  g_i / s                                                        (6)
    torch momentum: b_i <- m * b_i + d_i;  u_i = -lr * b_i                  (7t)
    optax momentum: b_i <- m * b_i - lr * d_i;
                    u_i = m * b_i - lr * d_i if nesterov else b_i            (7o)
    no momentum:    u_i = -lr * d_i                                         (7)
    theta_i <- theta_i + u_i                                                (8)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.integrate import solve_ivp

Arrays = list[np.ndarray]


def init_state(
    params: Sequence[np.ndarray],
    *,
    scale: str = "elementwise",
    centered: bool = False,
    initial_scale: float = 0.0,
) -> dict:
    """The optimizer state before the first step."""
    if scale == "elementwise":
        nu: object = [np.full(np.shape(p), initial_scale, np.float64) for p in params]
    else:
        nu = np.float64(initial_scale)
    return {
        "count": 0,
        "nu": nu,
        "mu": [np.zeros(np.shape(p)) for p in params] if centered else None,
        "buf": [np.zeros(np.shape(p)) for p in params],
        # Not optimizer state: the largest magnitude each coordinate of theta has passed
        # through (itself or an update), which bounds the rounding error any implementation
        # can have accumulated in theta. Used by the conditioning checks and comparisons.
        "theta_scale": [np.abs(np.asarray(p, np.float64)) for p in params],
    }


def directions(
    grads: Sequence[np.ndarray],
    state: dict,
    *,
    decay: float,
    eps: float,
    eps_in_sqrt: bool,
    centered: bool = False,
    bias_correction: bool = False,
    scale: str = "elementwise",
) -> tuple[Arrays, dict]:
    """(1)-(6): the directions ``d_i`` and the new ``count``, ``nu``, ``mu`` (``buf`` untouched)."""
    g = [np.asarray(x, np.float64) for x in grads]
    t = state["count"] + 1
    if scale == "elementwise":
        nu = [decay * n + (1 - decay) * x**2 for n, x in zip(state["nu"], g, strict=True)]  # (1)
    else:
        nu = decay * state["nu"] + (1 - decay) * sum(np.sum(x**2) for x in g)  # (1g)
    mu = None
    if centered:
        mu = [decay * m + (1 - decay) * x for m, x in zip(state["mu"], g, strict=True)]  # (2)
    c = 1 - decay**t if bias_correction else 1.0  # (3)
    if scale == "elementwise":
        v = [n / c for n in nu]
        size = list(v)
        if centered:
            v = [vi - (m / c) ** 2 for vi, m in zip(v, mu, strict=True)]  # (4)
            size = [si + (m / c) ** 2 for si, m in zip(size, mu, strict=True)]
    else:
        v = size = nu / c
        if centered:
            v = v - sum(np.sum((m / c) ** 2) for m in mu)  # (4g)
            size = size + sum(np.sum((m / c) ** 2) for m in mu)
        v, size = [v] * len(g), [size] * len(g)

    def denominator(x):
        return np.sqrt(x + eps) if eps_in_sqrt else np.sqrt(x) + eps  # (5)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = [x / denominator(vi) for x, vi in zip(g, v, strict=True)]  # (6)
        well = [
            _well_conditioned(x, di, vi, si, denominator)
            for x, di, vi, si in zip(g, d, v, size, strict=True)
        ]
    if scale == "global":
        ok = all(bool(np.all(w)) for w in well)
        well = [np.full(np.shape(x), ok) for x in g]
    return d, {**state, "count": t, "nu": nu, "mu": mu, "well_conditioned": well}


def _well_conditioned(g, d, v, size, denominator) -> np.ndarray:
    """Where ``d`` does not hinge on rounding: moving ``v`` by 1e-14 of its size (a generous bound,
    some 50 ulps, on any implementation's rounding of (4)) changes ``d`` by less than 1e-11
    relative, a tenth of the float64 comparison tolerance.

    Only centered variants can fail: ``v = nu - mu^2`` cancels (exactly to 0 at decay 0, and at
    the first step with bias correction), where implementations legitimately differ (FMA, order
    of operations) and a slightly negative ``v`` gives NaN with ``eps`` outside the root.
    """
    delta = 1e-14 * np.abs(size)
    lo, hi = g / denominator(v - delta), g / denominator(v + delta)
    return (
        np.isfinite(lo) & np.isfinite(hi) & np.isfinite(d) & (np.abs(hi - lo) <= 1e-11 * np.abs(d))
    )


def step(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    state: dict,
    *,
    lr: float,
    decay: float,
    eps: float,
    eps_in_sqrt: bool,
    centered: bool = False,
    momentum: float = 0.0,
    nesterov: bool = False,
    momentum_style: str = "torch",
    weight_decay: float = 0.0,
    maximize: bool = False,
    bias_correction: bool = False,
    scale: str = "elementwise",
) -> tuple[Arrays, dict]:
    """One RMSprop-ODE step; returns ``(new_params, new_state)`` and leaves the inputs alone."""
    params = [np.asarray(p, np.float64) for p in params]
    g = [np.asarray(x, np.float64) for x in grads]
    if maximize:
        g = [-x for x in g]  # (M)
    g = [x + weight_decay * p for x, p in zip(g, params, strict=True)]  # (W)
    kw = {
        "decay": decay,
        "eps": eps,
        "eps_in_sqrt": eps_in_sqrt,
        "centered": centered,
        "bias_correction": bias_correction,
        "scale": scale,
    }
    d, new_state = directions(g, state, **kw)
    if weight_decay != 0:
        # theta carries rounding of up to ~1e-16 of theta_scale, and weight decay feeds it into
        # g: mark where 1e-14 of theta_scale moves d by more than 1e-11 relative.
        shift = [weight_decay * 1e-14 * sc for sc in state["theta_scale"]]
        d_hi, _ = directions([x + e for x, e in zip(g, shift, strict=True)], state, **kw)
        d_lo, _ = directions([x - e for x, e in zip(g, shift, strict=True)], state, **kw)
        with np.errstate(invalid="ignore"):
            stable = [
                np.abs(h - lo) <= 1e-11 * np.abs(di)
                for h, lo, di in zip(d_hi, d_lo, d, strict=True)
            ]
        if scale == "global":
            ok = all(bool(np.all(x)) for x in stable)
            stable = [np.full(np.shape(x), ok) for x in stable]
        new_state["well_conditioned"] = [
            w & x for w, x in zip(new_state["well_conditioned"], stable, strict=True)
        ]
    state = new_state
    buf = state["buf"]
    if momentum_style == "torch" and momentum > 0:
        buf = [momentum * b + di for b, di in zip(buf, d, strict=True)]  # (7t)
        u = [-lr * b for b in buf]
    elif momentum_style == "optax" and momentum > 0:
        buf = [momentum * b - lr * di for b, di in zip(buf, d, strict=True)]  # (7o)
        u = [momentum * b - lr * di for b, di in zip(buf, d, strict=True)] if nesterov else buf
    else:
        u = [-lr * di for di in d]  # (7)
    new_params = [p + ui for p, ui in zip(params, u, strict=True)]  # (8)
    with np.errstate(invalid="ignore"):
        theta_scale = [
            np.fmax(sc, np.fmax(np.abs(ui), np.abs(p)))
            for sc, ui, p in zip(state["theta_scale"], u, new_params, strict=True)
        ]
    return new_params, {**state, "buf": buf, "theta_scale": theta_scale}


def trajectory(
    params: Sequence[np.ndarray],
    grad_seq: Sequence[Sequence[np.ndarray]],
    *,
    lrs: Sequence[float] | None = None,
    initial_scale: float = 0.0,
    **hyper,
) -> list[tuple[Arrays, dict]]:
    """Apply :func:`step` once per gradient list; returns ``(params, state)`` after every step.

    ``lrs`` gives a learning rate per step (a schedule); otherwise ``hyper["lr"]`` is used.
    """
    state = init_state(
        params,
        scale=hyper.get("scale", "elementwise"),
        centered=hyper.get("centered", False),
        initial_scale=initial_scale,
    )
    out = []
    for k, grads in enumerate(grad_seq):
        if lrs is not None:
            hyper = {**hyper, "lr": lrs[k]}
        params, state = step(params, grads, state, **hyper)
        out.append((params, state))
    return out


def from_torch(kwargs: dict) -> dict:
    """torch.optim.RMSprop's keyword arguments in the oracle's names (``alpha`` is ``decay``)."""
    out = dict(kwargs)
    out["decay"] = out.pop("alpha")
    return out


def run(params, grad_seq, **kwargs) -> list[Arrays]:
    """The parameters after every step of :func:`trajectory`."""
    return [p for p, _ in trajectory(params, grad_seq, **kwargs)]


def reliable(states: Sequence[dict], scale: str = "elementwise") -> list[list[np.ndarray]]:
    """Per step, where the trajectory is still free of ill-conditioned steps.

    A coordinate's history (its EMAs, momentum, parameter) depends only on itself in the
    element-wise form, so a mask is cumulative per coordinate there; the global form couples
    everything, so one ill-conditioned step masks all that follows.
    """
    out, mask = [], None
    for state in states:
        well = state["well_conditioned"]
        mask = well if mask is None else [m & w for m, w in zip(mask, well, strict=True)]
        if scale == "global":
            ok = all(bool(np.all(m)) for m in mask)
            mask = [np.full(np.shape(m), ok) for m in mask]
        out.append(mask)
    return out


# --------------------------------------------------------------------------------------------
# The continuous-time view (math.md §1.3)
#
#   dG/dt      = rate * (g(theta)**2 - G)            (9)   [global: ||g||^2]
#   G~         = G + lr * dG/dt                      (10)  = decay*G + (1-decay)*g^2
#                                                          with decay = 1 - rate*lr
#   dtheta/dt  = -g(theta) / s(G~)                   (11)  s as in (5)
#
# One explicit Euler step of size dt = lr from (theta_n, G_n) is one optimizer step (decay =
# 1 - rate*lr, no momentum, no centering, no bias correction); lr = 0 is the limit ODE.
# --------------------------------------------------------------------------------------------


def vector_field(
    grad_fn: Callable[[np.ndarray], np.ndarray],
    *,
    rate: float,
    lr: float = 0.0,
    eps: float,
    eps_in_sqrt: bool,
    scale: str = "elementwise",
) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``field(theta, G) -> (dtheta/dt, dG/dt)`` of (9)-(11)."""

    def field(theta, G):
        g = np.asarray(grad_fn(theta), np.float64)
        sq = g**2 if scale == "elementwise" else np.sum(g**2)
        dG = rate * (sq - G)  # (9)
        Gt = G + lr * dG  # (10)
        s = np.sqrt(Gt + eps) if eps_in_sqrt else np.sqrt(Gt) + eps
        return -g / s, dG  # (11)

    return field


def integrate(
    field: Callable, theta0: np.ndarray, G0, t_end: float, *, rtol=1e-11, atol=1e-13
) -> tuple[np.ndarray, np.ndarray]:
    """Integrate ``field`` from ``(theta0, G0)`` to ``t_end`` with scipy's DOP853."""
    theta0 = np.asarray(theta0, np.float64)
    G0 = np.asarray(G0, np.float64)
    n = theta0.size

    def rhs(_t, y):
        dth, dG = field(y[:n].reshape(theta0.shape), y[n:].reshape(G0.shape))
        return np.concatenate([np.ravel(dth), np.ravel(dG)])

    y0 = np.concatenate([theta0.ravel(), G0.ravel()])
    sol = solve_ivp(rhs, (0.0, t_end), y0, method="DOP853", rtol=rtol, atol=atol)
    assert sol.success, sol.message
    y = sol.y[:, -1]
    return y[:n].reshape(theta0.shape), y[n:].reshape(G0.shape)


# --------------------------------------------------------------------------------------------
# Su's loss-tied ("Polyak-type") step (math.md §1.4)
#
#   n       = ||g||  over the group / pytree                         (12)
#   L+      = max(L - min_loss, 0)                                   (13)
#   d       = g * L+ * min(1/n, M) / n   (d = 0 where n = 0)         (14)
#   theta  <- theta - lr * d                                         (15)
# --------------------------------------------------------------------------------------------


def loss_tied_step(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    loss: float,
    *,
    lr: float,
    max_scale: float,
    min_loss: float = 0.0,
) -> Arrays:
    """One truncated loss-tied Euler step."""
    g = [np.asarray(x, np.float64) for x in grads]
    n = np.sqrt(sum(np.sum(x**2) for x in g))  # (12)
    excess = max(loss - min_loss, 0.0)  # (13)
    factor = excess * min(1.0 / n, max_scale) / n if n > 0 else 0.0  # (14)
    return [
        np.asarray(p, np.float64) - lr * factor * x for p, x in zip(params, g, strict=True)
    ]  # (15)


def loss_tied_run(params, grad_seq, losses, **hyper) -> list[Arrays]:
    """:func:`loss_tied_step` once per (gradients, loss); the parameters after every step."""
    out = []
    for grads, loss in zip(grad_seq, losses, strict=True):
        params = loss_tied_step(params, grads, loss, **hyper)
        out.append(params)
    return out


def su_example(x: float) -> tuple[float, float]:
    """Su's 1-D example: ``f(x) = x(x-1)(x-3)^2 + 1.62276`` and ``f'(x)``."""
    f = x * (x - 1) * (x - 3) ** 2 + 1.62276
    df = 4 * x**3 - 21 * x**2 + 30 * x - 9
    return f, df


SU_GLOBAL_MIN = 0.40693  # math.md §1.4


def settles(xs: np.ndarray, target: float, tol: float = 1e-3, run: int = 500) -> bool:
    """Whether ``xs`` stays within ``tol`` of ``target`` for ``run`` consecutive steps."""
    inside = np.abs(xs - target) < tol
    streak = 0
    for flag in inside:
        streak = streak + 1 if flag else 0
        if streak >= run:
            return True
    return False


# --------------------------------------------------------------------------------------------
# Momentum from the damped ODE (math.md §1.2)
#
#   beta  = (1 - lambda*gamma/2) / (1 + lambda*gamma/2)            (16)
#   alpha = gamma^2 / (1 + lambda*gamma/2)                          (17)
#   beta_new = 1 - (1 - beta) * sqrt(r)                             (18)
#   leapfrog: eta_{n+1/2} = [(1 - lambda*gamma/2) eta_{n-1/2} - gamma grad(theta_n)]
#                           / (1 + lambda*gamma/2);  theta_{n+1} = theta_n + gamma*eta_{n+1/2}  (19)
# --------------------------------------------------------------------------------------------


def damped_ode_to_momentum(step_size: float, friction: float) -> tuple[float, float]:
    half = friction * step_size / 2
    return step_size**2 / (1 + half), (1 - half) / (1 + half)  # (17), (16)


def retune_momentum(momentum: float, ratio: float) -> float:
    return 1 - (1 - momentum) * np.sqrt(ratio)  # (18)


def leapfrog(grad_fn, theta0, *, step_size: float, friction: float, steps: int) -> np.ndarray:
    """The leapfrog scheme (19) of the damped ODE, from rest; returns all iterates."""
    theta = np.asarray(theta0, np.float64)
    eta = np.zeros_like(theta)
    half = friction * step_size / 2
    out = []
    for _ in range(steps):
        eta = ((1 - half) * eta - step_size * grad_fn(theta)) / (1 + half)  # (19)
        theta = theta + step_size * eta
        out.append(theta)
    return np.array(out)


def heavy_ball(grad_fn, theta0, *, lr: float, momentum: float, steps: int) -> np.ndarray:
    """``v <- momentum*v - lr*grad; theta <- theta + v`` from rest; returns all iterates."""
    theta = np.asarray(theta0, np.float64)
    v = np.zeros_like(theta)
    out = []
    for _ in range(steps):
        v = momentum * v - lr * grad_fn(theta)
        theta = theta + v
        out.append(theta)
    return np.array(out)
