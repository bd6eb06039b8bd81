"""Kernels of RMSprop as an ODE: equations (1)-(9) of ``torch_opt.rmsprop_ode``, on tensors.

Twin of ``jax_opt/rmsprop_ode/kernels.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from torch_opt._math import stat_dtype, sum_of_squares
from twinopt._checks import check_choice, check_nonnegative

SCALES = ("elementwise", "global")


def _bias(decay: Any, count: Any, bias_correction: bool) -> Any:
    """(3): ``1 - decay**count``, or 1 without bias correction (``count`` is 1-based)."""
    if not bias_correction:
        return 1.0
    if isinstance(count, Tensor):
        count = count.item()
    return 1 - decay**count


def _denominator(v: Tensor, eps: Any, eps_in_sqrt: bool) -> Tensor:
    """(5)."""
    return v.add(eps).sqrt() if eps_in_sqrt else v.sqrt().add(eps)


def rmsprop_ode_direction(
    grad: Tensor,
    nu: Tensor,
    mu: Tensor | None,
    *,
    decay: float,
    eps: float,
    eps_in_sqrt: bool,
    bias_correction: bool,
    count: int | Tensor,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Element-wise RMSprop for one real tensor: equations (1)-(6).

    Args:
        grad: The gradient ``g`` (after maximize / weight decay).
        nu: The EMA of squared gradients before this step.
        mu: The EMA of gradients before this step (centered), or ``None`` (not centered).
        decay: ``lambda`` (torch's ``alpha``).
        eps: ``epsilon``.
        eps_in_sqrt: Whether ``epsilon`` goes inside the square root (5).
        bias_correction: Whether to divide the EMAs by ``1 - decay**count`` (3).
        count: The 1-based number of this step.

    Returns:
        ``(direction, nu, mu)``: ``d = g / s`` and the updated EMAs. Inputs are not modified.
    """
    nu = nu.mul(decay).addcmul_(grad, grad, value=1 - decay)  # (1)
    if mu is not None:
        mu = mu.lerp(grad, 1 - decay)  # (2)
    c = _bias(decay, count, bias_correction)  # (3)
    v = nu / c if bias_correction else nu
    if mu is not None:
        mu_hat = mu / c if bias_correction else mu
        v = v.addcmul(mu_hat, mu_hat, value=-1)  # (4)
    return grad / _denominator(v, eps, eps_in_sqrt), nu, mu  # (5), (6)


def rmsprop_ode_global_direction(
    grads: Sequence[Tensor],
    nu: Tensor,
    mus: Sequence[Tensor] | None,
    *,
    decay: float,
    eps: float,
    eps_in_sqrt: bool,
    bias_correction: bool,
    count: int | Tensor,
) -> tuple[list[Tensor], Tensor, list[Tensor] | None]:
    """Global-norm RMSprop for a list of real tensors: equations (1)-(6) with one scalar ``nu``.

    The direction of every tensor is its gradient divided by the same scalar, so the update
    keeps the direction of the gradient (Su's "more principled" multi-dimensional version).

    Args:
        grads: The gradients (after maximize / weight decay).
        nu: The 0-d EMA of the squared global norm before this step; its dtype is the dtype of
            the statistics (see :func:`torch_opt._math.stat_dtype`).
        mus: The per-tensor gradient EMAs (centered), or ``None``.
        decay, eps, eps_in_sqrt, bias_correction, count: As in :func:`rmsprop_ode_direction`.

    Returns:
        ``(directions, nu, mus)``. Inputs are not modified.
    """
    nu = nu.mul(decay).add(sum_of_squares(grads, like=nu), alpha=1 - decay)  # (1)
    if mus is not None:
        mus = [m.lerp(g, 1 - decay) for m, g in zip(mus, grads, strict=True)]  # (2)
    c = _bias(decay, count, bias_correction)  # (3)
    v = nu / c
    if mus is not None:
        v = v - sum_of_squares(mus, like=nu) / c**2  # (4)
    s = _denominator(v, eps, eps_in_sqrt)  # (5)
    return [g / s.to(g.device) for g in grads], nu, mus  # (6)


def loss_tied_direction(
    grads: Sequence[Tensor], loss: Tensor | float, *, max_scale: float, min_loss: float
) -> list[Tensor]:
    r"""Su's truncated loss-tied direction (math.md §1.4) for a list of tensors.

    .. math::

        n = \lVert g\rVert, \qquad L_+ = \max(L - L_{min}, 0), \qquad
        d = g\, L_+ \min(1/n, M) / n \quad (d = 0 \text{ where } n = 0)            \tag{8}

    so ``theta - lr * d`` is one Euler step of ``dtheta/dt = -(g/||g||) L min(1/||g||, M)``.

    Args:
        grads: The gradients; the norm ``n`` is over all of them.
        loss: The current loss ``L``.
        max_scale: The truncation ``M`` of ``1/n``.
        min_loss: ``L_min``, the loss value taken as the minimum.

    Returns:
        The directions ``d``; a zero gradient gives a zero direction.
    """
    like = torch.zeros((), dtype=stat_dtype(grads), device=grads[0].device)
    n = sum_of_squares(grads, like=like).sqrt()
    excess = (torch.as_tensor(loss, dtype=like.dtype, device=like.device) - min_loss).clamp_min(0)
    safe_n = torch.where(n > 0, n, torch.ones_like(n))
    factor = torch.where(n > 0, excess * torch.clamp(1 / safe_n, max=max_scale) / safe_n, 0.0)
    return [g * factor.to(device=g.device, dtype=g.dtype) for g in grads]  # (8)


def rmsprop_vector_field(
    grad_fn: Callable[[Tensor], Tensor],
    *,
    rate: float,
    lr: float = 0.0,
    eps: float,
    eps_in_sqrt: bool,
    scale: str = "elementwise",
) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    r"""The vector field of RMSprop in ODE time (math.md §1.3).

    .. math::

        \dot G = \rho\,(g(\theta)^2 - G), \qquad
        \tilde G = G + \gamma \dot G, \qquad
        \dot\theta = -g(\theta) / s(\tilde G)                                        \tag{9}

    with ``s`` as in (5) and ``g^2`` replaced by ``||g||^2`` (a scalar ``G``) when
    ``scale="global"``. Time is scaled so that one explicit Euler step of size ``dt = lr`` is
    exactly one RMSprop step with ``decay = 1 - rate * lr`` (no momentum, not centered, no bias
    correction): the look-ahead ``G~`` is the optimizer's updated second moment. ``lr = 0``
    gives the limit ODE that RMSprop tracks to first order in ``lr`` at a fixed ``rate``.

    Args:
        grad_fn: ``theta -> g(theta)`` for one tensor ``theta``.
        rate: The relaxation rate ``rho = (1 - decay) / lr`` of the second moment.
        lr: The Euler step the field is matched to (0: the limit ODE).
        eps: ``epsilon``.
        eps_in_sqrt: Placement of ``epsilon`` as in (5).
        scale: ``"elementwise"`` (``G`` shaped like ``theta``) or ``"global"`` (0-d ``G``).

    Returns:
        ``field(theta, G) -> (dtheta/dt, dG/dt)``.
    """
    check_nonnegative("rate", rate)
    check_nonnegative("lr", lr)
    check_nonnegative("eps", eps)
    check_choice("scale", scale, SCALES)

    def field(theta: Tensor, G: Tensor) -> tuple[Tensor, Tensor]:
        g = grad_fn(theta)
        sq = g * g if scale == "elementwise" else torch.sum(g * g)
        dG = rate * (sq - G)
        s = _denominator(G + lr * dG, eps, eps_in_sqrt)  # (9)
        return -g / s, dG

    return field
