"""Study ``step_time``: how fast is one optimizer step, against peers and the memory limit?

One step of RMSprop is memory-bound: it reads the parameter, the gradient and the second
moment and writes two of them, 20 bytes per float32 parameter. We time steps (median over
repeats after warm-up) on the parameter sets of benchmarks.md, report each implementation's
time as a ratio against its peer measured in the same run (torch.optim.RMSprop(foreach=True)
for torch, optax.rmsprop under jit with donated buffers for JAX), and the achieved bandwidth
against a copy bandwidth measured in the same run.

Run alone: ``python -m benchmarks --only step_time``.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks._common import (
    Context,
    StudyResult,
    frameworks,
    markdown_table,
    progress,
    pyplot,
    save_figure,
)

NAME = "step_time"
QUESTION = "How fast is one optimizer step, against peers and against the memory limit?"
# Bytes a step must move per float32 parameter: element-wise RMSprop reads theta, g, nu and
# writes theta, nu; the global form has no nu but reads g twice (norm, then update).
BYTES_PER_PARAM = {"elementwise": 20, "global": 16}


def parameter_sets(quick: bool) -> dict[str, list[tuple[int, ...]]]:
    if quick:
        return {"20 x (256x256)": [(256, 256)] * 20, "1 x (1024x1024)": [(1024, 1024)]}
    return {"200 x (256x256)": [(256, 256)] * 200, "1 x (4096x4096)": [(4096, 4096)]}


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def torch_rows(sets, repeats, device):
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
    rows = []
    for set_name, shapes in sets.items():
        numel = sum(int(np.prod(s)) for s in shapes)
        buffers = {"src": torch.randn(numel, generator=gen).to(device)}
        buffers["dst"] = torch.empty_like(buffers["src"])
        copy_ms = median_ms(lambda b=buffers: b["dst"].copy_(b["src"]), repeats)
        copy_gbs = 2 * 4 * numel / copy_ms / 1e6
        del buffers
        for impl, make in impls.items():
            ps = [torch.randn(s, generator=gen).to(device).requires_grad_() for s in shapes]
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen).to(device)
            opt = make(ps)
            ms = median_ms(opt.step, repeats)
            rows.append(
                {
                    "framework": "torch",
                    "set": set_name,
                    "impl": impl,
                    "ms": ms,
                    "numel": numel,
                    "copy_gbs": copy_gbs,
                }
            )
            del ps, opt
    return rows


def jax_rows(sets, repeats):
    import jax
    import optax

    import jax_opt

    impls = {
        "optax.rmsprop (jit, donated)": lambda: optax.rmsprop(1e-2),
        "rmsprop_ode (jit, donated)": lambda: jax_opt.rmsprop_ode(1e-2),
        "rmsprop_ode(scale='global')": lambda: jax_opt.rmsprop_ode(1e-2, scale="global"),
    }
    rows = []
    for set_name, shapes in sets.items():
        key = jax.random.PRNGKey(0)
        numel = sum(int(np.prod(s)) for s in shapes)
        # One read and one write per element, in place (donated), like an optimizer step.
        scale = jax.jit(lambda x: x * 1.0000001, donate_argnums=0)
        cell = {"x": jax.random.normal(key, (numel,))}

        def copy(cell=cell, scale=scale):
            cell["x"] = scale(cell["x"])
            cell["x"].block_until_ready()

        copy_ms = median_ms(copy, repeats)
        copy_gbs = 2 * 4 * numel / copy_ms / 1e6
        del cell
        for impl, make in impls.items():
            opt = make()
            params = [
                jax.random.normal(jax.random.fold_in(key, i), s) for i, s in enumerate(shapes)
            ]
            grads = [
                jax.random.normal(jax.random.fold_in(key, 1000 + i), s)
                for i, s in enumerate(shapes)
            ]

            def step(params, state, grads, opt=opt):
                updates, state = opt.update(grads, state, params)
                return optax.apply_updates(params, updates), state

            jstep = jax.jit(step, donate_argnums=(0, 1))
            box = {"params": params, "state": opt.init(params)}

            def run(box=box, jstep=jstep, grads=grads):
                box["params"], box["state"] = jstep(box["params"], box["state"], grads)
                jax.block_until_ready(box["params"])

            ms = median_ms(run, repeats)
            rows.append(
                {
                    "framework": "jax",
                    "set": set_name,
                    "impl": impl,
                    "ms": ms,
                    "numel": numel,
                    "copy_gbs": copy_gbs,
                }
            )
            del box, params, grads
    return rows


PEERS = {"torch": "torch.optim.RMSprop(foreach=True)", "jax": "optax.rmsprop (jit, donated)"}


def run(ctx: Context) -> StudyResult:
    sets = parameter_sets(ctx.quick)
    repeats = 5 if ctx.quick else 15
    rows = []
    jobs = frameworks()
    for fw in progress(jobs, NAME):
        rows += torch_rows(sets, repeats, ctx.device) if fw == "torch" else jax_rows(sets, repeats)
    for r in rows:
        peer = next(x for x in rows if x["set"] == r["set"] and x["impl"] == PEERS[r["framework"]])
        r["ratio_vs_peer"] = r["ms"] / peer["ms"]
        form = "global" if "global" in r["impl"] else "elementwise"
        r["gbs"] = BYTES_PER_PARAM[form] * r["numel"] / r["ms"] / 1e6
        r["fraction_of_copy"] = r["gbs"] / r["copy_gbs"]
    table = markdown_table(
        ["set", "implementation", "ms / step", "x peer", "GB/s", "of copy bandwidth"],
        [
            (
                r["set"],
                r["impl"],
                f"{r['ms']:.2f}",
                f"{r['ratio_vs_peer']:.2f}",
                f"{r['gbs']:.1f}",
                f"{100 * r['fraction_of_copy']:.0f}%",
            )
            for r in rows
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
        data={"rows": rows},
        tables=[table],
        figures=[plot(ctx, rows)],
        notes=[
            "Copy bandwidth measured in the same run: "
            + "; ".join(f"{fw} {s}: {gbs} GB/s" for fw, s, gbs in copy),
            "'x peer' is the step time divided by the peer's in the same run (lower is "
            "faster); the speed targets belong to the speed issue, not to this one.",
        ],
    )


def _verdict(rows) -> str:
    parts = []
    for impl, peer in (
        ("RMSpropODE() (default)", "torch.optim.RMSprop(foreach=True)"),
        ("rmsprop_ode (jit, donated)", "optax.rmsprop (jit, donated)"),
    ):
        ratios = [r["ratio_vs_peer"] for r in rows if r["impl"] == impl]
        if ratios:
            parts.append(
                f"{impl.split(' ')[0]} takes {min(ratios):.2f}-{max(ratios):.2f} x "
                f"the step time of {peer.split(' (')[0]}"
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
