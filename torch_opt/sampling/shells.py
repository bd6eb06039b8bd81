"""The MGS shells (math.md §4): ``MGS``, ``functional_population``; the math is in
``torch_opt.sampling``."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import Optimizer, ParamsT

from torch_opt._math import TORCH_WORDING, check_group_keys, is_dtensor, sparse_grad_error
from torch_opt._native.sampling import native_propose, takes
from torch_opt.sampling.kernels import (
    _density_weights,
    _mixture_log_density,
    _noise_scales,
    _proposal_sums,
    clip_surrogate,
    importance_weights,
    perturbations,
    weighted_direction,
)
from twinopt._checks import check_nonnegative, fail
from twinopt.sampling import check_mgs_args, mixture_mask

__all__ = [
    "MGS",
    "functional_population",
]


# ---------------------------------------------------------------------------------- population


class _ModulePopulation:
    """The callable :func:`functional_population` returns (see there)."""

    def __init__(
        self, module: nn.Module, compute_loss: Callable[..., Tensor], compile: bool
    ) -> None:
        named = list(module.named_parameters())
        self.module = module
        self.compute_loss = compute_loss
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        # Every name of each parameter (a tied weight has several), found once here, so that
        # each call can skip functional_call's search for tied weights (tie_weights=False)
        # and give every alias the same batched value itself.
        aliases: dict[int, list[str]] = {id(p): [] for p in self.params}
        for name, p in module.named_parameters(remove_duplicate=False):
            aliases[id(p)].append(name)
        self._aliases = [aliases[id(p)] for p in self.params]
        self._compiled = torch.compile(self._vmapped) if compile else None

    def _one(self, params: Sequence[Tensor], data: tuple) -> Tensor:
        """The task loss of one parameter set (run under ``vmap``), with the module's buffers."""
        values = {name: t for names, t in zip(self._aliases, params, strict=True) for name in names}

        def forward(*inputs: Any, **kwargs: Any) -> Any:
            return torch.func.functional_call(
                self.module, values, inputs, kwargs, tie_weights=False
            )

        return self.compute_loss(forward, *data)

    def _vmapped(self, stacked: list[Tensor], data: tuple = ()) -> Tensor:
        return torch.func.vmap(self._one, in_dims=(0, None))(stacked, data)

    def __call__(self, stacked: Sequence[Tensor], *data: Any) -> Tensor:
        if len(stacked) != len(self.names):
            raise ValueError(
                f"Invalid population: got {len(stacked)} stacked tensors (must be one per "
                f"parameter of the module, {len(self.names)})"
            )
        stacked = list(stacked)
        if self._compiled is None:
            return self._vmapped(stacked, data)
        try:
            return self._compiled(stacked, data)
        except Exception as err:  # a compiler's failure, or the evaluation's own error
            out = self._vmapped(stacked, data)  # the latter raises again here, eagerly
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            warnings.warn(
                "functional_population(compile=True): torch.compile could not compile the "
                f"evaluation ({reason}); evaluating with eager vmap instead",
                UserWarning,
                stacklevel=2,
            )
            self._compiled = None
            return out

    @property
    def compiled(self) -> bool:
        """Whether calls run compiled code (``compile=True``; ``False`` after a fallback)."""
        return self._compiled is not None


def functional_population(
    module: nn.Module,
    compute_loss: Callable[..., Tensor],
    *,
    compile: bool = False,
) -> Callable[..., Tensor]:
    """A ``population`` for :meth:`MGS.step`: the task loss of a batch of parameter sets of
    ``module``, evaluated together with ``torch.func.vmap`` over ``functional_call``.

    ``compute_loss(forward, *data)`` computes the task loss of one parameter set and returns
    it as a 0-d tensor; ``forward(*inputs, **kwargs)`` runs ``module`` with that set (and the
    module's current buffers), and ``data`` is what the population is called with after the
    stacked parameters (e.g. a batch: ``population(stacked, x, y)``), the same for every set.
    It runs under ``vmap``: no ``.item()``, no Python branching on values, no in-place updates
    of buffers (call ``module.eval()`` for batch norm; dropout in training mode needs
    ``vmap``'s randomness, which this helper leaves at its default, an error).

    ``MGS`` must optimize exactly ``module.parameters()`` in ``named_parameters()`` order
    (one param group, or groups that list them in that order); :meth:`MGS.step` checks it
    when given the population itself.

    Example::

        opt = MGS(model.parameters(), noise_scale="constant", seed=0)
        population = functional_population(
            model, lambda forward, x, y: (forward(x).argmax(-1) != y).float().mean()
        )
        for x, y in batches:
            opt.step(population=lambda stacked: population(stacked, x, y))

    With ``compile=True`` the batched evaluation is ``torch.compile``'d (TorchInductor; on
    the CPU it needs a C++ compiler): the first call compiles (seconds), later calls reuse the
    compiled code, and torch.compile's guards read every tensor and value ``compute_loss``
    depends on anew at each call (a new batch size compiles once more, with a dynamic batch
    size; torch.compile's recompilation limit applies, to all populations together). For
    small models this removes much of the per-operation overhead of ``vmap`` and
    ``functional_call``; the losses equal the eager ones up to the rounding of the compiled
    kernels. Where the compiled call fails but the eager evaluation succeeds (no C++
    compiler, an unsupported operation), the population evaluates with the eager ``vmap``
    from then on, with one warning; an error of the evaluation itself is raised as the eager
    ``vmap`` raises it.

    Args:
        module: The model.
        compute_loss: ``(forward, *data) -> 0-d loss``.
        compile: Compile the batched evaluation (see above).

    Returns:
        A callable: ``(stacked, *data)`` with a list of stacked tensors (one per parameter,
        ``(B, *p.shape)``) -> ``(B,)`` losses.
    """
    return _ModulePopulation(module, compute_loss, compile)


# --------------------------------------------------------------------------------------- shell

_ARGS = (
    "lr",
    "num_samples",
    "noise",
    "noise_scale",
    "mix",
    "temperature",
    "proposal_density",
    "antithetic",
    "max_grad_norm",
)
# The hyperparameters that define a whole candidate: one value for every param group.
_SHARED = (
    "num_samples",
    "mix",
    "random_mix",
    "temperature",
    "proposal_density",
    "antithetic",
    "max_grad_norm",
)
_HALF = (torch.float16, torch.bfloat16)


def _check_mgs_group(group: dict[str, Any]) -> None:
    """Every option's check; torch's wording for ``lr``."""
    if isinstance(group["lr"], Tensor) and group["lr"].numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    check_nonnegative(TORCH_WORDING["lr"], group["lr"])
    check_mgs_args(**{key: group[key] for key in _ARGS})


def _check_shared(group: dict[str, Any], first: dict[str, Any]) -> None:
    """The whole-candidate hyperparameters of ``group`` must equal the first group's."""
    for key in _SHARED:
        if group[key] != first[key]:
            raise fail(
                key, group[key], f"the same in every param group (the first has {first[key]!r})"
            )


def _loss_value(value: Any, name: str) -> float:
    """The loss a closure returned, as a float; a clear ``ValueError`` for anything else."""
    if isinstance(value, Tensor):
        if value.numel() == 1 and not value.is_complex() and value.dtype != torch.bool:
            return float(value.item())  # as .to(float64) would give it, in one call
        what = f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    else:
        what = f"a {type(value).__name__}"
    raise ValueError(
        f"Invalid {name}: returned {what} (must return the task loss as a number or a "
        "one-element tensor)"
    )


class _Block:
    """Parameters of one device and dtype laid end to end: the step works on one flat
    ``(K, n)`` array of perturbations per block (a few ops per block, whatever the number of
    tensors), and hands out per-parameter views of it."""

    def __init__(self, index: list[int], params: list[Tensor]) -> None:
        self.index = index
        self.shapes = [params[i].shape for i in index]
        self.numels = [params[i].numel() for i in index]
        self.size = sum(self.numels)
        self.dtype = params[index[0]].dtype
        self.device = params[index[0]].device

    def flat(self, tensors: list[Tensor]) -> Tensor:
        """``(..., n)``: one per-parameter tensor of shape ``(..., *shape)`` per member, end to
        end (no copy for a block of one)."""
        lead = tensors[0].shape[: tensors[0].dim() - len(self.shapes[0])]
        parts = [t.reshape(*lead, n) for t, n in zip(tensors, self.numels, strict=True)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def split(self, flat: Tensor) -> list[Tensor]:
        """The per-parameter views ``(..., *shape)`` of a ``(..., n)`` tensor."""
        lead = flat.shape[:-1]
        parts = flat.split(self.numels, dim=-1) if len(self.numels) > 1 else (flat,)
        return [v.view((*lead, *shape)) for v, shape in zip(parts, self.shapes, strict=True)]


def _blocks(params: list[Tensor]) -> list[_Block]:
    """The parameters grouped by (device, dtype), in order of first appearance."""
    index: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        index.setdefault((p.device, p.dtype), []).append(i)
    return [_Block(ix, params) for ix in index.values()]


def _flat_surrogate(block: _Block, grads: list[Tensor | None]) -> Tensor | None:
    """The block's surrogate gradients end to end, ``None`` if it has none; a parameter
    without one gets zeros (a zero guide: centre 0, and it adds nothing to the norm (1))."""
    mine = [grads[i] for i in block.index]
    if all(g is None for g in mine):
        return None
    zero = torch.zeros((), dtype=block.dtype, device=block.device)
    filled = [
        zero.expand(shape) if g is None else g for g, shape in zip(mine, block.shapes, strict=True)
    ]
    return block.flat(filled)


def _block_scales(
    block: _Block, guide: Tensor | None, groups: list[tuple[dict, Tensor]], grads: list
) -> Tensor:
    """(2) for a block: ``(P,)`` float64, each member's ``s_P`` (from its group's noise
    settings)."""
    parts = [None] * len(block.index) if guide is None else block.split(guide)
    return _noise_scales(
        [None if grads[i] is None else q for i, q in zip(block.index, parts, strict=True)],
        [groups[i][0]["noise"] for i in block.index],
        [groups[i][0]["noise_scale"] for i in block.index],
        block.device,
    )


def _per_entry(block: _Block, s: Tensor) -> Tensor:
    """The block's ``(P,)`` scales as torch's kernels take them: 0-d for a block of one
    parameter, else one entry per entry of the block."""
    if len(block.index) == 1:
        return s[0]
    repeats = torch.tensor(block.numels, device=block.device)
    return s.repeat_interleave(repeats, output_size=block.size)


class _Proposal:
    """One block's perturbations (3): per-member views ``(K, *shape)``; on the torch path the
    flat ``(K, n)`` array they view and its per-entry scales, on the native path the sums of
    (4) from the same pass instead."""

    def __init__(self, eps: list[Tensor], flat: Tensor | None, scale, sums) -> None:
        self.eps, self.flat, self.scale, self.sums = eps, flat, scale, sums


class _NativeBuffers:
    """A native block's memory: each member's perturbations ``(K, *shape)``, contiguous, end
    to end in one buffer, and where its normals are drawn: the same views (overwritten in
    place by (3)), or under ``antithetic`` a second buffer of ``K // 2`` rows."""

    def __init__(self, block: _Block, k: int, antithetic: bool) -> None:
        like = {"dtype": block.dtype, "device": block.device}
        self.flat_eps = torch.empty(k * block.size, **like)
        self.eps = _segments(self.flat_eps, k, block)
        self.flat_normals = torch.empty(k // 2 * block.size, **like) if antithetic else None
        z = self.eps if self.flat_normals is None else _segments(self.flat_normals, k // 2, block)
        self.normals = dict(zip(block.index, z, strict=True))


def _segments(buffer: Tensor, rows: int, block: _Block) -> list[Tensor]:
    """Contiguous ``(rows, *shape)`` views of ``buffer``, one per member, end to end."""
    views, start = [], 0
    for n, shape in zip(block.numels, block.shapes, strict=True):
        views.append(buffer[start : start + rows * n].view(rows, *shape))
        start += rows * n
    return views


def _by_param(blocks: list[_Block], per_block: list[list[Tensor]]) -> list[Tensor]:
    """One list of per-member tensors per block, in param-group order."""
    out: list[Tensor] = [None] * sum(len(b.index) for b in blocks)  # type: ignore[list-item]
    for b, tensors in zip(blocks, per_block, strict=True):
        for i, t in zip(b.index, tensors, strict=True):
            out[i] = t
    return out


class MGS(Optimizer):
    """MLE-guided parameter search (1)-(7): a sampling optimizer for non-differentiable losses.

    Each step evaluates the task loss ``d_0`` at ``theta`` and ``d_k`` at ``K`` candidates
    ``theta + eps_k`` drawn around the clipped surrogate direction (guided) or around 0, weighs
    the candidates by their improvement over the proposal density, and moves by the weighted
    mean ``Delta``. The surrogate is whatever ``.grad`` holds (compute e.g. the MLE gradient
    before ``step``; it is clipped to ``max_grad_norm``); with no gradients at all the step is a
    pure black-box search around 0 with ``s = noise``.

    ``step(closure)``: the closure returns the task loss (a number or a one-element tensor) at
    the current parameters; it is called ``K + 1`` times under ``torch.no_grad()`` (at
    ``theta`` first, then at each candidate) and needs no gradient. The parameters are restored
    from a saved copy after each candidate, bitwise. ``step(population=f)`` evaluates all
    ``K + 1`` parameter sets in one call instead: ``f`` takes one stacked tensor per parameter
    (``(K + 1, *p.shape)``, param-group order, ``theta`` first) and returns ``K + 1`` losses
    (see :func:`functional_population`). ``step`` returns ``d_0`` (the closure's own value at
    ``theta``; a 0-d float64 tensor from a population).

    Failures change nothing: if the closure (or population) raises, the exception propagates
    with the parameters, their gradients and the generator as they were. A non-finite loss at
    ``theta`` raises ``ValueError`` the same way. A candidate whose loss is not finite gets
    weight 0 (if none is finite, ``Delta = 0``).

    Without ``base_optimizer`` the update is ``theta <- theta + lr Delta`` (7), with ``lr`` per
    param group (so LR schedulers drive it). With one (an optimizer over exactly the same
    parameters, e.g. AdamW as in the reference code) ``-Delta`` replaces ``.grad`` and the base
    optimizer steps; ``lr`` must then be 1 (schedule the base's). ``lr``, ``noise`` and
    ``noise_scale`` may differ per group; the hyperparameters that define a whole candidate
    (``num_samples``, ``mix``, ``random_mix``, ``temperature``, ``proposal_density``,
    ``antithetic``, ``max_grad_norm``) must be the same in every group.

    On the CPU, each block of float32 or float64 parameters gets its perturbations (3) and
    the sums of (4) from one native pass (``torch_opt/_native``, bitwise the torch path's
    perturbations; the sums agree to the order of summation); other dtypes and devices, and
    machines without a C compiler, take torch's operations.

    Randomness comes from a ``torch.Generator`` owned by the optimizer, on the first
    parameter's device (streams differ between devices), never from the global generator. Per
    step it draws, in this order: with ``random_mix``, ``K`` (``K // 2`` under ``antithetic``)
    float64 uniforms (guided where ``u < mix``), then for each parameter in param-group order
    standard normals of shape ``(K or K // 2, *p.shape)`` in the parameter's dtype (float32 for
    half dtypes, then cast). ``state_dict()`` holds the generator's state as a uint8 CPU tensor
    under the top-level key ``"generator"`` (out of reach of ``load_state_dict``'s casting) and
    the base optimizer's ``state_dict()`` under ``"base_optimizer"``; it loads with
    ``torch.load(..., weights_only=True)``, and a resumed run repeats the uninterrupted one
    bitwise (on the same device type).

    Distributed (``distributed=True``, with ``torch.distributed`` initialized): the ``K + 1``
    evaluations are dealt round-robin, evaluation ``i`` (``i = 0`` is ``theta``, ``i = k + 1``
    candidate ``k``) on rank ``i % world_size``; every rank draws the same noise (the seed is
    broadcast from rank 0 at construction), the losses travel as one ``all_reduce`` of a
    ``K + 1`` float64 vector, and every rank applies the same update. So the closure must give
    the same loss on every rank (the same data) and the parameters and ``.grad`` must be equal
    on every rank (as after DDP's backward). A population gets this rank's share (``theta``
    first on rank 0). If a closure raises on one rank, the others wait in the collective.

    .. note::
        ``torch.amp.GradScaler.step`` refuses a closure, so it cannot drive this optimizer;
        pass the scaled surrogate through ``.grad`` after ``scaler.unscale_`` and call
        ``step`` directly, or skip the scaler (contracts.md §2.5).

    Args:
        params: Parameters, named parameters or param groups.
        base_optimizer: An optimizer over exactly these parameters, fed ``-Delta`` as its
            gradient, or ``None`` for (7).
        lr: The step size ``eta`` of (7) (``>= 0``; a float or a 1-element tensor).
        num_samples: The number of candidates ``K >= 1`` (even under ``antithetic``).
        noise: The relative noise ``sigma > 0`` of (2).
        noise_scale: ``"grad"`` (``s_P = sigma mean|g_hat_P|``, the reference code's) or
            ``"constant"`` (``s_P = sigma``).
        mix: The proportion ``lambda`` of guided candidates, in ``[0, 1]``.
        random_mix: Draw each candidate's centre (each pair's, under ``antithetic``) with
            probability ``mix`` instead of the deterministic proportion.
        temperature: ``alpha > 0`` of (5) (the reference code's ``1 / beta``).
        proposal_density: ``"exact"`` or ``"unit_variance"`` (the reference code's), see (4).
        antithetic: Draw the candidates in pairs ``c +- s z``.
        max_grad_norm: The clipping norm of the surrogate (1), or ``None``.
        seed: The generator's seed (an integer in ``[0, 2**63)``); ``None`` draws one from
            torch's global generator at construction (so ``torch.manual_seed`` makes a run
            reproducible).
        distributed: Split the evaluations over the ranks of the default process group.

    References:
        Welleck & Cho, "MLE-Guided Parameter Search for Task Loss Minimization in Neural
        Sequence Modeling", AAAI 2021, arXiv:2006.03158 (reference code: wellecks/mgs).
        Su Jianlin, kexue.fm/archives/7521.
    """

    def __init__(
        self,
        params: ParamsT,
        base_optimizer: Optimizer | None = None,
        *,
        lr: float | Tensor = 1.0,
        num_samples: int = 4,
        noise: float = 1.0,
        noise_scale: str = "grad",
        mix: float = 0.5,
        random_mix: bool = False,
        temperature: float = 1.0,
        proposal_density: str = "exact",
        antithetic: bool = False,
        max_grad_norm: float | None = 1.0,
        seed: int | None = None,
        distributed: bool = False,
    ) -> None:
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63
        ):
            raise fail("seed", seed, "an integer in [0, 2**63) or None")
        defaults = {
            "lr": lr,
            "num_samples": num_samples,
            "noise": noise,
            "noise_scale": noise_scale,
            "mix": mix,
            "random_mix": bool(random_mix),
            "temperature": temperature,
            "proposal_density": proposal_density,
            "antithetic": bool(antithetic),
            "max_grad_norm": max_grad_norm,
        }
        _check_mgs_group(defaults)  # before params is read
        # Constructor arguments that are not group options; ZeroRedundancyOptimizer copies
        # every argument of its optimizer class into the param groups it builds.
        self._whole = {"seed": seed, "distributed": bool(distributed)}
        super().__init__(params, defaults)
        if base_optimizer is not None and not isinstance(base_optimizer, Optimizer):
            raise TypeError(
                f"base_optimizer must be a torch.optim.Optimizer, got "
                f"{type(base_optimizer).__name__}"
            )
        self.base_optimizer = base_optimizer
        if base_optimizer is not None and lr != 1.0:
            raise fail(
                TORCH_WORDING["lr"], lr, "1 with a base optimizer, which has its own learning rate"
            )
        self._check_base()
        self.distributed = bool(distributed)
        if self.distributed and not (
            torch.distributed.is_available() and torch.distributed.is_initialized()
        ):
            raise RuntimeError(
                "MGS(distributed=True) needs an initialized torch.distributed process group "
                "(call torch.distributed.init_process_group first)"
            )
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        if self.distributed:  # every rank must draw the same noise
            shared = torch.tensor([seed], dtype=torch.int64, device=self._comm_device())
            torch.distributed.broadcast(shared, src=0)
            seed = int(shared.item())
        self.seed = seed
        device = self.param_groups[0]["params"][0].device
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(seed)

    # ------------------------------------------------------------------------ groups, state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        check_group_keys("MGS", param_group, [*self.defaults, *self._whole])
        for key, value in self._whole.items():
            if key in param_group and param_group[key] != value:
                raise fail(key, param_group[key], f"the optimizer's own ({value!r}) in a group")
        merged = {**self.defaults, **param_group}
        _check_mgs_group(merged)
        if self.param_groups:
            _check_shared(merged, self.param_groups[0])
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            if p.is_complex():
                self.param_groups.pop()
                raise TypeError("MGS does not support complex parameters")
            if is_dtensor(p):
                self.param_groups.pop()
                raise TypeError(
                    "MGS does not support DTensor parameters (FSDP2): a candidate perturbs "
                    "whole tensors with noise drawn per full tensor on every rank; replicate "
                    "the model (DDP) and use distributed=True to split the evaluations"
                )

    def _check_base(self) -> None:
        if self.__dict__.get("base_optimizer") is None:
            return
        mine = [p for g in self.param_groups for p in g["params"]]
        theirs = [p for g in self.base_optimizer.param_groups for p in g["params"]]
        if {id(p) for p in mine} != {id(p) for p in theirs} or len(mine) != len(theirs):
            raise fail(
                "base_optimizer",
                type(self.base_optimizer).__name__,
                "an optimizer over exactly the parameters given to MGS",
            )

    def _comm_device(self) -> torch.device:
        """Where collectives' tensors live: the CPU for gloo/mpi, else the parameters' device."""
        backend = str(torch.distributed.get_backend())
        if "gloo" in backend or "mpi" in backend:
            return torch.device("cpu")
        return self.param_groups[0]["params"][0].device

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus ``"generator"`` (the generator's state, a uint8 CPU tensor)
        and, with a base optimizer, ``"base_optimizer"`` (its state dict)."""
        state = super().state_dict()
        state["generator"] = self._generator.get_state().clone()
        if self.base_optimizer is not None:
            state["base_optimizer"] = self.base_optimizer.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as torch does, then the generator's state and the base optimizer's."""
        base = state_dict.get("base_optimizer")
        if base is not None and self.base_optimizer is None:
            raise ValueError(
                "Invalid state_dict: it holds a base optimizer's state (must be loaded into an "
                "MGS with a base_optimizer)"
            )
        super().load_state_dict(state_dict)
        generator = state_dict.get("generator")
        if generator is not None:
            self._generator.set_state(torch.as_tensor(generator).to("cpu", torch.uint8).clone())
        if base is not None:
            self.base_optimizer.load_state_dict(base)

    def __getstate__(self) -> dict[str, Any]:
        return {
            **super().__getstate__(),
            "base_optimizer": self.base_optimizer,
            "distributed": self.distributed,
            "seed": self.seed,
            "_generator": self._generator,
            "_whole": self._whole,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("base_optimizer", None)
        self.__dict__.setdefault("distributed", False)
        self.__dict__.setdefault("seed", 0)
        self.__dict__.setdefault("_whole", {"seed": self.seed, "distributed": self.distributed})
        if "_generator" not in self.__dict__:
            self._generator = torch.Generator().manual_seed(self.seed)
        for group in self.param_groups:
            group.setdefault("random_mix", False)
            group.setdefault("antithetic", False)

    # ------------------------------------------------------------------------------- step

    def _settings(self) -> dict[str, Any]:
        """The whole-candidate hyperparameters, checked to agree across groups."""
        first = self.param_groups[0]
        for group in self.param_groups:
            _check_mgs_group(group)
            _check_shared(group, first)
        return {key: first[key] for key in _SHARED}

    def _draw(
        self, generator: torch.Generator, into: dict[int, Tensor] | None = None
    ) -> tuple[list[bool], list[Tensor]]:
        """The randomness of one step, from ``generator`` alone: which of the ``K`` candidates
        are guided, and one block of standard normals per parameter (param-group order),
        ``(K, *p.shape)`` or ``(K // 2, *p.shape)`` under ``antithetic``, in the parameter's
        dtype (drawn in float32 for half dtypes) and on its device; written into
        ``into[i]`` where given for parameter ``i`` (the same numbers)."""
        settings = self._settings()
        k, antithetic = settings["num_samples"], settings["antithetic"]
        rows = k // 2 if antithetic else k
        device = generator.device
        if settings["random_mix"]:
            u = torch.rand(rows, generator=generator, device=device, dtype=torch.float64)
            centres = (u < settings["mix"]).tolist()
            mask = [m for m in centres for _ in range(2)] if antithetic else centres
        else:
            mask = mixture_mask(k, settings["mix"], antithetic=antithetic)
        normals = []
        for p in (p for group in self.param_groups for p in group["params"]):
            out = None if into is None else into.get(len(normals))
            if out is not None and out.device == device:  # the same numbers, drawn in place
                torch.randn((rows, *p.shape), generator=generator, dtype=p.dtype, out=out)
                normals.append(out)
                continue
            dtype = torch.float32 if p.dtype in _HALF else p.dtype
            z = torch.randn((rows, *p.shape), generator=generator, device=device, dtype=dtype)
            normals.append(z.to(device=p.device, dtype=p.dtype) if out is None else out.copy_(z))
        return mask, normals

    def _shares(self, k: int) -> list[int]:
        """The evaluations (0 = theta, k + 1 = candidate k) this process makes."""
        if not self.distributed:
            return list(range(k + 1))
        rank, size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        return [i for i in range(k + 1) if i % size == rank]

    def _evaluate(
        self,
        params: list[Tensor],
        eps: list[Tensor],
        closure: Callable[[], Any] | None,
        population: Callable[[list[Tensor]], Any] | None,
    ) -> tuple[Tensor, Any]:
        """The ``K + 1`` losses (float64, CPU; theta first) and ``d_0`` as ``step`` returns it."""
        k = eps[0].shape[0]
        mine = self._shares(k)
        values = [0.0] * (k + 1)
        loss = None
        if closure is not None:
            saved = [p.detach().clone() for p in params]
            rows = [e.unbind(0) for e in eps]  # each candidate's views, made once
            for i in mine:
                if i == 0:
                    loss = closure()
                    values[0] = _loss_value(loss, "closure")
                    if not self.distributed and not math.isfinite(values[0]):
                        break  # no candidates to evaluate: step raises
                    continue
                try:
                    torch._foreach_add_(params, [r[i - 1] for r in rows])
                    values[i] = _loss_value(closure(), "closure")
                finally:  # a copy, not a subtraction: theta comes back bitwise
                    torch._foreach_copy_(params, saved)
            values = torch.tensor(values, dtype=torch.float64)
        elif mine:
            wanted = getattr(population, "params", None)
            if wanted is not None and (
                len(wanted) != len(params)
                or any(a is not b for a, b in zip(wanted, params, strict=True))
            ):
                raise ValueError(
                    "Invalid population: its module's parameters (named_parameters() order) must "
                    "be exactly the optimizer's, in param-group order"
                )
            rows = [i - 1 for i in mine if i > 0]
            index = None if len(rows) == k else torch.tensor(rows, dtype=torch.long)
            stacked = []
            for p, e in zip(params, eps, strict=True):
                theta = p.detach()
                e = e if index is None else e.index_select(0, index.to(e.device))
                if mine[0] != 0:
                    stacked.append(theta + e)
                    continue
                batch = torch.empty((e.shape[0] + 1, *e.shape[1:]), dtype=e.dtype, device=e.device)
                batch[0].copy_(theta)
                stacked.append(batch)
                torch.add(theta, e, out=batch[1:])  # theta first, then the candidates
            out = population(stacked)
            out = torch.as_tensor(out) if not isinstance(out, Tensor) else out
            if out.numel() != len(mine) or out.is_complex():
                raise ValueError(
                    f"Invalid population: returned {out.numel()} values (must return one loss per "
                    f"parameter set, {len(mine)})"
                )
            out = out.detach().reshape(-1)
            if len(mine) == k + 1:
                values = out.to("cpu", torch.float64, copy=True)
            else:
                values = torch.zeros(k + 1, dtype=torch.float64)
                values[mine] = out.to("cpu", torch.float64)
        else:
            values = torch.zeros(k + 1, dtype=torch.float64)
        if self.distributed:
            device = self._comm_device()
            values = values.to(device)
            torch.distributed.all_reduce(values)
            values = values.cpu()
        if loss is None:
            loss = values[0].clone()
        return values, loss

    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Any] | None = None,
        *,
        population: Callable[[list[Tensor]], Any] | None = None,
    ) -> Any:
        """One MGS step, (1)-(7).

        Args:
            closure: A callable that returns the task loss at the current parameters (called
                ``K + 1`` times, under ``torch.no_grad()``).
            population: Instead of ``closure``: a callable taking one stacked tensor per
                parameter (``(B, *p.shape)``) and returning ``B`` losses (see
                :func:`functional_population`).

        Returns:
            ``d_0``, the loss at ``theta`` (the closure's value there; a 0-d float64 tensor
            from a population, or on a rank that did not evaluate ``theta``).
        """
        if (closure is None) == (population is None):
            raise ValueError(
                "Invalid closure: MGS.step needs exactly one of closure (a callable returning "
                "the task loss) and population (a callable returning a batch of losses)"
            )
        settings = self._settings()
        self._check_base()
        groups = [(group, p) for group in self.param_groups for p in group["params"]]
        params = [p for _, p in groups]
        for group in self.param_groups:
            for i, p in enumerate(group["params"]):
                if p.grad is not None and p.grad.is_sparse:
                    raise sparse_grad_error("MGS", self.param_groups, group, i)
        # The math runs per block of same-device, same-dtype parameters: on the CPU in one
        # native pass per block (the normals drawn straight into its buffers), elsewhere on
        # one flat (K, n) array per block (a few large ops, whatever the number of tensors);
        # the evaluations see per-parameter views.
        blocks = _blocks(params)
        grads = [p.grad for p in params]
        guides = clip_surrogate(
            [_flat_surrogate(b, grads) for b in blocks], settings["max_grad_norm"]
        )  # (1), one per block
        scales = [_block_scales(b, g, groups, grads) for b, g in zip(blocks, guides, strict=True)]
        antithetic, k = settings["antithetic"], settings["num_samples"]
        density = settings["proposal_density"]
        native = [takes(b.dtype, b.device, g) for b, g in zip(blocks, guides, strict=True)]
        buffers = [
            _NativeBuffers(b, k, antithetic) if on else None
            for b, on in zip(blocks, native, strict=True)
        ]
        generator_state = self._generator.get_state()
        try:
            into = {i: z for nb in buffers if nb is not None for i, z in nb.normals.items()}
            mask, normals = self._draw(self._generator, into)
            proposals = []
            for blk, g, s, nb in zip(blocks, guides, scales, buffers, strict=True):
                z = [normals[i] for i in blk.index]
                if nb is not None:  # (3) and the sums of (4), from the normals drawn into nb
                    sums = native_propose(
                        g,
                        nb.flat_normals,
                        nb.flat_eps,
                        blk.numels,
                        s,
                        None if density == "unit_variance" else _density_weights(s),
                        mask,
                        antithetic=antithetic,
                    )
                    proposals.append(_Proposal(nb.eps, None, None, sums))
                else:
                    scale = _per_entry(blk, s)
                    flat = perturbations(g, blk.flat(z), mask, scale=scale, antithetic=antithetic)
                    flat = flat.to(blk.dtype)  # (3)
                    proposals.append(_Proposal(blk.split(flat), flat, scale, None))
            del normals, z, into, buffers
            values, loss = self._evaluate(
                params, _by_param(blocks, [pr.eps for pr in proposals]), closure, population
            )
            d0 = values[0].item()
            if not math.isfinite(d0):
                raise fail("loss", d0, "finite at the current parameters")
        except BaseException:
            self._generator.set_state(generator_state)
            raise
        sums = [
            pr.sums or _proposal_sums([pr.flat], [g], [pr.scale], density)
            for pr, g in zip(proposals, guides, strict=True)
        ]
        a = torch.stack([x[0].cpu() for x in sums]).sum(0)
        b = torch.stack([x[1].cpu() for x in sums]).sum(0)
        log_q = _mixture_log_density(a, b, settings["mix"])  # (4)
        w = importance_weights(values[1:], d0, log_q, temperature=settings["temperature"])
        delta = _by_param(
            blocks,
            [
                weighted_direction(w, pr.eps)
                if pr.flat is None
                else blk.split(weighted_direction(w, [pr.flat])[0])
                for blk, pr in zip(blocks, proposals, strict=True)
            ],
        )  # (5), (6)
        del proposals
        if self.base_optimizer is None:
            start = 0
            for group in self.param_groups:
                lr = float(group["lr"])
                stop = start + len(group["params"])
                same = [i for i in range(start, stop) if delta[i].dtype == params[i].dtype]
                if same:
                    torch._foreach_add_(
                        [params[i] for i in same], [delta[i] for i in same], alpha=lr
                    )  # (7)
                for i in range(start, stop):  # computed in float32, rounded once into p
                    p, d = params[i], delta[i]
                    if d.dtype != p.dtype:
                        p.copy_(p.to(d.dtype).add_(d, alpha=lr))
                start = stop
        else:
            for p, d in zip(params, delta, strict=True):
                pseudo = d.neg().to(p.dtype)
                if p.grad is not None and p.grad.shape == p.shape and p.grad.dtype == p.dtype:
                    p.grad.copy_(pseudo)
                else:
                    p.grad = pseudo
            self.base_optimizer.step()
        return loss
