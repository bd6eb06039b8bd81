"""Hypothesis strategies: NumPy float64 arrays (shrinkable) and hyperparameters.

Magnitudes are 0 or in [1e-6, 1e4]: squares stay normal floats, because XLA on the CPU flushes
subnormals to zero while NumPy and torch keep them (a difference of platforms, not of math).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, allow_subnormal=False).map(
    lambda x: 0.0 if abs(x) < 1e-6 else x
)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)

# EMA decays: 0 exactly, or away from 0. (Centered variants can be ill-conditioned; the oracle
# marks where, see reference.rmsprop_ode._well_conditioned, and tests compare elsewhere.)
decays = st.one_of(st.just(0.0), st.floats(0.05, 0.999))
epsilons = st.floats(1e-10, 1e-2)
learning_rates = st.floats(1e-4, 1.0)
momenta = st.one_of(st.just(0.0), st.floats(0.05, 0.99))
weight_decays = st.one_of(st.just(0.0), st.floats(1e-4, 0.5))


moderate = st.floats(-3.0, 3.0, allow_subnormal=False).map(lambda x: 0.0 if abs(x) < 1e-6 else x)


def arrays_like(shape, elements=finite) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.float64, shape, elements=elements)


@st.composite
def tensor_lists(draw, min_size: int = 1, max_size: int = 3, elements=finite) -> list[np.ndarray]:
    """A list of float64 arrays of independent shapes (0-d included)."""
    shape_list = draw(st.lists(shapes, min_size=min_size, max_size=max_size))
    return [draw(arrays_like(s, elements)) for s in shape_list]


@st.composite
def trajectories(draw, min_steps: int = 1, max_steps: int = 4, elements=finite):
    """``(params, grad_seq)``: parameters and one gradient list per step."""
    params = draw(tensor_lists(elements=elements))
    steps = draw(st.integers(min_steps, max_steps))
    grad_seq = [[draw(arrays_like(p.shape, elements)) for p in params] for _ in range(steps)]
    return params, grad_seq


@st.composite
def well_conditioned_centered(draw):
    """``(traj, settings)`` for centered RMSprop with bias correction that the oracle marks
    well-conditioned at every step: a positive initial second moment keeps the variance
    ``v >= decay^t * initial_scale / (1 - decay^t)`` away from 0 (without it, v = 0 exactly at
    the first step)."""
    traj = draw(trajectories(elements=moderate))
    settings = draw(rms_settings())
    settings.update(
        centered=True,
        bias_correction=True,
        decay=draw(st.floats(0.7, 0.99)),
        initial_scale=draw(st.floats(1.0, 2.0)),
        eps=draw(st.floats(1e-8, 1e-4)),
    )
    return traj, settings


@st.composite
def rms_settings(draw, *, momentum: bool = True) -> dict:
    """Hyperparameters shared by RMSpropODE and rmsprop_ode (constant lr: the two momentum
    conventions then agree)."""
    return {
        "lr": draw(learning_rates),
        "decay": draw(decays),
        "eps": draw(epsilons),
        "eps_in_sqrt": draw(st.booleans()),
        "centered": draw(st.booleans()),
        "bias_correction": draw(st.booleans()),
        "initial_scale": draw(st.one_of(st.just(0.0), st.floats(0.0, 2.0))),
        "momentum": draw(momenta) if momentum else 0.0,
        "scale": draw(st.sampled_from(["elementwise", "global"])),
    }


@st.composite
def loss_tied_runs(draw):
    """``(params, grad_seq, losses, hyper)`` for the loss-tied step (a loss per step)."""
    params, grad_seq = draw(trajectories(max_steps=3))
    losses = draw(st.lists(st.floats(0.0, 1e3), min_size=len(grad_seq), max_size=len(grad_seq)))
    hyper = {
        "lr": draw(learning_rates),
        "max_scale": draw(st.floats(1e-2, 1e4)),
        "min_loss": draw(st.floats(0.0, 10.0)),
    }
    return params, grad_seq, losses, hyper


# torch.optim.RMSprop's arguments (and RMSpropODE's, which takes them all).
torch_rmsprop_kwargs = st.fixed_dictionaries(
    {
        "lr": learning_rates,
        "alpha": decays,
        "eps": epsilons,
        "weight_decay": weight_decays,
        "momentum": momenta,
        "centered": st.booleans(),
        "maximize": st.booleans(),
    }
)
# optax.rmsprop's arguments after learning_rate (and rmsprop_ode's, which takes them all).
optax_rmsprop_kwargs = st.fixed_dictionaries(
    {
        "decay": decays,
        "eps": epsilons,
        "initial_scale": st.one_of(st.just(0.0), st.floats(0.0, 2.0)),
        "eps_in_sqrt": st.booleans(),
        "centered": st.booleans(),
        "momentum": st.one_of(st.none(), st.floats(0.05, 0.99)),
        "nesterov": st.booleans(),
        "bias_correction": st.booleans(),
    }
)

TORCH_DEFAULTS = {
    "lr": 1e-2,
    "alpha": 0.99,
    "eps": 1e-8,
    "weight_decay": 0.0,
    "momentum": 0.0,
    "centered": False,
    "maximize": False,
}
OPTAX_DEFAULTS = {
    "decay": 0.9,
    "eps": 1e-8,
    "initial_scale": 0.0,
    "eps_in_sqrt": True,
    "centered": False,
    "momentum": None,
    "nesterov": False,
    "bias_correction": False,
}
RMS_DEFAULTS = {
    "lr": 0.1,
    "decay": 0.9,
    "eps": 1e-8,
    "eps_in_sqrt": True,
    "centered": False,
    "bias_correction": False,
    "initial_scale": 0.0,
    "momentum": 0.0,
    "scale": "elementwise",
}


def torch_example(**overrides) -> dict:
    """A full ``torch_rmsprop_kwargs`` draw for ``@example``: torch's defaults, overridden."""
    return {**TORCH_DEFAULTS, **overrides}


def optax_example(**overrides) -> dict:
    """A full ``optax_rmsprop_kwargs`` draw for ``@example``: optax's defaults, overridden."""
    return {**OPTAX_DEFAULTS, **overrides}


def rms_example(**overrides) -> dict:
    """A full ``rms_settings()`` draw for ``@example``."""
    return {**RMS_DEFAULTS, **overrides}


ZERO_GRADS = ([np.ones((2, 3)), np.array(-1.5)], [[np.zeros((2, 3)), np.array(0.0)]])
HUGE_AND_TINY = (
    [np.array([1.0, -2.0, 3.0])],
    [[np.array([1e4, -1e-6, 0.0])], [np.array([-1e4, 1e-6, 3.0])]],
)
