r"""Flooding (math.md §3): batch, individual (iFlood) and adaptive (AdaFlood) flooding.

Twin of ``jax_opt/flooding.py``: the same function names, signatures and equation tags.

.. math::

    \tilde L &= |L - b| + b                                                         \tag{1}

    \nabla \tilde L &= \operatorname{sign}(L - b)\, \nabla L
        \quad (0 \text{ at } L = b)                                                  \tag{2}

    L_{iFlood} &= \tfrac{1}{N} \textstyle\sum_i \big(|\ell_i - b| + b\big)         \tag{3}

    \theta_i &= -\log\big((1 - \gamma)\, e^{-(\alpha \ell^{aux}_i + \beta)} + \gamma\big)
                                                                                     \tag{4}

    L_{AdaFlood} &= \tfrac{1}{N} \textstyle\sum_i \big(|\ell_i - \theta_i| + \theta_i\big)
                                                                                     \tag{5}

The flooded loss is written as ``(L - b) sign(L - b) + b``: its value is (1), and since both
frameworks give ``sign`` a zero derivative, its gradient is (2) in both, zero at ``L = b`` (the
naive ``abs`` differs there: torch's derivative at 0 is 0, JAX's is 1).

References:
    Ishida et al., "Do We Need Zero Training Loss After Achieving Zero Training Error?", ICML
    2020. Xie et al., "iFlood: A Stable and Effective Regularizer", ICLR 2022. Bae et al.,
    "AdaFlood: Adaptive Flood Regularization", TMLR 2024. Su Jianlin, kexue.fm/archives/7643.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from twinopt._checks import (
    check_choice,
    check_fraction,
    check_nonnegative,
    check_same_shape,
    fail,
)

__all__ = ["MODES", "Flooding", "adaflood", "adaflood_levels", "flood", "iflood"]

MODES = ("batch", "individual")


def flood(loss: Tensor, level: Tensor | float) -> Tensor:
    """The flooded loss (1), element-wise, with gradient (2) (zero at ``loss == level``).

    Applied to the mini-batch mean loss this is the paper's flooding.

    Args:
        loss: The loss (any shape).
        level: The flood level ``b >= 0`` (a number or a tensor broadcastable to ``loss``).

    Returns:
        ``|loss - level| + level``.
    """
    if not isinstance(level, Tensor):  # a tensor level is data: checking it would sync
        check_nonnegative("level", level)
    excess = loss - level
    return excess * torch.sign(excess) + level  # (1), (2)


def iflood(losses: Tensor, level: Tensor | float) -> Tensor:
    """Individual flooding (3): the mean of the flooded per-sample losses.

    Args:
        losses: Per-sample losses ``l_i``.
        level: The flood level ``b >= 0``.

    Returns:
        ``mean_i(|l_i - b| + b)``; at least the flooded mean loss, with equality when all
        ``l_i`` lie on one side of ``b``.
    """
    return flood(losses, level).mean()  # (3)


def adaflood_levels(
    aux_losses: Tensor, gamma: float = 0.5, alpha: float = 1.0, beta: float = 0.0
) -> Tensor:
    """AdaFlood's per-sample levels (4) from an auxiliary model's losses, as constants.

    ``gamma = 1`` gives levels 0 (no flooding); ``gamma = 0`` gives ``alpha * l_aux + beta``.
    For cross-entropy, ``exp(-l_aux)`` is the auxiliary model's probability of the label.

    Args:
        aux_losses: Per-sample losses of the auxiliary model (held-out fold).
        gamma: The mixing weight in ``[0, 1]``.
        alpha: Scale of the auxiliary loss, ``>= 0``.
        beta: Shift of the auxiliary loss, ``>= 0``.

    Returns:
        The levels ``theta_i``, detached (no gradient flows into them).
    """
    check_fraction("gamma", gamma)
    check_nonnegative("alpha", alpha)
    check_nonnegative("beta", beta)
    x = alpha * aux_losses.detach() + beta
    gamma_t = torch.as_tensor(gamma, dtype=x.dtype, device=x.device)
    return -torch.logaddexp(torch.log1p(-gamma_t) - x, torch.log(gamma_t))  # (4)


def adaflood(losses: Tensor, levels: Tensor) -> Tensor:
    """AdaFlood's loss (5): per-sample losses flooded at per-sample levels, averaged.

    Args:
        losses: Per-sample losses ``l_i``.
        levels: Per-sample levels ``theta_i`` (e.g. from :func:`adaflood_levels`), the shape
            of ``losses``; treated as constants.

    Returns:
        ``mean_i(|l_i - theta_i| + theta_i)``.
    """
    check_same_shape("levels", levels.shape, "losses", losses.shape)
    return flood(losses, levels.detach()).mean()  # (5)


class _PerSample:
    """The criterion as seen with ``reduction="none"``: its own ``forward`` on a view that reads
    every other attribute (``weight``, ``ignore_index``, ``label_smoothing``, ...) from the
    criterion itself, so later changes to the criterion are seen, and nothing is copied."""

    reduction = "none"

    def __init__(self, criterion: nn.Module) -> None:
        object.__setattr__(self, "_criterion", criterion)

    def __getattr__(self, name: str) -> Any:
        if name == "_criterion":  # not set yet (copy and pickle build the object bare)
            raise AttributeError(name)
        return getattr(self._criterion, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return type(self._criterion).forward(self, *args, **kwargs)


class Flooding(nn.Module):
    """A loss module that floods another: ``Flooding(nn.CrossEntropyLoss(), level=0.05)``.

    In training mode it returns the flooded loss: ``mode="batch"`` floods the criterion's
    (mini-batch) loss by (1); ``mode="individual"`` runs the criterion with ``reduction="none"``
    (its own ``forward``, its current attributes; the criterion itself is not changed) for
    per-sample losses, averages each over all but the first (batch) dimension, and floods them
    one by one (3). After ``.eval()`` it returns the criterion's plain loss; note that the
    wrapper has its own train/eval flag (``model.eval()`` does not reach it unless it is a
    submodule of the model). The level is a float64 buffer, so ``state_dict()`` saves it.

    .. warning::
        iFlood averages the per-sample losses with equal weights, (3). A criterion whose own
        mean is weighted (class ``weight``, ``ignore_index``) therefore gives, at level 0, a
        different value than its ``reduction="mean"``: ignored samples count as loss 0 (their
        flooded value is the constant ``2b``) and weighted ones with their weight.

    Args:
        criterion: Any loss module (called with the wrapper's arguments).
        level: The flood level ``b >= 0``, in the units of the criterion's loss (a mean loss
            and a summed one need different levels).
        mode: ``"batch"`` (flooding) or ``"individual"`` (iFlood).

    Raises:
        ValueError: For a negative level, an unknown mode, or ``mode="individual"`` with a
            criterion that has no ``reduction`` attribute.
    """

    criterion: nn.Module
    level: Tensor
    _per_sample: _PerSample

    def __init__(self, criterion: nn.Module, level: float, mode: str = "batch") -> None:
        super().__init__()
        check_nonnegative("level", level)
        check_choice("mode", mode, MODES)
        self.criterion = criterion
        self.mode = mode
        # float64, so a float64 loss is flooded at the exact level; cast to the loss's dtype.
        self.register_buffer("level", torch.tensor(float(level), dtype=torch.float64))
        if mode == "individual" and not hasattr(criterion, "reduction"):
            raise fail(
                "criterion",
                type(criterion).__name__,
                "a loss with a 'reduction' attribute for mode='individual', which needs "
                "per-sample losses",
            )
        # Not a submodule: the criterion itself, seen with reduction="none".
        object.__setattr__(self, "_per_sample", _PerSample(criterion))

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        if not self.training:
            return self.criterion(*args, **kwargs)
        if self.mode == "batch":
            loss = self.criterion(*args, **kwargs)
            return flood(loss, self.level.to(loss.dtype))  # (1)
        losses = self._per_sample(*args, **kwargs)
        if losses.dim() == 0:
            raise ValueError(
                f"Invalid criterion: {type(self.criterion).__name__} returned one loss with "
                "reduction='none' (must return per-sample losses for mode='individual')"
            )
        per_sample = losses.reshape(losses.shape[0], -1).mean(dim=1)
        return iflood(per_sample, self.level.to(per_sample.dtype))  # (3)

    def extra_repr(self) -> str:
        return f"level={self.level.item():g}, mode={self.mode!r}"
