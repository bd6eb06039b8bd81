"""Study ``flooding``: does flooding reduce overfitting under label noise?

The flooding paper's synthetic demo (math.md §3.3): ``sinusoid2d`` with 10% of the training and
validation labels flipped (test labels clean), 100 train / 100 validation / 20000 test points,
an MLP of 4 hidden layers of 100 (Linear without bias + BatchNorm + ReLU), 200 full-batch
epochs. SGD (lr 0.01, momentum 0.9) with b in {0, 0.26, 0.27, 0.28} and Adam (lr 1e-3) with b in
{0, 0.24, 0.25, 0.26}; b = 0 is the plain loss. Per seed the level is chosen by the final
validation accuracy (ties: the first of the grid). iFlood (the same grid, per-sample flooding)
and AdaFlood (per-sample levels from auxiliary models trained on the other fold of a 2-fold
split, gamma chosen on validation; torch only, the JAX twin of AdaFlood runs in
``flooding_digits``) are run beside it.
"""

from __future__ import annotations

import numpy as np

from benchmarks._common import Context, StudyResult, frameworks, jit_run, torch_threads
from benchmarks._report import curve, figure, panel, pm, rounded, table
from benchmarks.problems import sinusoid2d

NAME = "flooding"
QUESTION = "Does flooding reduce overfitting under label noise?"

SETTINGS = {
    "SGD": {"lr": 0.01, "momentum": 0.9, "levels": [0.0, 0.26, 0.27, 0.28]},
    "Adam": {"lr": 1e-3, "levels": [0.0, 0.24, 0.25, 0.26]},
}
GAMMAS = [0.25, 0.5, 0.75]  # AdaFlood's mixing weight
WIDTH, HIDDEN, N_TRAIN, N_VAL, NOISE, FOLDS = 100, 4, 100, 100, 0.1, 2
SETS = ("train", "val", "test")
LABELS = {"none": "no flooding", "flood": "flooding", "iflood": "iFlood", "adaflood": "AdaFlood"}
CURVES = ("test_loss", "train_loss", "batch_loss")  # kept for the flooding runs


def config(ctx: Context) -> dict:
    """Under ``--quick``: fewer epochs and test points, two levels, one gamma, and JAX batch
    flooding only (each JAX method costs one compilation)."""
    levels = {k: s["levels"] for k, s in SETTINGS.items()}
    if ctx.quick:
        levels = {k: [0.0, v[2]] for k, v in levels.items()}
    full = {
        "epochs": 200,
        "every": 10,
        "n_test": 20000,
        "gammas": GAMMAS,
        "jax": ("flood", "iflood"),
    }
    quick = {"epochs": 30, "every": 5, "n_test": 2000, "gammas": [0.5], "jax": ("flood",)}
    return ctx.sized(full, quick) | {"quick": ctx.quick, "levels": levels}


def make_data(seed: int, n_test: int) -> dict:
    rng = np.random.default_rng(seed)
    x_tr, y_tr, clean = sinusoid2d(N_TRAIN, rng, NOISE)
    x_va, y_va, _ = sinusoid2d(N_VAL, rng, NOISE)
    x_te, _, y_te = sinusoid2d(n_test, rng, 0.0)  # clean test labels
    folds = np.array_split(np.arange(N_TRAIN), FOLDS)
    return {"train": (x_tr, y_tr), "val": (x_va, y_va), "test": (x_te, y_te), "folds": folds}


def record(fw, setting, method, param, seed, curves) -> dict:
    """One training run: final metrics (evaluation mode, plain loss) and its loss curves."""
    final = {k: v[-1] for k, v in curves.items() if k != "batch_loss"}
    keep = CURVES if method == "flood" else ()
    run = {"framework": fw, "setting": setting, "method": method, "param": float(param)}
    run |= {"seed": seed, **final, "gap": final["test_loss"] - final["train_loss"]}
    return run | {"curves": {k: rounded(curves[k]) for k in keep}}


def torch_runs(setting, seed, data, cfg, device) -> list[dict]:
    import torch
    import torch.nn.functional as F

    import torch_opt

    s, nn = SETTINGS[setting], torch.nn
    t = {k: tuple(torch.as_tensor(a, device=device) for a in data[k]) for k in SETS}
    x, y = t["train"]

    def fit(init, x, y, criterion, sets):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init)
            layers = []
            for d in [2] + [WIDTH] * (HIDDEN - 1):
                layers += [nn.Linear(d, WIDTH, bias=False), nn.BatchNorm1d(WIDTH), nn.ReLU()]
            model = nn.Sequential(*layers, nn.Linear(WIDTH, 2)).to(device)
        if setting == "SGD":
            opt = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"])
        else:
            opt = torch.optim.Adam(model.parameters(), lr=s["lr"])
        curves = {"batch_loss": []} | {f"{k}_{m}": [] for k in sets for m in ("loss", "acc")}
        for epoch in range(cfg["epochs"] + 1):
            if epoch:
                model.train()
                logits = model(x)
                opt.zero_grad(set_to_none=True)
                criterion(logits, y).backward()
                opt.step()
                curves["batch_loss"].append(F.cross_entropy(logits.detach(), y).item())
            if sets and epoch % cfg["every"] == 0:
                model.eval()
                with torch.no_grad():
                    for k, (xs, ys) in sets.items():
                        out = model(xs)
                        curves[f"{k}_loss"].append(F.cross_entropy(out, ys).item())
                        curves[f"{k}_acc"].append((out.argmax(1) == ys).float().mean().item())
        return model, curves

    out, levels = [], cfg["levels"][setting]
    grid = [("flood", "batch", b) for b in levels]
    grid += [("iflood", "individual", b) for b in levels if b > 0]  # b = 0: the plain run
    for method, mode, b in grid:
        criterion = torch_opt.Flooding(nn.CrossEntropyLoss(), level=b, mode=mode)
        out.append(record("torch", setting, method, b, seed, fit(seed, x, y, criterion, t)[1]))
    aux = torch.empty(N_TRAIN, device=device)  # AdaFlood: held-out losses of aux models
    for k, held in enumerate(data["folds"]):
        rest = torch.as_tensor(np.setdiff1d(np.arange(N_TRAIN), held), device=device)
        model, _ = fit(10_000 + 10 * seed + k, x[rest], y[rest], nn.CrossEntropyLoss(), {})
        model.eval()
        with torch.no_grad():
            aux[held] = F.cross_entropy(model(x[held]), y[held], reduction="none")
    for gamma in cfg["gammas"]:
        theta = torch_opt.adaflood_levels(aux, gamma=gamma)

        def criterion(logits, labels, theta=theta):
            return torch_opt.adaflood(F.cross_entropy(logits, labels, reduction="none"), theta)

        curves = fit(seed, x, y, criterion, t)[1]
        out.append(record("torch", setting, "adaflood", gamma, seed, curves))
    return out


def jax_runs(setting, seeds, datas, cfg) -> list[dict]:
    """Every seed and level of one method trained together under one ``jit(vmap(fit))``; a
    hand-written BatchNorm with torch's rules (momentum 0.1, eps 1e-5, unbiased running var)."""
    import jax
    import optax

    import jax_opt

    jnp, s = jax.numpy, SETTINGS[setting]
    opt = optax.sgd(s["lr"], momentum=s["momentum"]) if setting == "SGD" else optax.adam(s["lr"])
    ce = optax.softmax_cross_entropy_with_integer_labels

    def init(key):  # torch's default Linear init, BN scale 1 and shift 0
        keys, d, params, state = jax.random.split(key, HIDDEN + 2), 2, [], []
        for i in range(HIDDEN):
            bound = 1 / np.sqrt(d)
            w = jax.random.uniform(keys[i], (d, WIDTH), minval=-bound, maxval=bound)
            params.append({"w": w, "scale": jnp.ones(WIDTH), "shift": jnp.zeros(WIDTH)})
            state.append({"mean": jnp.zeros(WIDTH), "var": jnp.ones(WIDTH)})
            d = WIDTH
        bound = 1 / np.sqrt(d)
        w = jax.random.uniform(keys[-2], (d, 2), minval=-bound, maxval=bound)
        b = jax.random.uniform(keys[-1], (2,), minval=-bound, maxval=bound)
        return {"hidden": params, "head": {"w": w, "b": b}}, state

    def forward(params, state, x, train):
        new = []
        for layer, st in zip(params["hidden"], state, strict=True):
            x = x @ layer["w"]
            if train:
                mean, var, n = x.mean(0), x.var(0), x.shape[0]
                running_var = 0.9 * st["var"] + 0.1 * var * n / (n - 1)
                new.append({"mean": 0.9 * st["mean"] + 0.1 * mean, "var": running_var})
            else:
                mean, var = st["mean"], st["var"]
                new.append(st)
            x = jnp.maximum((x - mean) / jnp.sqrt(var + 1e-5) * layer["scale"] + layer["shift"], 0)
        return x @ params["head"]["w"] + params["head"]["b"], new

    def evaluate(params, state, sets):
        rows = []
        for x, y in sets:
            logits = forward(params, state, x, False)[0]
            rows.append(jnp.stack([ce(logits, y).mean(), (logits.argmax(1) == y).mean()]))
        return jnp.stack(rows)

    def fitter(mode):
        def per_sample(params, state, x, y):
            logits, state = forward(params, state, x, True)
            losses = ce(logits, y)
            return losses, (state, losses.mean())

        def fit(key, level, x, y, sets):
            params, state = init(key)
            objective = jax_opt.flooded(per_sample, level, mode=mode, has_aux=True)
            grad = jax.value_and_grad(objective, has_aux=True)

            def step(carry, _):
                p, st, o = carry
                (_, (st, plain)), g = grad(p, st, x, y)
                updates, o = opt.update(g, o, p)
                return (optax.apply_updates(p, updates), st, o), plain

            def block(carry, _):
                carry, plain = jax.lax.scan(step, carry, length=cfg["every"])
                return carry, (plain, evaluate(carry[0], carry[1], sets))

            first, blocks = evaluate(params, state, sets), cfg["epochs"] // cfg["every"]
            carry = (params, state, opt.init(params))
            plain, metrics = jax.lax.scan(block, carry, length=blocks)[1]
            return plain.reshape(-1), jnp.concatenate([first[None], metrics])

        return jax.vmap(fit)

    stack = lambda xs: jnp.asarray(np.stack(xs))  # noqa: E731
    out, levels = [], cfg["levels"][setting]
    for method, mode, grid in (("flood", "batch", levels), ("iflood", "individual", levels[1:])):
        if method not in cfg["jax"]:
            continue
        runs = [(s, b, d) for s, d in zip(seeds, datas, strict=True) for b in grid]
        keys = stack([jax.random.PRNGKey(s) for s, _, _ in runs])
        sets = tuple(tuple(stack([d[k][i] for _, _, d in runs]) for i in (0, 1)) for k in SETS)
        args = (keys, stack([np.float32(b) for _, b, _ in runs]), *sets[0], sets)
        plain, metrics = jit_run(fitter(mode), *args, quick=cfg["quick"])
        for j, (s, b, _) in enumerate(runs):
            c, m = {"batch_loss": np.asarray(plain[j])}, np.asarray(metrics[j])
            for i, k in enumerate(SETS):
                c[f"{k}_loss"], c[f"{k}_acc"] = m[:, i, 0], m[:, i, 1]
            out.append(record("jax", setting, method, b, s, c))
    return out


def select(records, fw, setting, seed) -> dict:
    """Per method, the run with the best final validation accuracy (first in the grid on ties;
    b = 0, the plain run, is also iFlood's first grid point)."""
    mine = [r for r in records if (r["framework"], r["setting"], r["seed"]) == (fw, setting, seed)]
    plain = next(r for r in mine if r["method"] == "flood" and r["param"] == 0)
    candidates = {"none": [plain], "iflood": [plain]}  # b = 0: the plain run
    for r in mine:
        candidates.setdefault(r["method"], []).append(r)
    best = {m: max(c, key=lambda r: r["val_acc"]) for m, c in candidates.items()}
    return {m: r for m, r in best.items() if len(candidates[m]) > (m == "iflood")}


def run(ctx: Context) -> StudyResult:
    cfg, seeds, fws = config(ctx), ctx.seed_list, frameworks()
    datas, records, summary = [make_data(s, cfg["n_test"]) for s in seeds], [], []
    for setting, fw in ((s, f) for s in SETTINGS for f in fws):
        if fw == "torch":
            with torch_threads(1):  # 100 points: a second thread only adds waiting
                for s, d in zip(seeds, datas, strict=True):
                    records += torch_runs(setting, s, d, cfg, ctx.device)
        else:
            records += jax_runs(setting, seeds, datas, cfg)
        chosen = [select(records, fw, setting, s) for s in seeds]
        for method in (m for m in LABELS if m in chosen[0]):
            runs = [c[method] for c in chosen]
            row = {"setting": setting, "framework": fw, "method": method, "label": LABELS[method]}
            row["chosen"] = [r["param"] for r in runs]
            summary.append(
                row | {k: [r[k] for r in runs] for k in ("test_acc", "train_acc", "gap")}
            )
    fw, get = fws[0], {(s["setting"], s["framework"], s["method"]): s for s in summary}

    def mean(setting, method, key="test_acc"):
        return np.mean(get[(setting, fw, method)][key])

    pairs = [f"{mean(k, 'none'):.3f} to {mean(k, 'flood'):.3f} ({k})" for k in SETTINGS]
    gaps = [f"{mean(k, 'none', 'gap'):.2f} to {mean(k, 'flood', 'gap'):.2f}" for k in SETTINGS]
    verdict = (
        f"With b chosen on validation, flooding takes the mean test accuracy from "
        f"{' and from '.join(pairs)} and the test-minus-train loss gap from "
        f"{' and from '.join(gaps)} ({fw}, {len(seeds)} seed{'s' * (len(seeds) > 1)})."
    )
    columns = {"setting": "setting", "framework": "framework", "method": "label",
               "chosen on validation": lambda r: ", ".join(f"{p:g}" for p in r["chosen"]),
               "test accuracy": lambda r: pm(r["test_acc"]),
               "train accuracy (noisy labels)": lambda r: pm(r["train_acc"]),
               "test - train loss": lambda r: pm(r["gap"], 2)}  # fmt: skip
    epochs, steps = np.arange(0, cfg["epochs"] + 1, cfg["every"]), np.arange(1, cfg["epochs"] + 1)
    panels = []
    for setting in SETTINGS:
        chosen, curves = [select(records, fw, setting, s) for s in seeds], []
        for i, m in enumerate(("none", "flood")):
            avg = {k: np.mean([c[m]["curves"][k] for c in chosen], 0) for k in CURVES}
            label = LABELS[m]
            curves += [
                curve(f"{label}: test", epochs, avg["test_loss"], "-", i, lw=2),
                curve(f"{label}: train", epochs, avg["train_loss"], "--", i),
                curve(f"{label}: batch (training mode)", steps, avg["batch_loss"], "-", i, lw=0.5),
            ]
        axes = {"xlabel": "epoch", "ylabel": "cross-entropy", "yscale": "log"}
        panels.append(panel(curves, f"{setting} ({fw})", **axes))
    settings = {"n_train": N_TRAIN, "n_val": N_VAL, "n_test": cfg["n_test"], "noise": NOISE}
    settings["model"] = f"MLP {HIDDEN} x {WIDTH} (Linear + BatchNorm + ReLU)"
    settings |= {"seeds": seeds, "epochs": cfg["epochs"], "optimizers": SETTINGS}
    settings |= {"levels": cfg["levels"], "adaflood": {"folds": FOLDS, "gammas": cfg["gammas"]}}
    settings["jax"] = list(cfg["jax"])
    notes = [
        "Losses are the plain cross-entropy in evaluation mode; 'gap' is test minus "
        "train loss at the last epoch; test labels are clean."
    ]
    figures = [figure("flooding_curves", panels, "Loss curves, mean over seeds")]
    records = {"summary": summary, "runs": records}
    return StudyResult(verdict, records, [table(summary, columns)], figures, settings, notes)
