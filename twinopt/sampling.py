"""The framework-free parts of MGS (math.md §4): which candidates are guided, and the argument
checks, shared by ``torch_opt.sampling`` and ``jax_opt.sampling`` so both word them alike."""

from __future__ import annotations

import math
from typing import Any

from twinopt._checks import (
    check_choice,
    check_fraction,
    check_nonnegative,
    check_positive,
    fail,
)

__all__ = ["NOISE_SCALES", "PROPOSAL_DENSITIES", "check_mgs_args", "mixture_mask"]

NOISE_SCALES = ("grad", "constant")
PROPOSAL_DENSITIES = ("exact", "unit_variance")


def mixture_mask(num_samples: int, mix: float, *, antithetic: bool = False) -> list[bool]:
    """Which of ``num_samples`` candidates are centred on the surrogate direction (guided).

    Candidate ``k`` is guided when ``ceil((k + 1) mix) > ceil(k mix)``: a deterministic
    proportion ``mix`` spread evenly over ``k`` (at ``mix = 0.5`` every even ``k``, as the
    reference code does). With ``antithetic`` the rule runs over the ``num_samples // 2`` pairs
    and both members of a pair share their pair's centre.
    """
    n = num_samples // 2 if antithetic else num_samples
    mask = [math.ceil((k + 1) * mix) > math.ceil(k * mix) for k in range(n)]
    return [m for m in mask for _ in range(2)] if antithetic else mask


def check_mgs_args(
    *,
    num_samples: Any,
    noise: Any,
    noise_scale: Any,
    mix: Any,
    temperature: Any,
    proposal_density: Any,
    antithetic: Any,
    max_grad_norm: Any,
    lr: Any,
) -> None:
    """Raise ``ValueError`` naming the first invalid MGS argument."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise fail("num_samples", num_samples, "an integer >= 1")
    if antithetic and num_samples % 2:
        raise fail("num_samples", num_samples, "even with antithetic=True (pairs c ± z)")
    check_positive("noise", noise)
    check_choice("noise_scale", noise_scale, NOISE_SCALES)
    check_fraction("mix", mix)
    check_positive("temperature", temperature)
    check_choice("proposal_density", proposal_density, PROPOSAL_DENSITIES)
    if max_grad_norm is not None:
        check_positive("max_grad_norm", max_grad_norm)
    check_nonnegative("lr", lr)
