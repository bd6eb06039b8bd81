"""Study ``step_time``: how fast is one optimizer step, against peers and the memory limit?

One step of RMSprop is memory-bound: it reads the parameter, the gradient and the second
moment and writes two of them, 20 bytes per float32 parameter; Amos with full state (v and b
per entry) moves 28. We time steps (median over repeats after warm-up) on the parameter sets of
benchmarks.md, report each implementation's time as a ratio against its peer measured in the
same run (RMSprop: torch.optim.RMSprop(foreach=True) for torch, optax.rmsprop under jit with
donated buffers for JAX; Amos: pytorch_optimizer.Amos and the reference jestimator amos, each
where installed), and the achieved bandwidth against a copy bandwidth measured in the same run.
Per set and framework, every implementation and the copy are timed in one interleaved round
(one call of each in turn, every repeat), so that the shared machine's share of cache and
memory bandwidth, which drifts during a run, is the same for a row, its peer and the copy.

Run alone: ``python -m benchmarks --only step_time``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks._common import (
    Context,
    StudyResult,
    frameworks,
    interleaved_medians,
    markdown_table,
    progress,
    pyplot,
    save_figure,
    torch_timer,
)
from benchmarks.peers import reference_amos

NAME = "step_time"
QUESTION = "How fast is one optimizer step, against peers and against the memory limit?"
# Bytes a step must move per float32 parameter: element-wise RMSprop reads theta, g, nu and
# writes theta, nu; the global form has no nu but reads g twice (norm, then update). Amos with
# full state reads theta, g, v, b and writes theta, v, b; with one v, b per tensor it reads g
# twice (its mean square, then the update) and theta once, and writes theta.
BYTES_PER_PARAM = {
    "elementwise": 20,
    "global": 16,
    "amos_full": 28,
    "amos_reduced": 16,
    "adam": 28,  # the fused reference on a GPU (FUSED)
}
AMOS_LR = 0.01  # any value: a step's cost does not depend on it


def transformer_shapes(layers: int, width: int, vocab: int) -> list[tuple[int, ...]]:
    """A decoder-only transformer's parameters: the embedding, and per layer two layer norms,
    q, k, v, o projections and a 4x MLP with their biases."""
    shapes: list[tuple[int, ...]] = [(vocab, width)]
    for _ in range(layers):
        shapes += [(width,), (width,)] * 2  # layer norms: weight, bias
        shapes += [(width, width), (width,)] * 4  # attention projections
        shapes += [(4 * width, width), (4 * width,), (width, 4 * width), (width,)]  # MLP
    return shapes + [(width,), (width,)]  # final layer norm


def parameter_sets(quick: bool) -> dict[str, list[tuple[int, ...]]]:
    if quick:
        return {
            "20 x (256x256)": [(256, 256)] * 20,
            "1 x (1024x1024)": [(1024, 1024)],
            "transformer 2 x 256 (35 tensors)": transformer_shapes(2, 256, 2048),
        }
    return {
        "200 x (256x256)": [(256, 256)] * 200,
        "1 x (4096x4096)": [(4096, 4096)],
        "transformer 4 x 512 (67 tensors)": transformer_shapes(4, 512, 8192),
    }


class PeakMemory:
    """The peak extra resident memory of a call, on Linux: large blocks are made to come from
    (and go back to) mmap (``mallopt(M_MMAP_THRESHOLD, 64 KiB)``, so freed temporaries leave the
    resident set), the peak is reset (``/proc/self/clear_refs``), and the call's peak is the
    high-water mark minus the resident set before it. ``None`` where this cannot be done."""

    def __init__(self) -> None:
        self.ok = False
        try:
            libc = ctypes.CDLL("libc.so.6")
            self.ok = bool(libc.mallopt(-3, 1 << 16))  # M_MMAP_THRESHOLD
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except (OSError, AttributeError):
            self.ok = False

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        raise OSError(key)

    def extra_bytes(self, fn) -> int | None:
        if not self.ok:
            return None
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = self._status("VmRSS:")
        fn()
        return max(0, self._status("VmHWM:") - before)


COPY = "copy"  # the reference row of an interleaved round


# torch's fused path, timed beside its foreach path on a GPU (issue: "ratios against torch's
# foreach and fused paths"): torch.optim.RMSprop has no fused kernel (torch 2.13), so Adam's
# stands for it, compared by bandwidth (it moves 28 bytes per parameter).
FUSED = "torch.optim.Adam(fused=True) (torch's fused path)"


def torch_rows(sets, repeats, device, memory, fused=None):
    """The torch rows of every set; ``fused``: add :data:`FUSED` (default: on a GPU)."""
    import torch

    import torch_opt

    gen = torch.Generator().manual_seed(0)
    impls = {
        "torch.optim.RMSprop(foreach=True)": lambda ps: torch.optim.RMSprop(ps, foreach=True),
        "torch.optim.RMSprop(foreach=False)": lambda ps: torch.optim.RMSprop(ps, foreach=False),
        "RMSpropODE() (default)": lambda ps: torch_opt.RMSpropODE(ps),
        "RMSpropODE(foreach=False) (reference kernels)": lambda ps: torch_opt.RMSpropODE(
            ps, foreach=False
        ),
        "RMSpropODE(scale='global')": lambda ps: torch_opt.RMSpropODE(ps, scale="global"),
    }
    if importlib.util.find_spec("pytorch_optimizer") is not None:
        import pytorch_optimizer

        impls["pytorch_optimizer.Amos"] = lambda ps: pytorch_optimizer.Amos(ps, lr=AMOS_LR)
    impls["Amos(shape=()) (one v, b per tensor)"] = lambda ps: torch_opt.Amos(
        ps, lr=AMOS_LR, shape=lambda name, p: ()
    )
    impls["Amos() (full state)"] = lambda ps: torch_opt.Amos(ps, lr=AMOS_LR)
    if fused is None:
        fused = device.startswith("cuda")
    if fused:
        impls[FUSED] = lambda ps: torch.optim.Adam(ps, fused=True)

    def build(make, shapes):
        ps = [torch.randn(s, generator=gen).to(device).requires_grad_() for s in shapes]
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen).to(device)
        return make(ps)

    def extra_bytes(opt):
        if device == "cpu":
            return memory.extra_bytes(opt.step)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        opt.step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    rows = []
    for set_name, shapes in sets.items():
        numel = sum(int(np.prod(s)) for s in shapes)
        row = {"framework": "torch", "set": set_name, "numel": numel}
        if memory is not None:
            # One implementation at a time, after a few steps: pages another one freed would
            # hide a step's own allocations.
            for impl, make in impls.items():
                opt = build(make, shapes)
                for _ in range(3):
                    opt.step()
                rows.append(row | {"impl": impl, "extra_memory_bytes": extra_bytes(opt)})
                del opt
            continue
        buffers = {"src": torch.randn(numel, generator=gen).to(device)}
        buffers["dst"] = torch.empty_like(buffers["src"])
        steps = {impl: build(make, shapes).step for impl, make in impls.items()}
        copy = {COPY: lambda b=buffers: b["dst"].copy_(b["src"])}
        times = interleaved_medians(copy | steps, repeats, timer=torch_timer(device))
        copy_gbs = 2 * 4 * numel / times[COPY] / 1e9
        for impl in impls:
            rows.append(row | {"impl": impl, "ms": times[impl] * 1e3, "copy_gbs": copy_gbs})
        del buffers, steps
    return rows


def jax_rows(sets, repeats, memory):
    import jax
    import optax

    import jax_opt

    impls = {
        "optax.rmsprop (jit, donated)": lambda: optax.rmsprop(1e-2),
        "rmsprop_ode (jit, donated)": lambda: jax_opt.rmsprop_ode(1e-2),
        "rmsprop_ode(scale='global')": lambda: jax_opt.rmsprop_ode(1e-2, scale="global"),
    }
    ref = reference_amos()
    if ref is not None:
        impls["jestimator amos (reference, jit, donated)"] = lambda: ref.amos(
            AMOS_LR, eta_fn=lambda name, shape: 0.5
        )
    impls["amos (full state, jit, donated)"] = lambda: jax_opt.amos(
        AMOS_LR, eta_fn=lambda name, shape: 0.5
    )
    impls["amos(shape_fn -> ()) (one v, b per tensor)"] = lambda: jax_opt.amos(
        AMOS_LR, eta_fn=lambda name, shape: 0.5, shape_fn=lambda name, shape: ()
    )

    def build(make, key, shapes):
        opt = make()
        params = [jax.random.normal(jax.random.fold_in(key, i), s) for i, s in enumerate(shapes)]
        grads = [
            jax.random.normal(jax.random.fold_in(key, 1000 + i), s) for i, s in enumerate(shapes)
        ]

        def step(params, state, grads):
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        jstep = jax.jit(step, donate_argnums=(0, 1))
        box = {"params": params, "state": opt.init(params)}

        def run():
            box["params"], box["state"] = jstep(box["params"], box["state"], grads)
            jax.block_until_ready(box["params"])

        return run

    rows = []
    for set_name, shapes in sets.items():
        key = jax.random.PRNGKey(0)
        numel = sum(int(np.prod(s)) for s in shapes)
        row = {"framework": "jax", "set": set_name, "numel": numel}
        if memory is not None:  # one at a time, as in torch_rows
            for impl, make in impls.items():
                run = build(make, key, shapes)
                for _ in range(3):
                    run()
                rows.append(row | {"impl": impl, "extra_memory_bytes": memory.extra_bytes(run)})
                del run
            continue
        # One read and one write per element, in place (donated), like an optimizer step.
        scale = jax.jit(lambda x: x * 1.0000001, donate_argnums=0)
        cell = {"x": jax.random.normal(key, (numel,))}

        def copy(cell=cell, scale=scale):
            cell["x"] = scale(cell["x"])
            cell["x"].block_until_ready()

        runs = {impl: build(make, key, shapes) for impl, make in impls.items()}
        times = interleaved_medians({COPY: copy} | runs, repeats)
        copy_gbs = 2 * 4 * numel / times[COPY] / 1e9
        for impl in impls:
            rows.append(row | {"impl": impl, "ms": times[impl] * 1e3, "copy_gbs": copy_gbs})
        del cell, runs
    return rows


def memory_child(framework: str, quick: bool, device: str) -> None:
    """In a fresh process (its allocator set up for :class:`PeakMemory`, which would slow the
    timed steps of allocating implementations): each row's peak extra memory, as JSON."""
    memory = PeakMemory()
    sets = parameter_sets(quick)
    if framework == "torch":
        rows = torch_rows(sets, 1, device, memory)
    else:
        rows = jax_rows(sets, 1, memory)
    print(json.dumps({f"{r['set']}|{r['impl']}": r["extra_memory_bytes"] for r in rows}))


def memory_pass(framework: str, quick: bool, device: str) -> dict:
    code = (
        "from benchmarks.step_time import memory_child; "
        f"memory_child({framework!r}, {quick!r}, {device!r})"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=1200, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


FIRST_CALL_IMPLS = {
    "torch": ["RMSpropODE()", "Amos()"],
    "jax": ["rmsprop_ode", "amos"],
}


def first_call_child(framework: str, impl: str, tensors: int, device: str) -> None:
    """In a fresh process: time the first step on ``tensors`` 256x256 float32 tensors and
    print it as JSON (the caches come from the environment)."""
    if framework == "torch":
        import torch

        import torch_opt

        ps = [torch.randn(256, 256, device=device).requires_grad_() for _ in range(tensors)]
        for p in ps:
            p.grad = torch.randn(256, 256, device=device)
        opt = torch_opt.RMSpropODE(ps) if impl == "RMSpropODE()" else torch_opt.Amos(ps, lr=0.01)
        start = time.perf_counter()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    else:
        import jax
        import optax

        import jax_opt

        opt = (
            jax_opt.rmsprop_ode(1e-2)
            if impl == "rmsprop_ode"
            else jax_opt.amos(AMOS_LR, eta_fn=lambda name, shape: 0.5)
        )
        params = [jax.numpy.ones((256, 256)) * (1 + i) for i in range(tensors)]
        grads = [jax.numpy.ones((256, 256)) for _ in range(tensors)]
        jax.block_until_ready(params)

        def step(params, state, grads):
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        start = time.perf_counter()
        out = jax.jit(step, donate_argnums=(0, 1))(params, opt.init(params), grads)
        jax.block_until_ready(out)
    print(json.dumps({"seconds": time.perf_counter() - start}))


def first_call_rows(jobs: list[str], quick: bool, device: str) -> list[dict]:
    tensors = 20 if quick else 200
    rows = []
    for fw in jobs:
        for impl in FIRST_CALL_IMPLS[fw][: 1 if quick else None]:
            with tempfile.TemporaryDirectory() as cache:
                env = {
                    **os.environ,
                    "TWINOPT_CACHE_DIR": cache,
                    "JAX_COMPILATION_CACHE_DIR": cache,
                    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
                }
                code = (
                    "from benchmarks.step_time import first_call_child; "
                    f"first_call_child({fw!r}, {impl!r}, {tensors}, {device!r})"
                )
                times = []
                for _ in ("cold", "warm"):
                    done = subprocess.run(
                        [sys.executable, "-c", code],
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=600,
                        check=True,
                    )
                    times.append(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])
            rows.append(
                {
                    "framework": fw,
                    "impl": impl,
                    "tensors": tensors,
                    "cold_s": times[0],
                    "warm_s": times[1],
                }
            )
    return rows


PEERS = {  # (framework, family) -> the peer's row
    ("torch", "rmsprop"): "torch.optim.RMSprop(foreach=True)",
    ("jax", "rmsprop"): "optax.rmsprop (jit, donated)",
    ("torch", "amos"): "pytorch_optimizer.Amos",
    ("jax", "amos"): "jestimator amos (reference, jit, donated)",
}


def family(impl: str) -> str:
    return "amos" if "amos" in impl.lower() else "rmsprop"


def form(impl: str) -> str:
    """The key of ``BYTES_PER_PARAM`` for an implementation's row."""
    if impl == FUSED:
        return "adam"
    if family(impl) == "amos":
        reduced = "per tensor" in impl or "pytorch_optimizer" in impl
        return "amos_reduced" if reduced else "amos_full"
    return "global" if "global" in impl else "elementwise"


def run(ctx: Context) -> StudyResult:
    sets = parameter_sets(ctx.quick)
    repeats = 5 if ctx.quick else 15
    rows = []
    jobs = frameworks()
    for fw in progress(jobs, NAME):
        if fw == "torch":
            fw_rows = torch_rows(sets, repeats, ctx.device, None)
        else:
            fw_rows = jax_rows(sets, repeats, None)
        extra = memory_pass(fw, ctx.quick, ctx.device)
        for r in fw_rows:
            r["extra_memory_bytes"] = extra.get(f"{r['set']}|{r['impl']}")
        rows += fw_rows
    for r in rows:
        r["peer"] = PEERS[(r["framework"], family(r["impl"]))]
        peer = next((x for x in rows if x["set"] == r["set"] and x["impl"] == r["peer"]), None)
        r["ratio_vs_peer"] = None if peer is None else r["ms"] / peer["ms"]
        r["bytes_per_param"] = BYTES_PER_PARAM[form(r["impl"])]
        r["gbs"] = r["bytes_per_param"] * r["numel"] / r["ms"] / 1e6
        r["fraction_of_copy"] = r["gbs"] / r["copy_gbs"]
        extra = r["extra_memory_bytes"]
        r["extra_memory_per_param_set"] = None if extra is None else extra / (4 * r["numel"])
    table = markdown_table(
        [
            "set",
            "implementation",
            "ms / step",
            "x peer",
            "GB/s",
            "of copy bandwidth",
            "peak extra memory (x params)",
        ],
        [
            (
                r["set"],
                r["impl"],
                f"{r['ms']:.2f}",
                "peer not installed" if r["ratio_vs_peer"] is None else f"{r['ratio_vs_peer']:.2f}",
                f"{r['gbs']:.1f}",
                f"{100 * r['fraction_of_copy']:.0f}%",
                "n/a"
                if r["extra_memory_per_param_set"] is None
                else f"{r['extra_memory_per_param_set']:.2f}",
            )
            for r in rows
        ],
    )
    first = first_call_rows(jobs, ctx.quick, ctx.device)
    first_table = markdown_table(
        ["framework", "implementation", "tensors", "first call, cold cache (s)", "warm cache (s)"],
        [
            (r["framework"], r["impl"], r["tensors"], f"{r['cold_s']:.2f}", f"{r['warm_s']:.2f}")
            for r in first
        ],
    )
    copy = sorted({(r["framework"], r["set"], round(r["copy_gbs"], 1)) for r in rows})
    return StudyResult(
        name=NAME,
        question=QUESTION,
        verdict=_verdict(rows),
        settings={
            "sets": {k: [list(s) for s in v[:1]] + [len(v)] for k, v in sets.items()},
            "repeats": repeats,
            "dtype": "float32",
            "device": ctx.device,
        },
        data={"rows": rows, "first_call": first},
        tables=[table, first_table],
        figures=[plot(ctx, rows)],
        notes=[
            "Copy bandwidth measured in the same run: "
            + "; ".join(f"{fw} {s}: {gbs} GB/s" for fw, s, gbs in copy),
            "'x peer' is the step time divided by the peer's in the same run (lower is "
            "faster): torch.optim.RMSprop(foreach=True) / optax.rmsprop for the RMSprop rows "
            "(and, on a GPU, for torch.optim.Adam(fused=True), which stands for torch's fused "
            "path: RMSprop has none; compare it by GB/s), "
            "pytorch_optimizer.Amos / the reference jestimator amos for the Amos rows. "
            "pytorch_optimizer.Amos keeps one v and b per tensor, so our like-for-like row is "
            "Amos(shape=()); the JAX Amos rows use eta 0.5 for every tensor and the "
            "reference's default (full) state shape.",
            "GB/s counts the bytes a step must move per float32 parameter: "
            + ", ".join(f"{k} {v}" for k, v in BYTES_PER_PARAM.items())
            + " (for pytorch_optimizer.Amos the count of our per-tensor form).",
            "Peak extra memory: the most resident memory one step added, as a multiple of the "
            "parameter set's size, measured in a separate process after the timings (CPU: the "
            "resident high-water mark with large blocks mapped and unmapped per allocation, "
            "a setting that would slow allocating steps if the timed process had it; CUDA: "
            "torch.cuda.max_memory_allocated). torch.optim's budget is one parameter-sized "
            "buffer (1.00).",
            "Step times: the host's clock around each call; torch on a GPU: CUDA events "
            "recorded before and after each call.",
            "First call: a fresh process's first step (torch: the native kernels built into an "
            "empty cache, or loaded from it; JAX: tracing and compiling the jitted step, with "
            "an empty or a filled persistent compilation cache), on "
            f"{first[0]['tensors'] if first else 0} tensors of 256x256.",
        ],
    )


def _verdict(rows) -> str:
    parts = []
    for impl in (
        "RMSpropODE() (default)",
        "rmsprop_ode (jit, donated)",
        "Amos(shape=()) (one v, b per tensor)",
        "amos (full state, jit, donated)",
    ):
        chosen = [r for r in rows if r["impl"] == impl and r["ratio_vs_peer"] is not None]
        if chosen:
            ratios = [r["ratio_vs_peer"] for r in chosen]
            parts.append(
                f"{impl.split(' (')[0]} takes {min(ratios):.2f}-{max(ratios):.2f} x "
                f"the step time of {chosen[0]['peer'].split(' (')[0]}"
            )
    return "; ".join(parts)


def plot(ctx: Context, rows) -> str:
    plt = pyplot()
    sets = list(dict.fromkeys(r["set"] for r in rows))
    fig, axes = plt.subplots(
        1, len(sets), figsize=(6.5 * len(sets), 0.45 * len(rows) + 1.5), sharey=True
    )
    for ax, set_name in zip(np.atleast_1d(axes), sets, strict=True):
        chosen = [r for r in rows if r["set"] == set_name]
        labels = [f"{r['impl']} [{r['framework']}]" for r in chosen]
        colors = ["0.6" if r["impl"] in PEERS.values() else "C0" for r in chosen]
        ax.barh(labels, [r["ms"] for r in chosen], color=colors)
        ax.invert_yaxis()
        ax.set(title=f"{set_name} float32, {ctx.device}", xlabel="ms per step (grey: peer)")
    return save_figure(ctx, fig, "step_time.png")
