"""``OptimizerInfo`` entries for torch_opt's drop-ins, so torch's own optimizer suite can run them.

torch's ``TestOptimRenewed`` (``test/test_optim.py`` of the PyTorch repository) is driven by
the ``OptimizerInfo`` entries of ``torch.testing._internal.common_optimizers.optim_db``: each
says which constructor arguments to try (``optim_inputs_func``, without the implementation
flags ``foreach`` / ``fused`` / ``differentiable``, which the tests toggle themselves), which
arguments must fail and how (``optim_error_inputs_func``), and which features the class has.
:data:`TWINOPT_OPTIM_DB` holds one entry per optimizer, modelled on torch's entry for
``torch.optim.RMSprop``:

- ``RMSpropODE``: torch's RMSprop inputs (without ``capturable=True``, which RMSpropODE refuses)
  plus our own options (``scale``, ``eps_in_sqrt``, ``bias_correction``, ``initial_scale``).
- ``Amos``: its options (``lr`` is required, so every input names it); no ``maximize``,
  ``weight_decay`` (its decay is ``extra_l2``), complex parameters or ``differentiable``.
- ``LossTiedODE``: its options; ``step`` needs a closure that returns the loss.

``scripts/torch_test_optim.py`` runs torch's suite on these entries;
``tests/torch_opt/test_optim_infos.py`` re-expresses its cases for CI. A test that picks its
behaviour by torch's class names sees the class under the name it looks for (:func:`presented_as`);
one that cannot apply, because it hard-codes an argument or a habit of torch's own classes, is
skipped with a reason that starts with ``"n/a: "`` (torch's own entries skip tests so).
"""

from __future__ import annotations

import copy
import functools
import inspect
import re
import unittest
from typing import Any

import torch
from torch.nn import Parameter
from torch.optim import RMSprop
from torch.testing._internal.common_device_type import tol, toleranceOverride
from torch.testing._internal.common_methods_invocations import DecorateInfo
from torch.testing._internal.common_optimizers import (
    ErrorOptimizerInput,
    OptimizerErrorEnum,
    OptimizerInfo,
    OptimizerInput,
    _get_device_type,
    get_error_inputs_for_all_optims,
    optim_db,
    optim_inputs_func_rmsprop,
)
from torch.testing._internal.common_utils import TEST_WITH_TORCHDYNAMO, skipIfTorchDynamo

from torch_opt import Amos, LossTiedODE, RMSpropODE

__all__ = [
    "NA",
    "presented_as",
    "TORCH_RMSPROP_INFO",
    "TWINOPT_OPTIM_DB",
    "eta_by_rank",
    "one_value_per_tensor",
    "one_value_per_row",
]

NA = "n/a: "  # the prefix of a skip reason that says a test does not apply to the class
SUITE = "TestOptimRenewed"

# torch's own entry for torch.optim.RMSprop, the reference column of the suite's table.
TORCH_RMSPROP_INFO = next(info for info in optim_db if info.optim_cls is RMSprop)


def _na(reason: str, test: str) -> DecorateInfo:
    return DecorateInfo(unittest.skip(NA + reason), SUITE, test)


def presented_as(name: str):
    """A test decorator: run the test with the entry's class presented under ``name`` (a
    subclass that adds nothing), for tests that pick behaviour by torch's class names."""

    def decorate(test):
        @functools.wraps(test)
        def wrapper(*args, **kwargs):
            info = copy.copy(kwargs["optim_info"])
            cls = info.optim_cls
            info.optim_cls = type(
                name, (cls,), {"__module__": cls.__module__, "__qualname__": name}
            )
            kwargs["optim_info"] = info
            return test(*args, **kwargs)

        return wrapper

    return decorate


def defaults_to_foreach(cls: type, function: str) -> DecorateInfo:
    """``test_defaults_changed_to_foreach`` patches ``_multi_tensor_<class name in lower
    case>`` in the class's module and expects the default step to call it: present the class
    under the name of its foreach function (``_multi_tensor_<name>``), or, where the module has
    no such function, say why the test does not apply."""
    test = "test_defaults_changed_to_foreach"
    module = inspect.getmodule(cls)
    prefix = "_multi_tensor_"
    if not function.startswith(prefix) or not callable(getattr(module, function, None)):
        return _na(f"{module.__name__} has no foreach function {function} to patch", test)
    name = function[len(prefix) :]
    if cls.__name__.lower() == name:  # the test finds it under the class's own name
        return DecorateInfo(lambda test_fn: test_fn, SUITE, test)
    return DecorateInfo(presented_as(name), SUITE, test)


def _error(
    desc: str,
    kwargs: dict[str, Any],
    error_type: type,
    regex: str,
    *,
    params: Any = None,
    on_step: bool = False,
) -> ErrorOptimizerInput:
    """An argument error: by default raised at construction with ``params=None`` (torch's
    convention: arguments are validated before ``params`` is read)."""
    return ErrorOptimizerInput(
        OptimizerInput(params=params, kwargs=kwargs, desc=desc),
        error_on=OptimizerErrorEnum.STEP_ERROR
        if on_step
        else OptimizerErrorEnum.CONSTRUCTION_ERROR,
        error_type=error_type,
        error_regex=regex,
    )


def _sparse_grad_params(device: str, dtype: torch.dtype) -> list[Parameter]:
    p = Parameter(torch.zeros(3, device=device, dtype=dtype))
    p.grad = torch.zeros(3, device=device, dtype=dtype).to_sparse()
    return [p]


# ------------------------------------------------------------------------------- RMSpropODE


def optim_inputs_func_rmsprop_ode(device, dtype=None):
    """torch's RMSprop inputs without ``capturable=True`` (refused: NotImplementedError), then
    our own options alone and combined with torch's."""
    torch_inputs = [
        inp
        for inp in optim_inputs_func_rmsprop(device, dtype)
        if not inp.kwargs.get("capturable", False)
    ]
    ours = [
        OptimizerInput(params=None, kwargs={"scale": "global"}, desc="global scale"),
        OptimizerInput(
            params=None,
            kwargs={"scale": "global", "weight_decay": 0.1, "centered": True, "momentum": 0.1},
            desc="global scale, centered, weight_decay, w/ momentum",
        ),
        OptimizerInput(
            params=None, kwargs={"scale": "global", "maximize": True}, desc="global, maximize"
        ),
        OptimizerInput(params=None, kwargs={"eps_in_sqrt": True}, desc="eps in sqrt"),
        OptimizerInput(params=None, kwargs={"bias_correction": True}, desc="bias correction"),
        # Not with centered=True: then the first step's variance estimate is that of one
        # sample, 0 up to rounding (NaN where it rounds below 0), as in optax.
        OptimizerInput(
            params=None,
            kwargs={"bias_correction": True, "weight_decay": 0.1, "momentum": 0.1},
            desc="bias correction, weight_decay, w/ momentum",
        ),
        OptimizerInput(params=None, kwargs={"initial_scale": 0.1}, desc="initial scale"),
        OptimizerInput(
            params=None,
            kwargs={
                "scale": "global",
                "eps_in_sqrt": True,
                "bias_correction": True,
                "initial_scale": 0.1,
                "momentum": 0.1,
            },
            desc="global, eps in sqrt, bias correction, initial scale, w/ momentum",
        ),
    ]
    return torch_inputs + ours


def optim_error_inputs_func_rmsprop_ode(device, dtype):
    """torch's shared error inputs and RMSprop's (torch's wording for torch's arguments), then
    ours (twinopt's wording)."""
    errors = get_error_inputs_for_all_optims(device, dtype)
    if _get_device_type(device) != "cpu":
        return errors
    torch_worded = [
        ("momentum should be between 0 and 1", {"momentum": -1.0}, "Invalid momentum value: -1.0"),
        ("negative lr", {"lr": -0.01}, "Invalid learning rate: -0.01"),
        ("negative eps", {"eps": -1.0}, "Invalid epsilon value: -1.0"),
        ("negative weight_decay", {"weight_decay": -1.0}, "Invalid weight_decay value: -1.0"),
        ("negative alpha", {"alpha": -1.0}, "Invalid alpha value: -1.0"),
        (
            "alpha of 1 (twinopt: the EMA decay is in [0, 1))",
            {"alpha": 1.0},
            "Invalid alpha value: 1.0",
        ),
    ]
    errors += [
        _error(desc, {"lr": 1e-2, **kw}, ValueError, re.escape(regex))
        for desc, kw, regex in torch_worded
    ]
    errors += [
        _error(
            "unknown scale", {"scale": "bogus"}, ValueError, re.escape("Invalid scale: 'bogus'")
        ),
        _error(
            "negative initial_scale",
            {"initial_scale": -1.0},
            ValueError,
            re.escape("Invalid initial_scale: -1.0"),
        ),
        _error("capturable", {"capturable": True}, NotImplementedError, "capturable"),
        _error(
            "foreach with differentiable",
            {"foreach": True, "differentiable": True},
            ValueError,
            "foreach.*differentiable",
        ),
        _error(
            "sparse gradient",
            {},
            TypeError,
            "RMSpropODE does not support sparse gradients",
            params=_sparse_grad_params(device, dtype),
            on_step=True,
        ),
    ]
    return errors


# ------------------------------------------------------------------------------------- Amos


def eta_by_rank(_name: str, param: torch.Tensor) -> float:
    """An ``eta`` rule: 1.0 for matrices and larger, 0.5 for vectors and scalars."""
    return 1.0 if param.dim() >= 2 else 0.5


def one_value_per_tensor(_name: str, _param: torch.Tensor) -> tuple[int, ...]:
    """A ``shape`` rule: scalar ``v`` and ``b`` for every tensor."""
    return ()


def one_value_per_row(_name: str, param: torch.Tensor) -> tuple[int, ...]:
    """A ``shape`` rule: every axis but the first reduced (vectors keep their shape)."""
    if param.dim() < 2:
        return tuple(param.shape)
    return (param.shape[0],) + (1,) * (param.dim() - 1)


def optim_inputs_func_amos(device, dtype=None):
    """Every option of Amos alone (``lr`` is required, so every input names it)."""
    cases = [
        ({"lr": 0.01}, "default"),
        ({"lr": torch.tensor(0.01)}, "Tensor lr"),
        ({"lr": 0.05, "momentum": 0.9}, "w/ momentum"),
        ({"lr": 0.01, "eta": 0.5}, "float eta"),
        ({"lr": 0.01, "eta": eta_by_rank}, "callable eta"),
        ({"lr": 0.01, "shape": one_value_per_tensor}, "shape (): one value per tensor"),
        ({"lr": 0.01, "shape": one_value_per_row}, "shape: one value per row"),
        ({"lr": 0.01, "beta": 0.99}, "non-default beta"),
        ({"lr": 0.01, "clip_value": 0.1}, "clip_value"),
        ({"lr": 0.01, "extra_l2": 0.01}, "extra_l2"),
        ({"lr": 0.01, "c_coef": 0.5, "d_coef": 0.5}, "non-default c_coef, d_coef"),
        ({"lr": 0.01, "eps": 1e-8}, "non-default eps"),
    ]
    return [OptimizerInput(params=None, kwargs=kw, desc=desc) for kw, desc in cases]


def optim_error_inputs_func_amos(device, dtype):
    """torch's shared error inputs (with an ``lr``, which Amos requires), then Amos's own."""
    errors = []
    for err in get_error_inputs_for_all_optims(device, dtype):
        inp = err.optimizer_error_input
        kwargs = {"lr": 0.01, **inp.kwargs}
        errors.append(
            ErrorOptimizerInput(
                OptimizerInput(params=inp.params, kwargs=kwargs, desc=inp.desc),
                error_on=err.error_on,
                error_type=err.error_type,
                error_regex=err.error_regex,
            )
        )
    if _get_device_type(device) != "cpu":
        return errors
    worded = [
        ("negative lr", {"lr": -0.01}, re.escape("Invalid learning rate: -0.01")),
        ("negative eta", {"eta": -1.0}, re.escape("Invalid eta: -1.0")),
        ("zero eta", {"eta": 0.0}, re.escape("Invalid eta: 0.0")),
        ("beta of 1", {"beta": 1.0}, re.escape("Invalid beta: 1.0")),
        ("momentum of 1", {"momentum": 1.0}, re.escape("Invalid momentum: 1.0")),
        ("negative clip_value", {"clip_value": -1.0}, re.escape("Invalid clip_value: -1.0")),
        ("negative extra_l2", {"extra_l2": -1.0}, re.escape("Invalid extra_l2: -1.0")),
        ("negative c_coef", {"c_coef": -1.0}, re.escape("Invalid c_coef: -1.0")),
        ("negative d_coef", {"d_coef": -1.0}, re.escape("Invalid d_coef: -1.0")),
        ("negative eps", {"eps": -1.0}, re.escape("Invalid eps: -1.0")),
    ]
    errors += [_error(desc, {"lr": 0.01, **kw}, ValueError, regex) for desc, kw, regex in worded]
    complex_param = Parameter(torch.zeros(2, device=device, dtype=torch.complex64))
    errors += [
        _error(
            "complex parameter",
            {"lr": 0.01},
            TypeError,
            "Amos does not support complex parameters",
            params=[complex_param],
        ),
        _error(
            "state shape of another rank",
            {"lr": 0.01, "shape": lambda _name, _p: (1, 1, 1)},
            ValueError,
            re.escape("Invalid shape: (1, 1, 1)"),
            params=[Parameter(torch.zeros(2, 3, device=device, dtype=dtype))],
        ),
        _error(
            "sparse gradient",
            {"lr": 0.01},
            TypeError,
            "Amos does not support sparse gradients",
            params=_sparse_grad_params(device, dtype),
            on_step=True,
        ),
    ]
    return errors


# ------------------------------------------------------------------------------ LossTiedODE


def optim_inputs_func_loss_tied(device, dtype=None):
    cases = [
        ({}, "default"),
        ({"lr": 0.1}, "non-default lr"),
        ({"lr": torch.tensor(0.01)}, "Tensor lr"),
        ({"max_scale": 10.0}, "non-default max_scale"),
        ({"min_loss": -1.0}, "non-default min_loss"),
    ]
    return [OptimizerInput(params=None, kwargs=kw, desc=desc) for kw, desc in cases]


def optim_error_inputs_func_loss_tied(device, dtype):
    errors = get_error_inputs_for_all_optims(device, dtype)
    if _get_device_type(device) != "cpu":
        return errors
    errors += [
        _error("negative lr", {"lr": -0.01}, ValueError, re.escape("Invalid learning rate: -0.01")),
        _error(
            "negative max_scale",
            {"max_scale": -1.0},
            ValueError,
            re.escape("Invalid max_scale: -1.0"),
        ),
        _error(
            "step without a closure",
            {},
            ValueError,
            "Missing closure",
            params=[Parameter(torch.zeros(2, device=device, dtype=dtype))],
            on_step=True,
        ),
    ]
    return errors


# ----------------------------------------------------------------------------------- the db

# torch's RMSprop entry skips these (its reasons hold for RMSpropODE as well).
_RMSPROP_SKIPS = (
    DecorateInfo(
        skipIfTorchDynamo("Accessing grad.real errors, see pytorch/pytorch#117184"),
        SUITE,
        "test_complex_2d",
    ),
    DecorateInfo(
        toleranceOverride({torch.float32: tol(atol=5e-04, rtol=0.01)}),
        SUITE,
        "test_mixed_device_dtype",
        active_if=TEST_WITH_TORCHDYNAMO,
    ),
    DecorateInfo(
        skipIfTorchDynamo("This test uses mocks, which dynamo does not support"),
        SUITE,
        "test_defaults_changed_to_foreach",
    ),
)

# Added after the first release of RMSpropODE's model, torch.optim.RMSprop: a checkpoint of
# torch's RMSprop (or an older one of ours) lacks them, and loading must fill them in.
_RMSPROP_ODE_NEWER_FLAGS = (
    "foreach",
    "differentiable",
    "maximize",
    "capturable",
    "scale",
    "eps_in_sqrt",
    "bias_correction",
    "initial_scale",
)


NO_CLOSURE = (
    "calls step() without a closure, but LossTiedODE's step needs one (it returns the loss); "
    "torch skips this test for LBFGS, its one other closure-driven optimizer"
)
NO_WEIGHT_DECAY = "puts weight_decay=0.0 into a param group: {} has no weight_decay option"

# How torch's tests that name torch's classes apply to ours: a reason where they do not, or
# the class presented under the name the test looks for.
_RMSPROP_ODE_SUITE = (
    # RMSpropODE's foreach path runs torch's RMSprop operations: hold it to RMSprop's budget of
    # intermediates (the test budgets by torch's class names: 2 for "RMSprop", else 1).
    DecorateInfo(presented_as("RMSprop"), SUITE, "test_peak_memory_foreach"),
    defaults_to_foreach(RMSpropODE, "_multi_tensor_rmsprop_ode"),
)

_AMOS_SUITE = (
    _na(
        "builds the optimizer without an lr; Amos has no default learning rate (as the reference "
        "implementation: about 1/sqrt(number of independent batches), the user's to give)",
        "test_param_group_with_lrscheduler_goes_right_direction",
    ),
    _na(NO_WEIGHT_DECAY.format("Amos (its decay is extra_l2)"), "test_param_groups_weight_decay"),
    _na(
        "exempts the inputs that decay the parameters without a gradient by torch's key "
        "weight_decay; Amos's is extra_l2, so its extra_l2 input moves with zero gradients by "
        "design (test_optim_infos.py runs the check on every input and expects that one to move)",
        "test_step_is_noop_for_zero_grads",
    ),
    defaults_to_foreach(Amos, "_multi_tensor_amos"),
)

_LOSS_TIED_SUITE = (
    _na(NO_CLOSURE, "test_param_groups_lr"),
    _na(
        NO_CLOSURE + "; and " + NO_WEIGHT_DECAY.format("LossTiedODE"),
        "test_param_groups_weight_decay",
    ),
    _na(
        "sets LBFGS's tolerance_grad argument (the test assumes LBFGS is the only optimizer "
        "whose step needs a closure)",
        "test_second_order_optims_return_consistent_types",
    ),
)


def _twinopt_optim_db() -> list[OptimizerInfo]:
    return [
        OptimizerInfo(
            RMSpropODE,
            optim_inputs_func=optim_inputs_func_rmsprop_ode,
            optim_error_inputs_func=optim_error_inputs_func_rmsprop_ode,
            supported_impls=("foreach", "differentiable"),
            not_og_supported_flags=_RMSPROP_ODE_NEWER_FLAGS,
            # torch's RMSprop says True: torch's CUDA-graph tests then also step it with
            # capturable=True, which RMSpropODE refuses (NotImplementedError).
            has_capturable_arg=False,
            skips=_RMSPROP_SKIPS + _RMSPROP_ODE_SUITE,
        ),
        OptimizerInfo(
            Amos,
            optim_inputs_func=optim_inputs_func_amos,
            optim_error_inputs_func=optim_error_inputs_func_amos,
            supported_impls=("foreach",),
            not_og_supported_flags=("foreach",),
            supports_complex=False,
            skips=_AMOS_SUITE,
        ),
        OptimizerInfo(
            LossTiedODE,
            optim_inputs_func=optim_inputs_func_loss_tied,
            optim_error_inputs_func=optim_error_inputs_func_loss_tied,
            supported_impls=(),
            not_og_supported_flags=(),
            step_requires_closure=True,
            skips=_LOSS_TIED_SUITE,
        ),
    ]


TWINOPT_OPTIM_DB: list[OptimizerInfo] = _twinopt_optim_db()
