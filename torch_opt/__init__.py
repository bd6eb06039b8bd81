"""torch_opt: optimizers from the dynamics view of optimization, as drop-in ``torch.optim`` classes.

Twin package: ``jax_opt`` (the same algorithms as optax gradient transformations).
"""

from __future__ import annotations

from torch_opt.amos import Amos, amos_update, reduced_mean_square
from torch_opt.flooding import Flooding, adaflood, adaflood_levels, flood, iflood
from torch_opt.penalty import (
    FiniteDifferencePenalty,
    finite_difference_gradient,
    gradient_norm_penalty,
    igr_coefficient,
)
from torch_opt.rmsprop_ode import (
    LossTiedODE,
    RMSpropODE,
    damped_ode_to_momentum,
    loss_tied_direction,
    momentum_to_damped_ode,
    retune_momentum,
    rmsprop_ode_direction,
    rmsprop_ode_global_direction,
    rmsprop_vector_field,
)
from torch_opt.sampling import (
    MGS,
    clip_surrogate,
    functional_population,
    importance_weights,
    log_proposal,
    noise_scale,
    perturbations,
    weighted_direction,
)
from torch_opt.schedules import AmosDecayScheduler, SuAmosSchedule, amos_decay, su_amos_update
from twinopt import __version__

__all__ = [
    "Amos",
    "AmosDecayScheduler",
    "FiniteDifferencePenalty",
    "Flooding",
    "LossTiedODE",
    "MGS",
    "RMSpropODE",
    "SuAmosSchedule",
    "__version__",
    "adaflood",
    "amos_decay",
    "amos_update",
    "adaflood_levels",
    "clip_surrogate",
    "damped_ode_to_momentum",
    "finite_difference_gradient",
    "flood",
    "functional_population",
    "gradient_norm_penalty",
    "iflood",
    "igr_coefficient",
    "importance_weights",
    "log_proposal",
    "loss_tied_direction",
    "momentum_to_damped_ode",
    "noise_scale",
    "perturbations",
    "reduced_mean_square",
    "retune_momentum",
    "rmsprop_ode_direction",
    "rmsprop_ode_global_direction",
    "rmsprop_vector_field",
    "su_amos_update",
    "weighted_direction",
]
