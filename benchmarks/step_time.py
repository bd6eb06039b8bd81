"""Study ``step_time``: how fast is one optimizer step, against peers and the memory limit?

A step of these optimizers is memory-bound: RMSprop reads the parameter, the gradient and the
second moment and writes two of them (20 bytes per float32 parameter); Amos with full state
moves 28, as torch's fused Adam does. Per parameter set and framework, every implementation and
two STREAM-style kernels over buffers of the set's size (the triad a += s b c and a += s b, in
place as a step is) are timed in one interleaved round (one call of each in turn, every repeat;
one process, the same threads), so that a row, its peer and the bandwidth share the machine's
state. A step's bandwidth is the bytes it must move over its median time; the limit is the
better kernel's best time (STREAM's convention). The first step (native kernels loaded, JAX
tracing and compiling) is timed in the same process.
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np

from benchmarks._common import (
    Context,
    StudyResult,
    frameworks,
    installed,
    interleaved_times,
    jit_compile,
    torch_timer,
)
from benchmarks._report import curve, figure, panel, span, table
from benchmarks.peers import reference_amos

NAME = "step_time"
QUESTION = "How fast is one optimizer step, against peers and against the memory limit?"
LR = 0.01  # any value: a step's cost does not depend on it
RMS, AMOS = "torch.optim.RMSprop(foreach=True)", "pytorch_optimizer.Amos"
OPTAX, REF = "optax.rmsprop", "jestimator amos (reference)"
BANDWIDTH = (
    "the best of the in-place triad a += s b c (16 bytes per element) and a += s b (12) over "
    "buffers of the set's size, best time (torch: addcmul_, add_; JAX: jitted, donated)"
)


def parameter_sets(quick: bool) -> dict[str, list[tuple[int, ...]]]:
    if quick:
        return {"8 x (128x128)": [(128, 128)] * 8, "1 x (512x512)": [(512, 512)]}
    return {"200 x (256x256)": [(256, 256)] * 200, "1 x (4096x4096)": [(4096, 4096)]}


def rows_of(fw: str) -> dict:
    """label -> (peer, bytes a step moves per float32 parameter, ``make``) of every installed
    row: ``make(params)`` an optimizer (torch) or ``make()`` a transformation (JAX)."""
    if fw == "torch":
        import torch

        import torch_opt

        optim = torch.optim
        rows = {
            RMS: (RMS, 20, partial(optim.RMSprop, foreach=True)),
            "torch.optim.RMSprop(foreach=False)": (RMS, 20, partial(optim.RMSprop, foreach=False)),
            "RMSpropODE()": (RMS, 20, torch_opt.RMSpropODE),
            "RMSpropODE(foreach=False)": (RMS, 20, partial(torch_opt.RMSpropODE, foreach=False)),
            # the global form keeps no nu and reads g twice (its norm, then the update)
            "RMSpropODE(scale='global')": (RMS, 16, partial(torch_opt.RMSpropODE, scale="global")),
            "torch.optim.Adam(fused=True)": (None, 28, partial(optim.Adam, fused=True)),
            # one v, b per tensor: g read twice, theta read and written (pytorch_optimizer's form)
            AMOS: (AMOS, 16, lambda ps: __import__("pytorch_optimizer").Amos(ps, lr=LR)),
            "Amos(shape=())": (AMOS, 16, partial(torch_opt.Amos, lr=LR, shape=lambda n, p: ())),
            "Amos()": (AMOS, 28, partial(torch_opt.Amos, lr=LR)),
        }
        return {k: v for k, v in rows.items() if k != AMOS or installed("pytorch_optimizer")}
    import optax

    import jax_opt

    ref, eta = reference_amos(), {"eta_fn": lambda name, shape: 0.5}
    per_tensor = partial(jax_opt.amos, LR, **eta, shape_fn=lambda n, s: ())
    rows = {
        OPTAX: (OPTAX, 20, lambda: optax.rmsprop(LR)),
        "rmsprop_ode": (OPTAX, 20, lambda: jax_opt.rmsprop_ode(LR)),
        "rmsprop_ode(scale='global')": (OPTAX, 16, lambda: jax_opt.rmsprop_ode(LR, scale="global")),
        REF: (REF, 28, lambda: ref.amos(LR, **eta)),
        "amos": (REF, 28, lambda: jax_opt.amos(LR, **eta)),
        "amos(shape_fn -> ())": (REF, 16, per_tensor),
    }
    return {k: v for k, v in rows.items() if k != REF or ref is not None}


def torch_build(make, shapes, device):
    """``(step, seconds of the first step)`` of an optimizer over random parameters."""
    import torch

    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen).to(device).requires_grad_() for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen).to(device)
    opt, start = make(ps), time.perf_counter()
    opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return opt.step, time.perf_counter() - start


def jax_build(label, make, shapes, quick, compiled: dict):
    """As :func:`torch_build`; the compiled step is kept in ``compiled`` for a later build."""
    import jax
    import optax

    opt, rng = make(), np.random.default_rng(0)
    params, grads = (
        [jax.numpy.asarray(rng.standard_normal(s, np.float32)) for s in shapes] for _ in range(2)
    )

    def step(carry, grads):
        updates, state = opt.update(grads, carry[1], carry[0])
        return optax.apply_updates(carry[0], updates), state

    start, box = time.perf_counter(), {"carry": (params, opt.init(params))}
    if label not in compiled:
        compiled[label] = jit_compile(step, box["carry"], grads, quick=quick, donate_argnums=0)

    def run():
        box["carry"] = compiled[label](box["carry"], grads)
        jax.block_until_ready(box["carry"])

    run()
    return run, time.perf_counter() - start


def stream_kernels(fw, n, device, quick) -> dict:
    """name -> (call, bytes per element): STREAM-style kernels over buffers of ``n`` floats,
    updated in place as a step is (so every byte they move is counted, no write-allocate
    read left out): the triad ``a += s b c`` (3 reads, 1 write) and ``a += s b`` (2, 1)."""
    if fw == "torch":
        import torch

        a, b, c = (torch.randn(n, device=device) for _ in range(3))
        return {
            "triad": (lambda: a.addcmul_(b, c, value=1e-7), 16),
            "axpy": (lambda: a.add_(b, alpha=1e-7), 12),
        }
    import jax.numpy as jnp

    abc = [jnp.asarray(np.random.default_rng(i).standard_normal(n, np.float32)) for i in range(3)]
    box = {"a": abc[0]}
    triad = jit_compile(lambda a, b, c: a + 1e-7 * b * c, *abc, quick=quick, donate_argnums=0)
    axpy = jit_compile(lambda a, b: a + 1e-7 * b, *abc[:2], quick=quick, donate_argnums=0)

    def call(fn, *args):
        box["a"] = fn(box["a"], *args)
        box["a"].block_until_ready()

    return {
        "triad": (lambda: call(triad, abc[1], abc[2]), 16),
        "axpy": (lambda: call(axpy, abc[1]), 12),
    }


def run(ctx: Context) -> StudyResult:
    sets, fws, rows, compiled = parameter_sets(ctx.quick), frameworks(), [], {}
    timer = torch_timer(ctx.device)

    def build(fw, label, make, set_name):
        if fw == "torch":
            return torch_build(make, sets[set_name], ctx.device)
        return jax_build(label, make, sets[set_name], ctx.quick, compiled.setdefault(set_name, {}))

    for fw in fws:
        for set_name, shapes in sets.items():
            n = sum(int(np.prod(s)) for s in shapes)
            built = {k: build(fw, k, make, set_name) for k, (_, _, make) in rows_of(fw).items()}
            kernels = stream_kernels(fw, n, ctx.device, ctx.quick)
            fns = {k: b[0] for k, b in built.items()} | {k: f for k, (f, _) in kernels.items()}
            times = interleaved_times(fns, ctx.sized(15, 5), timer=timer if fw == "torch" else None)
            limit = max(nbytes * n / min(times[k]) / 1e9 for k, (_, nbytes) in kernels.items())
            for label, (peer, nbytes, _) in rows_of(fw).items():
                ms = 1e3 * float(np.median(times[label]))
                row = {"framework": fw, "set": set_name, "numel": n, "impl": label, "peer": peer}
                row |= {"ms": ms, "bytes_per_param": nbytes, "gbs": nbytes * n / ms / 1e6}
                rows.append(row | {"limit_gbs": limit, "first_call_s": built[label][1]})
            del built, fns, kernels
    for r in rows:
        peer = next((p for p in rows if (p["set"], p["impl"]) == (r["set"], r["peer"])), None)
        r["x_peer"], r["of_limit"] = peer and r["ms"] / peer["ms"], r["gbs"] / r["limit_gbs"]

    def vs_peer(impl):
        """The ``lo-hi`` of ``impl``'s time over its peer's, ``None`` without the peer."""
        values = [r["x_peer"] for r in rows if r["impl"] == impl and r["x_peer"] is not None]
        return span(values) if values else None

    def best(impl):
        return max(r["of_limit"] for r in rows if r["impl"] == impl)

    parts = []
    if "torch" in fws:
        amos = vs_peer("Amos(shape=())")
        parts.append(
            f"RMSpropODE() takes {vs_peer('RMSpropODE()')}x the time of {RMS} at up to "
            f"{best('RMSpropODE()'):.0%} of the measured bandwidth (torch's fused Adam: "
            f"{best('torch.optim.Adam(fused=True)'):.0%})"
            + (f", Amos(shape=()) {amos}x {AMOS}'s" if amos else "")
        )
    if "jax" in fws:
        amos = vs_peer("amos")
        parts.append(
            f"rmsprop_ode {vs_peer('rmsprop_ode')}x optax.rmsprop's"
            + (f", amos {amos}x the reference's" if amos else "")
        )
    verdict = "; ".join(parts) + f" ({ctx.device})."
    columns = {
        "set": "set", "framework": "framework", "implementation": "impl", "ms / step": "ms:.2f",
        "x peer": "x_peer:.2f", "GB/s": "gbs:.1f", "of the bandwidth": "of_limit:.0%",
        "bandwidth GB/s": "limit_gbs:.1f",
        "first step (s)": "first_call_s:.2f",
    }  # fmt: skip
    tri = {(r["framework"], r["set"]): r["limit_gbs"] for r in rows}
    panels = []
    for name in sets:
        bars = []
        for r in (r for r in rows if r["set"] == name):
            color = 7 if r["peer"] == r["impl"] else 0  # grey: a peer
            bars.append(curve(f"[{r['framework']}] {r['impl']}", [r["gbs"]], [0], color=color))
        bars += [curve(f"[{fw}] bandwidth", [tri[(fw, name)]], [0], color=3) for fw in fws]
        xlabel = "GB/s (grey: peer, red: bandwidth)"
        panels.append(panel(bars, f"{name}, float32, {ctx.device}", xlabel=xlabel, kind="barh"))
    settings = {"sets": {k: [list(v[0]), len(v)] for k, v in sets.items()}, "dtype": "float32"}
    settings |= {"repeats": ctx.sized(15, 5), "device": ctx.device, "bandwidth": BANDWIDTH}
    native = None
    if "torch" in fws:
        from torch_opt import _native

        native = _native.build_seconds()
    settings["native_kernels_build_or_load_s"] = native
    notes = [
        "GB/s counts the bytes a step must move per float32 parameter (RMSprop 20, its global "
        "form 16, Amos full 28, Amos with one v, b per tensor 16, Adam 28) over its median time."
    ]
    tables, figures = [table(rows, columns)], [figure("step_time", panels)]
    return StudyResult(verdict, {"rows": rows}, tables, figures, settings, notes)
