"""Study ``flooding_digits``: does flooding give the test loss's second descent and a higher test
accuracy on real data with label noise?

scikit-learn's bundled ``load_digits``, split once (stratified) into 1000 train / 250
validation / 547 test images; exactly 30% of the training and validation labels (drawn per seed;
validation carries the noise, as in the flooding paper) flipped to another class, test labels
clean. An MLP 64-128-128-10 (ReLU, He-normal, float32), Adam (lr 1e-3), batches of 100, 500
epochs (long enough to memorize the noise). Runs from the same weights and batch order per seed,
in torch (torch_opt) and in JAX (jax_opt, optax):

- no flooding (the plain mean cross-entropy);
- flooding (the mini-batch mean loss flooded at b) and iFlood (each sample's loss flooded at b),
  b on one grid: fractions of the noisy-label entropy H (the loss of a model that knows the
  clean labels, 1.27 nats at 30% noise over 10 classes);
- AdaFlood: per-sample levels from two auxiliary models (each trained by the plain recipe on one
  half of the training set; its losses on the other half), gamma on a grid of the same size.

Per seed, each method's grid point is chosen by the final validation accuracy (ties: the first).
All the runs of a framework train together as one stacked model (each tensor has a leading run
axis; Adam is element-wise, so this is the same as separate runs).
"""

from __future__ import annotations

import numpy as np

from benchmarks._common import Context, StudyResult, frameworks, jit_run, torch_threads
from benchmarks._report import cell, figure, panel, pm, record_curve, rounded, table
from benchmarks.problems import digits_split, mlp_apply

NAME = "flooding_digits"
QUESTION = (
    "Does flooding give the test loss's second descent and a higher test accuracy on real data "
    "with label noise?"
)

NOISE, CLASSES, N_TRAIN, N_VAL = 0.3, 10, 1000, 250
SIZES, BATCH, LR, FOLDS = (64, 128, 128, 10), 100, 1e-3, 2
FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # flood levels b, as fractions of the noisy-label entropy
GAMMAS = (0.2, 0.4, 0.6, 0.8)  # AdaFlood's mixing weight
METHODS = {"none": "no flooding", "flood": "flooding", "iflood": "iFlood", "adaflood": "AdaFlood"}
SETS = ("train", "val", "test")
KEPT = ("train_loss", "val_acc", "test_loss", "test_acc")  # the curves kept in the records
RISE, BACK = 0.05, 0.5  # second descent: a rise of >= RISE nats, then >= BACK of it undone


def noise_entropy(rate: float = NOISE, classes: int = CLASSES) -> float:
    """The cross-entropy, on symmetrically flipped labels, of a model that knows the clean label
    and the noise: the training loss a model that does not memorize the noise sits at."""
    return float(-(1 - rate) * np.log(1 - rate) - rate * np.log(rate / (classes - 1)))


def config(ctx: Context) -> dict:
    h = noise_entropy()
    if ctx.quick:
        return {"epochs": 10, "every": 2, "levels": [0.5 * h], "gammas": [0.4]}
    return {"epochs": 500, "every": 5, "levels": [f * h for f in FRACTIONS], "gammas": list(GAMMAS)}


def corrupt(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``round(NOISE * n)`` labels, drawn at random, moved to a uniform other class."""
    y = y.copy()
    flip = rng.choice(len(y), round(NOISE * len(y)), replace=False)
    y[flip] = (y[flip] + rng.integers(1, CLASSES, len(flip))) % CLASSES
    return y


def init_params(rng: np.random.Generator) -> list[np.ndarray]:
    """``[W1, b1, ...]``: ``W ~ N(0, 2 / fan_in)`` ``(fan_in, fan_out)``, ``b = 0`` ``(1, out)``."""
    out = []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:], strict=True):
        w = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2 / fan_in)
        out += [w.astype(np.float32), np.zeros((1, fan_out), np.float32)]
    return out


def spec(seed, init, order, labels, pool, epochs, mode="batch", level=0.0) -> dict:
    """One run: initial weights from seed ``[seed, *init]``, a fresh permutation of ``pool``
    each epoch from seed ``[seed, *order]`` in batches, the noisy ``labels`` (train,
    validation), ``mode`` in batch / iflood / adaflood, ``level`` a number or per-sample levels."""
    rng = np.random.default_rng([seed, *order])
    batches = [rng.permutation(pool).reshape(-1, BATCH) for _ in range(epochs)]
    weights = init_params(np.random.default_rng([seed, *init]))
    run = {"params": weights, "order": np.concatenate(batches), "mode": mode, "level": level}
    return run | {"y": labels[0], "y_val": labels[1]}


def plan(runs: list[dict], epochs: int, every: int) -> dict:
    """Stack runs (from :func:`spec`) along a leading run axis; runs of one mode must be
    contiguous. The order becomes ``(blocks, steps per block, runs, BATCH)``: the metrics are
    taken after each block of ``every`` epochs."""
    order = np.stack([r["order"] for r in runs], 1).astype(np.int32)
    groups = {}
    for mode in ("batch", "iflood", "adaflood"):
        idx = [i for i, r in enumerate(runs) if r["mode"] == mode]
        if idx:
            assert idx == list(range(idx[0], idx[-1] + 1)), "runs of one mode must be contiguous"
            levels = np.stack([np.asarray(runs[i]["level"], np.float32) for i in idx])
            groups[mode] = (idx[0], idx[-1] + 1, levels)
    stacked = {k: np.stack([r[k] for r in runs]) for k in ("y", "y_val")}
    stacked["params"] = [np.stack(p) for p in zip(*(r["params"] for r in runs), strict=True)]
    stacked["order"] = order.reshape(epochs // every, -1, *order.shape[1:])
    return stacked | {"groups": groups}


def objective(lib, losses, idx, groups, take):
    """The sum over runs of each run's training objective from per-sample ``losses`` ``(runs,
    BATCH)`` of batch ``idx``: ``groups`` maps a mode to (first run, end, levels); ``lib`` is
    torch_opt or jax_opt, ``take(levels, idx)`` gathers per-sample levels."""
    total = 0
    if "batch" in groups:  # (1) on each run's mini-batch mean (b = 0: the plain loss)
        a, b, lv = groups["batch"]
        total = total + lib.flood(losses[a:b].mean(1), lv).sum()
    if "iflood" in groups:  # (3), times the runs: the sum of each run's own iFlood loss
        a, b, lv = groups["iflood"]
        total = total + lib.iflood(losses[a:b], lv[:, None]) * (b - a)
    if "adaflood" in groups:  # (5), likewise
        a, b, lv = groups["adaflood"]
        total = total + lib.adaflood(losses[a:b], take(lv, idx[a:b])) * (b - a)
    return total


def torch_train(p: dict, data: dict, device: str):
    """Train a plan in torch: the final weights, the metrics ``(blocks + 1, runs, SETS, [loss,
    accuracy])``."""
    import torch
    import torch.nn.functional as F

    import torch_opt

    t = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    params = [t(a).clone().requires_grad_() for a in p["params"]]
    x_tr, y, y_val = t(data["train"][0]), t(p["y"]), t(p["y_val"])
    groups = {k: (a, b, t(lv)) for k, (a, b, lv) in p["groups"].items()}
    sets = ((x_tr, y), (t(data["val"][0]), y_val), (t(data["test"][0]), t(data["test"][1])))
    opt = torch.optim.Adam(params, lr=LR)

    def loss(idx):
        logits = mlp_apply(params, x_tr[idx], torch.relu)  # (runs, BATCH, classes)
        losses = F.cross_entropy(logits.flatten(0, 1), y.gather(1, idx).flatten(), reduction="none")
        take = lambda lv, i: lv.gather(1, i)  # noqa: E731
        return objective(torch_opt, losses.view(idx.shape), idx, groups, take)

    def evaluate():
        rows = []
        with torch.no_grad():
            for x, labels in sets:
                logits = mlp_apply(params, x, torch.relu)  # (runs, m, classes)
                labels = labels.expand(logits.shape[:2])
                loss = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(1)
                rows.append(torch.stack([loss, (logits.argmax(2) == labels).float().mean(1)], 1))
        return torch.stack(rows, 1).cpu().numpy()

    metrics = [evaluate()]
    for block in t(p["order"]).long():
        for idx in block:
            opt.zero_grad(set_to_none=True)
            loss(idx).backward()
            opt.step()
        metrics.append(evaluate())
    return [w.detach().cpu().numpy() for w in params], np.stack(metrics)


def jax_train(p: dict, data: dict, quick: bool):
    """Train a plan in JAX (one compiled program: a scan over blocks of a scan over steps)."""
    import jax
    import optax

    import jax_opt

    jnp, ce, opt = jax.numpy, optax.softmax_cross_entropy_with_integer_labels, optax.adam(LR)
    (x_tr, x_va, x_te), y_te = (jnp.asarray(data[k][0]) for k in SETS), data["test"][1]
    spans = {k: (a, b) for k, (a, b, _) in p["groups"].items()}

    def loss(params, idx, y, levels):
        losses = ce(mlp_apply(params, x_tr[idx], jax.nn.relu), jnp.take_along_axis(y, idx, 1))
        groups = {k: (a, b, levels[k]) for k, (a, b) in spans.items()}
        take = lambda lv, i: jnp.take_along_axis(lv, i, 1)  # noqa: E731
        return objective(jax_opt, losses, idx, groups, take)

    def evaluate(params, y, y_val):
        rows = []
        for x, labels in ((x_tr, y), (x_va, y_val), (x_te, y_te)):
            logits = mlp_apply(params, x, jax.nn.relu)
            labels = jnp.broadcast_to(labels, logits.shape[:2])
            acc = (logits.argmax(2) == labels).mean(1)
            rows.append(jnp.stack([ce(logits, labels).mean(1), acc], 1))
        return jnp.stack(rows, 1)

    def program(params, order, y, y_val, levels):
        def step(carry, idx):
            w, state = carry
            updates, state = opt.update(jax.grad(loss)(w, idx, y, levels), state, w)
            return (optax.apply_updates(w, updates), state), None

        def block(carry, idxs):
            carry = jax.lax.scan(step, carry, idxs)[0]
            return carry, evaluate(carry[0], y, y_val)

        first = evaluate(params, y, y_val)
        (params, _), metrics = jax.lax.scan(block, (params, opt.init(params)), order)
        return params, jnp.concatenate([first[None], metrics])

    levels = {k: lv for k, (_, _, lv) in p["groups"].items()}
    args = (p["params"], p["order"], p["y"], p["y_val"], levels)
    params, metrics = jit_run(program, *args, quick=quick)
    return [np.asarray(w) for w in params], np.asarray(metrics)


def adaflood_levels(fw: str, aux: np.ndarray, gamma: float) -> np.ndarray:
    """AdaFlood's levels (4) from the held-out losses, by the framework's own function."""
    if fw == "torch":
        import torch

        import torch_opt

        return torch_opt.adaflood_levels(torch.as_tensor(aux), gamma=gamma).numpy()
    import jax.numpy as jnp

    import jax_opt

    return np.asarray(jax_opt.adaflood_levels(jnp.asarray(aux, jnp.float32), gamma=gamma))


def study(fw: str, seeds: list[int], data: dict, cfg: dict, ctx: Context) -> list[dict]:
    """Every run of one framework: the auxiliary models, then all methods and grid points."""

    def train(runs, every):
        if fw == "jax":
            return jax_train(plan(runs, epochs, every), data, ctx.quick)
        with torch_threads(1):  # small matrices: a second thread mostly waits
            return torch_train(plan(runs, epochs, every), data, ctx.device)

    epochs, n, x_train = cfg["epochs"], N_TRAIN, data["train"][0]
    labels = [(1, data["train"][1]), (2, data["val"][1])]
    noisy = {s: [corrupt(y, np.random.default_rng([s, i])) for i, y in labels] for s in seeds}
    folds = {s: np.array_split(np.random.default_rng([s, 3]).permutation(n), FOLDS) for s in seeds}
    held = [(s, folds[s][k]) for s in seeds for k in range(FOLDS)]
    rest = [(s, k, np.setdiff1d(np.arange(n), folds[s][k])) for s in seeds for k in range(FOLDS)]
    weights, _ = train([spec(s, [4, k], [5, k], noisy[s], r, epochs) for s, k, r in rest], epochs)
    aux = {s: np.zeros(n) for s in seeds}
    for j, (s, idx) in enumerate(held):  # each auxiliary model's losses on its held-out fold
        logits = mlp_apply([w[j] for w in weights], x_train[idx].astype(np.float64), relu)
        aux[s][idx] = cross_entropy(logits, noisy[s][0][idx])
    grid = [("none", "batch", 0.0)] + [("flood", "batch", b) for b in cfg["levels"]]
    grid += [("iflood", "iflood", b) for b in cfg["levels"]]
    grid += [("adaflood", "adaflood", g) for g in cfg["gammas"]]
    runs, meta = [], []
    for method, mode, param in grid:  # grouped by mode, seeds inside
        for s in seeds:
            level = adaflood_levels(fw, aux[s], param) if method == "adaflood" else param
            runs.append(spec(s, [6], [7], noisy[s], np.arange(n), epochs, mode, level))
            meta.append((method, float(param), s))
    _, metrics = train(runs, cfg["every"])
    out = []
    for j, (method, param, s) in enumerate(meta):
        m = metrics[:, j]  # (evaluations, sets, [loss, acc])
        curves = {f"{k}_loss": m[:, i, 0] for i, k in enumerate(SETS)}
        curves |= {f"{k}_acc": m[:, i, 1] for i, k in enumerate(SETS)}
        finals = {k: float(v[-1]) for k, v in curves.items()}
        kept = {k: rounded(curves[k], 5) for k in KEPT}
        run = {"framework": fw, "method": method, "param": param, "seed": s}
        out.append(run | finals | {"curves": kept, "_test_loss": curves["test_loss"]})
    return out


def relu(z):
    return np.maximum(z, 0)


def cross_entropy(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each sample's cross-entropy of logits ``z`` (NumPy)."""
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, y[:, None], -1)[:, 0]


def descent(loss: np.ndarray) -> dict:
    """The largest rise of a test-loss curve above an earlier minimum, and how much of it is
    undone by the end; a second descent: a rise of at least RISE nats, at least BACK undone."""
    low = np.minimum.accumulate(loss)
    peak = len(loss) - 1 - int(np.argmax((loss - low)[::-1]))  # the last, if it never rises
    rise, back = float(loss[peak] - low[peak]), float(loss[peak] - loss[-1])
    second = bool(rise >= RISE and back >= BACK * rise)
    path = {"low": float(low[peak]), "peak": float(loss[peak]), "final": float(loss[-1])}
    return path | {"rise": rise, "second_descent": second}


def twin_gap(runs: list[dict]) -> dict | None:
    """How far torch's and JAX's curves of the same run (seed, method, grid point) lie apart."""
    key = lambda r: (r["method"], r["param"], r["seed"])  # noqa: E731
    jax_runs = {key(r): r for r in runs if r["framework"] == "jax"}
    torch_runs = [r for r in runs if r["framework"] == "torch" and key(r) in jax_runs]
    pairs = [(r, jax_runs[key(r)]) for r in torch_runs]
    if not pairs:
        return None
    diff = np.array([np.abs(a["_test_loss"] - b["_test_loss"]) for a, b in pairs])
    acc = [abs(a["test_acc"] - b["test_acc"]) for a, b in pairs]
    loss = {"first_eval_loss_max": diff[:, 1].max(), "loss_max": diff.max()}
    loss["loss_median_of_max"] = np.median(diff.max(1))
    accuracy = {"final_acc_median": np.median(acc), "final_acc_max": max(acc)}
    return {"runs": len(pairs)} | loss | accuracy


def summarize(runs: list[dict], fw: str, seeds: list[int]) -> list[dict]:
    """Per method, the runs chosen on validation (per seed, the grid point with the best final
    validation accuracy, first on ties): their final numbers, mean curves and descents."""
    out = []
    for m, label in METHODS.items():
        mine = [r for r in runs if (r["framework"], r["method"]) == (fw, m)]
        per_seed = [[r for r in mine if r["seed"] == s] for s in seeds]
        picked = [max(rs, key=lambda r: r["val_acc"]) for rs in per_seed]
        shown = ("train_loss", "test_loss", "test_acc")
        curves = {k: np.mean([r["curves"][k] for r in picked], 0) for k in shown}
        seen = sum(descent(np.asarray(r["curves"]["test_loss"]))["second_descent"] for r in picked)
        row = {"framework": fw, "method": m, "label": label, "chosen": [r["param"] for r in picked]}
        row |= {k: [r[k] for r in picked] for k in ("test_acc", "test_loss", "train_loss")}
        row["curve"] = {k: v.tolist() for k, v in curves.items()}
        out.append(row | {"seeds_with_descent": seen} | descent(curves["test_loss"]))
    return out


def run(ctx: Context) -> StudyResult:
    cfg, seeds, h = config(ctx), ctx.seed_list, noise_entropy()
    data = dict(zip(SETS, digits_split(N_TRAIN, N_VAL), strict=True))
    runs = [r for fw in frameworks() for r in study(fw, seeds, data, cfg, ctx)]
    summary = [row for fw in frameworks() for row in summarize(runs, fw, seeds)]
    twin = twin_gap(runs)
    for r in runs:
        del r["_test_loss"]
    fw, epochs = frameworks()[0], list(range(0, cfg["epochs"] + 1, cfg["every"]))
    get = {(s["framework"], s["method"]): s for s in summary}
    acc = {m: float(np.mean(get[(fw, m)]["test_acc"])) for m in METHODS}
    floods = [m for m in METHODS if m != "none"]
    seen = [METHODS[m] for m in floods if get[(fw, m)]["second_descent"]]

    def path(r, d=2):
        return " -> ".join(f"{r[k]:.{d}f}" for k in ("low", "peak", "final"))

    found = f"second descent with {', '.join(seen)}."
    if not seen:
        found = "no second descent (the paper's claim) with any flooding method."
    accs = ", ".join(f"{acc[m]:.3f} {METHODS[m]}" for m in floods)
    verdict = (
        f"{NOISE:.0%} label noise, {fw}, {len(seeds)} seed{'s' * (len(seeds) > 1)}: final test "
        f"accuracy {acc['none']:.3f} without flooding, {accs}; test loss "
        f"{path(get[(fw, 'none')])} unflooded and {path(get[(fw, 'flood')])} flooded: {found}"
    )
    fmt = {"none": "-", "flood": "b = {}", "iflood": "b = {}", "adaflood": "gamma = {}"}

    def chosen(r):
        return fmt[r["method"]].format(", ".join(f"{p:.2f}" for p in r["chosen"]))

    def seen_in(r):
        return f"{cell(r['second_descent'])} ({r['seeds_with_descent']} of {len(seeds)})"

    columns = {
        "framework": "framework", "method": "label", "chosen on validation": chosen,
        "test accuracy": lambda r: pm(r["test_acc"]), "test loss": lambda r: pm(r["test_loss"]),
        "mean test loss: low -> peak -> final": lambda r: path(r, 3),
        "second descent: mean (seeds)": seen_in,
        "train loss (noisy labels)": lambda r: pm(r["train_loss"]),
    }  # fmt: skip
    panels = []
    shown = [("test_loss", "Test loss (clean labels)", "cross-entropy"),
             ("test_acc", "Test accuracy", "accuracy"),
             ("train_loss", "Training loss (noisy labels)", "cross-entropy")]  # fmt: skip
    for key, title, ylabel in shown:
        start = 0 if key == "train_loss" else 1  # the rest: from the first evaluation on
        curves = [
            record_curve(r, epochs[start:], r["curve"][key][start:], METHODS) for r in summary
        ]
        axes = {"xlabel": "epoch", "ylabel": ylabel}
        if key == "train_loss":
            axes |= {"hlines": [(h, "noisy-label entropy H")], "yscale": "log"}
        panels.append(panel(curves, title, **axes))
    notes = [
        f"Chosen runs, mean over seeds; evaluation every {cfg['every']} epochs on the full "
        f"sets; H = {h:.3f} nats; second descent: the test loss rises by >= {RISE} nats "
        f"above an earlier minimum and falls back by >= {BACK:.0%} of that rise by the end."
    ]
    if twin:
        notes.append(
            f"torch vs JAX, {twin['runs']} runs, same weights and batches (float32): test loss "
            f"apart by <= {twin['first_eval_loss_max']:.1e} after {cfg['every']} epochs, up to "
            f"{twin['loss_max']:.3f} over the run; final accuracy <= {twin['final_acc_max']:.3f}."
        )
    title = f"load_digits MLP, {NOISE:.0%} label noise, chosen runs"
    sizes = {"n_train": N_TRAIN, "n_val": N_VAL, "n_test": len(data["test"][1])}
    settings = cfg | sizes | {"label_noise": NOISE, "noise_entropy": h, "seeds": seeds}
    records = {"epochs": epochs, "summary": summary, "twin": twin, "runs": runs}
    figures = [figure("flooding_digits_curves", panels, title)]
    return StudyResult(verdict, records, [table(summary, columns)], figures, settings, notes)
