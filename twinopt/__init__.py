"""twinopt: framework-free pieces shared by ``torch_opt`` and ``jax_opt``.

The two user-facing packages are :mod:`torch_opt` (PyTorch) and :mod:`jax_opt` (JAX/optax).
This package holds only what must be *identical* in both and needs neither framework: the
validation messages (so a bad argument reads the same in both packages) and the closed-form
helpers that map between optimizer hyperparameters and ODE parameters (momentum as a damped
ODE, the implicit gradient-regularization coefficient of a finite learning rate).
"""

from __future__ import annotations

from twinopt.dynamics import (
    damped_ode_to_momentum,
    igr_coefficient,
    momentum_to_damped_ode,
    retune_momentum,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "damped_ode_to_momentum",
    "igr_coefficient",
    "momentum_to_damped_ode",
    "retune_momentum",
]
