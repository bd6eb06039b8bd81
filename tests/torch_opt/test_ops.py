"""The native kernels as torch ops, torch.compile without graph breaks, and the CUDA path."""

from __future__ import annotations

import shutil

import pytest

torch = pytest.importorskip("torch")

from torch_opt import MGS, Amos, LossTiedODE, RMSpropODE  # noqa: E402
from torch_opt import _native as native  # noqa: E402

needs_native = pytest.mark.skipif(
    not native.available(), reason="the native kernels could not be built here"
)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _tensors(seed=0, dtype=torch.float32, shapes=((4, 3), (5,))):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]


@needs_native
@pytest.mark.parametrize("flags", [0, native.F_MOMENTUM | native.F_CENTERED | native.F_BIAS])
def test_rmsprop_op_passes_torchs_custom_op_checks(flags):
    """torch.library.opcheck: the schema (what it mutates), the fake implementation and the
    registrations agree with what the op does."""
    ps, gs, nus = _tensors(0), _tensors(1), [t.abs() for t in _tensors(2)]
    mus = _tensors(3) if flags & native.F_CENTERED else []
    bufs = _tensors(4) if flags & native.F_MOMENTUM else []
    steps = [torch.zeros(()) for _ in ps]
    args = (ps, gs, nus, mus, bufs, steps, torch.tensor(0.01, dtype=torch.float64))
    torch.library.opcheck(
        torch.ops.twinopt.rmsprop_ode_.default, (*args, 0.9, 1e-8, 0.0, 0.5, flags)
    )
    torch.library.opcheck(
        torch.ops.twinopt.rmsprop_ode_global_.default,
        (ps, gs, mus, bufs, steps, torch.zeros((), dtype=torch.float64), torch.zeros(()))
        + (args[-1], 0.9, 1e-8, 0.0, 0.5, flags & ~native.F_BIAS),
    )


@needs_native
@pytest.mark.parametrize("full", [True, False])
def test_amos_op_passes_torchs_custom_op_checks(full):
    ps, gs = _tensors(0), _tensors(1)
    vs = [torch.rand(p.shape if full else ()) for p in ps]
    bs = [torch.rand(p.shape if full else ()) for p in ps]
    bufs = _tensors(4)
    steps, etas = [torch.zeros(()) for _ in ps], [torch.tensor(0.5) for _ in ps]
    lr = torch.tensor(0.01, dtype=torch.float64)
    torch.library.opcheck(
        torch.ops.twinopt.amos_.default,
        (ps, gs, vs, bs, bufs, steps, etas, lr, 0.999, 2**-125, 0.0, 0.5, 0.9, 0.25, 0.25, full),
    )


@needs_native
def test_mgs_propose_op_passes_torchs_custom_op_checks():
    k = 4
    normals, eps, guide = torch.randn(k * 5), torch.empty(k * 5), torch.randn(5)
    scales = torch.tensor([0.5, 2.0], dtype=torch.float64)
    weights = -0.5 / scales**2
    mask = [True, False, True, False]
    for args in ((normals, eps, guide), (None, normals, None)):  # then in place, unguided
        torch.library.opcheck(
            torch.ops.twinopt.mgs_propose_.default,
            (*args, [3, 2], scales, weights, mask, False),
        )


def _capture(graphs):
    """A torch.compile backend that keeps each graph TorchDynamo hands it and runs it as is."""

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    return backend


def _compiled_and_eager(build, steps, **compile_args):
    """Two optimizers from ``build`` over equal parameters, one stepped through
    ``torch.compile(opt.step, fullgraph=True)`` (which raises at any graph break), both on the
    same gradients for ``steps`` steps: ``(params, optimizer)`` of each."""
    runs = []
    for compiled in (True, False):
        params = [t.requires_grad_() for t in _tensors(0)]
        opt = build(params)
        step = torch.compile(opt.step, fullgraph=True, **compile_args) if compiled else opt.step
        for i in range(steps):
            for p, g in zip(params, _tensors(10 + i), strict=True):
                p.grad = g
            step()
        runs.append((params, opt))
    return runs


CASES = [
    ("RMSpropODE", lambda ps: RMSpropODE(ps, lr=torch.tensor(0.01)), "rmsprop_ode_"),
    (
        "RMSpropODE(scale='global', momentum=0.9)",
        lambda ps: RMSpropODE(ps, lr=torch.tensor(0.01), scale="global", momentum=0.9),
        "rmsprop_ode_global_",
    ),
    ("Amos", lambda ps: Amos(ps, lr=torch.tensor(0.01), momentum=0.9), "amos_"),
    ("Amos(shape=())", lambda ps: Amos(ps, lr=torch.tensor(0.01), shape=()), "amos_"),
]


@needs_native
@pytest.mark.parametrize(("name", "build", "op"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.slow
def test_compiled_step_runs_the_native_op_without_a_graph_break(name, build, op):
    """``torch.compile(opt.step, fullgraph=True)`` (which raises at any graph break) traces
    the default CPU step into one graph that calls the native op, and gives eager's
    parameters and state."""
    graphs = []
    (params, opt), (twin, eager) = _compiled_and_eager(build, 3, backend=_capture(graphs))
    for p, q in zip(params, twin, strict=True):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(value, eager.state[q][key]), key
    assert graphs, "nothing was compiled"
    targets = [str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert any(f"twinopt.{op}" in t for t in targets), targets


@needs_native
@pytest.mark.skipif(shutil.which("g++") is None, reason="TorchInductor's CPU backend needs g++")
@pytest.mark.slow
def test_inductor_compiles_a_step_around_the_native_op():
    """With torch.compile's default backend (TorchInductor) too: one graph, eager's result."""
    (params, _), (twin, _) = _compiled_and_eager(CASES[0][1], 2)
    for p, q in zip(params, twin, strict=True):
        assert torch.equal(p, q)


# ------------------------------------------------------------------------------------- CUDA

CUDA_CASES = [
    ("RMSpropODE", lambda ps: RMSpropODE(ps, momentum=0.5, centered=True)),
    ("RMSpropODE(scale='global')", lambda ps: RMSpropODE(ps, scale="global", weight_decay=0.1)),
    ("Amos", lambda ps: Amos(ps, lr=0.05, momentum=0.5)),
    ("Amos(reduced)", lambda ps: Amos(ps, lr=0.05, shape=lambda n, p: (1,) * p.dim())),
    ("LossTiedODE", lambda ps: LossTiedODE(ps, lr=0.1)),
    ("MGS", lambda ps: MGS(ps, seed=0, num_samples=4)),
]


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize(("name", "build"), CUDA_CASES, ids=[c[0] for c in CUDA_CASES])
def test_optimizers_run_on_cuda_through_the_foreach_path_as_on_the_cpu(name, build):
    """On a CUDA device each optimizer takes its foreach path (no native kernels there) and
    follows the CPU run (float64, up to the devices' rounding)."""
    runs = []
    for device in ("cpu", "cuda"):
        params = [t.to(device).requires_grad_() for t in _tensors(0, torch.float64)]
        opt = build(params)

        def loss(params=params):
            return sum((p - 1).square().sum() for p in params)

        for _ in range(4):
            opt.zero_grad()
            loss().backward()
            opt.step(loss) if name in ("LossTiedODE", "MGS") else opt.step()
        runs.append([p.detach().cpu() for p in params])
    if name == "MGS":  # the generators' streams differ between devices: it only descends
        start = sum((t - 1).square().sum() for t in _tensors(0, torch.float64))
        assert sum((p - 1).square().sum() for p in runs[1]) < start
        return
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
