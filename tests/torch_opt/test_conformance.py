"""The drop-in conformance battery (contracts.md §2, issue 7): every torch_opt optimizer through
the checks of torch's OptimizerInfo suite (§2.6) and the ecosystem's integration points (§2.4,
§2.5: LR schedulers, GradScaler, torch.compile, DDP, FSDP2, ZeroRedundancyOptimizer).

One table (``SPECS``) says how to build each optimizer, how to step it, and which checks do not
apply and why; every check is parametrized over the table, so a skipped check states its reason.
torch's own harness is used where it applies to our classes (its shared constructor error
inputs, ``torch.testing._internal.common_optimizers``); the rest is re-implemented here.
"""

from __future__ import annotations

import copy
import datetime
import io
import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.optim import Adam, AdamW
from torch.optim.lr_scheduler import (
    CyclicLR,
    OneCycleLR,
    ReduceLROnPlateau,
    StepLR,
)

from torch_opt import (
    MGS,
    Amos,
    AmosDecayScheduler,
    FiniteDifferencePenalty,
    LossTiedODE,
    RMSpropODE,
    SuAmosSchedule,
)

F32, F64 = torch.float32, torch.float64
COMPILE_BACKEND = os.environ.get("TWINOPT_COMPILE_BACKEND", "inductor")

# ----------------------------------------------------------------------------------- the table

PLAIN, CLOSURE, SEARCH = "plain", "closure", "search"  # how step is driven (see ``drive``)

NOT_AN_OPTIMIZER = (
    "an LRScheduler, not an Optimizer: the optimizer it drives is torch.optim.AdamW, which "
    "torch's own suite checks"
)
NO_FOREACH = "one implementation only (no foreach flag)"
NO_MAXIMIZE = "no maximize flag (negate the loss instead)"
NO_WEIGHT_DECAY = "no weight_decay hyperparameter"
NO_STEP_COUNT = "no per-parameter 'step' in its state"
NO_NEWER_FLAGS = "no flag was added after the first release"
SEARCHES = (
    "a random search: a zero or missing surrogate gradient still searches around 0 (math.md §4)"
)


@dataclass(frozen=True)
class Spec:
    """One optimizer of the battery."""

    name: str
    build: Callable[..., Any]  # (params, **overrides) -> optimizer
    drive: str = PLAIN  # PLAIN: backward then step(); CLOSURE: step(closure); SEARCH: MGS
    lr: float = 1e-2
    flags: frozenset = frozenset()  # "maximize", "foreach", "weight_decay"
    weight_decay_key: str = "weight_decay"
    momentum_key: str | None = None  # what OneCycleLR / CyclicLR cycle, or None (they refuse)
    complex_error: str | None = None  # the TypeError for complex params, if not supported
    param_shaped: bool = True  # every positive-dim state tensor has its parameter's shape
    fsdp_error: str | None = None  # the error for DTensor (FSDP2) params, if not supported
    newer_flags: tuple = ()  # param-group keys added after v1 (setdefault on load)
    exact_under_zero: bool = True  # ZeRO(Cls) equals the single-process run
    add_groups: bool = False  # per-group values through add_param_group (see SuAmosSchedule)
    wrapper: bool = False  # wraps a base optimizer, whose own groups it takes at construction
    na: dict = field(default_factory=dict)  # check -> why it does not apply


def _rmsprop(params, **kw):
    return RMSpropODE(params, **{"lr": 1e-2, "momentum": 0.5, "centered": True, **kw})


def _rmsprop_global(params, **kw):
    return _rmsprop(params, **{"scale": "global", **kw})


def _amos(params, **kw):
    return Amos(params, **{"lr": 0.05, "momentum": 0.5, **kw})


def one_value_per_tensor(_name, _param):
    """Amos's ``shape`` rule for scalar ``v`` and ``b`` (module-level: ZeRO pickles its groups,
    which hold the kwargs it was given)."""
    return ()


def _amos_factored(params, **kw):
    return Amos(params, **{"lr": 0.05, "shape": one_value_per_tensor, **kw})


def _su_amos(params, *, lr=0.05, maximize=False, foreach=None, **kw):
    base = Adam(params, maximize=maximize, foreach=foreach)
    return SuAmosSchedule(base, **{"lr": lr, "half_life": 100.0, **kw})


def _penalty(params, *, lr=1e-2, maximize=False, foreach=None, weight_decay=0.0, **kw):
    base = Adam(params, lr=lr, maximize=maximize, foreach=foreach, weight_decay=weight_decay)
    return FiniteDifferencePenalty(base, **{"mu": 1e-2, "delta": 1e-3, **kw})


def _mgs(params, **kw):
    kw = {"lr": 1.0, "noise": 0.5, "temperature": 0.05, "seed": 0, **kw}
    return MGS(params, **kw)


def _amos_decay(params, *, lr=1e-2, foreach=None, maximize=False, **kw):
    """AdamW driven by AmosDecayScheduler, the scheduler stepped after every optimizer step."""
    opt = AdamW(params, lr=lr, foreach=foreach, maximize=maximize)
    scheduler = AmosDecayScheduler(opt, lr=lr, half_life=50.0, **kw)
    opt.register_step_post_hook(lambda *_: scheduler.step())
    opt.scheduler = scheduler
    return opt


# The checks that test an optimizer's own machinery (not applicable to a scheduler).
OPTIMIZER_CHECKS = (
    "errors",
    "complex",
    "foreach",
    "maximize",
    "weight_decay",
    "zero_grad_noop",
    "no_grad_noop",
    "printing",
    "deepcopy",
    "nontensor_step",
    "older_state_dict",
    "hooks",
    "bf16_state",
    "group_keys",
)


SPECS = [
    Spec(
        "RMSpropODE",
        _rmsprop,
        flags=frozenset({"maximize", "foreach", "weight_decay"}),
        momentum_key="momentum",  # heavy-ball momentum, as torch.optim.RMSprop's: cycling is meant
        newer_flags=(
            "foreach",
            "maximize",
            "differentiable",
            "capturable",
            "scale",
            "eps_in_sqrt",
            "bias_correction",
            "initial_scale",
        ),
    ),
    Spec(
        "RMSpropODE(scale='global')",
        _rmsprop_global,
        flags=frozenset({"maximize", "foreach", "weight_decay"}),
        momentum_key="momentum",
        exact_under_zero=False,  # the second moment is per param group: ZeRO splits the group
        # A checkpoint older than scale= holds element-wise state; it cannot load into this one.
        newer_flags=(
            "foreach",
            "maximize",
            "differentiable",
            "capturable",
            "eps_in_sqrt",
            "bias_correction",
            "initial_scale",
        ),
    ),
    Spec(
        "LossTiedODE",
        LossTiedODE,
        drive=CLOSURE,
        exact_under_zero=False,  # the gradient norm is per param group: ZeRO splits the group
        na={
            "foreach": NO_FOREACH,
            "maximize": NO_MAXIMIZE,
            "weight_decay": NO_WEIGHT_DECAY,
            "nontensor_step": "no per-parameter state at all",
            "older_state_dict": NO_NEWER_FLAGS,
            "grad_scaler": "step needs a closure (the loss), which GradScaler.step refuses",
        },
    ),
    Spec(
        "Amos",
        _amos,
        lr=0.05,
        flags=frozenset({"weight_decay", "foreach"}),
        weight_decay_key="extra_l2",
        momentum_key="momentum",  # the reference's EMA of the updates, like Adam's beta1: meant
        complex_error="Amos does not support complex parameters",
        newer_flags=("shape", "foreach"),
        na={
            "maximize": NO_MAXIMIZE,
        },
    ),
    Spec(
        "Amos(shape=())",
        _amos_factored,
        lr=0.05,
        flags=frozenset({"weight_decay", "foreach"}),
        weight_decay_key="extra_l2",
        momentum_key="momentum",
        complex_error="Amos does not support complex parameters",
        param_shaped=False,
        fsdp_error="state shape",
        newer_flags=("foreach",),  # its callable shape is saved as None (resolved in the state)
        na={
            "maximize": NO_MAXIMIZE,
        },
    ),
    Spec(
        "SuAmosSchedule(Adam)",
        _su_amos,
        lr=0.05,
        flags=frozenset({"maximize", "foreach"}),
        momentum_key="betas",  # the base's
        add_groups=True,  # its lr (alpha_0) replaces the lr of the base's own groups
        wrapper=True,
        na={
            "weight_decay": "applies its own decay; the base must have weight_decay=0",
            "zero_grad_noop": "Su's rule (6) decays the parameters every step by design",
            "older_state_dict": NO_NEWER_FLAGS,
        },
    ),
    Spec(
        "FiniteDifferencePenalty(Adam)",
        _penalty,
        drive=CLOSURE,
        flags=frozenset({"maximize", "foreach", "weight_decay"}),
        momentum_key="betas",  # the base's
        wrapper=True,
        na={
            "older_state_dict": NO_NEWER_FLAGS,
            "grad_scaler": "step needs a closure (two gradients), which GradScaler.step refuses",
        },
    ),
    Spec(
        "MGS",
        _mgs,
        drive=SEARCH,
        lr=1.0,
        complex_error="MGS does not support complex parameters",
        fsdp_error="MGS does not support DTensor",
        exact_under_zero=False,  # a candidate perturbs all parameters: ZeRO splits them
        newer_flags=("random_mix", "antithetic"),
        na={
            "foreach": NO_FOREACH,
            "maximize": NO_MAXIMIZE,
            "weight_decay": NO_WEIGHT_DECAY,
            "zero_grad_noop": SEARCHES,
            "no_grad_noop": SEARCHES,
            "nontensor_step": NO_STEP_COUNT,
            "grad_scaler": "step needs a closure (the task loss), which GradScaler.step refuses",
        },
    ),
    Spec(
        "AmosDecayScheduler(AdamW)",
        _amos_decay,
        flags=frozenset({"maximize", "foreach"}),
        momentum_key="betas",
        na={
            **dict.fromkeys(OPTIMIZER_CHECKS, NOT_AN_OPTIMIZER),
            "lr_schedulers": "sets lr absolutely, so it does not compose with other schedulers",
            "param_groups_lr": "sets each group's lr from its own lr argument (one per group)",
        },
    ),
]
IDS = [s.name for s in SPECS]


def check(spec: Spec, name: str) -> None:
    """Skip ``name`` for ``spec`` with the table's reason."""
    if name in spec.na:
        pytest.skip(f"{spec.name}: {spec.na[name]}")


# ---------------------------------------------------------------------------------- problems


def model_params(dtype=F32, *, noncontiguous=False, seed=0):
    """``W`` (2, 3) and ``b`` (2,), as leaf tensors (``W`` a strided view when asked)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(2, 3 * (2 if noncontiguous else 1), generator=g, dtype=dtype)
    b = torch.randn(2, generator=g, dtype=dtype)
    if noncontiguous:
        w = w[:, ::2]
        assert not w.is_contiguous()
    return [w.requires_grad_(), b.requires_grad_()]


def quadratic(params, dtype=F32):
    """``||W x + b||^2`` for a fixed ``x`` (torch's right-direction problem)."""
    w, b = params[0], params[1]
    x = (torch.arange(1.0, 4.0, dtype=dtype) / 4).to(w.dtype)
    if w.is_complex():
        return (w @ x + b).abs().square().sum()
    return (w @ x + b).square().sum()


def drive(spec: Spec, opt, loss_fn: Callable[[], Tensor]):
    """One step of ``opt`` on ``loss_fn`` as ``spec`` says it is driven; returns the loss."""
    return drive_step(spec, opt, opt.step, loss_fn)


def drive_step(spec: Spec, opt, step: Callable, loss_fn: Callable[[], Tensor]):
    """``drive`` through ``step`` (``opt.step`` or a compiled version of it)."""
    if spec.drive == CLOSURE:  # the closure sets the gradients and returns the loss

        def closure():
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss

        return step(closure)
    opt.zero_grad()  # the gradients (MGS: the surrogate), then the step
    with torch.enable_grad():
        loss = loss_fn()
        loss.backward()
    if spec.drive == SEARCH:  # the closure returns the task loss, under no_grad
        return step(lambda: loss_fn().detach())
    step()
    return loss


def state_tensors(opt) -> dict:
    """Every tensor of ``opt.state_dict()`` by a readable path (for equality checks)."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, Tensor):
            out[prefix] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{prefix}/{i}", v)
        else:
            out[prefix] = value

    walk("", opt.state_dict())
    return out


def assert_same_state(a, b, *, exact=True, ignore=()):
    sa, sb = state_tensors(a), state_tensors(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        if key.rsplit("/", 1)[-1] in ignore:
            continue
        x, y = sa[key], sb[key]
        if isinstance(x, Tensor):
            if exact:
                assert torch.equal(x, y), key
            else:
                torch.testing.assert_close(x, y, msg=key)
        else:
            assert x == y or (x != x and y != y), key


# ------------------------------------------------------------------------------ construction


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_errors(spec):
    """torch's shared constructor error inputs (``get_error_inputs_for_all_optims``); the
    wrappers meet them through their base's constructor, which gets the params."""
    check(spec, "errors")
    from torch.testing._internal.common_optimizers import get_error_inputs_for_all_optims

    for error_input in get_error_inputs_for_all_optims("cpu", F32):
        inp = error_input.optimizer_error_input
        params = inp.params if inp.params is not None else [torch.zeros(2, requires_grad=True)]
        if error_input.error_type is UserWarning:
            with pytest.warns(UserWarning, match=error_input.error_regex):
                spec.build(params, **inp.kwargs)
        else:
            with pytest.raises(error_input.error_type, match=error_input.error_regex):
                spec.build(params, **inp.kwargs)


# ----------------------------------------------------------------------------- right direction


def descend(spec, params, *, steps=20, scheduler=None, **kw):
    opt = spec.build(params, **kw)
    sched = scheduler(opt) if scheduler is not None else None
    start = quadratic(params).item()
    for _ in range(steps):
        loss = drive(spec, opt, lambda: quadratic(params))
        if isinstance(sched, ReduceLROnPlateau):
            sched.step(float(loss))
        elif sched is not None:
            sched.step()
    return start, quadratic(params).item()


SCHEDULERS = {
    "none": None,
    "StepLR": lambda opt: StepLR(opt, step_size=10, gamma=0.9),
    "ReduceLROnPlateau": lambda opt: ReduceLROnPlateau(opt, patience=2),
}


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("noncontiguous", [False, True])
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_goes_right_direction(spec, noncontiguous, scheduler):
    if scheduler != "none" and spec.name.startswith("AmosDecayScheduler"):
        pytest.skip(spec.na["lr_schedulers"])
    params = model_params(noncontiguous=noncontiguous)
    start, end = descend(spec, params, scheduler=SCHEDULERS[scheduler], lr=spec.lr)
    assert end < start
    if "maximize" in spec.flags:  # the same loss, maximized
        params = model_params(noncontiguous=noncontiguous)
        start, end = descend(spec, params, maximize=True, lr=spec.lr)
        assert end > start


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_maximize_reverses_and_leaves_grad_alone(spec):
    check(spec, "maximize")
    if "maximize" not in spec.flags:
        pytest.skip(f"{spec.name}: {NO_MAXIMIZE}")
    params = model_params()
    opt = spec.build(params, maximize=True)
    quadratic(params).backward()
    grads = [p.grad.clone() for p in params]
    if spec.drive == CLOSURE:
        opt.step(lambda: quadratic(params))
    else:
        opt.step()
    for p, g in zip(params, grads, strict=True):
        assert torch.equal(p.grad, g)


# ------------------------------------------------------------------------------ param groups


def groups_run(spec, key, value):
    """Two groups: the second with ``key=value``; returns (params, start values)."""
    params = model_params()
    other = [torch.randn(4, generator=torch.Generator().manual_seed(5)).requires_grad_()]
    if spec.add_groups:
        opt = spec.build(params)
        opt.add_param_group({"params": other, key: value})
    else:
        opt = spec.build([{"params": params}, {"params": other, key: value}])
    start = [p.detach().clone() for p in params + other]

    def loss():
        return quadratic(params) + (other[0] - 1).square().sum()

    for _ in range(5):
        drive(spec, opt, loss)
    return params + other, start


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_param_groups_lr(spec):
    """A group with lr ~ 0 does not move while the other trains (groups are independent)."""
    check(spec, "param_groups_lr")
    params, start = groups_run(spec, "lr", 1e-28)
    assert not torch.equal(params[0], start[0])
    assert torch.equal(params[2], start[2])


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_param_groups_weight_decay(spec):
    """A group's own weight decay changes only that group's trajectory."""
    check(spec, "weight_decay")
    if "weight_decay" not in spec.flags:
        pytest.skip(f"{spec.name}: {NO_WEIGHT_DECAY}")
    plain, _ = groups_run(spec, spec.weight_decay_key, 0.0)
    decayed, _ = groups_run(spec, spec.weight_decay_key, 0.5)
    for a, b in zip(plain[:2], decayed[:2], strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(decayed[2], plain[2])


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_tensor_lr(spec):
    """A 1-element tensor lr gives the float lr's trajectory."""
    runs = []
    for lr in (spec.lr, torch.tensor(spec.lr)):
        params = model_params()
        opt = spec.build(params, lr=lr)
        for _ in range(5):
            drive(spec, opt, lambda params=params: quadratic(params))
        runs.append(params)
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------- complex


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_complex_equals_view_as_real(spec):
    """Complex params step exactly as their real views do, or construction raises TypeError."""
    check(spec, "complex")
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 3, dtype=torch.complex64, generator=g).requires_grad_()
    zb = torch.randn(2, dtype=torch.complex64, generator=g).requires_grad_()
    if spec.complex_error is not None:
        with pytest.raises(TypeError, match=spec.complex_error):
            spec.build([z, zb])
        return
    r = torch.view_as_real(z.detach()).clone().requires_grad_()
    rb = torch.view_as_real(zb.detach()).clone().requires_grad_()
    opt_c, opt_r = spec.build([z, zb]), spec.build([r, rb])

    def loss_c():
        return quadratic([z, zb])

    def loss_r():
        return quadratic([torch.view_as_complex(r), torch.view_as_complex(rb)])

    for _ in range(4):
        drive(spec, opt_c, loss_c)
        drive(spec, opt_r, loss_r)
        assert torch.equal(torch.view_as_real(z.detach()), r.detach())
        assert torch.equal(torch.view_as_real(zb.detach()), rb.detach())


# ------------------------------------------------------------------------- foreach == for-loop


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_foreach_matches_forloop(spec):
    """float64: params and all state equal after 7 steps, with grads None at step 2, a layer
    frozen from step 3 and a 0-d param."""
    check(spec, "foreach")
    if "foreach" not in spec.flags:
        pytest.skip(f"{spec.name}: {NO_FOREACH}")
    opts, all_params = [], []
    for foreach in (False, True):
        params = [*model_params(F64), torch.tensor(0.7, dtype=F64, requires_grad=True)]
        opt = spec.build(params, foreach=foreach, lr=spec.lr)
        for i in range(7):

            def closure(i=i, params=params, opt=opt):
                opt.zero_grad(set_to_none=True)
                loss = quadratic(params, F64) + params[2].square() * 3
                if i != 2:  # no gradients at all at step 2
                    loss.backward()
                    if i >= 3:
                        params[1].grad = None  # a layer frozen from step 3
                return loss

            if spec.drive == CLOSURE:
                opt.step(closure)
            else:
                closure()
                opt.step()
        opts.append(opt)
        all_params.append(params)
    for a, b in zip(*all_params, strict=True):
        assert torch.equal(a, b)
    assert_same_state(*opts, ignore=("foreach",))


# -------------------------------------------------------------------------------- no-op steps


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_zero_grads_are_a_noop(spec):
    check(spec, "zero_grad_noop")
    params = model_params()
    start = [p.detach().clone() for p in params]
    opt = spec.build(params)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step((lambda: torch.tensor(1.0)) if spec.drive != PLAIN else None)
    for p, s in zip(params, start, strict=True):
        assert torch.equal(p, s)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_missing_grads_are_a_noop(spec):
    check(spec, "no_grad_noop")
    params = model_params()
    start = [p.detach().clone() for p in params]
    opt = spec.build(params)
    before = copy.deepcopy(opt.state_dict())
    opt.step((lambda: torch.tensor(1.0)) if spec.drive != PLAIN else None)
    for p, s in zip(params, start, strict=True):
        assert torch.equal(p, s)
    after = opt.state_dict()
    assert before["state"].keys() == after["state"].keys()
    for i, entry in before["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(after["state"][i][key]))


# -------------------------------------------------------------------- printing, deepcopy


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("key", ["no_such_option", "nesterov"])
def test_unknown_param_group_keys_are_refused(spec, key):
    """Nothing in a param group is silently ignored: a key the optimizer does not know is a
    ValueError naming it (at construction and in add_param_group); the keys torch's LR
    schedulers write are accepted."""
    check(spec, "group_keys")
    w, b = model_params()
    opt = spec.build([w])
    with pytest.raises(ValueError, match=rf"^Invalid param group key: '{key}' \(must be one of"):
        opt.add_param_group({"params": [b], key: 1})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [b], "initial_lr": spec.lr, "swa_lr": spec.lr})
    if not spec.wrapper:  # a wrapper's construction takes its base's groups (the base's keys)
        with pytest.raises(ValueError, match=rf"^Invalid param group key: '{key}'"):
            spec.build([{"params": [w]}, {"params": [b], key: 1}])


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_printing(spec):
    check(spec, "printing")
    text = repr(spec.build(model_params()))
    assert "Parameter Group 0" in text and "lr" in text


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_deepcopy(spec):
    """A deep copy has the same public attributes and trains independently and identically."""
    check(spec, "deepcopy")
    params = model_params()
    opt = spec.build(params)
    drive(spec, opt, lambda: quadratic(params))
    twin = copy.deepcopy(opt)
    assert {k for k in vars(opt) if not k.startswith("_")} == {
        k for k in vars(twin) if not k.startswith("_")
    }
    twin_params = [p for g in twin.param_groups for p in g["params"]]
    assert all(a is not b for a, b in zip(params, twin_params, strict=True))
    for _ in range(2):
        drive(spec, opt, lambda: quadratic(params))
        drive(spec, twin, lambda: quadratic(twin_params))
    for a, b in zip(params, twin_params, strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------- state dict


def trained(spec, steps=3, dtype=F32, **kw):
    params = model_params(dtype)
    opt = spec.build(params, **kw)
    for _ in range(steps):
        drive(spec, opt, lambda: quadratic(params))
    return params, opt


def clone_into(spec, params, state_dict, scheduler_state=None, **kw):
    twin_params = [p.detach().clone().requires_grad_() for p in params]
    twin = spec.build(twin_params, **kw)
    twin.load_state_dict(state_dict)
    if scheduler_state is not None:  # the AmosDecayScheduler row resumes its scheduler too
        twin.scheduler.load_state_dict(scheduler_state)
    return twin_params, twin


def scheduler_state(opt):
    return opt.scheduler.state_dict() if hasattr(opt, "scheduler") else None


def lockstep(spec, a, b, steps=3):
    (pa, oa), (pb, ob) = a, b
    for _ in range(steps):
        drive(spec, oa, lambda: quadratic(pa))
        drive(spec, ob, lambda: quadratic(pb))
    for x, y in zip(pa, pb, strict=True):
        assert torch.equal(x, y)
    assert_same_state(oa, ob)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_state_dict_deterministic(spec):
    """Reloading into a clone and training both in lockstep keeps them identical."""
    params, opt = trained(spec)
    twin = clone_into(spec, params, copy.deepcopy(opt.state_dict()), scheduler_state(opt))
    assert_same_state(opt, twin[1])
    lockstep(spec, (params, opt), twin)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_save_load_weights_only(spec):
    """``torch.load(weights_only=True)`` reads the state dict back, and it resumes exactly."""
    params, opt = trained(spec)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    twin = clone_into(spec, params, loaded, scheduler_state(opt))
    lockstep(spec, (params, opt), twin)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_load_nontensor_step(spec):
    """A checkpoint whose ``step`` entries are Python numbers loads and steps as the original."""
    check(spec, "nontensor_step")
    params, opt = trained(spec)
    state_dict = copy.deepcopy(opt.state_dict())
    found = False
    for entry in state_dict["state"].values():
        for key in [k for k in entry if k in ("step", "su_step")]:
            entry[key] = entry[key].item()
            found = True
    assert found
    twin_params, twin = clone_into(spec, params, state_dict)
    for _ in range(2):
        drive(spec, opt, lambda: quadratic(params))
        drive(spec, twin, lambda: quadratic(twin_params))
    for a, b in zip(params, twin_params, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_load_older_state_dict(spec):
    """A state dict without the flags added after v1 loads, gets their defaults, and steps."""
    check(spec, "older_state_dict")
    params, opt = trained(spec)
    state_dict = copy.deepcopy(opt.state_dict())
    for group in state_dict["param_groups"]:
        for key in spec.newer_flags:
            group.pop(key)
    twin_params, twin = clone_into(spec, params, state_dict)
    for key in spec.newer_flags:
        assert twin.param_groups[0][key] == opt.param_groups[0][key]
    lockstep(spec, (params, opt), (twin_params, twin))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_bf16_state_dtypes_survive_a_round_trip(spec):
    """bf16 params: each state tensor keeps its dtype (float32 state stays float32) through
    ``state_dict`` / ``load_state_dict``, and the run resumes identically."""
    check(spec, "bf16_state")
    params, opt = trained(spec, dtype=torch.bfloat16)
    before = {k: v.dtype for k, v in state_tensors(opt).items() if isinstance(v, Tensor)}
    if spec.name.startswith(("Amos", "SuAmos")):
        assert F32 in before.values()
    twin = clone_into(spec, params, copy.deepcopy(opt.state_dict()))
    after = {k: v.dtype for k, v in state_tensors(twin[1]).items() if isinstance(v, Tensor)}
    assert after == before
    lockstep(spec, (params, opt), twin)


# ------------------------------------------------------------------------------------ hooks


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_hooks(spec):
    """Step hooks (global pre, local pre, local post, global post) and all four state-dict
    hooks, with ``prepend``."""
    check(spec, "hooks")
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    params = model_params()
    opt = spec.build(params)
    calls = []

    def record(o, what):
        if o is opt:  # a wrapper's base steps too: count the hooks of ``opt`` itself
            calls.append(what)

    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: record(o, "global-pre")),
        register_optimizer_step_post_hook(lambda o, a, k: record(o, "global-post")),
        opt.register_step_pre_hook(lambda o, a, k: calls.append("pre")),
        opt.register_step_post_hook(lambda o, a, k: calls.append("post")),
    ]
    try:
        drive(spec, opt, lambda: quadratic(params))
    finally:
        for h in handles:
            h.remove()
    assert calls == ["global-pre", "pre", "post", "global-post"]

    order = []
    opt.register_state_dict_pre_hook(lambda o: order.append("sd-pre"))
    opt.register_state_dict_pre_hook(lambda o: order.append("sd-pre-first"), prepend=True)

    def post(o, sd):
        order.append("sd-post")
        sd["extra"] = 1
        return sd

    opt.register_state_dict_post_hook(post)
    opt.register_load_state_dict_pre_hook(lambda o, sd: order.append("load-pre"))

    def load_post(o):
        order.append("load-post")

    opt.register_load_state_dict_post_hook(load_post)
    opt.register_load_state_dict_post_hook(lambda o: order.append("load-post-first"), prepend=True)
    sd = opt.state_dict()
    assert sd["extra"] == 1
    opt.load_state_dict(sd)
    assert order[:3] == ["sd-pre-first", "sd-pre", "sd-post"]
    assert "load-pre" in order and order.index("load-post-first") < order.index("load-post")


# ------------------------------------------------------------------------------ schedulers


@pytest.mark.parametrize("kind", ["OneCycleLR", "CyclicLR"])
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_momentum_cycling_schedulers(spec, kind):
    """OneCycleLR and CyclicLR with their default ``cycle_momentum=True`` cycle the
    hyperparameter named ``momentum`` (or ``betas[0]``); optimizers without one are refused
    with torch's ValueError and run with ``cycle_momentum=False``."""
    check(spec, "lr_schedulers")
    params = model_params()
    opt = spec.build(params)

    def make(**kw):
        if kind == "OneCycleLR":
            return OneCycleLR(opt, max_lr=spec.lr, total_steps=10, **kw)
        return CyclicLR(opt, base_lr=spec.lr / 10, max_lr=spec.lr, step_size_up=3, **kw)

    if spec.momentum_key is None:
        with pytest.raises(ValueError, match="momentum"):
            make()
        sched = make(cycle_momentum=False)
    else:
        sched = make()
    seen = set()
    for _ in range(6):
        drive(spec, opt, lambda: quadratic(params))
        sched.step()
        if spec.momentum_key is not None:
            value = opt.param_groups[0][spec.momentum_key]
            seen.add(value[0] if isinstance(value, tuple) else value)
    if spec.momentum_key is not None:
        assert len(seen) > 1
    # The scheduler's state round-trips with the optimizer's.
    sched.load_state_dict(copy.deepcopy(sched.state_dict()))
    assert all(math.isfinite(float(p.detach().sum())) for p in params)


# --------------------------------------------------------------------------------- AMP, compile


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_grad_scaler_with_autocast(spec):
    """``GradScaler`` on the CPU with bf16 autocast gives the unscaled run's parameters;
    closure-driven optimizers refuse it with a clear error."""
    check(spec, "grad_scaler")
    runs = []
    for scaled in (False, True):
        params = model_params()
        opt = spec.build(params)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, enabled=scaled)
        for _ in range(3):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = quadratic([params[0], params[1]])
            scaler.scale(loss.float()).backward()
            scaler.step(opt)
            scaler.update()
        runs.append(params)
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.drive != PLAIN], ids=lambda s: s.name)
def test_grad_scaler_refuses_closure_driven_optimizers(spec):
    params = model_params()
    opt = spec.build(params)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(quadratic(params)).backward()
    with pytest.raises(RuntimeError, match="Closure use is not currently supported"):
        scaler.step(opt, closure=lambda: quadratic(params))
    with pytest.raises(ValueError, match="closure"):
        scaler.step(opt)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.slow
def test_compiled_step_equals_eager(spec):
    """``torch.compile(opt.step)`` gives eager's params and state (2 steps)."""
    check(spec, "compile")
    torch._dynamo.reset()
    runs = []
    for compiled in (False, True):
        params = model_params()
        opt = spec.build(params)
        step = torch.compile(opt.step, backend=COMPILE_BACKEND) if compiled else opt.step
        for _ in range(2):
            drive_step(spec, opt, step, lambda params=params: quadratic(params))
        runs.append((params, opt))
    (pa, oa), (pb, ob) = runs
    for a, b in zip(pa, pb, strict=True):
        torch.testing.assert_close(a, b)
    assert_same_state(oa, ob, exact=False)


# ------------------------------------------------------------------------------ distributed

WORLD = 2

DIST_STEPS = 3


def dist_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(F64)


def dist_data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, generator=g, dtype=F64), torch.randn(8, 1, generator=g, dtype=F64)


def dist_train(spec, model, opt, x, y, *, global_value=None):
    """``DIST_STEPS`` steps on the mean squared error of ``(x, y)``; ``global_value`` maps the
    local loss to the full batch's value (for closures whose value the optimizer reads)."""

    def loss_fn():
        loss = (model(x) - y).square().mean()
        if global_value is not None:
            loss = loss + (global_value(loss.detach()) - loss.detach())
        return loss

    for _ in range(DIST_STEPS):
        drive(spec, opt, loss_fn)


def reference_params(spec):
    model = dist_model()
    x, y = dist_data()
    opt = spec.build(list(model.parameters()))
    dist_train(spec, model, opt, x, y)
    return [p.detach() for p in model.parameters()]


def _zero(spec, params):
    """ZeroRedundancyOptimizer over ``spec``'s class; a wrapper wraps a ZeRO base instead."""
    from torch.distributed.optim import ZeroRedundancyOptimizer as ZeRO

    name = spec.name
    if name.startswith("SuAmosSchedule"):
        return SuAmosSchedule(ZeRO(params, optimizer_class=Adam), lr=spec.lr, half_life=100.0)
    if name.startswith("FiniteDifferencePenalty"):
        base = ZeRO(params, optimizer_class=Adam, lr=spec.lr)
        return FiniteDifferencePenalty(base, mu=1e-2, delta=1e-3)
    if name.startswith("AmosDecayScheduler"):
        opt = ZeRO(params, optimizer_class=AdamW, lr=spec.lr)
        scheduler = AmosDecayScheduler(opt, lr=spec.lr, half_life=50.0)
        opt.register_step_post_hook(lambda *_: scheduler.step())
        return opt
    cls, kw = {
        "RMSpropODE": (RMSpropODE, {"lr": 1e-2, "momentum": 0.5, "centered": True}),
        "RMSpropODE(scale='global')": (
            RMSpropODE,
            {"lr": 1e-2, "momentum": 0.5, "centered": True, "scale": "global"},
        ),
        "LossTiedODE": (LossTiedODE, {}),
        "Amos": (Amos, {"lr": 0.05, "momentum": 0.5}),
        "Amos(shape=())": (Amos, {"lr": 0.05, "shape": one_value_per_tensor}),
        "MGS": (MGS, {"lr": 1.0, "noise": 0.5, "temperature": 0.05, "seed": 0}),
    }[name]
    return ZeRO(params, optimizer_class=cls, **kw)


def _distributed_worker(rank, init_file, out_dir):
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=30),  # a rank that fails alone does not hang the other
    )
    x, y = dist_data()
    half = slice(rank * 4, rank * 4 + 4)

    def global_value(local):
        total = local.clone()
        dist.all_reduce(total)
        return total / WORLD

    results = {}
    for spec in SPECS:
        out = results[spec.name] = {}
        # DDP, 2 ranks x half the batch == 1 process on the full batch.
        try:
            model = DDP(dist_model())
            opt = spec.build(list(model.parameters()))
            dist_train(spec, model, opt, x[half], y[half], global_value=global_value)
            out["ddp"] = [p.detach().tolist() for p in model.parameters()]
        except Exception as e:  # reported to the parent, which fails the check
            out["ddp"] = f"{type(e).__name__}: {e}"
            print(rank, spec.name, out["ddp"], flush=True)  # noqa: T201
        # FSDP2: parameters become DTensor shards.
        try:
            model = dist_model()
            fully_shard(model)
            opt = spec.build(list(model.parameters()))
            dist_train(spec, model, opt, x[half], y[half], global_value=global_value)
            out["fsdp"] = [p.full_tensor().detach().tolist() for p in model.parameters()]
        except Exception as e:
            out["fsdp"] = f"{type(e).__name__}: {e}"
            print(rank, spec.name, out["fsdp"], flush=True)  # noqa: T201
        dist.barrier()
        # ZeroRedundancyOptimizer, with DDP's synchronized gradients.
        try:
            model = DDP(dist_model())
            opt = _zero(spec, list(model.parameters()))
            dist_train(spec, model, opt, x[half], y[half], global_value=global_value)
            zero = opt if hasattr(opt, "consolidate_state_dict") else opt.base_optimizer
            zero.consolidate_state_dict(to=0)
            if rank == 0:
                zero.state_dict()
            out["zero"] = [p.detach().tolist() for p in model.parameters()]
        except Exception as e:
            out["zero"] = f"{type(e).__name__}: {e}"
            print(rank, spec.name, out["zero"], flush=True)  # noqa: T201
        dist.barrier()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    """One spawn of 2 gloo processes runs every distributed check for every optimizer."""
    tmp = tmp_path_factory.mktemp("dist")
    torch.multiprocessing.spawn(
        _distributed_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True
    )
    out = []
    for rank in range(WORLD):
        with open(tmp / f"rank{rank}.json") as f:
            out.append(json.load(f))
    return out


def _assert_ranks_equal_reference(spec, results, key, *, exact):
    want = reference_params(spec)
    for rank_results in results:
        got = rank_results[spec.name][key]
        assert not isinstance(got, str), got
        for g, w in zip(got, want, strict=True):
            g = torch.tensor(g, dtype=F64)
            if exact:
                torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)
            else:
                assert torch.isfinite(g).all()
    for a, b in zip(results[0][spec.name][key], results[1][spec.name][key], strict=True):
        assert a == b  # ranks agree exactly


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.slow
def test_ddp_matches_one_process(spec, distributed_results):
    _assert_ranks_equal_reference(spec, distributed_results, "ddp", exact=True)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.slow
def test_fsdp2(spec, distributed_results):
    """``fully_shard``: parameter-shaped state works and matches one process; other optimizers
    raise an error naming the reason."""
    if not hasattr(torch.cpu.Stream, "record_event"):
        pytest.skip("torch 2.6's fully_shard cannot run on the CPU (no Stream.record_event)")
    if spec.fsdp_error is not None:
        for rank_results in distributed_results:
            got = rank_results[spec.name]["fsdp"]
            assert isinstance(got, str) and spec.fsdp_error in got, got
        return
    _assert_ranks_equal_reference(spec, distributed_results, "fsdp", exact=True)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.slow
def test_zero_redundancy_optimizer(spec, distributed_results):
    """ZeroRedundancyOptimizer(params, optimizer_class=Cls) (a wrapper wraps a ZeRO base):
    trains with ranks in agreement; equal to one process where every statistic is per
    parameter (a per-group statistic becomes per shard under ZeRO)."""
    _assert_ranks_equal_reference(spec, distributed_results, "zero", exact=spec.exact_under_zero)


def test_table_states_a_reason_for_every_skip():
    for spec in SPECS:
        assert all(isinstance(r, str) and r for r in spec.na.values())
    assert not set().union(*(s.na for s in SPECS)) - {
        *OPTIMIZER_CHECKS,
        "lr_schedulers",
        "param_groups_lr",
        "grad_scaler",
        "compile",
    }
