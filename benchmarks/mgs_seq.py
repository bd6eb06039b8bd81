"""Study ``mgs_seq``: MLE-guided parameter search on a sequence-level, non-differentiable metric.

The MGS paper's setting, scaled down: reverse 5-10 random digits; the metric is the edit distance
of the greedy decode (up to its end token) over the string's length, capped at 1 (the reference
code's ``edit``). A one-layer GRU (hidden 64, ~16k parameters), written once over a small array
namespace, runs on torch tensors and JAX arrays from the same weights. From one MLE checkpoint
(3000 Adam steps: near where MLE levels off, still improving slowly) each method fine-tunes for
the same number of model evaluations: MLE, MGS guided by the MLE gradient (the reference code's
settings; K + 1 task losses from ``functional_population`` / ``jax.vmap``), REINFORCE, unguided
MGS (a random search around the weights), evosax OpenES, each at the best (on validation) of
one 3-point grid of a step size h: Adam's lr, for black-box methods also their std.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from itertools import product
from types import SimpleNamespace

import numpy as np

from benchmarks._common import Context, StudyResult, installed, torch_threads, xla_options
from benchmarks._report import figure, panel, pm, record_curve, rounded, table

NAME = "mgs_seq"
QUESTION = (
    "Does MLE-guided parameter search lower a sequence-level metric (edit distance of greedy "
    "decodes) more than MLE and policy gradient fine-tuning, as the MGS paper reports?"
)

V, PAD, SEP, EOS = 13, 10, 11, 12  # digits 0-9, then the special tokens
L, N, H, BATCH, K = 10, 11, 64, 64, 4  # longest string, decoded tokens, hidden size, batch, K
NAMES, STUDY_INDEX, PRETRAIN_LR = ("w_i", "w_h", "b_h", "w_o", "b_o"), 20, 1e-2
GRID = (3e-4, 3e-3, 3e-2)  # the step size h of every method
FULL = SimpleNamespace(pretrain=3000, evals=1680, chunks=12, grid=GRID, val=256, test=512)
QUICK = SimpleNamespace(pretrain=20, evals=84, chunks=2, grid=GRID[1:2], val=64, test=128)
MGS_REF = {"num_samples": K, "noise": 1.0, "noise_scale": "grad", "mix": 0.5, "temperature": 0.01,
           "proposal_density": "unit_variance", "max_grad_norm": 1.0}  # fmt: skip
FREE = {"noise_scale": "constant", "mix": 0.0, "max_grad_norm": None}  # unguided: noise h
METHODS = {  # key: (label, evaluations per step, frameworks)
    "mle": ("MLE", 2, ("torch",)),
    "mgs": ("MGS, MLE-guided", 2 + K + 1, ("torch", "jax")),
    "pg": ("REINFORCE", 3, ("torch",)),
    "mgs_free": ("MGS unguided", K + 1, ("torch", "jax")),
    "openes": ("evosax OpenES", 2 * K, ("jax",)),
}

GRID_TITLE = "Final validation edit distance per step size h (mean)"
FIGURE_TITLE = (
    "Fine-tuning a GRU digit reverser from one MLE checkpoint (mean; band: min-max over seeds)"
)


def make_data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` strings: sources ``(n, L)`` (left-padded digits), targets ``(n, N)`` (the digits
    reversed, the end token, padding)."""
    lens = rng.integers(5, L + 1, n)[:, None]
    src = np.where(np.arange(L) >= L - lens, rng.integers(0, 10, (n, L)), PAD)
    rev, k = np.pad(src[:, ::-1], ((0, 0), (0, 1))), np.arange(N)
    tgt = np.where(k < lens, rev, np.where(k == lens, EOS, PAD))
    return src.astype(np.int32), tgt.astype(np.int32)


def ops_of(fw: str) -> SimpleNamespace:
    """The few array operations the model needs, from torch or jax.numpy. ``scan(body, carry,
    n)``: ``body(i, carry) -> (carry, ys)`` for i < n, each of the tuple ``ys`` stacked."""
    if fw == "torch":
        import torch as xp

        def scan(body, carry, n):  # a Python loop
            ys = []
            for i in range(n):
                carry, y = body(i, carry)
                ys.append(y)
            return carry, tuple(map(xp.stack, zip(*ys, strict=True)))

        fns = {"sigmoid": xp.sigmoid, "log_softmax": xp.log_softmax, "concat": xp.cat}
        fl = lambda x: x.to(xp.float32)  # noqa: E731
    else:
        import jax

        xp = jax.numpy

        def scan(body, carry, n):
            return jax.lax.scan(lambda c, i: body(i, c), carry, xp.arange(n))

        fns = {"sigmoid": jax.nn.sigmoid, "log_softmax": jax.nn.log_softmax}
        fns["concat"], fl = xp.concatenate, lambda x: x.astype(xp.float32)
    cat, arange = lambda xs: fns["concat"](xs, -1), lambda n: fl(xp.arange(n))
    return SimpleNamespace(xp=xp, scan=scan, fl=fl, cat=cat, arange=arange, **fns)


def init_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    shapes = {"w_i": (V, 3 * H), "w_h": (H, 3 * H), "b_h": (3 * H,), "w_o": (H, V), "b_o": (V,)}
    return {k: rng.uniform(-(H**-0.5), H**-0.5, v).astype(np.float32) for k, v in shapes.items()}


def onehot(tokens, ops):
    return ops.fl(tokens[..., None] == ops.arange(V))


def cell(p, gi, h, ops):
    """One GRU step; ``gi`` is the input's projection (a row of ``w_i``)."""
    gh = h @ p["w_h"] + p["b_h"]
    r = ops.sigmoid(gi[..., :H] + gh[..., :H])
    z = ops.sigmoid(gi[..., H : 2 * H] + gh[..., H : 2 * H])
    n = ops.xp.tanh(gi[..., 2 * H :] + r * gh[..., 2 * H :])
    return n + z * (h - n)


def encode(p, src, ops):
    """The state after the digits and the separator."""
    gi = onehot(src.T, ops) @ p["w_i"]  # (L, B, 3H)
    h = ops.scan(lambda t, h: (cell(p, gi[t], h, ops), ()), gi[0, :, :H] * 0, L)[0]
    return cell(p, p["w_i"][SEP], h, ops)


def mle_loss(p, src, tgt, ops):
    """Teacher-forced token-mean cross-entropy over the reversed digits and the end token."""
    gi = onehot(tgt.T, ops) @ p["w_i"]  # (N, B, 3H)
    states = ops.scan(lambda t, h: (cell(p, gi[t], h, ops), (h,)), encode(p, src, ops), N)[1][0]
    logp, mask = ops.log_softmax(states @ p["w_o"] + p["b_o"], -1), ops.fl(tgt.T != PAD)
    return -((logp * onehot(tgt.T, ops)).sum(-1) * mask).sum() / mask.sum()


def decode(p, src, ops, gumbel=None):
    """Greedy tokens ``(B, N)``; with Gumbel noise ``(N, B, V)``, sampled tokens and their
    log-probabilities ``(B, N)``."""

    def body(t, h):
        logits = h @ p["w_o"] + p["b_o"]
        if gumbel is None:
            tok = logits.argmax(-1)
            return cell(p, onehot(tok, ops) @ p["w_i"], h, ops), (tok,)
        logp = ops.log_softmax(logits, -1)
        tok = (logp + gumbel[t]).argmax(-1)
        hot = onehot(tok, ops)
        return cell(p, hot @ p["w_i"], h, ops), (tok, (logp * hot).sum(-1))

    ys = ops.scan(body, encode(p, src, ops), N)[1]
    return ys[0].T if gumbel is None else (ys[0].T, ys[1].T)


def edit_distance(hyp, tgt, ops):
    """Per sequence: the Levenshtein distance of ``hyp`` up to its first end token to the
    target's digits, over their number, capped at 1. The dynamic program runs row by row, each
    row's insertions as a prefix minimum by doubling (no data-dependent control flow)."""
    ref, n = tgt[:, :L], ops.fl(tgt != PAD).sum(-1) - 1
    m = N - ops.fl(ops.fl(hyp == EOS).cumsum(-1) > 0).sum(-1)
    at_n, minimum = ops.fl(n[:, None] == ops.arange(L + 1)), ops.xp.minimum

    def body(i, c):  # row i + 1 from row i; the distance read off at row m
        row, d = c
        t = minimum(row[:, :-1] + ops.fl(hyp[:, i][:, None] != ref), row[:, 1:] + 1)
        t, s = ops.cat([row[:, :1] + 1, t]), 1
        while s <= L:
            t, s = minimum(t, ops.cat([t[:, :s], t[:, :-s] + s])), 2 * s
        return (t, d + ops.fl(m == i + 1) * (t * at_n).sum(-1)), ()

    row = ops.arange(L + 1) + 0 * ops.fl(hyp[:, :1])
    d = ops.scan(body, (row, ops.fl(m == 0) * (row * at_n).sum(-1)), N)[0][1] / n
    return minimum(d, 0 * d + 1)


def mgs_args(method: str, h) -> dict:
    """MGS's arguments: the reference code's, or unguided (zero-centred, noise h)."""
    return MGS_REF | (FREE | {"noise": h} if method == "mgs_free" else {})


def scores(d, n_val: int) -> tuple[float, float, float]:
    """Validation distance, test distance, test exact-match rate from per-sequence distances."""
    d = np.asarray(d, np.float64)
    return float(d[:n_val].mean()), float(d[n_val:].mean()), float((d[n_val:] == 0).mean())


def chunk_steps(method: str, cfg) -> int:
    """The training steps of ``method`` per chunk: the chunk's share of the evaluations."""
    return cfg.evals // cfg.chunks // METHODS[method][1]


def timed_run(advance, heldout, seed: int, method: str, cfg) -> dict:
    """``cfg.chunks`` timed chunks of training steps (``advance(src, tgt)`` on stacked batches,
    the same stream for every method); the held-out scores before and after each chunk."""
    rng, out = np.random.default_rng([seed, STUDY_INDEX, 3]), {"seconds": [0.0]}
    steps = chunk_steps(method, cfg)
    out["heldout"] = [heldout()]
    for _ in range(cfg.chunks):
        src, tgt = map(np.stack, zip(*[make_data(rng, BATCH) for _ in range(steps)], strict=True))
        start = time.perf_counter()
        advance(src, tgt)
        out["seconds"].append(out["seconds"][-1] + time.perf_counter() - start)
        out["heldout"].append(heldout())
    return out


def torch_model(weights):
    import torch
    from torch import nn

    class GRUReverser(nn.Module):
        def __init__(self):
            super().__init__()
            for k in NAMES:
                self.register_parameter(k, nn.Parameter(torch.tensor(weights[k])))

        def weights(self) -> dict:
            return {k: getattr(self, k) for k in NAMES}

        def forward(self, src):
            return decode(self.weights(), src, ops_of("torch"))

    return GRUReverser()


def torch_heldout(model, held) -> tuple[float, float, float]:
    import torch

    with torch.no_grad():
        src, tgt = map(torch.as_tensor, held[:2])
        return scores(edit_distance(model(src), tgt, ops_of("torch")).numpy(), held[2])


def pretrain(cfg) -> dict[str, np.ndarray]:
    import torch

    model, ops = torch_model(init_weights(np.random.default_rng([STUDY_INDEX, 4]))), ops_of("torch")
    opt = torch.optim.Adam(model.parameters(), lr=PRETRAIN_LR)
    rng = np.random.default_rng([STUDY_INDEX, 0])
    for _ in range(cfg.pretrain):
        opt.zero_grad()
        mle_loss(model.weights(), *map(torch.as_tensor, make_data(rng, BATCH)), ops).backward()
        opt.step()
    return {k: v.detach().numpy().copy() for k, v in model.weights().items()}


def torch_run(method, h, seed, weights, cfg, held) -> dict:
    import torch

    import torch_opt

    ops, model = ops_of("torch"), torch_model(weights)
    params, gen = list(model.parameters()), torch.Generator().manual_seed(seed)
    task = lambda forward, s, t: edit_distance(forward(s), t, ops).mean()  # noqa: E731
    population = torch_opt.functional_population(model, task)
    adam = torch.optim.Adam(params, lr=h)
    mgs = torch_opt.MGS(params, adam, **mgs_args(method, h), seed=seed) if "mgs" in method else 0

    def step(s, t):
        model.zero_grad(set_to_none=True)
        if method in ("mle", "mgs"):
            mle_loss(model.weights(), s, t, ops).backward()
        if "mgs" in method:
            mgs.step(population=lambda stacked: population(stacked, s, t))
            return
        if method == "pg":  # REINFORCE, the greedy decode's distance as the baseline
            u = torch.rand((N, s.shape[0], V), generator=gen).clamp_min(1e-20)
            tokens, logp = decode(model.weights(), s, ops, -torch.log(-torch.log(u)))
            alive = (tokens[:, :-1] != EOS).float().cumprod(1)  # up to the first end token
            alive = torch.cat([torch.ones_like(logp[:, :1]), alive], 1)
            with torch.no_grad():
                advantage = edit_distance(tokens, t, ops) - edit_distance(model(s), t, ops)
            (advantage * (logp * alive).sum(1)).mean().backward()
        adam.step()

    def advance(src, tgt):
        for s, t in zip(torch.as_tensor(src), torch.as_tensor(tgt), strict=True):
            step(s, t)

    return timed_run(advance, lambda: torch_heldout(model, held), seed, method, cfg)


def jax_runs(methods, weights, cfg, held, seeds, quick) -> dict:
    """Per (method, h, seed): the run's held-out scores and seconds (compiling not counted)."""
    import jax
    import optax

    import jax_opt

    jnp, ops = jax.numpy, ops_of("jax")
    p0, held_j = {k: jnp.asarray(v) for k, v in weights.items()}, list(map(jnp.asarray, held[:2]))

    def distances(p, s, t):
        return edit_distance(decode(p, s, ops), t, ops)

    def strategy(h):
        from evosax.algorithms import Open_ES

        schedule = optax.constant_schedule(h)
        return Open_ES(2 * K, p0, optimizer=optax.adam(h), std_schedule=schedule)

    def init(method, h, seed):
        key, es = jax.random.PRNGKey(seed), method == "openes" and strategy(h)
        if es:
            return es.init(key, p0, es.default_params), jax.random.fold_in(key, 1)
        return p0, jax_opt.mgs(optax.adam(h), **mgs_args(method, h)).init(p0)._replace(key=key)

    def chunk(method):
        def body(h, c, xs):
            s, t = xs
            if method == "openes":
                es, (state, key) = strategy(h), c
                key, ask, tell = jax.random.split(key, 3)
                pop, state = es.ask(ask, state, es.default_params)
                fitness = jax.vmap(lambda q: distances(q, s, t).mean())(pop)
                return (es.tell(tell, pop, fitness, state, es.default_params)[0], key), None
            (p, state), tx = c, jax_opt.mgs(optax.adam(h), **mgs_args(method, h))
            g = jax.grad(lambda q: mle_loss(q, s, t, ops))(p) if method == "mgs" else None
            u, state = tx.update(g, state, p, value_fn=lambda q: distances(q, s, t).mean())
            return (optax.apply_updates(p, u), state), None

        def run(carry, h, src, tgt):
            return jax.lax.scan(lambda c, x: body(h, c, x), carry, (src, tgt))[0]

        return run

    h0, lowered = jnp.float32(cfg.grid[0]), {"eval": jax.jit(distances).lower(p0, *held_j)}
    for m in methods:
        src, tgt = (np.zeros((chunk_steps(m, cfg), BATCH, n), np.int32) for n in (L, N))
        lowered[m] = jax.jit(chunk(m)).lower(init(m, h0, 0), h0, src, tgt)
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:  # XLA compiles without the GIL
        done = pool.map(lambda low: low.compile(xla_options(quick)), lowered.values())
        compiled = dict(zip(lowered, done, strict=True))
    out = {"compile_s": time.perf_counter() - start}

    def evaluate(method, carry):
        p = strategy(1.0).get_mean(carry[0]) if method == "openes" else carry[0]
        return scores(compiled["eval"](p, *held_j), held[2])

    out["checkpoint"] = evaluate("mgs", (p0,))
    for m, h, seed in product(methods, cfg.grid, seeds):
        box = [init(m, jnp.float32(h), seed)]

        def advance(src, tgt, m=m, h=h, box=box):
            box[0] = jax.block_until_ready(compiled[m](box[0], jnp.float32(h), src, tgt))

        out[m, h, seed] = timed_run(advance, lambda m=m, box=box: evaluate(m, box[0]), seed, m, cfg)
    return out


def summarize(method, fw, runs, cfg, seeds) -> dict:
    """One (method, framework): the grid point with the lowest mean final validation distance,
    its test numbers and curves over seeds."""
    val = {h: float(np.mean([runs[h, s]["heldout"][-1][0] for s in seeds])) for h in cfg.grid}
    h, per, steps = min(cfg.grid, key=val.get), METHODS[method][1], chunk_steps(method, cfg)
    held = np.array([runs[h, s]["heldout"] for s in seeds])  # (seeds, chunks + 1, 3)
    secs, test = np.array([runs[h, s]["seconds"] for s in seeds]), held[..., 1]
    rec = {"method": method, "label": METHODS[method][0], "framework": fw, "h": h}
    rec |= {"grid_val": [val[g] for g in cfg.grid], "evals_per_step": per}
    rec |= {"steps": steps * cfg.chunks, "evals": [c * steps * per for c in range(cfg.chunks + 1)]}
    rec |= {"test": test[:, -1].tolist(), "exact": held[:, -1, 2].tolist()}
    curves = {"test": test.mean(0), "lo": test.min(0), "hi": test.max(0), "seconds": secs.mean(0)}
    rec |= {f"curve_{k}": rounded(v) for k, v in curves.items()}
    return rec | {"seconds": secs[:, -1].tolist()}


def verdict(recs, checkpoint, evals) -> str:
    by = {(r["method"], r["framework"]): float(np.mean(r["test"])) for r in recs}
    mgs, peers = by["mgs", "torch"], {"MLE": by["mle", "torch"], "REINFORCE": by["pg", "torch"]}
    rows = [(m, fws[0]) for m, (_, _, fws) in METHODS.items() if m not in ("mle", "pg", "mgs")]
    others = {METHODS[m][0]: by[m, fw] for m, fw in rows if (m, fw) in by}
    text = (
        f"From an MLE checkpoint at normalized test edit distance {checkpoint:.3f}, {evals} "
        f"model evaluations of MGS reach {mgs:.3f} (torch)"
    )
    text += f", {by['mgs', 'jax']:.3f} (JAX)" if ("mgs", "jax") in by else ""
    text += "; " + ", ".join(f"{k} {v:.3f}" for k, v in (peers | others).items())
    worse = " or ".join(f"{k} (+{mgs - v:.3f})" for k, v in peers.items() if mgs >= v)
    if worse:
        return text + f": MGS does not beat {worse}."
    return text + f": MGS beats both, by {min(v - mgs for v in peers.values()):.3f} or more."


def run(ctx: Context) -> StudyResult:
    cfg, seeds = ctx.sized(FULL, QUICK), ctx.seed_list
    held = (*make_data(np.random.default_rng([STUDY_INDEX, 1]), cfg.val + cfg.test), cfg.val)
    jax_methods = [m for m, v in METHODS.items() if "jax" in v[2] and installed("jax")]
    jax_methods = [m for m in jax_methods if m != "openes" or installed("evosax")]
    runs: dict = {}
    with torch_threads(1):
        weights = pretrain(cfg)
        ck = torch_heldout(torch_model(weights), held)
        for m in (m for m, v in METHODS.items() if "torch" in v[2]):
            runs["torch", m] = {
                (h, s): torch_run(m, h, s, weights, cfg, held) for h in cfg.grid for s in seeds
            }
        out = jax_runs(jax_methods, weights, cfg, held, seeds, ctx.quick) if jax_methods else {}
    for m in jax_methods:
        runs["jax", m] = {(h, s): out[m, h, s] for h in cfg.grid for s in seeds}
    recs = [summarize(m, fw, r, cfg, seeds) for (fw, m), r in runs.items()]
    recs.sort(key=lambda r: list(METHODS).index(r["method"]))

    def panel_of(x, title, xlabel, keep=recs):
        curves = [
            record_curve(r, r[x], r["curve_test"], METHODS, band=(r["curve_lo"], r["curve_hi"]))
            for r in keep
        ]
        hlines, ylabel = [(ck[1], "MLE checkpoint")], "test edit distance / length"
        return panel(curves, title, xlabel=xlabel, ylabel=ylabel, hlines=hlines)

    columns = {"method": "label", "framework": "framework", "h": "h:g",
               "evals / step": "evals_per_step", "steps": "steps",
               "test edit distance": lambda r: pm(r["test"]),
               "test exact match": lambda r: pm(r["exact"]),
               "seconds": lambda r: pm(r["seconds"], 1)}  # fmt: skip
    grid = {"method": "label", "framework": "framework"}
    grid |= {f"h = {g:g}": (lambda r, i=i: r["grid_val"][i]) for i, g in enumerate(cfg.grid)}
    title = (
        f"{cfg.evals} evaluations from the checkpoint (test edit distance {ck[1]:.3f}, exact "
        f"match {ck[2]:.3f}); mean ± std over {len(seeds)} seed(s)"
    )
    notes = []
    if out:
        text = f"{out['checkpoint'][1]:.4f} (torch {ck[1]:.4f})"
        notes.append(f"The JAX port decodes the checkpoint to test edit distance {text}.")
    ends = (cfg.grid[0], cfg.grid[-1])
    edge = [f"{r['label']} [{r['framework']}] ({r['h']:g})" for r in recs if r["h"] in ends]
    if len(cfg.grid) > 1 and edge:
        notes.append(f"Best h at an edge of the grid: {', '.join(edge)}.")
    notes.append(
        "Wall times compare within a framework (torch eager on one thread, JAX jitted; "
        f"compiling, {out.get('compile_s', 0):.1f} s in all, not counted)."
    )
    xlabel = "model evaluations (batch passes; a backward pass counts as one)"
    without_mle = [r for r in recs if r["method"] != "mle"]
    panels = [
        panel_of("evals", "against model evaluations", xlabel),
        panel_of("curve_seconds", "against wall time", "seconds of training"),
        panel_of("evals", "all but MLE, zoomed", "model evaluations", without_mle),
    ]
    records = {"runs": recs, "checkpoint": {"val": ck[0], "test": ck[1], "exact": ck[2]}}
    records |= {"jax_checkpoint": out.get("checkpoint"), "jax_compile_s": out.get("compile_s")}
    settings = vars(cfg) | {"seeds": seeds, "batch": BATCH, "hidden": H, "pretrain_lr": PRETRAIN_LR}
    settings |= {"mgs": MGS_REF, "mgs_unguided": FREE}
    settings["parameters"] = sum(v.size for v in weights.values())
    tables = [table(recs, columns, title), table(recs, grid, GRID_TITLE)]
    figures = [figure("mgs_seq", panels, FIGURE_TITLE)]
    return StudyResult(verdict(recs, ck[1], cfg.evals), records, tables, figures, settings, notes)
