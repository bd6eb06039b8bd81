"""NumPy float64 oracle for math.md §2.1: Su's Amos-derived learning-rate and weight-decay
schedules.

Equation tags as in ``torch_opt/schedules.py`` and ``jax_opt/schedules.py`` (T the half-life in
steps, t counting from 0, k the number of entries of a tensor, sigma its scale)::

    s(t)      = 1 / (1 + t / T)                       inverse_time   (2 alpha0 p0 T = 1)  (1)
    s(t)      = 1 / (1 + (sqrt(2) - 1) t / T)^2       inverse_square (alpha0 p T = sqrt(2) - 1)
                                                                                          (2)
    alpha_t   = alpha0 s(t)                                                               (3)
    rho_t     = alpha0^2 / (2 q) s(t)                                                     (4)
    lambda_t  = rho_t / alpha_t = alpha0 / (2 q)      (AdamW: theta <- theta (1 - alpha_t lambda_t))
                                                                                          (5)
    dtheta    = -alpha0 sqrt(k) sigma s(t) u / ||u|| - rho_t theta    (first term 0 if u = 0)
                                                                                          (6)

Su's own parametrization (math.md §2.1 steps 6, 7): s(t) = 1 / (alpha0 p t + 1)^2 for a constant
cos(u, eps) = p, s(t) = 1 / (2 alpha0 p0 t + 1) for p_t = p0 exp(-S_t); both solve, to first order
in alpha0 p, the recurrence of the squared error ratio x_t = ||eps_t||^2 / ||eps_0||^2,
x_{t+1} = x_t (1 - 2 p_t alpha0 sqrt(x_t)) (steps 4, 5: sqrt(2 rho_t q) = alpha0 sqrt(x_t)).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MODES = ("inverse_time", "inverse_square")


def decay(t, half_life, mode):
    """s(t), (1) or (2)."""
    x = np.float64(t) / half_life
    if mode == "inverse_time":
        return 1.0 / (1.0 + x)  # (1)
    return 1.0 / (1.0 + (np.sqrt(2.0) - 1.0) * x) ** 2  # (2)


def su_decay(t, alpha0, p, mode):
    """Su's forms (math.md §2.1 steps 6, 7) in terms of the cosine p (p0 for inverse_time)."""
    if mode == "inverse_time":
        return 1.0 / (2.0 * alpha0 * p * t + 1.0)
    return 1.0 / (alpha0 * p * t + 1.0) ** 2


def cosine_for_half_life(alpha0, half_life, mode):
    """The p (or p0) of Su's forms whose decay halves after ``half_life`` steps."""
    if mode == "inverse_time":
        return 1.0 / (2.0 * alpha0 * half_life)  # 2 alpha0 p0 T = 1
    return (np.sqrt(2.0) - 1.0) / (alpha0 * half_life)  # alpha0 p T = sqrt(2) - 1


def error_ratio(alpha0, p, steps, mode):
    """Su's recurrence for x_t = ||eps_t||^2 / ||eps_0||^2, t = 0..steps: the squared error
    shrinks by 2 p_t sqrt(2 rho_t q) per step with the balanced decay 2 rho_t q = alpha0^2 x_t,
    and p_t = p (inverse_square) or p_t = p0 sqrt(x_t) (inverse_time)."""
    x = np.empty(steps + 1)
    x[0] = 1.0
    for t in range(steps):
        cos = p if mode == "inverse_square" else p * np.sqrt(x[t])
        x[t + 1] = x[t] * (1.0 - 2.0 * cos * alpha0 * np.sqrt(x[t]))
    return x


def learning_rate(t, alpha0, half_life, mode):
    return alpha0 * decay(t, half_life, mode)  # (3)


def decay_rate(t, alpha0, half_life, mode, q):
    return alpha0**2 / (2.0 * q) * decay(t, half_life, mode)  # (4)


def weight_decay(t, alpha0, half_life, mode, q, convention="lr_scaled"):
    """The weight_decay that realizes rho_t: (5) when the optimizer scales it by the learning
    rate, rho_t itself when it does not."""
    if convention == "lr_scaled":
        return alpha0 / (2.0 * q)  # (5)
    return decay_rate(t, alpha0, half_life, mode, q)  # (4)


def model_scale(theta):
    """The default sigma (math.md §2.1 step 8, §2.4): the RMS of the tensor, 0.5 if all zeros."""
    rms = float(np.sqrt(np.mean(np.square(np.asarray(theta, np.float64))))) if np.size(theta) else 0
    return rms if rms > 0 else 0.5


def su_update(u, theta, alpha0, sigma, s, q):
    """(6) for one tensor (u the base direction, s the decay factor)."""
    u = np.asarray(u, np.float64)
    theta = np.asarray(theta, np.float64)
    norm = np.linalg.norm(u.ravel())
    step = 0.0 if norm == 0 else alpha0 * np.sqrt(u.size) * sigma * s * u / norm
    return -step - alpha0**2 / (2.0 * q) * s * theta  # (6), (4)


def su_run(params, direction_fn, steps, *, alpha0, half_life, mode, q, sigmas=None):
    """Steps of (6): ``direction_fn(t, params) -> directions`` (t from 0); sigma per tensor
    (default: model_scale of the initial parameters). Returns the parameters after each step."""
    params = [np.asarray(p, np.float64) for p in params]
    sigmas = [model_scale(p) for p in params] if sigmas is None else list(sigmas)
    out = []
    for t in range(steps):
        s = decay(t, half_life, mode)
        dirs = direction_fn(t, params)
        params = [
            p + su_update(u, p, alpha0, sg, s, q)
            for p, u, sg in zip(params, dirs, sigmas, strict=True)
        ]
        out.append(params)
    return out


class Adam:
    """Adam's direction m_hat / (sqrt(v_hat) + eps) (torch.optim.Adam and optax.scale_by_adam
    with eps_root = 0), per tensor, count from 1."""

    def __init__(self, shapes: Sequence[tuple], b1=0.9, b2=0.999, eps=1e-8):
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.b1, self.b2, self.eps, self.count = b1, b2, eps, 0

    def __call__(self, grads):
        self.count += 1
        out = []
        for i, g in enumerate(grads):
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
            m_hat = self.m[i] / (1 - self.b1**self.count)
            v_hat = self.v[i] / (1 - self.b2**self.count)
            out.append(m_hat / (np.sqrt(v_hat) + self.eps))
        return out


def adamw_run(params, grad_seq, *, alpha0, half_life, mode, q, b1=0.9, b2=0.999, eps=1e-8):
    """AdamW driven by (3), (4): theta <- theta (1 - rho_t) - alpha_t adam_t (t from 0).
    Returns the parameters after each step."""
    params = [np.asarray(p, np.float64) for p in params]
    adam = Adam([p.shape for p in params], b1, b2, eps)
    out = []
    for t, grads in enumerate(grad_seq):
        lr = learning_rate(t, alpha0, half_life, mode)  # (3)
        rho = decay_rate(t, alpha0, half_life, mode, q)  # (4)
        params = [p * (1 - rho) - lr * d for p, d in zip(params, adam(grads), strict=True)]
        out.append(params)
    return out
