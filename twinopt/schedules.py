r"""Su's Amos-derived decay factor (math.md §2.1), shared by torch_opt and jax_opt.

.. math::

    s(t) &= \frac{1}{1 + t / T}
        \quad (\text{inverse\_time}: 2 \alpha_0 p_0 T = 1)                          \tag{1}

    s(t) &= \frac{1}{\big(1 + (\sqrt{2} - 1)\, t / T\big)^2}
        \quad (\text{inverse\_square}: \alpha_0 p T = \sqrt{2} - 1)                 \tag{2}

with ``T`` the half-life in steps: ``s(0) = 1`` and ``s(T) = 1/2``. The step ``t`` counts from 0,
so the first step is taken at the full learning rate.

The functions use only arithmetic operators, so the schedule accepts Python numbers, NumPy
numbers, torch tensors and JAX arrays (a traced count under ``jax.jit`` included); concrete
hyperparameters are validated.

References:
    Su Jianlin, kexue.fm/archives/9344, 2022 (the derivation); Tian & Parikh, "Amos",
    arXiv:2210.11693, 2022.
"""

from __future__ import annotations

import math
from typing import Any

from twinopt._checks import check_choice, check_positive

__all__ = ["MODES", "AmosDecay", "amos_decay", "decay_factor"]

MODES = ("inverse_time", "inverse_square")

SQRT2_MINUS_1 = math.sqrt(2.0) - 1.0


def decay_factor(t: Any, half_life: Any, mode: str) -> Any:
    """``s(t)`` by (1) or (2), arithmetic only (no validation: see :func:`amos_decay`)."""
    x = t / (1.0 * half_life)  # a float divisor: JAX divides int32 by int32 in float32
    if mode == "inverse_time":
        return 1.0 / (1.0 + x)  # (1)
    return 1.0 / (1.0 + SQRT2_MINUS_1 * x) ** 2  # (2)


class AmosDecay:
    """The schedule :func:`amos_decay` returns: ``s(t)`` of (1)/(2) for a step count ``t``.

    A callable object rather than a closure, so ``LambdaLR.state_dict()`` saves its
    ``half_life`` and ``mode`` (LambdaLR saves the ``__dict__`` of callable objects only).
    """

    def __init__(self, half_life: Any, mode: str) -> None:
        self.half_life = half_life
        self.mode = mode

    def __call__(self, count: Any) -> Any:
        return decay_factor(count, self.half_life, self.mode)

    def __repr__(self) -> str:
        return f"amos_decay(half_life={self.half_life!r}, mode={self.mode!r})"


def amos_decay(half_life: Any, mode: str = "inverse_time") -> AmosDecay:
    """Su's decay factor ``s(t)``, (1) or (2): ``s(0) = 1``, ``s(half_life) = 1/2``.

    The step ``t`` counts from 0. In torch_opt, use it as a ``LambdaLR`` multiplier:
    ``LambdaLR(opt, amos_decay(1000))`` (an ``int`` epoch in, a ``float`` out). In jax_opt it is an
    optax schedule: ``optax.adam(lambda n: 1e-3 * amos_decay(1000)(n))`` or directly
    ``learning_rate=amos_decay(1000)``; a traced ``int32`` count works under ``jax.jit`` and
    ``optax.inject_hyperparams``.

    Args:
        half_life: The number of steps ``T > 0`` after which the factor is 1/2.
        mode: ``"inverse_time"`` (1), Su's preferred, or ``"inverse_square"`` (2), the decay
            Amos itself follows at large ``t``.

    Returns:
        A callable ``count -> s(count)``.

    Raises:
        ValueError: For ``half_life <= 0`` or an unknown ``mode``.
    """
    check_positive("half_life", half_life)
    check_choice("mode", mode, MODES)
    return AmosDecay(half_life, mode)
