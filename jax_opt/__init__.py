"""jax_opt: optimizers from the dynamics view of optimization, as optax gradient transformations.

Twin package: ``torch_opt`` (the same algorithms as drop-in ``torch.optim`` classes).
"""

from __future__ import annotations

from jax_opt.amos import (
    AmosMomentumState,
    ClipByValueState,
    ScaleByAmosState,
    amos,
    amos_update,
    reduced_mean_square,
    scale_by_amos,
)
from jax_opt.flooding import (
    FloodGradientsState,
    adaflood,
    adaflood_levels,
    flood,
    flood_gradients,
    flooded,
    iflood,
)
from jax_opt.penalty import (
    FiniteDifferencePenaltyState,
    finite_difference_gradient,
    finite_difference_penalty,
    igr_coefficient,
    penalized,
)
from jax_opt.rmsprop_ode import (
    ScaleByLossTiedODEState,
    ScaleByRmspropODEState,
    damped_ode_to_momentum,
    loss_tied_direction,
    loss_tied_ode,
    momentum_to_damped_ode,
    retune_momentum,
    rmsprop_ode,
    rmsprop_ode_direction,
    rmsprop_ode_global_direction,
    rmsprop_vector_field,
    scale_by_loss_tied_ode,
    scale_by_rmsprop_ode,
)
from jax_opt.schedules import (
    SuAmosScheduleState,
    amos_decay,
    amos_decay_schedules,
    su_amos_schedule,
    su_amos_update,
)
from twinopt import __version__

__all__ = [
    "AmosMomentumState",
    "ClipByValueState",
    "FiniteDifferencePenaltyState",
    "FloodGradientsState",
    "ScaleByAmosState",
    "ScaleByLossTiedODEState",
    "ScaleByRmspropODEState",
    "SuAmosScheduleState",
    "__version__",
    "adaflood",
    "amos",
    "amos_decay",
    "amos_decay_schedules",
    "amos_update",
    "adaflood_levels",
    "damped_ode_to_momentum",
    "finite_difference_gradient",
    "finite_difference_penalty",
    "flood",
    "flood_gradients",
    "flooded",
    "iflood",
    "igr_coefficient",
    "loss_tied_direction",
    "loss_tied_ode",
    "momentum_to_damped_ode",
    "penalized",
    "reduced_mean_square",
    "retune_momentum",
    "rmsprop_ode",
    "rmsprop_ode_direction",
    "rmsprop_ode_global_direction",
    "rmsprop_vector_field",
    "scale_by_amos",
    "scale_by_loss_tied_ode",
    "scale_by_rmsprop_ode",
    "su_amos_schedule",
    "su_amos_update",
]
