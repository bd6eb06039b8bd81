"""Study ``amos_mlp``: do Amos and the Amos-derived schedules train a real small network well
without a tuned schedule?

An MLP 64-128-128-10 (ReLU, cross-entropy, float32) on scikit-learn's bundled ``load_digits``
(one stratified 70/30 split), batches of 32. A seed draws the initial weights and the batch order
in NumPy, so both frameworks start from the same weights and see the same batches. Nothing is
tuned: Amos as the reference README trains MNIST (xi = 1/sqrt(n_train / batch), beta 0.98, eta
each tensor's initial RMS) in its default state and with one v, b per output unit or per tensor,
beside pytorch_optimizer.Amos and the reference jestimator amos; AdamW (lr 1e-3, weight decay
1e-2) with a cosine decay, with Su's Amos-derived schedule, and at a constant lr.
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks._common import Context, StudyResult, frameworks, installed, jit_run, torch_threads
from benchmarks._report import figure, panel, pm, record_curve, rounded, table
from benchmarks.peers import reference_amos
from benchmarks.problems import digits_split, mlp_params

NAME = "amos_mlp"
QUESTION = (
    "Do Amos and the Amos-derived schedules train a real small network well without a tuned "
    "schedule?"
)

SIZES, BATCH, AMOS_BETA = (64, 128, 128, 10), 32, 0.98
ADAMW_LR, ADAMW_WD, SU_HALF_LIFE = 1e-3, 1e-2, 0.25  # Su's half-life: a quarter of the run
N_EVALS = 30
METHODS = {
    "amos": "Amos", "amos_unit": "Amos (v, b per unit)", "amos_tensor": "Amos (v, b per tensor)",
    "amos_port": "pytorch_optimizer.Amos", "amos_ref": "jestimator amos (reference)",
    "adamw_cosine": "AdamW + cosine", "adamw_su": "AdamW + Su schedule",
    "adamw": "AdamW, constant lr",
}  # fmt: skip
TORCH_ONLY, JAX_ONLY = {"amos_port"}, {"amos_ref"}
CURVES = ("test_acc", "train_loss")  # per evaluation


def instance(seed: int, n_train: int, steps: int):
    """Initial weights ``[W1, b1, ...]`` (``W`` as ``(fan_in, fan_out)``), the batch indices
    ``(steps, BATCH)`` and each tensor's initial RMS (Amos' eta; 0.5 for the zero biases)."""
    rng = np.random.default_rng([seed, 11])
    params = mlp_params(SIZES, rng)
    order = np.concatenate([rng.permutation(n_train) for _ in range(-(-steps * BATCH // n_train))])
    batches = order[: steps * BATCH].reshape(steps, BATCH).astype(np.int32)
    eta = [float(np.sqrt(np.mean(np.square(p, dtype=np.float64)))) or 0.5 for p in params]
    return params, batches, eta


def torch_run(key, inst, data, steps, every, device) -> dict:
    import torch
    import torch.nn.functional as F

    import torch_opt
    from torch_opt.schedules import AmosDecayScheduler

    x_train, y_train, x_test, y_test = (torch.as_tensor(a, device=device) for a in data)
    # torch's layout (out, in), so that pytorch_optimizer's shape rule sees what it expects
    params = [torch.tensor(p.T.copy(), device=device, requires_grad=True) for p in inst[0]]
    xi = 1 / math.sqrt(len(y_train) / BATCH)
    sched = None
    if key == "amos":
        opt = torch_opt.Amos(params, lr=xi, beta=AMOS_BETA)
    elif key == "amos_unit":  # W is (out, in): reduce over the input axis
        unit = lambda n, p: (p.shape[0], 1) if p.ndim == 2 else tuple(p.shape)  # noqa: E731
        opt = torch_opt.Amos(params, lr=xi, beta=AMOS_BETA, shape=unit)
    elif key == "amos_tensor":
        opt = torch_opt.Amos(params, lr=xi, beta=AMOS_BETA, shape=lambda n, p: ())
    elif key == "amos_port":
        opt = __import__("pytorch_optimizer").Amos(params, lr=xi, beta=AMOS_BETA)
    else:
        opt = torch.optim.AdamW(params, lr=ADAMW_LR, weight_decay=ADAMW_WD)
        if key == "adamw_cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        elif key == "adamw_su":
            sched = AmosDecayScheduler(opt, lr=ADAMW_LR, half_life=SU_HALF_LIFE * steps)
    batches = torch.as_tensor(inst[1], dtype=torch.long, device=device)

    def logits(x):
        w1, b1, w2, b2, w3, b3 = params
        h = torch.relu(F.linear(torch.relu(F.linear(x, w1, b1)), w2, b2))
        return F.linear(h, w3, b3)

    def evaluate():
        with torch.no_grad():
            acc = (logits(x_test).argmax(1) == y_test).float().mean().item()
            return acc, F.cross_entropy(logits(x_train), y_train).item()

    curve_ = [evaluate()]
    with torch_threads(1):  # batches of 32: a second thread only adds waiting
        for t in range(steps):
            loss = F.cross_entropy(logits(x_train[batches[t]]), y_train[batches[t]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if (t + 1) % every == 0:
                curve_.append(evaluate())
    state = [v for s in opt.state.values() for k, v in s.items() if k != "step"]
    state = sum(v.numel() for v in state if torch.is_tensor(v) and v.is_floating_point())
    acc, train_loss = (list(c) for c in zip(*curve_, strict=True))
    return {"test_acc": acc, "train_loss": train_loss, "state_floats": int(state)}


def jax_runs(keys, insts, data, steps, every, quick) -> dict:
    """Every method for every seed, in one compiled program (a vmap over seeds of a scan over
    evaluation chunks of a scan over steps, per method)."""
    import jax
    import optax

    import jax_opt
    from jax_opt.schedules import amos_decay_schedules

    jnp, ref = jax.numpy, reference_amos()
    keys = [k for k in keys if k != "amos_ref" or ref is not None]
    x_train, y_train, x_test, y_test = (jnp.asarray(a) for a in data)
    xi = 1 / math.sqrt(len(y_train) / BATCH)
    names = ["w1", "b1", "w2", "b2", "w3", "b3"]

    def optimizer(key, eta):
        if key == "amos":
            return jax_opt.amos(xi, beta=AMOS_BETA)
        if key == "amos_unit":  # W is (in, out): reduce over the input axis
            unit = lambda n, s: (1, s[1]) if len(s) == 2 else tuple(s)  # noqa: E731
            return jax_opt.amos(xi, shape_fn=unit, beta=AMOS_BETA)
        if key == "amos_tensor":
            return jax_opt.amos(xi, shape_fn=lambda n, s: (), beta=AMOS_BETA)
        if key == "amos_ref":  # given our eta
            return ref.amos(xi, eta_fn=lambda n, s: eta[n[0]], beta=AMOS_BETA)
        if key == "adamw_cosine":
            return optax.adamw(optax.cosine_decay_schedule(ADAMW_LR, steps), weight_decay=ADAMW_WD)
        if key == "adamw_su":
            lr, wd = amos_decay_schedules(ADAMW_LR, SU_HALF_LIFE * steps)
            return optax.adamw(lr, weight_decay=wd)
        return optax.adamw(ADAMW_LR, weight_decay=ADAMW_WD)

    def logits(p, x):
        h = jax.nn.relu(jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"])
        return h @ p["w3"] + p["b3"]

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y).mean()

    def evaluate(p):
        acc = (logits(p, x_test).argmax(1) == y_test).mean()
        return acc, loss(p, x_train, y_train)

    def train(key, p0, batches, eta):
        opt = optimizer(key, eta)

        def step(carry, idx):
            p, state = carry
            updates, state = opt.update(jax.grad(loss)(p, x_train[idx], y_train[idx]), state, p)
            return (optax.apply_updates(p, updates), state), None

        def chunk(carry, idx):
            carry = jax.lax.scan(step, carry, idx)[0]
            return carry, evaluate(carry[0])

        chunks = batches.reshape(steps // every, every, BATCH)
        acc, f = jax.lax.scan(chunk, (p0, opt.init(p0)), chunks)[1]
        acc0, f0 = evaluate(p0)
        return jnp.concatenate([acc0[None], acc]), jnp.concatenate([f0[None], f])

    p0 = {n: np.stack([i[0][k] for i in insts]) for k, n in enumerate(names)}
    eta = {n: np.asarray([i[2][k] for i in insts], np.float32) for k, n in enumerate(names)}
    batches = np.stack([i[1] for i in insts])

    def program(p0, batches, eta):
        return {k: jax.vmap(lambda p, b, e, k=k: train(k, p, b, e))(p0, batches, eta) for k in keys}

    out = jit_run(program, p0, batches, eta, quick=quick)
    first = {n: insts[0][0][k] for k, n in enumerate(names)}
    results = {}
    for key in keys:
        state = jax.eval_shape(optimizer(key, {n: 0.5 for n in names}).init, first)
        leaves = jax.tree.leaves(state)
        floats = sum(int(np.prod(x.shape)) for x in leaves if jnp.issubdtype(x.dtype, jnp.floating))
        acc, f = (np.asarray(a) for a in out[key])
        results[key] = {"test_acc": acc.tolist(), "train_loss": f.tolist(), "state_floats": floats}
    return results


def run(ctx: Context) -> StudyResult:
    steps = ctx.sized(1500, 150)
    every, evals = steps // N_EVALS, list(range(0, steps + 1, steps // N_EVALS))
    (x_train, y_train), (x_test, y_test) = digits_split(0.7)
    data = (x_train, y_train, x_test, y_test)
    insts = [instance(s, len(y_train), steps) for s in ctx.seed_list]
    records = []
    for fw in frameworks():
        keys = [k for k in METHODS if k not in (JAX_ONLY if fw == "torch" else TORCH_ONLY)]
        if fw == "torch":
            keys = [k for k in keys if k != "amos_port" or installed("pytorch_optimizer")]
            runs = {}
            for k in keys:
                outs = [torch_run(k, i, data, steps, every, ctx.device) for i in insts]
                runs[k] = {f: [o[f] for o in outs] for f in CURVES}
                runs[k]["state_floats"] = outs[0]["state_floats"]
        else:
            runs = jax_runs(keys, insts, data, steps, every, ctx.quick)
        for k, r in runs.items():
            rec = {"method": k, "label": METHODS[k], "framework": fw}
            rec["final_acc"], rec["final_loss"] = ([c[-1] for c in r[q]] for q in CURVES)
            rec["state_floats"] = r["state_floats"]
            records.append(rec | {q: rounded(r[q]) for q in CURVES})

    def acc(key) -> float:
        return 100 * np.mean([r["final_acc"] for r in records if r["method"] == key])

    floats = {r["method"]: r["state_floats"] for r in records}
    shown = [k for k in METHODS if k in floats and k not in ("amos_port", "amos_ref", "adamw")]
    fails = [k for k in METHODS if k in floats and acc(k) < 50]  # chance is 10%
    verdict = f"Untuned, test accuracy after {steps} steps: " + ", ".join(
        f"{METHODS[k]} {acc(k):.1f}%" for k in shown if k not in fails
    )
    if fails:
        verdict += f"; {', '.join(METHODS[k] for k in fails)}: {max(map(acc, fails)):.0f}%"
    if "amos_unit" in floats and "adamw" in floats:
        share = floats["amos_unit"] / floats["adamw"]
        verdict += f"; {METHODS['amos_unit']} keeps {share:.0%} of AdamW's state"
    columns = {"optimizer": "label", "framework": "framework",
               f"test accuracy % at step {steps}": lambda r: pm(r["final_acc"], 1, 100),
               f"train loss at step {steps}": lambda r: float(np.mean(r["final_loss"])),
               "state floats": "state_floats",
               "x AdamW's": lambda r: r["state_floats"] / floats.get("adamw", np.nan)}  # fmt: skip

    def curves(key, fn):
        return [record_curve(r, evals, fn(np.asarray(r[key])), METHODS) for r in records]

    acc_curves = curves("test_acc", lambda a: 100 * a.mean(0))
    loss_curves = curves("train_loss", lambda f: np.exp(np.log(f).mean(0)))
    acc_axes = {"ylabel": "test accuracy % (mean over seeds)", "ylim": (80, 100)}
    panels = [
        panel(acc_curves, "Test accuracy", **acc_axes),
        panel(loss_curves, "Training loss", ylabel="full training loss", yscale="log"),
    ]
    settings = {"model": "MLP 64-128-128-10, ReLU", "batch": BATCH, "steps": steps}
    settings |= {"n_params": int(sum(p.size for p in insts[0][0])), "seeds": ctx.seed_list}
    settings["amos"] = {"lr": 1 / math.sqrt(len(y_train) / BATCH), "beta": AMOS_BETA}
    settings["adamw"] = {"lr": ADAMW_LR, "weight_decay": ADAMW_WD}
    settings |= {"su_half_life": SU_HALF_LIFE * steps, "torch_threads": 1}
    figures = [figure("amos_mlp_curves", panels, "MLP on load_digits, untuned")]
    records = {"eval_steps": evals, "runs": records}
    return StudyResult(verdict + ".", records, [table(records["runs"], columns)], figures, settings)
