"""NumPy float64 oracle for math.md §4: MLE-guided parameter search (MGS), one step.

Equation tags as in ``torch_opt/sampling.py`` and ``jax_opt/sampling.py``. A candidate is a
list of arrays, one per parameter tensor ``P``; ``k = 0..K-1`` indexes the candidates::

    g_hat          = -g min(1, c / ||g||)  (||g|| over all tensors; c = max_grad_norm)           (1)
    s_P            = noise mean|g_hat_P|  ("grad", when g_hat_P exists and is not all zero)
                   = noise                ("constant", or no / all-zero surrogate)               (2)
    eps_kP         = m_k g_hat_P + s_P z_kP,  m_k = 1 for a guided candidate, else 0;
                     antithetic: z_{2j} = n_j, z_{2j+1} = -n_j, pair j shares m                  (3)
    a_k            = -1/2 sum_P ||eps_kP||^2 / s_P^2
    b_k            = -1/2 sum_P ||eps_kP - g_hat_P||^2 / s_P^2
    log q_k        = logaddexp(log(1 - mix) + a_k, log(mix) + b_k)   ("exact"; the constant
                     -sum_P n_P (log s_P + log(2 pi) / 2), shared by every candidate, dropped;
                     "unit_variance": the same with every s_P = 1, the reference code's form)    (4)
    w_k            = softmax_k(-(d_k - d_0) / temperature - log q_k),  w_k = 0 where d_k is not
                     finite (all zero when no d_k is)                                            (5)
    Delta_P        = sum_k w_k eps_kP                                                            (6)
    theta_P       <- theta_P + lr Delta_P                                                        (7)

``d_0`` is the task loss at ``theta``, ``d_k`` at ``theta + eps_k``; with a base optimizer,
``-Delta`` is its gradient instead of (7).
"""

from __future__ import annotations

import math

import numpy as np


def guided(num_samples: int, mix: float, antithetic: bool = False) -> np.ndarray:
    """Candidate ``k`` (pair ``k`` under ``antithetic``) is guided when
    ``ceil((k + 1) mix) > ceil(k mix)`` (3)."""
    n = num_samples // 2 if antithetic else num_samples
    mask = np.array([math.ceil((k + 1) * mix) > math.ceil(k * mix) for k in range(n)], bool)
    return np.repeat(mask, 2) if antithetic else mask


def clip_surrogate(grads, max_grad_norm):
    """(1): ``None`` entries (no surrogate) stay ``None``; ``max_grad_norm=None``: no clip."""
    present = [np.asarray(g, np.float64) for g in grads if g is not None]
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in present))
    factor = 1.0 if max_grad_norm is None or norm <= max_grad_norm else max_grad_norm / norm
    return [None if g is None else -factor * np.asarray(g, np.float64) for g in grads]


def noise_scale(guide, noise, noise_scale):
    """(2)."""
    if noise_scale == "grad" and guide is not None:
        m = float(np.mean(np.abs(guide)))
        if m > 0:
            return noise * m
    return float(noise)


def perturbations(guide, normals, mask, scale, antithetic=False):
    """(3): ``normals`` has ``K`` rows, or ``K // 2`` under ``antithetic``."""
    z = np.asarray(normals, np.float64)
    if antithetic:
        z = np.stack([z, -z], axis=1).reshape(-1, *z.shape[1:])
    centre = np.zeros(z.shape[1:]) if guide is None else np.asarray(guide, np.float64)
    m = np.asarray(mask, np.float64).reshape(-1, *([1] * (z.ndim - 1)))
    return m * centre + scale * z


def log_proposal(eps, guides, scales, mix, proposal_density="exact"):
    """(4): ``eps`` is a list (per tensor) of ``(K, *shape)`` arrays."""
    k = eps[0].shape[0]
    a, b = np.zeros(k), np.zeros(k)
    for e, g, s in zip(eps, guides, scales, strict=True):
        s2 = 1.0 if proposal_density == "unit_variance" else s * s
        centre = 0.0 if g is None else g
        a += -0.5 * np.sum(e.reshape(k, -1) ** 2, axis=1) / s2
        b += -0.5 * np.sum((e - centre).reshape(k, -1) ** 2, axis=1) / s2
    with np.errstate(divide="ignore"):
        return np.logaddexp(np.log(1.0 - mix) + a, np.log(mix) + b)


def weights_rtol(losses, loss0, log_q, temperature, base: float = 1e-10) -> float:
    """The relative accuracy float64 allows the weights of (5): rounding each logit z moves it
    by up to eps |z|, which moves every weight by up to about 2 eps max |z| relatively. For
    losses of 1e6 at temperature 0.3 that is 1e-9, above a flat 1e-10."""
    losses, log_q = np.asarray(losses, np.float64), np.asarray(log_q, np.float64)
    finite = np.isfinite(losses)
    if not finite.any():
        return base
    z = np.abs((losses[finite] - loss0) / temperature) + np.abs(log_q[finite])
    return base + 4 * np.finfo(np.float64).eps * float(z.max())


def importance_weights(losses, loss0, log_q, temperature):
    """(5)."""
    d = np.asarray(losses, np.float64)
    logits = np.where(np.isfinite(d), -(d - loss0) / temperature - np.asarray(log_q), -np.inf)
    if not np.isfinite(logits).any():
        return np.zeros_like(d)
    w = np.exp(logits - logits[np.isfinite(logits)].max())
    return w / w.sum()


def weighted_direction(weights, eps):
    """(6): one array per tensor."""
    return [np.tensordot(np.asarray(weights), e, axes=1) for e in eps]


def mgs_step(
    params,
    grads,
    normals,
    mask,
    loss_fn,
    *,
    lr=1.0,
    noise=1.0,
    noise_scale_mode="grad",
    mix=0.5,
    temperature=1.0,
    proposal_density="exact",
    antithetic=False,
    max_grad_norm=1.0,
):
    """One MGS step with injected standard normals (one ``(K or K//2, *shape)`` array per tensor)
    and guided ``mask`` (``K``). ``loss_fn(list of arrays) -> float``. Returns ``(new params,
    Delta, weights)``."""
    guides = clip_surrogate(grads, max_grad_norm)  # (1)
    scales = [noise_scale(g, noise, noise_scale_mode) for g in guides]  # (2)
    eps = [
        perturbations(g, z, mask, s, antithetic)
        for g, z, s in zip(guides, normals, scales, strict=True)
    ]  # (3)
    k = eps[0].shape[0]
    d0 = loss_fn([np.asarray(p, np.float64) for p in params])
    losses = [loss_fn([p + e[i] for p, e in zip(params, eps, strict=True)]) for i in range(k)]
    log_q = log_proposal(eps, guides, scales, mix, proposal_density)  # (4)
    w = importance_weights(losses, d0, log_q, temperature)  # (5)
    delta = weighted_direction(w, eps)  # (6)
    if not np.isfinite(d0):
        delta = [np.zeros_like(x) for x in delta]
    return [p + lr * dl for p, dl in zip(params, delta, strict=True)], delta, w  # (7)
