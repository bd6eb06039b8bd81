"""torch's ``TestOptimRenewed`` cases, re-expressed over the ``OptimizerInfo`` entries of
``optim_infos.py`` (RMSpropODE, Amos, LossTiedODE), for CI (which cannot fetch torch's
``test/test_optim.py``; ``scripts/torch_test_optim.py`` runs that file itself).

Each check runs over every constructor input of an entry (``optim_inputs_func``, and where the
case asks for them the ``foreach`` / ``differentiable`` variants), where ``test_conformance.py``
runs one configuration per optimizer. The procedures follow torch's tests: the same problems,
step counts and comparisons.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch.nn import Parameter
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.testing._internal.common_optimizers import OptimizerErrorEnum, OptimizerInput

from tests.torch_opt.optim_infos import TWINOPT_OPTIM_DB

CPU, F32, F64 = "cpu", torch.float32, torch.float64
CLIQUEY = ("foreach", "fused", "differentiable")


def _ids(info, inputs):
    return [f"{info.name}-{i}-{inp.desc}" for i, inp in enumerate(inputs)]


def cases(inputs_of, *, where=lambda info: True):
    """``(info, index)`` for every input ``inputs_of(info)`` gives, as pytest params."""
    out = []
    for info in TWINOPT_OPTIM_DB:
        if not where(info):
            continue
        out += [
            pytest.param(info, i, id=name) for i, name in enumerate(_ids(info, inputs_of(info)))
        ]
    return out


def plain_inputs(info, dtype=F32):
    return info.optim_inputs_func(device=CPU, dtype=dtype)


def all_inputs(info, skip=()):
    """Each input three ways: as given (the default implementation: on the CPU the native
    kernels), with every supported implementation flag off, and with each on alone. (torch's
    ``_get_optim_inputs_including_global_cliquey_kwargs`` gives the last two, and on the CPU
    no ``foreach=True``, which torch's optimizers do not take there by default but ours do.)"""
    impls = [flag for flag in info.supported_impls if flag not in skip]
    out = []
    for inp in info.optim_inputs_func(device=CPU, dtype=F32):
        out.append(OptimizerInput(params=None, kwargs=dict(inp.kwargs), desc=inp.desc))
        if not impls:
            continue
        off = {**inp.kwargs, **dict.fromkeys(impls, False)}
        out.append(OptimizerInput(params=None, kwargs=off, desc=f"{inp.desc} & forloop"))
        out += [
            OptimizerInput(params=None, kwargs={**off, flag: True}, desc=f"{inp.desc} & {flag}")
            for flag in impls
        ]
    return out


def without_differentiable(info):
    return all_inputs(info, skip=("differentiable",))


def step(info, optimizer, closure):
    """One step as torch's tests take it: through the closure where the step needs one."""
    if info.step_requires_closure:
        return optimizer.step(closure)
    loss = closure()
    optimizer.step()
    return loss


# ------------------------------------------------------------------------------------ errors


def _error_cases():
    out = []
    for info in TWINOPT_OPTIM_DB:
        for i, err in enumerate(info.optim_error_inputs_func(device=CPU, dtype=F32)):
            desc = err.optimizer_error_input.desc
            out.append(pytest.param(info, i, id=f"{info.name}-{i}-{desc}"))
    return out


@pytest.mark.parametrize(("info", "index"), _error_cases())
def test_errors(info, index):
    """Each error input raises (or warns) its error, with its message, at construction or at
    the first step."""
    err = info.optim_error_inputs_func(device=CPU, dtype=F32)[index]
    inp = err.optimizer_error_input
    is_warning = issubclass(err.error_type, Warning)

    def expect():
        if is_warning:
            return pytest.warns(err.error_type, match=err.error_regex)
        return pytest.raises(err.error_type, match=err.error_regex)

    if err.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with expect():
            info.optim_cls(inp.params, **inp.kwargs)
    else:
        assert err.error_on == OptimizerErrorEnum.STEP_ERROR
        optimizer = info.optim_cls(inp.params, **inp.kwargs)
        with expect():
            optimizer.step()


# ------------------------------------------------------------------------------ the entries


@pytest.mark.parametrize("info", TWINOPT_OPTIM_DB, ids=lambda info: info.name)
def test_optim_infos_do_not_specify_global_cliquey_kwargs(info):
    """The inputs leave the implementation flags to the tests, and the flags an entry claims
    are arguments of its class."""
    inputs = plain_inputs(info)
    assert inputs
    for inp in inputs:
        assert not set(CLIQUEY) & set(inp.kwargs), inp.desc
    arguments = inspect.signature(info.optim_cls.__init__).parameters
    for flag in (*info.supported_impls, *info.not_og_supported_flags):
        assert flag in arguments, flag


# ------------------------------------------------------------------------- right direction


def _direction_cases():
    out = []
    for param in cases(plain_inputs):
        info, index = param.values
        for contiguous in (True, False):
            for sched in (None, *range(len(info.scheduler_inputs))):
                name = f"{param.id}-{'contiguous' if contiguous else 'strided'}-sched{sched}"
                out.append(pytest.param(info, index, contiguous, sched, id=name))
    return out


@pytest.mark.parametrize(("info", "index", "contiguous", "sched"), _direction_cases())
def test_forloop_goes_right_direction(info, index, contiguous, sched):
    """20 steps of the for-loop implementation (``foreach=False`` where there is a choice) on
    ``||W x + b||^2``, with contiguous or strided parameters and the entry's schedulers: the
    loss goes down (up with ``maximize``)."""
    torch.manual_seed(index)
    inp = plain_inputs(info)[index]  # fresh: schedulers mutate a tensor lr in place
    kwargs = dict(inp.kwargs)
    if "foreach" in info.supported_impls:
        kwargs["foreach"] = False
    if contiguous:
        weight, bias = Parameter(torch.randn(10, 5)), Parameter(torch.randn(10))
    else:
        weight = Parameter(torch.randn(10, 5, 2)[..., 0])
        bias = Parameter(torch.randn(10, 2)[..., 0])
        assert not weight.is_contiguous() and not bias.is_contiguous()
    x = torch.randn(5)
    optimizer = info.optim_cls([weight, bias], **kwargs)
    schedulers = [s(optimizer) for s in info.scheduler_inputs[sched]] if sched is not None else []

    def closure():
        optimizer.zero_grad()
        loss = (weight.mv(x) + bias).pow(2).sum()
        loss.backward()
        return loss

    initial = closure().item()
    for _ in range(20):
        loss = step(info, optimizer, closure)
        for scheduler in schedulers:
            if isinstance(scheduler, ReduceLROnPlateau):
                scheduler.step(loss.item())
            else:
                scheduler.step()
    final = closure().item()
    if kwargs.get("maximize", False):
        assert final > initial
    else:
        assert final < initial


# ------------------------------------------------------------------- foreach == for-loop


def _group_tensors(optimizer):
    """The tensors an optimizer keeps in its param groups (RMSpropODE's global second moment)."""
    return [
        (g, key, value)
        for g, group in enumerate(optimizer.param_groups)
        for key, value in sorted(group.items())
        if isinstance(value, torch.Tensor) and key != "lr"
    ]


@pytest.mark.parametrize(
    ("info", "index"),
    cases(
        lambda info: plain_inputs(info, F64), where=lambda info: "foreach" in info.supported_impls
    ),
)
def test_foreach_matches_forloop(info, index):
    """float64, torch's procedure: a 2-3-1 sigmoid MLP and a 0-d parameter, 7 steps, no
    gradients at step 2, the second layer frozen at steps 3 and 4; after every step the
    parameters, every state entry and the param groups' tensors agree."""
    runs = []
    for foreach in (False, True):
        kwargs = {**copy.deepcopy(plain_inputs(info, F64)[index].kwargs), "foreach": foreach}
        torch.manual_seed(1)
        model = torch.nn.Sequential(
            torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid()
        ).to(F64)
        scalar = torch.empty((), dtype=F64, requires_grad=True)
        scalar.grad = torch.rand_like(scalar)
        runs.append((model, info.optim_cls([*model.parameters(), scalar], **kwargs)))
    x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=F64).reshape(3, 2)
    for i in range(7):
        for model, optimizer in runs:
            optimizer.zero_grad()
            model[2].requires_grad_(not 3 <= i < 5)
            if i != 2:
                model(x).sum().backward()
            optimizer.step()
        (model_a, opt_a), (model_b, opt_b) = runs
        for p_a, p_b in zip(model_a.parameters(), model_b.parameters(), strict=True):
            torch.testing.assert_close(p_b, p_a, msg=f"step {i}: parameter")
            state_a, state_b = opt_a.state[p_a], opt_b.state[p_b]
            assert state_a.keys() == state_b.keys()
            for key in state_a:
                torch.testing.assert_close(state_b[key], state_a[key], msg=f"step {i}: {key}")
        groups_a, groups_b = _group_tensors(opt_a), _group_tensors(opt_b)
        assert [k[:2] for k in groups_a] == [k[:2] for k in groups_b]
        for (g, key, a), (_, _, b) in zip(groups_a, groups_b, strict=True):
            torch.testing.assert_close(b, a, msg=f"step {i}: group {g} {key}")


# ---------------------------------------------------------------------------- tensor lr


def _tensor_lr_cases():
    out = []
    for param in cases(without_differentiable):
        info, index = param.values
        out += [pytest.param(info, index, n, id=f"{param.id}-{n}d") for n in (0, 1, 2)]
    return out


@pytest.mark.parametrize(("info", "index", "num_dim"), _tensor_lr_cases())
def test_tensor_lr(info, index, num_dim):
    """A 1-element tensor lr of 0, 1 or 2 dimensions steps exactly as the float lr (5 steps;
    torch's test takes 1e-3, which a float32 tensor rounds, and compares with tolerances)."""
    torch.manual_seed(index)
    kwargs = dict(without_differentiable(info)[index].kwargs)
    lr = 1.0 if info.step_requires_closure else 2.0**-10
    weight, bias = Parameter(torch.randn(10, 5)), Parameter(torch.randn(10))
    start = weight.detach().clone()
    twins = [weight.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()]
    x = torch.randn(5)
    float_opt = info.optim_cls([weight, bias], **{**kwargs, "lr": lr})
    tensor_lr = torch.tensor(lr).reshape([1] * num_dim)
    tensor_opt = info.optim_cls(twins, **{**kwargs, "lr": tensor_lr})

    def closure(optimizer, w, b):
        optimizer.zero_grad()
        loss = (w.mv(x) + b).pow(2).sum()
        loss.backward()
        return loss

    for _ in range(5):
        step(info, float_opt, lambda: closure(float_opt, weight, bias))
        step(info, tensor_opt, lambda: closure(tensor_opt, *twins))
        assert torch.equal(twins[0], weight)
        assert torch.equal(twins[1], bias)
    assert not torch.equal(weight, start)  # the runs moved


# ----------------------------------------------------------------------- gradients, no-ops


def _moves_without_gradient(kwargs):
    """Inputs that decay the parameters whatever the gradient (torch's weight_decay, Amos's
    extra_l2)."""
    return any(kwargs.get(key, 0) != 0 for key in ("weight_decay", "extra_l2"))


@pytest.mark.parametrize(("info", "index"), cases(all_inputs))
def test_grads_are_never_inplaced_into(info, index):
    """Five steps leave every gradient's version counter unchanged."""
    kwargs = all_inputs(info)[index].kwargs
    param = torch.randn(5, 1, requires_grad=True)
    params = [param.detach()] if kwargs.get("differentiable", False) else [param]
    optimizer = info.optim_cls(params, **kwargs)
    params[0].grad = torch.rand_like(params[0])
    version = params[0].grad._version
    for _ in range(5):
        optimizer.step(lambda: torch.tensor([1.0]))
        assert params[0].grad._version == version


@pytest.mark.parametrize(("info", "index"), cases(all_inputs))
def test_step_is_noop_for_zero_grads(info, index):
    """A zero gradient leaves the parameter unchanged, except for the inputs that decay it
    regardless (torch exempts weight_decay; Amos's extra_l2 is its decay), which must move it."""
    kwargs = all_inputs(info)[index].kwargs
    param = torch.randn(5, 1, requires_grad=True)
    old = param.detach().clone()
    params = [param.detach()] if kwargs.get("differentiable", False) else [param]
    optimizer = info.optim_cls(params, **kwargs)
    params[0].grad = torch.zeros_like(params[0])
    optimizer.step(lambda: torch.tensor([1.0]))
    if _moves_without_gradient(kwargs):
        assert not torch.equal(params[0], old)
    else:
        assert torch.equal(params[0], old)


# ----------------------------------------------------------------------------- state dicts


@pytest.mark.parametrize(("info", "index"), cases(without_differentiable))
def test_can_load_older_state_dict(info, index):
    """A state dict without the entry's newer flags (``not_og_supported_flags``) loads, the
    flags take their defaults, and the optimizer steps (torch's Conv2d + BatchNorm2d model)."""
    torch.manual_seed(1)
    kwargs = without_differentiable(info)[index].kwargs
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1, stride=2), torch.nn.BatchNorm2d(2))
    x = torch.rand(1, 4, 16, 16)
    optimizer = info.optim_cls(model.parameters(), **kwargs)

    def closure():
        optimizer.zero_grad()
        loss = model(x).sum()
        loss.backward()
        return loss

    for _ in range(3):
        step(info, optimizer, closure)
    old = copy.deepcopy(optimizer.state_dict())
    for group in old["param_groups"]:
        for flag in info.not_og_supported_flags:
            group.pop(flag, None)
    optimizer.load_state_dict(old)
    arguments = inspect.signature(info.optim_cls.__init__).parameters
    for group in optimizer.param_groups:
        for flag in info.not_og_supported_flags:
            assert group[flag] == arguments[flag].default, flag
    step(info, optimizer, closure)
