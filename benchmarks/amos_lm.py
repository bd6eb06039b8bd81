"""Study ``amos_lm``: Amos against tuned AdamW on a small character-level language model.

A pre-LayerNorm decoder-only transformer on the English text that ships with CPython
(``pydoc_data.topics``). One forward pass, written once, runs on torch tensors and on JAX arrays
from the same NumPy weights and batches. AdamW + cosine, AdamW + Su's Amos-derived lr and
weight-decay schedule and RMSpropODE take the best of a 3-point lr grid (JAX, seed 0); Amos
runs untuned (library defaults, ``xi = 1/sqrt(independent batches)``) with full and with
reduced state. Seed 0 runs in JAX, the other seeds in torch. A short float64 run checks that
the two frameworks' losses agree.
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np

from benchmarks._common import Context, StudyResult, jax_x64, jit_compile, torch_threads
from benchmarks._report import FW_STYLE, curve, figure, panel, pm, table

NAME = "amos_lm"
QUESTION = (
    "Does untuned Amos reach tuned AdamW's validation loss of a small language model in fewer "
    "steps with less optimizer state, as its paper reports (<= 70% of the steps, <= 51% of it)?"
)

FULL = SimpleNamespace(d=96, layers=2, heads=4, ctx=64, batch=16, steps=500, chunk=25, val=128)
QUICK = SimpleNamespace(d=32, layers=1, heads=2, ctx=32, batch=8, steps=40, chunk=10, val=16)
TWIN_STEPS, TWIN_BATCH = 30, 4  # the float64 comparison of the two frameworks
TWIN_TOL = 1e-12  # relative; the expected gap is a few float64 roundings (see the notes)
# The lrs tried in JAX on seed 0 (--quick: the middle one); Su's is AdamW's peak lr alpha_0.
GRIDS = {"adamw": (1e-3, 3e-3, 1e-2), "su": (1e-3, 3e-3, 1e-2), "rmsprop": (3e-4, 1e-3, 3e-3)}
WD = 1e-2  # AdamW's weight decay: torch's default, given to optax too
HALF_LIFE = 0.25  # Su's half-life, as a fraction of the run
STUDY_INDEX = 20  # mixed into every seed
METHODS = {"adamw": "AdamW + cosine (tuned lr)", "su": "AdamW + Su's schedule (tuned lr)",
           "amos": "Amos, full state (untuned)", "amos_reduced": "Amos, reduced state (untuned)",
           "rmsprop": "RMSpropODE (tuned lr)"}  # fmt: skip
AMOS = ("amos", "amos_reduced")


def short(method: str) -> str:
    return METHODS[method].split(" (")[0]


def corpus() -> tuple[np.ndarray, np.ndarray, int]:
    """Character ids of the text (values in sorted key order): 90% train, 10% validation."""
    from pydoc_data.topics import topics

    text = "".join(topics[k] for k in sorted(topics))
    vocab, ids = np.unique(np.frombuffer(text.encode("utf-32-le"), np.uint32), return_inverse=True)
    split = int(0.9 * len(ids))
    return ids[:split].astype(np.int32), ids[split:].astype(np.int32), len(vocab)


def windows(ids: np.ndarray, starts, ctx: int) -> np.ndarray:
    return ids[np.asarray(starts)[..., None] + np.arange(ctx + 1)]


def init_params(cfg, vocab: int, seed: int) -> dict[str, np.ndarray]:
    """kernels (in, out) N(0, 1/fan_in), the residual branches' output kernels 2 x layers times
    smaller in variance; embeddings N(0, 1/d); biases 0; LayerNorm gains 1 (NumPy, float64)."""
    rng = np.random.default_rng([seed, STUDY_INDEX])
    d, deep = cfg.d, 2 * cfg.layers
    p = {"tok": rng.normal(0, d**-0.5, (vocab, d)), "pos": rng.normal(0, d**-0.5, (cfg.ctx, d))}
    kernels = {"qkv": (d, 3 * d, 1), "proj": (d, d, deep), "fc": (d, 4 * d, 1)}
    for i in range(cfg.layers):
        for n, (fan_in, out, extra) in (kernels | {"out": (4 * d, d, deep)}).items():
            p[f"{i}.{n}.w"] = rng.normal(0, (fan_in * extra) ** -0.5, (fan_in, out))
            p[f"{i}.{n}.b"] = np.zeros(out)
        for n in ("ln1", "ln2"):
            p[f"{i}.{n}.g"], p[f"{i}.{n}.b"] = np.ones(d), np.zeros(d)
    p["lnf.g"], p["lnf.b"] = np.ones(d), np.zeros(d)
    p["head.w"], p["head.b"] = rng.normal(0, d**-0.5, (d, vocab)), np.zeros(vocab)
    return p


def reduced_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Amos's reduced state (the reference's BERT rule): kernels (1, out), embeddings per row."""
    if name in ("tok", "pos"):
        return (shape[0], 1)
    return (1, shape[1]) if name.endswith(".w") else ()


def forward(ops, p, xy, cfg):
    """Mean next-character cross-entropy on windows ``xy`` (batch, ctx + 1): the same code for
    torch and JAX, ``ops`` holding the few functions whose names differ."""
    x, y = xy[:, :-1], xy[:, 1:]
    n, t = x.shape
    d, hd = cfg.d, cfg.d // cfg.heads
    h = p["tok"][x] + p["pos"][:t]
    for i in range(cfg.layers):
        a = ops.ln(h, p[f"{i}.ln1.g"], p[f"{i}.ln1.b"]) @ p[f"{i}.qkv.w"] + p[f"{i}.qkv.b"]
        q, k, v = (a[..., j * d : (j + 1) * d].reshape(n, t, cfg.heads, hd) for j in range(3))
        q, k, v = (z.swapaxes(1, 2) for z in (q, k, v))
        s = ops.softmax(ops.causal(q @ k.swapaxes(-1, -2) / math.sqrt(hd)))
        h = h + (s @ v).swapaxes(1, 2).reshape(n, t, d) @ p[f"{i}.proj.w"] + p[f"{i}.proj.b"]
        m = ops.gelu(ops.ln(h, p[f"{i}.ln2.g"], p[f"{i}.ln2.b"]) @ p[f"{i}.fc.w"] + p[f"{i}.fc.b"])
        h = h + m @ p[f"{i}.out.w"] + p[f"{i}.out.b"]
    return ops.xent(ops.ln(h, p["lnf.g"], p["lnf.b"]) @ p["head.w"] + p["head.b"], y)


def train(side, method, lr, init, xs, val, cfg, xi, dtype=None) -> dict:
    """The validation loss at step 0 and after every chunk, each chunk's ms/step, every training
    loss and the optimizer state's bytes; ``side.setup`` returns (run a chunk of steps -> their
    losses, validation loss, state bytes) for one optimizer from the given weights."""
    run, val_loss, state_bytes = side.setup(method, lr, init, xs, val, cfg, xi, dtype)
    out = {"val": [val_loss()], "ms": [], "train": []}
    for chunk in np.split(xs, len(xs) // cfg.chunk):
        start = time.perf_counter()
        out["train"] += run(chunk)
        out["ms"].append(1e3 * (time.perf_counter() - start) / len(chunk))
        out["val"].append(val_loss())
    return out | {"state_bytes": state_bytes()}


class TorchSide:
    name = "torch"

    def __init__(self):
        import torch

        import torch_opt

        F = torch.nn.functional
        self.torch, self.mod = torch, torch_opt
        self.ops = SimpleNamespace(
            ln=lambda h, g, b: F.layer_norm(h, h.shape[-1:], g, b, 1e-5),
            gelu=F.gelu,
            softmax=lambda s: s.softmax(-1),
            causal=lambda s: s.masked_fill(~torch.ones(s.shape[-2:], dtype=bool).tril(), -math.inf),
            xent=lambda z, y: F.cross_entropy(z.flatten(0, 1), y.flatten()),
        )

    def optimizer(self, method, lr, params, steps, xi):
        torch, mod, plain = self.torch, self.mod, list(params.values())
        if method in ("adamw", "su"):  # Su's schedule sets AdamW's weight decay itself
            return torch.optim.AdamW(plain, lr, weight_decay=WD)
        if method in AMOS:
            shape = (lambda n, p: reduced_shape(n, tuple(p.shape))) if method != "amos" else None
            return mod.Amos(list(params.items()), xi, shape=shape)
        return mod.RMSpropODE(plain, lr)

    def setup(self, method, lr, init, xs, val, cfg, xi, dtype):
        torch, val = self.torch, self.torch.as_tensor(val).long()
        dtype = dtype or torch.float32
        p = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in init.items()}
        opt = self.optimizer(method, lr, p, len(xs), xi)
        sched = {
            "adamw": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, len(xs)),
            "su": lambda: self.mod.AmosDecayScheduler(opt, lr, HALF_LIFE * len(xs)),
        }.get(method, lambda: None)()

        def run(chunk):
            losses = []
            for xy in torch.as_tensor(chunk).long():
                loss = forward(self.ops, p, xy, cfg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                losses.append(loss.item())
            return losses

        def val_loss():
            with torch.no_grad():
                return forward(self.ops, p, val, cfg).item()

        def state_bytes():
            state = [t for s in opt.state_dict()["state"].values() for t in s.values()]
            return sum(t.numel() * t.element_size() for t in state if torch.is_tensor(t))

        return run, val_loss, state_bytes


class JaxSide:
    name = "jax"

    def __init__(self, quick: bool):
        import jax
        import optax

        import jax_opt

        jnp = jax.numpy
        self.jax, self.optax, self.mod, self.quick, self.model = jax, optax, jax_opt, quick, {}

        def ln(h, g, b):
            c = h - h.mean(-1, keepdims=True)
            return c * jax.lax.rsqrt((c * c).mean(-1, keepdims=True) + 1e-5) * g + b

        self.ops = SimpleNamespace(
            ln=ln,
            gelu=lambda z: jax.nn.gelu(z, approximate=False),
            softmax=lambda s: jax.nn.softmax(s, axis=-1),
            causal=lambda s: jnp.where(jnp.tril(jnp.ones(s.shape[-2:], bool)), s, -jnp.inf),
            xent=lambda z, y: optax.softmax_cross_entropy_with_integer_labels(z, y).mean(),
        )

    def optimizer(self, method, lr, steps, xi):
        optax, mod = self.optax, self.mod
        if method == "adamw":
            return optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=WD)
        if method == "su":
            schedule, weight_decay = mod.amos_decay_schedules(lr, HALF_LIFE * steps)
            return optax.adamw(schedule, weight_decay=weight_decay)
        if method in AMOS:
            shape = (lambda n, s: reduced_shape(n[0], s)) if method != "amos" else None
            return mod.amos(xi, shape_fn=shape)
        return mod.rmsprop_ode(lr, decay=0.99, eps=1e-8, eps_in_sqrt=False)  # torch's defaults

    def compile(self, fn, *args):
        return jit_compile(fn, *args, quick=self.quick)

    def setup(self, method, lr, init, xs, val, cfg, xi, dtype):
        jax, optax = self.jax, self.optax
        p = {k: jax.numpy.asarray(v, dtype or jax.numpy.float32) for k, v in init.items()}
        key = (str(p["tok"].dtype), val.shape, xs.shape[1:])
        if key not in self.model:  # the model's gradient and loss, shared by every optimizer
            loss = lambda p, xy: forward(self.ops, p, xy, cfg)  # noqa: E731
            grad = self.compile(jax.value_and_grad(loss), p, xs[0])
            self.model[key] = grad, self.compile(loss, p, val)
        grad, loss_of = self.model[key]
        opt = self.optimizer(method, lr, len(xs), xi)

        def update(g, s, p):
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        now = [p, jax.jit(opt.init)(p)]  # one compile instead of one per eager operation
        apply = self.compile(update, grad(p, xs[0])[1], now[1], p)

        def run(chunk):
            losses = []
            for xy in chunk:
                loss, g = grad(now[0], xy)
                now[0], now[1] = apply(g, now[1], now[0])
                losses.append(loss)
            return np.asarray(jax.block_until_ready(losses), np.float64).tolist()

        def state_bytes():
            return int(sum(leaf.nbytes for leaf in jax.tree.leaves(now[1])))

        return run, lambda: float(loss_of(now[0], val)), state_bytes


def steps_to(curve, eval_steps, target) -> float | None:
    """The first step at which ``curve`` reaches ``target`` (interpolated), or ``None``."""
    hit = np.flatnonzero(np.asarray(curve) <= target)
    if hit.size == 0 or hit[0] == 0:
        return None if hit.size == 0 else 0.0
    i = hit[0]  # curve[i] <= target < curve[i - 1]
    return float(np.interp(target, [curve[i], curve[i - 1]], [eval_steps[i], eval_steps[i - 1]]))


def summarize(records, eval_steps, steps) -> list[dict]:
    """Per method, over all runs (either framework): the final validation losses; the step at
    which the mean curve reaches tuned AdamW's mean final loss, in % of the run, and how many
    runs reach their seed's AdamW run's; per framework the state's bytes and median ms/step."""
    chosen = [r for r in records if r["chosen"]]
    rows = []
    for method in METHODS:
        runs = [r for r in chosen if r["method"] == method]
        adamw_runs = {(b["framework"], b["seed"]): b for b in chosen if b["method"] == "adamw"}
        base = [adamw_runs[r["framework"], r["seed"]] for r in runs]
        target = float(np.mean([b["val"][-1] for b in base]))
        at = steps_to(np.mean([r["val"] for r in runs], 0), eval_steps, target)
        hits = [
            steps_to(r["val"], eval_steps, b["val"][-1]) for r, b in zip(runs, base, strict=True)
        ]
        state, adamw = ({r["framework"]: r["state_bytes"] for r in rs} for rs in (runs, base))
        ms = {fw: [m for r in runs if r["framework"] == fw for m in r["ms"]] for fw in state}
        rows.append({
            "method": method, "lr": runs[0]["lr"], "target": target, "runs": len(runs),
            "final_val": [r["val"][-1] for r in runs], "state_bytes": state,
            "steps_to_target_pct": None if at is None else 100 * at / steps,
            "runs_reaching": sum(h is not None for h in hits),
            "seeds": len({r["seed"] for r in runs}),
            "state_pct": {fw: 100 * n / adamw[fw] for fw, n in state.items()},
            "ms_per_step": {fw: float(np.median(v)) for fw, v in ms.items()},
        })  # fmt: skip
    return rows


def reached(row) -> str:
    pct, runs = row["steps_to_target_pct"], f"{row['runs_reaching']}/{row['runs']} runs"
    return f"not reached ({runs})" if pct is None else f"{pct:.0f}% ({runs})"


def verdict(rows, twin) -> str:
    r = {row["method"]: row for row in rows}

    def part(method, label):
        row, state = r[method], f"{r[method]['state_pct']['torch']:.1f}%"
        pct, gap = row["steps_to_target_pct"], np.mean(row["final_val"]) - row["target"]
        if pct is not None:
            return f"{label} reached it in {pct:.0f}% of the steps with {state} of AdamW's state"
        return f"{label} did not (ended {gap:.3f} above) with {state}"

    return (
        f"Untuned Amos vs tuned AdamW + cosine (final val loss {r['adamw']['target']:.3f}, mean "
        f"of {r['adamw']['seeds']} seed(s)): {part('amos', 'full state')}, "
        f"{part('amos_reduced', 'reduced state')}; float64 torch and JAX losses agree to "
        f"{max(d['max_rel_diff'] for d in twin):.0e}."
    )


def plot(records, rows, twin, eval_steps) -> dict:
    chosen = [r for r in records if r["chosen"]]
    curves = [
        curve(f"{short(m)} [{fw}]", eval_steps, np.mean(runs, 0), FW_STYLE[fw], i)
        for i, m in enumerate(METHODS)
        for fw in FW_STYLE
        if (runs := [r["val"] for r in chosen if (r["method"], r["framework"]) == (m, fw)])
    ]
    steps = range(1, TWIN_STEPS + 1)  # exact agreement (0) drawn at 1e-17
    diffs = [curve(short(d["method"]), steps, np.maximum(d["rel_diff"], 1e-17)) for d in twin]
    target, tol = rows[0]["target"], [(TWIN_TOL, "tolerance")]
    twin_title = "float64, same weights and batches: torch vs JAX"
    title = "Validation loss; solid torch, dashed JAX (each the mean of its seeds)"
    hlines, ylim = [(target, "tuned AdamW's final loss (all seeds)")], (target - 0.3, target + 1.5)
    val_panel = panel(curves, title, ylabel="nats per character", hlines=hlines, ylim=ylim)
    ylabel = "relative difference of the training loss"
    twin_panel = panel(diffs, twin_title, ylabel=ylabel, yscale="log", hlines=tol)
    return figure("amos_lm_curves", [val_panel, twin_panel], "Character LM on pydoc_data.topics")


@torch_threads(1)  # on a shared 2-core CPU a second thread mostly waits for the first
def run(ctx: Context) -> StudyResult:
    import jax

    cfg, seeds = ctx.sized(FULL, QUICK), ctx.seed_list
    train_ids, val_ids, vocab = corpus()
    xi = 1 / math.sqrt(len(train_ids) / cfg.ctx / cfg.batch)  # 1/sqrt(independent batches)
    val = windows(val_ids, np.linspace(0, len(val_ids) - cfg.ctx - 1, cfg.val).astype(int), cfg.ctx)
    eval_steps = list(range(0, cfg.steps + 1, cfg.chunk))
    grids = {m: ctx.sized(g, g[1:2]) for m, g in GRIDS.items()}

    def batches(seed, steps, batch):
        rng = np.random.default_rng([seed, STUDY_INDEX, 1])
        starts = rng.integers(0, len(train_ids) - cfg.ctx, (steps, batch))
        return windows(train_ids, starts, cfg.ctx)

    inits = {s: init_params(cfg, vocab, s) for s in seeds}
    xs = {s: batches(s, cfg.steps, cfg.batch) for s in seeds}
    torch_side, jax_side = TorchSide(), JaxSide(ctx.quick)
    records, chosen = [], dict.fromkeys(AMOS, xi)

    def go(side, method, lr, seed, best=True):
        out = train(side, method, lr, inits[seed], xs[seed], val, cfg, xi)
        records.append({"method": method, "framework": side.name, "seed": seed, "lr": lr} | out)
        records[-1]["chosen"] = best
        return out["val"][-1]

    for method, grid in grids.items():  # the lr grids: JAX, seed 0
        finals = [go(jax_side, method, lr, 0, False) for lr in grid]
        chosen[method] = grid[int(np.argmin(finals))]
        for r in records[-len(grid) :]:
            r["chosen"] = r["lr"] == chosen[method]
    grid_runs = {m: [r for r in records if r["method"] == m] for m in grids}
    for method in METHODS:
        if method in AMOS:
            go(jax_side, method, xi, 0)
        for seed in seeds[1:] or seeds:  # one seed only (--quick): torch repeats it
            go(torch_side, method, chosen[method], seed)
    rows = summarize(records, eval_steps, cfg.steps)

    # The twin claim: float64, the same weights and batches, torch and JAX step by step.
    twin, lr, one = [], GRIDS["rmsprop"][1], SimpleNamespace(**vars(cfg) | {"chunk": TWIN_STEPS})
    args = (inits[0], batches(0, TWIN_STEPS, TWIN_BATCH), val[:TWIN_BATCH], one, xi)
    for method in ctx.sized((*AMOS, "rmsprop"), ("amos", "rmsprop")):
        a = train(torch_side, method, lr, *args, torch_side.torch.float64)["train"]
        with jax_x64():
            b = train(jax_side, method, lr, *args, jax.numpy.float64)["train"]
        rel = np.abs(np.subtract(a, b)) / np.abs(a)
        twin.append({"method": method, "torch": a, "jax": b, "rel_diff": rel.tolist()})
        twin[-1]["max_rel_diff"] = float(rel.max())
    grid = "; ".join(
        f"{short(m)} " + ", ".join(f"{r['lr']:g}: {r['val'][-1]:.3f}" for r in grid_runs[m])
        for m in grids
    )
    columns = {
        "method": lambda r: METHODS[r["method"]], "lr": "lr:.3g",
        "final val loss": lambda r: pm(r["final_val"]),
        "steps to AdamW's final loss (runs reaching their seed's)": reached,
        "state bytes, torch (% of AdamW's)":
            lambda r: f"{r['state_bytes']['torch']:,} ({r['state_pct']['torch']:.1f}%)",
        "ms/step torch / JAX": lambda r: " / ".join(f"{r['ms_per_step'][f]:.0f}" for f in FW_STYLE),
    }  # fmt: skip
    n_chars, n_params = len(train_ids) + len(val_ids), sum(v.size for v in inits[0].values())
    settings = {"data": f"{n_chars:,} characters, {vocab} distinct; {cfg.val} validation windows"}
    settings["model"] = vars(cfg) | {"parameters": n_params, "init": init_params.__doc__.strip()}
    settings |= {"seeds (0 in JAX, the others in torch)": seeds, "torch threads": 1}
    settings |= {"lr grids (JAX, seed 0)": grids, "chosen lr": chosen, "Amos's xi": xi}
    twin_text = ", ".join(f"{short(d['method'])} {d['max_rel_diff']:.1e}" for d in twin)
    notes = [
        "Steps to AdamW's final loss: where the mean validation curve (every "
        f"{cfg.chunk} steps, interpolated) first reaches it, in % of the run. Grids: {grid}.",
        "State bytes: every state tensor, counters included (the paper's <= 51% is Amos with "
        "momentum and reduced v, b; these runs use no momentum). ms/step: medians, 1 thread.",
        f"float64, {TWIN_STEPS} steps, batch {TWIN_BATCH}, largest relative difference of the "
        f"training loss, torch vs JAX: {twin_text} (operation order only: within {TWIN_TOL:g}).",
    ]
    notes += ctx.sized([], ["--quick: tiny model, 1 seed, 1-point grids: a smoke run."])
    records = {"eval_steps": eval_steps, "runs": records, "summary": rows, "twin": twin}
    tables, figures = [table(rows, columns)], [plot(records["runs"], rows, twin, eval_steps)]
    return StudyResult(verdict(rows, twin), records, tables, figures, settings, notes)
