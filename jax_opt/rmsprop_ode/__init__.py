r"""RMSprop as an ODE (math.md §1.2-1.4): kernels, rmsprop_ode, loss_tied_ode, the vector field.

Twin of ``torch_opt/rmsprop_ode.py``: the same kernel names, signatures and equation tags.

.. math::

    \nu_i &\leftarrow \lambda \nu_i + (1-\lambda)\, g_i^2
        \quad\text{(elementwise)} \qquad
    \nu \leftarrow \lambda \nu + (1-\lambda) \textstyle\sum_i \lVert g_i\rVert^2
        \quad\text{(global)}                                                        \tag{1}

    \mu_i &\leftarrow \lambda \mu_i + (1-\lambda)\, g_i \quad\text{(centered)}     \tag{2}

    c &= 1 - \lambda^t \ \text{(bias correction)}, \quad 1 \ \text{otherwise}       \tag{3}

    v &= \nu / c - (\mu / c)^2
        \quad\text{(global: } \nu/c - \textstyle\sum_i \lVert \mu_i/c\rVert^2)      \tag{4}

    s &= \sqrt{v + \epsilon} \ \text{(eps\_in\_sqrt)}, \quad \sqrt{v} + \epsilon   \tag{5}

    d_i &= g_i / s                                                                  \tag{6}

    \theta_i &\leftarrow \theta_i - \gamma\, d_i \quad\text{(through momentum if any)} \tag{7}

The kernels compute (1)-(6) and return the direction ``d`` (the optax ``scale_by_*``
convention); the shells apply the learning rate and momentum in their framework's convention
(torch: ``b <- m b + d; theta <- theta - lr b``; optax: ``trace`` after the learning rate).
"""

from jax_opt.rmsprop_ode.kernels import (
    SCALES,
    loss_tied_direction,
    rmsprop_ode_direction,
    rmsprop_ode_global_direction,
    rmsprop_vector_field,
)
from jax_opt.rmsprop_ode.loss_tied import (
    ScaleByLossTiedODEState,
    loss_tied_ode,
    scale_by_loss_tied_ode,
)
from jax_opt.rmsprop_ode.shells import ScaleByRmspropODEState, rmsprop_ode, scale_by_rmsprop_ode
from twinopt.dynamics import damped_ode_to_momentum, momentum_to_damped_ode, retune_momentum

__all__ = [
    "SCALES",
    "ScaleByLossTiedODEState",
    "ScaleByRmspropODEState",
    "damped_ode_to_momentum",
    "loss_tied_direction",
    "loss_tied_ode",
    "momentum_to_damped_ode",
    "retune_momentum",
    "rmsprop_ode",
    "rmsprop_ode_direction",
    "rmsprop_ode_global_direction",
    "rmsprop_vector_field",
    "scale_by_loss_tied_ode",
    "scale_by_rmsprop_ode",
]
