"""Study ``amos_mlp``: do Amos and the Amos-derived schedules train a real small network well
without a tuned schedule?

An MLP 64 -> 128 -> 128 -> 10 (ReLU, softmax cross-entropy, float32) on scikit-learn's bundled
``load_digits`` (1797 8x8 images, no download), features scaled to ``[0, 1]``, one stratified
70/30 train/test split (1257 / 540 images) shared by every seed. A seed sets the initial weights
(NumPy, ``W ~ N(0, 1/fan_in)``, ``b = 0``) and the minibatch order (per-epoch permutations drawn
with NumPy, batches of 32), so both frameworks start from the same float32 weights and see the
same batches. Every method runs a fixed number of steps with its settings fixed in advance (no
grid): Amos as the reference README trains MNIST, global lr ``xi = 1/sqrt(n_train / batch)`` and
``beta = 0.98``, eta each tensor's initial RMS (0.5 for the zero biases), nothing else; ours in
its default state shape (one ``v``, ``b`` per entry) and in two memory-saving layouts (one
``v``, ``b`` per output unit of each weight matrix; one per tensor, pytorch_optimizer's only
layout), ``pytorch_optimizer.Amos`` (torch) and the reference ``jestimator`` amos (JAX, given
our eta) as peers; AdamW (lr 1e-3, weight decay 1e-2, the frameworks' defaults
otherwise) with a cosine decay to 0, with Su's Amos-derived schedule (``AmosDecayScheduler`` /
``amos_decay_schedules``: lr 1e-3 decaying as ``1 / (1 + t / T)``, decay ``lr^2 / 2`` per step
scaled the same way, ``T`` a quarter of the run), and with a constant lr. We record the test
accuracy and the full training loss every few steps, and count the floats each optimizer keeps
in its state.

Run alone: ``python -m benchmarks --only amos_mlp``.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

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
from benchmarks.peers import reference_amos
from benchmarks.problems import DIGITS, digits_split, mlp_params

NAME = "amos_mlp"
QUESTION = (
    "Do Amos and the Amos-derived schedules train a real small network well without a tuned "
    "schedule?"
)

SIZES = (64, 128, 128, 10)
NAMES = ("w1", "b1", "w2", "b2", "w3", "b3")  # the order of problems.mlp_params
BATCH = 32
AMOS_BETA = 0.98  # the reference README's MNIST setting
ADAMW_LR, ADAMW_WD = 1e-3, 1e-2  # torch.optim.AdamW's defaults, optax.adamw given the same
SU_HALF_LIFE = 0.25  # Su's half-life T as a fraction of the run
N_EVALS = 30  # evaluation points after step 0
STUDY_INDEX = 11  # mixed into every seed's RNG


def amos_lr(n_train: int) -> float:
    """The reference README's global learning rate: ``1/sqrt(number of batches per epoch)``."""
    return 1.0 / math.sqrt(n_train / BATCH)


def unit_shape_torch(name, p) -> tuple[int, ...]:
    """One ``v``, ``b`` per output unit: a torch weight ``(out, in)`` keeps ``(out, 1)``; a
    bias keeps its shape."""
    return (p.shape[0], 1) if p.ndim == 2 else tuple(p.shape)


def unit_shape_jax(name, shape) -> tuple[int, ...]:
    """:func:`unit_shape_torch` for JAX's layout: a weight ``(in, out)`` keeps ``(1, out)``."""
    return (1, shape[1]) if len(shape) == 2 else tuple(shape)


@dataclass(frozen=True)
class Method:
    key: str
    ours: bool
    labels: dict  # framework -> label


METHODS = [
    Method("amos", True, {"torch": "Amos (ours)", "jax": "amos (ours)"}),
    Method(
        "amos_unit",
        True,
        {
            "torch": "Amos, one v, b per output unit (ours)",
            "jax": "amos, one v, b per output unit (ours)",
        },
    ),
    Method(
        "amos_tensor",
        True,
        {"torch": "Amos, one v, b per tensor (ours)", "jax": "amos, one v, b per tensor (ours)"},
    ),
    Method("amos_port", False, {"torch": "pytorch_optimizer.Amos"}),
    Method("amos_ref", False, {"jax": "jestimator amos (reference)"}),
    Method("adamw_cosine", False, {"torch": "AdamW + cosine", "jax": "adamw + cosine"}),
    Method(
        "adamw_su",
        True,
        {"torch": "AdamW + Su schedule (ours)", "jax": "adamw + Su schedule (ours)"},
    ),
    Method("adamw", False, {"torch": "AdamW, constant lr", "jax": "adamw, constant lr"}),
]
METHOD = {m.key: m for m in METHODS}
COLORS = {m.key: f"C{i}" for i, m in enumerate(METHODS)}
SHORT = {  # the verdict's names
    "amos": "Amos",
    "amos_unit": "Amos with one v, b per output unit",
    "amos_tensor": "Amos with one v, b per tensor",
    "amos_port": "pytorch_optimizer.Amos",
    "amos_ref": "the reference Amos",
    "adamw_cosine": "AdamW + cosine",
    "adamw_su": "AdamW + Su schedule",
    "adamw": "AdamW at constant lr",
}


# ---------------------------------------------------------------------------------------------
# Problem instances


@dataclass
class Instance:
    """One seed: initial weights ``[W1, b1, ...]`` (``W`` of shape ``(fan_in, fan_out)``), the
    minibatch indices ``(steps, BATCH)`` and each tensor's initial RMS (Amos' eta)."""

    params: list[np.ndarray]
    batches: np.ndarray
    eta: list[float]


def make_instance(seed: int, n_train: int, steps: int) -> Instance:
    rng = np.random.default_rng([seed, STUDY_INDEX])
    params = mlp_params(SIZES, rng)
    epochs = -(-steps * BATCH // n_train)
    order = np.concatenate([rng.permutation(n_train) for _ in range(epochs)])
    batches = order[: steps * BATCH].reshape(steps, BATCH).astype(np.int32)
    eta = []
    for p in params:
        rms = float(np.sqrt(np.mean(np.square(p, dtype=np.float64))))
        eta.append(rms if rms > 0 else 0.5)  # Amos' model-oriented scale of each tensor
    return Instance(params, batches, eta)


# ---------------------------------------------------------------------------------------------
# The two sides: each runs every method it has for every seed


class TorchSide:
    name = "torch"

    def __init__(self, device: str):
        import torch

        import torch_opt
        from torch_opt.schedules import AmosDecayScheduler

        self.torch, self.mod, self.su = torch, torch_opt, AmosDecayScheduler
        self.device = torch.device(device)
        self.port = None
        if importlib.util.find_spec("pytorch_optimizer") is not None:
            import pytorch_optimizer

            self.port = pytorch_optimizer

    def has(self, key: str) -> bool:
        return "torch" in METHOD[key].labels and (key != "amos_port" or self.port is not None)

    def optimizer(self, key: str, params, xi: float, steps: int):
        """``(optimizer, scheduler or None)``."""
        torch, mod = self.torch, self.mod
        if key == "amos":
            return mod.Amos(params, lr=xi, beta=AMOS_BETA), None
        if key == "amos_unit":  # W is (out, in): reduce the input axis
            return mod.Amos(params, lr=xi, beta=AMOS_BETA, shape=unit_shape_torch), None
        if key == "amos_tensor":
            return mod.Amos(params, lr=xi, beta=AMOS_BETA, shape=lambda name, p: ()), None
        if key == "amos_port":
            return self.port.Amos(params, lr=xi, beta=AMOS_BETA), None
        opt = torch.optim.AdamW(params, lr=ADAMW_LR, weight_decay=ADAMW_WD)
        if key == "adamw_cosine":
            return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        if key == "adamw_su":
            return opt, self.su(opt, lr=ADAMW_LR, half_life=SU_HALF_LIFE * steps)
        if key == "adamw":
            return opt, None
        raise KeyError(key)

    def run(self, key, inst: Instance, data, steps: int, every: int) -> dict:
        """Test accuracy and training loss at steps ``0, every, 2 every, ...`` and the number
        of floats in the optimizer's state."""
        torch = self.torch
        F = torch.nn.functional
        x_train, y_train, x_test, y_test = (torch.as_tensor(a, device=self.device) for a in data)
        # torch's layout (out, in), so pytorch_optimizer's shape rule sees what it expects
        params = [
            torch.tensor(p.T.copy() if p.ndim == 2 else p, device=self.device, requires_grad=True)
            for p in inst.params
        ]
        opt, sched = self.optimizer(key, params, amos_lr(len(y_train)), steps)
        batches = torch.as_tensor(inst.batches, dtype=torch.long, device=self.device)

        def logits(x):
            w1, b1, w2, b2, w3, b3 = params
            h = torch.relu(F.linear(x, w1, b1))
            return F.linear(torch.relu(F.linear(h, w2, b2)), w3, b3)

        def evaluate():
            with torch.no_grad():
                acc = (logits(x_test).argmax(1) == y_test).float().mean().item()
                return acc, F.cross_entropy(logits(x_train), y_train).item()

        # One thread: at batch 32 threads only add synchronization, and on a shared 2-core
        # machine two of them slowed this loop several-fold.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            curve = [evaluate()]
            for t in range(steps):
                idx = batches[t]
                loss = F.cross_entropy(logits(x_train[idx]), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                if (t + 1) % every == 0:
                    curve.append(evaluate())
        finally:
            torch.set_num_threads(threads)
        state = sum(
            v.numel()
            for st in opt.state.values()
            for k, v in st.items()
            if torch.is_tensor(v) and v.is_floating_point() and k != "step"
        )
        return {
            "test_acc": [a for a, _ in curve],
            "train_loss": [f for _, f in curve],
            "state_floats": int(state),
        }


class JaxSide:
    name = "jax"

    def __init__(self):
        import jax
        import optax

        import jax_opt
        from jax_opt.schedules import amos_decay_schedules

        self.jax, self.optax, self.mod, self.su = jax, optax, jax_opt, amos_decay_schedules
        self.ref = reference_amos()

    def has(self, key: str) -> bool:
        return "jax" in METHOD[key].labels and (key != "amos_ref" or self.ref is not None)

    def optimizer(self, key: str, xi: float, steps: int, eta: dict):
        """The method; ``eta`` (name -> the tensor's initial RMS, traced per seed) feeds the
        reference's ``eta_fn``, ours reads the same value at ``init``."""
        optax, mod = self.optax, self.mod
        if key == "amos":
            return mod.amos(xi, beta=AMOS_BETA)
        if key == "amos_unit":  # W is (in, out): reduce the input axis
            return mod.amos(xi, shape_fn=unit_shape_jax, beta=AMOS_BETA)
        if key == "amos_tensor":
            return mod.amos(xi, shape_fn=lambda name, shape: (), beta=AMOS_BETA)
        if key == "amos_ref":
            return self.ref.amos(xi, eta_fn=lambda name, shape: eta[name[0]], beta=AMOS_BETA)
        if key == "adamw_cosine":
            return optax.adamw(optax.cosine_decay_schedule(ADAMW_LR, steps), weight_decay=ADAMW_WD)
        if key == "adamw_su":
            lr, wd = self.su(ADAMW_LR, SU_HALF_LIFE * steps)
            return optax.adamw(lr, weight_decay=wd)
        if key == "adamw":
            return optax.adamw(ADAMW_LR, weight_decay=ADAMW_WD)
        raise KeyError(key)

    def adamw_schedule(self, key: str, steps: int) -> tuple[np.ndarray, float]:
        """The learning rate of ``optax.adamw`` at counts ``0 .. steps - 1`` and its weight
        decay, for one of the AdamW methods: the schedules of :meth:`optimizer`, evaluated."""
        jax, optax = self.jax, self.optax
        if key == "adamw_cosine":
            lr, wd = optax.cosine_decay_schedule(ADAMW_LR, steps), ADAMW_WD
        elif key == "adamw_su":
            lr, wd = self.su(ADAMW_LR, SU_HALF_LIFE * steps)
        else:
            lr, wd = (lambda count: ADAMW_LR + 0.0 * count), ADAMW_WD
        table = jax.vmap(lr)(jax.numpy.arange(steps))
        return np.asarray(table, np.float32), wd

    def run_all(
        self, keys, insts: list[Instance], data, steps: int, every: int, quick: bool = False
    ) -> dict:
        """Every method in ``keys`` for every seed, in one compiled program: a ``vmap`` over
        seeds of a ``scan`` over evaluation chunks of a ``scan`` over steps, per Amos method;
        the AdamW methods differ only in their schedule, so they share one such program,
        vmapped over (method, seed) with the schedule as a table of learning rates (the
        values :meth:`optimizer`'s schedules take) and the weight decay as data. ``quick``
        compiles without XLA's backend optimizations: half the compile time, which is most of
        a smoke run (the results then differ from an optimized build by rounding)."""
        jax, optax = self.jax, self.optax
        jnp = jax.numpy
        x_train, y_train, x_test, y_test = data
        xi = amos_lr(len(y_train))
        amos_keys = [k for k in keys if not k.startswith("adamw")]
        adamw_keys = [k for k in keys if k.startswith("adamw")]

        def logits(p, x):
            h = jax.nn.relu(x @ p["w1"] + p["b1"])
            return jax.nn.relu(h @ p["w2"] + p["b2"]) @ p["w3"] + p["b3"]

        def loss(p, x, y):
            return optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y).mean()

        def evaluate(p, d):
            acc = (logits(p, d["x_test"]).argmax(1) == d["y_test"]).mean()
            return acc, loss(p, d["x_train"], d["y_train"])

        def train(opt, params0, batches, d):
            def step(carry, idx):
                p, state = carry
                g = jax.grad(loss)(p, d["x_train"][idx], d["y_train"][idx])
                updates, state = opt.update(g, state, p)
                return (optax.apply_updates(p, updates), state), None

            def chunk(carry, idx):
                carry, _ = jax.lax.scan(step, carry, idx)
                return carry, evaluate(carry[0], d)

            chunks = batches.reshape(steps // every, every, BATCH)
            _, (acc, f) = jax.lax.scan(chunk, (params0, opt.init(params0)), chunks)
            acc0, f0 = evaluate(params0, d)
            return jnp.concatenate([acc0[None], acc]), jnp.concatenate([f0[None], f])

        def amos_run(key, p, b, e, d):
            return train(self.optimizer(key, xi, steps, e), p, b, d)

        def adamw_run(p, b, table, wd, d):
            return train(optax.adamw(lambda count: table[count], weight_decay=wd), p, b, d)

        def program(params0, batches, eta, d, tables, wds):
            out = {
                key: jax.vmap(lambda p, b, e, key=key: amos_run(key, p, b, e, d))(
                    params0, batches, eta
                )
                for key in amos_keys
            }
            if adamw_keys:
                n = len(adamw_keys)
                tile = jax.tree.map(lambda x: jnp.concatenate([x] * n), (params0, batches))
                out["adamw"] = jax.vmap(lambda p, b, t, w: adamw_run(p, b, t, w, d))(
                    *tile, tables, wds
                )
            return out

        n_seed = len(insts)
        params0 = {n: np.stack([i.params[k] for i in insts]) for k, n in enumerate(NAMES)}
        eta = {n: np.asarray([i.eta[k] for i in insts], np.float32) for k, n in enumerate(NAMES)}
        batches = np.stack([i.batches for i in insts])
        d = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
        schedules = [self.adamw_schedule(k, steps) for k in adamw_keys]
        tables = np.zeros((0, steps), np.float32)
        if schedules:
            tables = np.concatenate([np.repeat(t[None], n_seed, 0) for t, _ in schedules])
        wds = np.repeat(np.asarray([w for _, w in schedules], np.float32), n_seed)
        args = (params0, batches, eta, d, tables, wds)
        lowered = jax.jit(program).lower(*args)
        options = {"xla_backend_optimization_level": 0} if quick else None
        out = lowered.compile(compiler_options=options)(*args)
        out = jax.tree.map(np.asarray, out)
        if adamw_keys:
            acc, f = out.pop("adamw")
            for i, key in enumerate(adamw_keys):
                part = slice(i * n_seed, (i + 1) * n_seed)
                out[key] = (acc[part], f[part])
        first = {n: insts[0].params[k] for k, n in enumerate(NAMES)}
        first_eta = {n: insts[0].eta[k] for k, n in enumerate(NAMES)}
        results = {}
        for key in keys:
            acc, f = out[key]
            state = jax.eval_shape(self.optimizer(key, xi, steps, first_eta).init, first)
            floats = sum(
                int(np.prod(leaf.shape))
                for leaf in jax.tree.leaves(state)
                if jnp.issubdtype(leaf.dtype, jnp.floating)
            )
            results[key] = [
                {"test_acc": a.tolist(), "train_loss": lo.tolist(), "state_floats": floats}
                for a, lo in zip(acc, f, strict=True)
            ]
        return results


# ---------------------------------------------------------------------------------------------
# Summaries


def pm(values, scale=100.0, digits=1) -> str:
    v = np.asarray(values, np.float64) * scale
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def summarize(records, eval_steps) -> list[dict]:
    """Per (method, framework): final and best test accuracy, final training loss."""
    out = []
    for r in records:
        acc = np.asarray(r["test_acc"])  # (seeds, evals)
        f = np.asarray(r["train_loss"])
        best = acc.argmax(1)
        out.append(
            {
                "method": r["method"],
                "framework": r["framework"],
                "label": r["label"],
                "ours": r["ours"],
                "final_acc": acc[:, -1].tolist(),
                "best_acc": acc.max(1).tolist(),
                "best_step": [int(eval_steps[k]) for k in best],
                "final_loss": f[:, -1].tolist(),
                "state_floats": r["state_floats"],
            }
        )
    return out


def _row_order(summary):
    order = {m.key: i for i, m in enumerate(METHODS)}
    return sorted(summary, key=lambda s: (order[s["method"]], s["framework"] != "torch"))


def main_table(summary, steps, n_params) -> str:
    rows = []
    for s in _row_order(summary):
        loss = np.asarray(s["final_loss"])
        rows.append(
            (
                s["label"],
                s["framework"],
                pm(s["final_acc"]),
                f"{pm(s['best_acc'])} (step {np.mean(s['best_step']):.0f})",
                f"{loss.mean():.2e}" if np.isfinite(loss).all() else "diverged",
                f"{s['state_floats']:,} ({s['state_floats'] / n_params:.2g} x params)",
            )
        )
    return markdown_table(
        [
            "optimizer",
            "framework",
            f"test accuracy % at step {steps}",
            "best test accuracy % (mean step)",
            f"train loss at step {steps}",
            "state floats",
        ],
        rows,
    )


def checkpoint_table(records, eval_steps) -> str:
    picks = [k for k in (1, 3, 7, 15, len(eval_steps) - 1) if k < len(eval_steps)]
    picks = list(dict.fromkeys(picks))
    order = {m.key: i for i, m in enumerate(METHODS)}
    rows = [
        [r["label"], r["framework"]] + [pm(np.asarray(r["test_acc"])[:, k]) for k in picks]
        for r in sorted(records, key=lambda r: (order[r["method"]], r["framework"] != "torch"))
    ]
    return markdown_table(
        ["optimizer", "framework"] + [f"test acc % @ step {eval_steps[k]}" for k in picks], rows
    )


def pairs() -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """The runs that share weights, batches and algorithm: each method's torch and JAX twins,
    and our JAX amos against the reference."""
    out = [((m.key, "torch"), (m.key, "jax")) for m in METHODS if len(m.labels) == 2]
    return out[:1] + [(("amos", "jax"), ("amos_ref", "jax"))] + out[1:]


AGREE = 1e-3  # relative difference of the training loss up to which two runs count as one


def agreement(records, eval_steps) -> list[dict]:
    """Per pair of runs from the same weights on the same batches: how long they stay together
    (the first evaluation where the training losses differ by more than ``AGREE``, relative,
    on any seed), and the largest differences of the final training loss and test
    accuracy over seeds."""
    by = {(r["method"], r["framework"]): r for r in records}
    out = []
    for a, b in pairs():
        if a not in by or b not in by:
            continue
        fa, fb = np.asarray(by[a]["train_loss"]), np.asarray(by[b]["train_loss"])
        rel = (np.abs(fa - fb) / np.abs(fb)).max(0)
        apart = np.flatnonzero(~(rel <= AGREE))
        acc = np.abs(np.asarray(by[a]["test_acc"]) - np.asarray(by[b]["test_acc"]))[:, -1]
        out.append(
            {
                "a": f"{by[a]['label']} ({a[1]})",
                "b": f"{by[b]['label']} ({b[1]})",
                "apart_at": int(eval_steps[apart[0]]) if apart.size else None,
                "max_rel_dloss": float(rel.max()),
                "dloss_final": float(np.abs(fa - fb)[:, -1].max()),
                "dacc_final": float(acc.max()),
            }
        )
    return out


def agreement_table(rows, steps) -> str:
    return markdown_table(
        [
            "run",
            "vs (same weights and batches)",
            f"first evaluation with train losses > {AGREE:g} apart (relative)",
            "max |Δ train loss| at the end",
            "max |Δ test accuracy| at the end (points)",
        ],
        [
            (
                r["a"],
                r["b"],
                f"none (max {r['max_rel_dloss']:.0e})"
                if r["apart_at"] is None
                else f"step {r['apart_at']}",
                f"{r['dloss_final']:.1e}",
                f"{100 * r['dacc_final']:.1f}",
            )
            for r in rows
        ],
    )


# ---------------------------------------------------------------------------------------------


def run(ctx: Context) -> StudyResult:
    steps = 150 if ctx.quick else 1500
    every = steps // N_EVALS
    n_seeds = 1 if ctx.quick else ctx.seeds
    seeds = list(range(n_seeds))
    if importlib.util.find_spec("sklearn") is None:
        return StudyResult(
            name=NAME,
            question=QUESTION,
            verdict="not run: scikit-learn (the bench extra) is not installed",
            settings={},
            data={},
            notes=["Install twinopt[bench] for scikit-learn's bundled digits data."],
        )
    x_train, x_test, y_train, y_test = digits_split()
    data = (x_train, y_train, x_test, y_test)
    n_train = len(y_train)
    xi = amos_lr(n_train)
    insts = [make_instance(s, n_train, steps) for s in seeds]
    n_params = sum(p.size for p in insts[0].params)
    eval_steps = list(range(0, steps + 1, every))

    sides = []
    for name in frameworks():
        sides.append(TorchSide(ctx.device) if name == "torch" else JaxSide())
    jobs = []
    for side in sides:
        keys = [m.key for m in METHODS if side.has(m.key)]
        if side.name == "torch":
            jobs += [(side, [k], s) for k in keys for s in seeds]
        else:
            jobs.append((side, keys, None))
    runs: dict = {}
    for side, keys, seed in progress(jobs, NAME):
        if side.name == "torch":
            out = side.run(keys[0], insts[seed], data, steps, every)
            runs.setdefault((keys[0], "torch"), []).append(out)
        else:
            for key, outs in side.run_all(keys, insts, data, steps, every, ctx.quick).items():
                runs[(key, "jax")] = outs
    records = []
    for m in METHODS:
        for side in sides:
            if (m.key, side.name) not in runs:
                continue
            outs = runs[(m.key, side.name)]
            records.append(
                {
                    "method": m.key,
                    "framework": side.name,
                    "label": m.labels[side.name],
                    "ours": m.ours,
                    "test_acc": [o["test_acc"] for o in outs],
                    "train_loss": [o["train_loss"] for o in outs],
                    "state_floats": outs[0]["state_floats"],
                }
            )
    summary = summarize(records, eval_steps)
    agree = agreement(records, eval_steps)
    tables = [main_table(summary, steps, n_params), checkpoint_table(records, eval_steps)]
    if agree:
        tables.append(agreement_table(agree, steps))
    skipped = []
    if any(s.name == "torch" for s in sides) and not any(
        s.has("amos_port") for s in sides if s.name == "torch"
    ):
        skipped.append("pytorch_optimizer.Amos (pytorch_optimizer is not installed)")
    if any(s.name == "jax" for s in sides) and not any(
        s.has("amos_ref") for s in sides if s.name == "jax"
    ):
        skipped.append("the jestimator reference (jestimator or flax is not installed)")
    return StudyResult(
        name=NAME,
        question=QUESTION,
        verdict=_verdict(summary, steps, xi),
        settings={
            "data": DIGITS,
            "n_train": n_train,
            "n_test": len(y_test),
            "model": "MLP " + " -> ".join(map(str, SIZES)) + ", ReLU, softmax cross-entropy",
            "init": "W ~ N(0, 1/fan_in), b = 0 (NumPy, float32; problems.mlp_params)",
            "n_params": int(n_params),
            "dtype": "float32",
            "torch_threads": 1,
            "batch": BATCH,
            "batch_order": "per seed, concatenated NumPy permutations of the training set",
            "steps": steps,
            "eval_every": every,
            "seeds": seeds,
            "amos": {
                "lr (xi)": xi,
                "lr rule": "1/sqrt(n_train / batch) (the reference README)",
                "beta": AMOS_BETA,
                "eta": "each tensor's initial RMS, 0.5 for the zero biases (ours: default; "
                "reference: eta_fn returning the same; pytorch_optimizer: its own rule)",
                "eta_per_seed": [dict(zip(NAMES, i.eta, strict=True)) for i in insts],
                "state shape": "amos: default (per entry); amos_unit: one v, b per output "
                "unit of each weight ((out, 1) in torch, (1, out) in JAX), per entry for the "
                "biases; amos_tensor: () (one per tensor, pytorch_optimizer's layout)",
                "momentum": 0,
                "clip_value": None,
            },
            "adamw": {
                "lr": ADAMW_LR,
                "weight_decay": ADAMW_WD,
                "betas": "0.9, 0.999",
                "eps": 1e-8,
            },
            "cosine": f"lr 1e-3 * (1 + cos(pi t / {steps})) / 2 (CosineAnnealingLR / "
            "optax.cosine_decay_schedule)",
            "su_schedule": {
                "lr": ADAMW_LR,
                "half_life": SU_HALF_LIFE * steps,
                "mode": "inverse_time",
                "q": 1.0,
                "weight_decay": ADAMW_LR / 2,
                "text": "lr_t = 1e-3 / (1 + t / T), AdamW weight_decay lr/(2q) = 5e-4, so a "
                "decay of lr_t * 5e-4 per step",
            },
            "skipped": skipped,
        },
        data={"eval_steps": eval_steps, "records": records, "summary": summary, "agreement": agree},
        tables=tables,
        figures=[plot_curves(ctx, records, eval_steps)],
        notes=_notes(ctx, steps, n_seeds, n_train, xi, n_params, summary, skipped, agree),
    )


# ---------------------------------------------------------------------------------------------
# Verdict and notes


FW = {"torch": "torch", "jax": "JAX"}
CHANCE = 0.5  # a final mean test accuracy below this is a failed run (chance is 10%)


def _acc(rows) -> str:
    if len(rows) == 1:
        return f"{100 * np.mean(rows[0]['final_acc']):.1f}%"
    return " / ".join(f"{100 * np.mean(s['final_acc']):.1f}% ({FW[s['framework']]})" for s in rows)


def _verdict(summary, steps, xi) -> str:
    by = {m.key: [s for s in _row_order(summary) if s["method"] == m.key] for m in METHODS}
    by = {k: v for k, v in by.items() if v}
    if not by:
        return "no framework installed"
    failed = [k for k, v in by.items() if np.mean([s["final_acc"] for s in v]) < CHANCE]
    good = [k for k in by if k not in failed]
    parts = []
    if good:
        parts.append(
            f"Mean test accuracy after {steps} steps, nothing tuned (Amos: xi = {xi:.3f}, beta "
            f"{AMOS_BETA}): " + ", ".join(f"{SHORT[k]} {_acc(by[k])}" for k in good)
        )
    if failed:
        parts.append(
            "near chance (hidden ReLUs dead): "
            + ", ".join(f"{SHORT[k]} {_acc(by[k])}" for k in failed)
        )
    floats = {k: v[0]["state_floats"] for k, v in by.items()}
    if "adamw" in floats and any(k.startswith("amos") for k in floats):
        parts.append(
            f"optimizer state: AdamW {floats['adamw']:,} floats"
            + "".join(
                f", {SHORT[k]} {floats[k]:,}"
                for k in ("amos", "amos_unit", "amos_tensor")
                if k in floats
            )
        )
    return "; ".join(parts)


def _notes(ctx, steps, n_seeds, n_train, xi, n_params, summary, skipped, agree) -> list[str]:
    notes = [
        f"{n_train} training and 540 test images; batches of {BATCH}, {steps} steps "
        f"(~{steps * BATCH / n_train:.0f} epochs). Accuracies are mean ± sample std over "
        f"{n_seeds} seed(s); a seed draws the initial weights and the batch order once, in "
        "NumPy, for every method and both frameworks (torch holds each W transposed, its "
        "(out, in) layout). 'Best' is the highest test accuracy at any evaluation, which "
        "peeks at the test set: only the final column is a fair number.",
        f"Amos: xi = 1/sqrt({n_train}/{BATCH}) = {xi:.3f} and beta = {AMOS_BETA}, as the "
        "reference README trains MNIST; no momentum, no clipping, no schedule (Amos decays its "
        "own step through b). eta is each tensor's initial RMS (about 0.125 for W1, 0.088 for "
        "W2 and W3) and 0.5 for the zero-initialized biases: our default; the reference gets "
        "the same values through eta_fn. pytorch_optimizer.Amos has no eta argument: it guesses "
        "sqrt(2 / size(1)) for a matrix (He's scale, 0.18 for W1 and 0.125 for W2, W3 in "
        "torch's layout) and 0.5 for a vector, and keeps one v, b per tensor, so it matches "
        "'one v, b per tensor (ours)' up to eta and its eps = 1e-18 added to v.",
        f"AdamW: lr {ADAMW_LR:g}, weight decay {ADAMW_WD:g} (torch's defaults, given to "
        "optax too); cosine decays the lr to 0 at the last step; Su's schedule "
        f"(inverse_time, q = 1) halves the lr at T = {SU_HALF_LIFE * steps:g} steps (a quarter "
        "of the run) and ends at a fifth of it, with weight decay lr / 2 as the schedule "
        "prescribes (the decay per step is lr_t^2 / 2, far weaker than the cosine row's "
        "1e-2 lr_t).",
        f"State floats: the floating-point numbers each optimizer keeps between steps (step "
        f"counters left out), for {n_params:,} parameters in 6 tensors. AdamW keeps m and v "
        "per entry; Amos in its default shape keeps v and b per entry, as many (plus one eta "
        "per tensor in ours; the reference takes eta from eta_fn at every step). Amos' memory "
        "saving (the paper's <= 51% of AdamW's state, with momentum) comes from reducing v "
        "and b: here to one per output unit of each weight matrix (the mean of g^2 over the "
        "unit's fan-in) or to one per tensor (pytorch_optimizer's only layout).",
    ]
    failed = [
        s
        for s in _row_order(summary)
        if s["method"] in ("amos_tensor", "amos_port") and np.mean(s["final_acc"]) < CHANCE
    ]
    if failed:
        notes.append(
            "One v, b per tensor fails here ("
            + ", ".join(f"{s['label']} [{s['framework']}]" for s in failed)
            + "): the step is xi eta g / RMS(g) with the RMS over the whole tensor, so the "
            "entries whose gradient is far above the tensor's RMS (inputs of the few active "
            "pixels, units of large error) move by many times eta at once; within the first "
            "~100 steps the hidden ReLUs die and the training loss stays at ln 10 (chance). "
            "Reducing over the fan-in only (one v, b per output unit) keeps each unit's step "
            "normalized by its own gradient scale and trains."
        )
    if any(s["framework"] == "jax" for s in summary) and any(
        s["framework"] == "torch" for s in summary
    ):
        notes.append(
            "The agreement table compares runs from the same weights on the same batches: the "
            "torch and JAX twins differ in float32 rounding (matmul order, fused ops), and "
            "stochastic training amplifies it, fastest for Amos, whose first steps are large, "
            "so the two rows of a method are two samples of it, not copies (the convergence "
            "study checks the twins against the reference in float64)."
        )
    ref = [a for a in agree if "reference" in a["b"]]
    if ref:
        same = ref[0]["max_rel_dloss"] == 0 and ref[0]["dacc_final"] == 0
        notes.append(
            "Our JAX amos against the reference, same eta, same state shape: "
            + (
                "identical losses and accuracies at every evaluation (bit for bit)."
                if same
                else f"largest relative difference of the training loss "
                f"{ref[0]['max_rel_dloss']:.1e} over the run."
            )
        )
    for s in skipped:
        notes.append(f"Skipped: {s}.")
    if ctx.quick:
        notes.append(
            f"--quick: 1 seed, {steps} steps (~{steps * BATCH / n_train:.0f} epochs), the JAX "
            "program compiled without XLA's backend optimizations: a smoke run, not a result."
        )
    elif n_seeds < 2:
        notes.append("One seed: no spread across seeds.")
    return notes


# ---------------------------------------------------------------------------------------------
# Figures


def plot_curves(ctx, records, eval_steps) -> str:
    plt = pyplot()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(13, 5))
    for r in records:
        style = "-" if r["framework"] == "torch" else "--"
        kw = {"color": COLORS[r["method"]], "lw": 1.6 if r["ours"] else 1.0}
        label = f"{r['label']} [{r['framework']}]"
        ax_acc.plot(eval_steps, 100 * np.mean(r["test_acc"], 0), style, label=label, **kw)
        loss = np.exp(np.mean(np.log(np.maximum(r["train_loss"], 1e-12)), 0))
        ax_loss.plot(eval_steps, loss, style, label=label, **kw)
    low = [r for r in records if np.mean(r["test_acc"], 0)[-1] < 0.8]
    ax_acc.set(
        xlabel="step",
        ylabel="test accuracy % (mean over seeds)",
        title="Test accuracy" + (" (runs ending below 80% are off the axis)" if low else ""),
        ylim=(80, 100),
    )
    ax_loss.set(
        xlabel="step",
        ylabel="training loss (geometric mean over seeds)",
        yscale="log",
        title="Full training loss",
    )
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(10)
    ax_acc.legend(fontsize=7, ncol=2, loc="lower right")
    fig.suptitle(
        "MLP on load_digits, every optimizer untuned; solid torch, dashed JAX", fontsize=10
    )
    return save_figure(ctx, fig, "amos_mlp_curves.png")
