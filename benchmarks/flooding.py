"""Study ``flooding``: does flooding reduce overfitting under label noise?

The flooding paper's synthetic demo (math.md §3.3, ref-code takashiishida/flooding):
``sinusoid2d`` with 10% of the training and validation labels flipped (test labels clean),
100 train / 100 validation / 20000 test points, an MLP of 4 hidden layers of width 100
(Linear without bias + BatchNorm + ReLU) and a linear head, cross-entropy with mean reduction,
200 epochs of full-batch steps. Two optimizer settings, each with its grid of flood levels b:
SGD (lr 0.01, momentum 0.9), b in {0, 0.26, 0.27, 0.28}; Adam (lr 1e-3), b in
{0, 0.24, 0.25, 0.26}. b = 0 is the plain loss (flooding is the identity for a loss >= 0).
Per seed, b is chosen by the validation accuracy at the end of training (ties go to the first
in the grid, so to b = 0). We report the test accuracy and the test-minus-train loss gap
(evaluation mode, plain loss) with and without flooding, mean +- std over seeds, next to
iFlood (the same grid, each sample's loss flooded) and AdaFlood (per-sample levels from
auxiliary models trained on the other fold of a 2-fold split of the training set, gamma
chosen on validation), and the train and test loss curves (where the paper reports a "second
descent" of the test loss once the training loss floats at b).

Run alone: ``python -m benchmarks --only flooding``.
"""

from __future__ import annotations

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
from benchmarks.problems import SINUSOID2D, sinusoid2d

NAME = "flooding"
QUESTION = "Does flooding reduce overfitting under label noise?"

SETTINGS = {
    "SGD": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "levels": [0.0, 0.26, 0.27, 0.28]},
    "Adam": {"optimizer": "adam", "lr": 1e-3, "levels": [0.0, 0.24, 0.25, 0.26]},
}
GAMMAS = [0.25, 0.5, 0.75]  # AdaFlood's mixing weight (ref-code default 0.5)
WIDTH, HIDDEN, N_CLASSES = 100, 4, 2
N_TRAIN, N_VAL, N_TEST, NOISE, FOLDS = 100, 100, 20000, 0.1, 2
SETS = ("train", "val", "test")
METHODS = ("none", "flood", "iflood", "adaflood")
LABELS = {
    "none": "no flooding (b = 0)",
    "flood": "flooding",
    "iflood": "iFlood",
    "adaflood": "AdaFlood",
}


def config(ctx: Context) -> dict:
    """Sizes of the run. ``--quick`` is a toy run: every table and figure, but on the JAX side
    only batch flooding (each JAX method costs one XLA compile of ~2.5 s per setting)."""
    if ctx.quick:
        return {
            "seeds": 1,
            "epochs": 30,
            "eval_every": 5,
            "n_test": 2000,
            "levels": {name: [0.0, s["levels"][2]] for name, s in SETTINGS.items()},
            "gammas": [0.5],
            "jax_methods": ("flood",),
        }
    return {
        "seeds": ctx.seeds,
        "epochs": 200,
        "eval_every": 10,
        "n_test": N_TEST,
        "levels": {name: list(s["levels"]) for name, s in SETTINGS.items()},
        "gammas": list(GAMMAS),
        "jax_methods": ("flood", "iflood", "adaflood"),
    }


def make_data(seed: int, n_test: int) -> dict:
    """One seed's data, drawn once with NumPy; both frameworks train on these arrays."""
    rng = np.random.default_rng(seed)
    x_tr, y_tr, clean_tr = sinusoid2d(N_TRAIN, rng, NOISE)
    x_va, y_va, _ = sinusoid2d(N_VAL, rng, NOISE)
    x_te, _, y_te = sinusoid2d(n_test, rng, 0.0)  # clean test labels
    return {
        "train": (x_tr, y_tr),
        "val": (x_va, y_va),
        "test": (x_te, y_te),
        "flipped": y_tr != clean_tr,
        "folds": np.array_split(np.arange(N_TRAIN), FOLDS),
    }


def init_seed(seed: int, fold: int | None = None) -> int:
    """The initialization seed of the main model (shared by all its runs) or an aux model."""
    return seed if fold is None else 10_000 + 10 * seed + fold


def _round(values) -> list[float]:
    return [float(f"{float(v):.5g}") for v in values]


def record(fw, setting, method, param, seed, curves, extra=None) -> dict:
    """One training run: its final metrics (evaluation mode, plain loss) and its curves (the
    per-step batch loss only for the flooding runs, the ones plotted, to keep the JSON small)."""
    curves = {k: _round(v) for k, v in curves.items() if method == "flood" or k != "batch_loss"}
    out = {
        "framework": fw,
        "setting": setting,
        "method": method,
        "param": float(param),
        "seed": seed,
        "final": {f"{s}_{m}": curves[f"{s}_{m}"][-1] for s in SETS for m in ("loss", "acc")},
        "curves": curves,
    }
    out["final"]["gap"] = _round([out["final"]["test_loss"] - out["final"]["train_loss"]])[0]
    out.update(extra or {})
    return out


class TorchSide:
    """``torch_opt.Flooding`` (batch and individual) and ``torch_opt.adaflood`` on nn.Modules."""

    name = "torch"

    def __init__(self, device: str):
        import torch
        import torch.nn.functional as F

        import torch_opt

        self.torch, self.F, self.mod = torch, F, torch_opt
        self.device = torch.device(device)

    def mlp(self, seed: int):
        torch, nn = self.torch, self.torch.nn
        with torch.random.fork_rng(devices=[]):  # leave the global RNG as we found it
            torch.manual_seed(seed)
            layers, d = [], 2
            for _ in range(HIDDEN):
                layers += [nn.Linear(d, WIDTH, bias=False), nn.BatchNorm1d(WIDTH), nn.ReLU()]
                d = WIDTH
            layers.append(nn.Linear(d, N_CLASSES))
            return nn.Sequential(*layers).to(self.device)

    def optimizer(self, setting: str, params):
        s = SETTINGS[setting]
        if s["optimizer"] == "sgd":
            return self.torch.optim.SGD(params, lr=s["lr"], momentum=s["momentum"])
        return self.torch.optim.Adam(params, lr=s["lr"])

    def evaluate(self, model, sets: dict) -> dict:
        F = self.F
        model.eval()
        out = {}
        with self.torch.no_grad():
            for name, (x, y) in sets.items():
                logits = model(x)
                out[f"{name}_loss"] = F.cross_entropy(logits, y).item()
                out[f"{name}_acc"] = (logits.argmax(1) == y).float().mean().item()
        return out

    def fit(self, setting, seed, x, y, criterion, epochs, every, sets):
        """Full-batch training; ``criterion(logits, y)`` is the (flooded) training loss."""
        F = self.F
        model = self.mlp(seed)
        opt = self.optimizer(setting, model.parameters())
        curves = {"batch_loss": []} | {f"{s}_{m}": [] for s in sets for m in ("loss", "acc")}
        for epoch in range(epochs + 1):
            if epoch > 0:
                model.train()
                logits = model(x)
                loss = criterion(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                curves["batch_loss"].append(F.cross_entropy(logits.detach(), y).item())
            if sets and epoch % every == 0:
                for k, v in self.evaluate(model, sets).items():
                    curves[k].append(v)
        return model, curves

    def run(self, setting, seed, data, cfg) -> list[dict]:
        torch, F, mod = self.torch, self.F, self.mod
        dev = self.device
        t = {
            s: (torch.as_tensor(data[s][0], device=dev), torch.as_tensor(data[s][1], device=dev))
            for s in SETS
        }
        x, y = t["train"]
        epochs, every = cfg["epochs"], cfg["eval_every"]
        levels = cfg["levels"][setting]
        out = []
        runs = [("flood", "batch", b) for b in levels]
        runs += [("iflood", "individual", b) for b in levels if b > 0]  # b = 0: the same run
        for method, mode, b in runs:
            criterion = mod.Flooding(torch.nn.CrossEntropyLoss(), level=b, mode=mode)
            _, curves = self.fit(setting, init_seed(seed), x, y, criterion, epochs, every, t)
            out.append(record(self.name, setting, method, b, seed, curves))

        # AdaFlood: aux model k learns the other folds (plain loss) and scores fold k.
        aux_losses = torch.empty(N_TRAIN, device=dev)
        for k, held in enumerate(data["folds"]):
            fit_idx = torch.as_tensor(np.setdiff1d(np.arange(N_TRAIN), held), device=dev)
            held = torch.as_tensor(held, device=dev)
            aux, _ = self.fit(
                setting,
                init_seed(seed, k),
                x[fit_idx],
                y[fit_idx],
                torch.nn.CrossEntropyLoss(),
                epochs,
                every,
                {},
            )
            aux.eval()
            with torch.no_grad():
                aux_losses[held] = F.cross_entropy(aux(x[held]), y[held], reduction="none")
        flipped = torch.as_tensor(data["flipped"], device=dev)
        for gamma in cfg["gammas"]:
            theta = mod.adaflood_levels(aux_losses, gamma=gamma)

            def criterion(logits, labels, theta=theta):
                return mod.adaflood(F.cross_entropy(logits, labels, reduction="none"), theta)

            _, curves = self.fit(setting, init_seed(seed), x, y, criterion, epochs, every, t)
            extra = {
                "level_flipped": float(theta[flipped].mean()),
                "level_clean": float(theta[~flipped].mean()),
                "aux_loss_flipped": float(aux_losses[flipped].mean()),
                "aux_loss_clean": float(aux_losses[~flipped].mean()),
            }
            out.append(record(self.name, setting, "adaflood", gamma, seed, curves, extra))
        return out


class JaxSide:
    """A plain-JAX MLP with a hand-written BatchNorm, optax, and ``jax_opt.flooded`` (batch
    and individual) / ``jax_opt.adaflood``. The runs of one (setting, method) -- every seed
    and every level -- are trained together under one ``jit(vmap(...))``; the level is a
    traced argument, so a new level does not recompile."""

    name = "jax"
    BN_MOMENTUM, BN_EPS = 0.1, 1e-5  # torch.nn.BatchNorm1d's defaults

    def __init__(self):
        import jax
        import jax.numpy as jnp
        import optax

        import jax_opt

        self.jax, self.jnp, self.optax, self.mod = jax, jnp, optax, jax_opt
        self._fits = {}

    def init(self, key):
        """torch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); BN scale 1, shift 0."""
        jax, jnp = self.jax, self.jnp
        keys = jax.random.split(key, HIDDEN + 2)
        params, state, d = {"hidden": [], "head": {}}, [], 2
        for i in range(HIDDEN):
            bound = 1.0 / np.sqrt(d)
            w = jax.random.uniform(keys[i], (d, WIDTH), jnp.float32, -bound, bound)
            params["hidden"].append(
                {"w": w, "scale": jnp.ones(WIDTH, jnp.float32), "shift": jnp.zeros(WIDTH)}
            )
            state.append({"mean": jnp.zeros(WIDTH), "var": jnp.ones(WIDTH)})
            d = WIDTH
        bound = 1.0 / np.sqrt(d)
        params["head"] = {
            "w": jax.random.uniform(keys[-2], (d, N_CLASSES), jnp.float32, -bound, bound),
            "b": jax.random.uniform(keys[-1], (N_CLASSES,), jnp.float32, -bound, bound),
        }
        return params, state

    def forward(self, params, state, x, train: bool):
        """Logits and the new BatchNorm state: batch statistics in training (running stats
        updated as torch does, with the unbiased variance), running statistics in evaluation."""
        jnp = self.jnp
        m, new_state = self.BN_MOMENTUM, []
        for layer, s in zip(params["hidden"], state, strict=True):
            x = x @ layer["w"]
            if train:
                mean, var = jnp.mean(x, 0), jnp.var(x, 0)
                n = x.shape[0]
                new_state.append(
                    {
                        "mean": (1 - m) * s["mean"] + m * mean,
                        "var": (1 - m) * s["var"] + m * var * n / (n - 1),
                    }
                )
            else:
                mean, var = s["mean"], s["var"]
                new_state.append(s)
            x = (x - mean) / jnp.sqrt(var + self.BN_EPS) * layer["scale"] + layer["shift"]
            x = jnp.maximum(x, 0)
        return x @ params["head"]["w"] + params["head"]["b"], new_state

    def optimizer(self, setting: str):
        s = SETTINGS[setting]
        if s["optimizer"] == "sgd":
            return self.optax.sgd(s["lr"], momentum=s["momentum"])
        return self.optax.adam(s["lr"])

    def evaluate(self, params, state, sets):
        """(n_sets, 2): the plain mean loss and the accuracy of each set, evaluation mode."""
        jnp, optax = self.jnp, self.optax
        rows = []
        for x, y in sets:
            logits, _ = self.forward(params, state, x, False)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            rows.append(jnp.stack([loss, jnp.mean(jnp.argmax(logits, 1) == y)]))
        return jnp.stack(rows)

    def fitter(self, setting: str, mode: str, epochs: int, every: int):
        """``jit(vmap(fit))``: ``fit(key, level, x, y, sets)`` trains one model from ``key``
        and returns its final parameters and state, the plain batch loss of every step and
        the metrics of ``sets`` every ``every`` epochs. ``mode`` is ``"batch"``,
        ``"individual"`` or ``"adaflood"`` (``level`` then holds per-sample levels)."""
        key = (setting, mode, epochs, every)
        if key in self._fits:
            return self._fits[key]
        jax, jnp, optax, mod = self.jax, self.jnp, self.optax, self.mod
        opt = self.optimizer(setting)

        def per_sample(params, state, x, y):
            logits, state = self.forward(params, state, x, True)
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return losses, (state, jnp.mean(losses))

        def fit(key, level, x, y, sets):
            params, state = self.init(key)
            if mode == "adaflood":

                def objective(params, state, x, y):
                    losses, aux = per_sample(params, state, x, y)
                    return mod.adaflood(losses, level), aux

            else:
                objective = mod.flooded(per_sample, level, mode=mode, has_aux=True)
            grad_fn = jax.value_and_grad(objective, has_aux=True)

            def step(carry, _):
                params, state, opt_state = carry
                (_, (state, plain)), grads = grad_fn(params, state, x, y)
                updates, opt_state = opt.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), state, opt_state), plain

            def block(carry, _):
                carry, plain = jax.lax.scan(step, carry, length=every)
                return carry, (plain, self.evaluate(carry[0], carry[1], sets))

            first = self.evaluate(params, state, sets)
            carry = (params, state, opt.init(params))
            (params, state, _), (plain, metrics) = jax.lax.scan(
                block, carry, length=epochs // every
            )
            metrics = jnp.concatenate([first[None], metrics])
            return params, state, plain.reshape(-1), metrics

        self._fits[key] = jax.jit(jax.vmap(fit))
        return self._fits[key]

    def _stack(self, items):
        return self.jnp.asarray(np.stack(items))

    def _fit_many(self, setting, mode, runs, cfg):
        """Train ``runs`` = [(init seed, level, data)] at once on the full training set."""
        fit = self.fitter(setting, mode, cfg["epochs"], cfg["eval_every"])
        jax = self.jax
        keys = self._stack([jax.random.PRNGKey(s) for s, _, _ in runs])
        levels = self._stack([np.asarray(lv, np.float32) for _, lv, _ in runs])
        x = self._stack([d["train"][0] for _, _, d in runs])
        y = self._stack([d["train"][1] for _, _, d in runs])
        sets = tuple(
            (self._stack([d[s][0] for _, _, d in runs]), self._stack([d[s][1] for _, _, d in runs]))
            for s in SETS
        )
        _, _, plain, metrics = fit(keys, levels, x, y, sets)
        return np.asarray(plain), np.asarray(metrics)

    @staticmethod
    def _curves(plain, metrics) -> dict:
        curves = {"batch_loss": plain.tolist()}
        for i, s in enumerate(SETS):
            curves[f"{s}_loss"] = metrics[:, i, 0].tolist()
            curves[f"{s}_acc"] = metrics[:, i, 1].tolist()
        return curves

    def aux_losses(self, setting, seeds, datas, cfg):
        """AdaFlood's held-out losses: aux model k learns the other folds, scores fold k."""
        jax, jnp = self.jax, self.jnp
        fit = self.fitter(setting, "batch", cfg["epochs"], cfg["eval_every"])
        jobs = [(s, k, d) for s, d in zip(seeds, datas, strict=True) for k in range(FOLDS)]
        idx = [np.setdiff1d(np.arange(N_TRAIN), d["folds"][k]) for _, k, d in jobs]
        keys = self._stack([jax.random.PRNGKey(init_seed(s, k)) for s, k, _ in jobs])
        x = self._stack([d["train"][0][i] for (_, _, d), i in zip(jobs, idx, strict=True)])
        y = self._stack([d["train"][1][i] for (_, _, d), i in zip(jobs, idx, strict=True)])
        zero = jnp.zeros(len(jobs), jnp.float32)
        params, state, _, _ = fit(keys, zero, x, y, ((x[:, :1], y[:, :1]),))
        out = {s: np.zeros(N_TRAIN, np.float32) for s in seeds}
        for j, (s, k, d) in enumerate(jobs):
            p, st = jax.tree.map(lambda a, j=j: a[j], (params, state))
            held = d["folds"][k]
            logits, _ = self.forward(p, st, jnp.asarray(d["train"][0][held]), False)
            losses = self.optax.softmax_cross_entropy_with_integer_labels(
                logits, jnp.asarray(d["train"][1][held])
            )
            out[s][held] = np.asarray(losses)
        return out

    def run_setting(self, setting, seeds, datas, cfg) -> list[dict]:
        levels = cfg["levels"][setting]
        out = []
        groups = [("flood", "batch", levels), ("iflood", "individual", [b for b in levels if b])]
        for method, mode, grid in groups:
            if method not in cfg["jax_methods"]:
                continue
            runs = [(s, b, d) for s, d in zip(seeds, datas, strict=True) for b in grid]
            plain, metrics = self._fit_many(setting, mode, runs, cfg)
            for j, (s, b, _) in enumerate(runs):
                curves = self._curves(plain[j], metrics[j])
                out.append(record(self.name, setting, method, b, s, curves))
        if "adaflood" not in cfg["jax_methods"]:
            return out
        aux = self.aux_losses(setting, seeds, datas, cfg)
        runs, extras = [], []
        for s, d in zip(seeds, datas, strict=True):
            for gamma in cfg["gammas"]:
                theta = np.asarray(self.mod.adaflood_levels(self.jnp.asarray(aux[s]), gamma))
                runs.append((s, theta, d))
                f = d["flipped"]
                extras.append(
                    {
                        "gamma": gamma,
                        "level_flipped": float(theta[f].mean()),
                        "level_clean": float(theta[~f].mean()),
                        "aux_loss_flipped": float(aux[s][f].mean()),
                        "aux_loss_clean": float(aux[s][~f].mean()),
                    }
                )
        plain, metrics = self._fit_many(setting, "adaflood", runs, cfg)
        for j, ((s, _, _), extra) in enumerate(zip(runs, extras, strict=True)):
            gamma = extra.pop("gamma")
            curves = self._curves(plain[j], metrics[j])
            out.append(record(self.name, setting, "adaflood", gamma, s, curves, extra))
        return out


# ---------------------------------------------------------------------------------------------
# Selection on validation, summaries, verdict


def select(records, fw, setting, seed) -> dict:
    """Per method, the run chosen by final validation accuracy (first in the grid on ties)."""
    mine = [r for r in records if (r["framework"], r["setting"], r["seed"]) == (fw, setting, seed)]
    flood = [r for r in mine if r["method"] == "flood"]
    plain = next(r for r in flood if r["param"] == 0.0)
    iflood = [r for r in mine if r["method"] == "iflood"]
    candidates = {
        "none": [plain],
        "flood": flood,
        "iflood": [plain] + iflood if iflood else [],  # b = 0 is the plain run
        "adaflood": [r for r in mine if r["method"] == "adaflood"],
    }
    return {m: max(c, key=lambda r: r["final"]["val_acc"]) for m, c in candidates.items() if c}


def mean_std(values) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def pm(values, digits: int = 3) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def summarize(records, seeds) -> list[dict]:
    out = []
    for setting in SETTINGS:
        for fw in dict.fromkeys(r["framework"] for r in records):
            chosen = [select(records, fw, setting, s) for s in seeds]
            for method in METHODS:
                runs = [c[method] for c in chosen if method in c]
                if not runs:
                    continue
                f = [r["final"] for r in runs]
                out.append(
                    {
                        "setting": setting,
                        "framework": fw,
                        "method": method,
                        "chosen": [r["param"] for r in runs],
                        **{
                            k: [x[k] for x in f]
                            for k in ("test_acc", "test_loss", "train_loss", "train_acc", "gap")
                        },
                    }
                )
    return out


def _chosen_text(s) -> str:
    if s["method"] == "none":
        return "0"
    sym = "γ" if s["method"] == "adaflood" else "b"
    return f"{sym} = " + ", ".join(f"{p:g}" for p in s["chosen"])


def main_table(summary) -> str:
    rows = [
        (
            s["setting"],
            s["framework"],
            LABELS[s["method"]],
            _chosen_text(s),
            pm(s["test_acc"]),
            pm(s["train_acc"]),
            pm(s["test_loss"]),
            pm(s["train_loss"]),
            pm(s["gap"]),
        )
        for s in summary
    ]
    return markdown_table(
        [
            "setting",
            "framework",
            "method",
            "chosen on validation (per seed)",
            "test accuracy",
            "train accuracy (noisy)",
            "test loss",
            "train loss",
            "test - train loss",
        ],
        rows,
    )


def grid_table(records) -> str:
    keys = {}
    for r in records:
        keys.setdefault((r["setting"], r["framework"], r["method"], r["param"]), []).append(r)
    rows = []
    order = {s: i for i, s in enumerate(SETTINGS)}
    for (setting, fw, method, param), runs in sorted(
        keys.items(), key=lambda kv: (order[kv[0][0]], kv[0][1] != "torch")
    ):
        f = [r["final"] for r in runs]
        sym = "γ" if method == "adaflood" else "b"
        name = "plain loss (flooding, iFlood at b = 0)" if method == "flood" and not param else ""
        rows.append(
            (
                setting,
                fw,
                LABELS[method] if not name else name,
                f"{sym} = {param:g}",
                pm([x["val_acc"] for x in f]),
                pm([x["test_acc"] for x in f]),
                pm([x["gap"] for x in f]),
            )
        )
    return markdown_table(
        ["setting", "framework", "method", "level", "val accuracy", "test accuracy", "gap"],
        rows,
    )


def _verdict(summary) -> str:
    fws = list(dict.fromkeys(s["framework"] for s in summary))
    get = {(s["setting"], s["framework"], s["method"]): s for s in summary}
    parts = []
    for setting in SETTINGS:
        fw = fws[0]
        none, fl = get[(setting, fw, "none")], get[(setting, fw, "flood")]
        acc_up = np.mean(fl["test_acc"]) - np.mean(none["test_acc"])
        gap_down = np.mean(none["gap"]) - np.mean(fl["gap"])
        text = (
            f"{setting} ({fw}): flooding ({_chosen_text(fl)}, chosen on validation) "
            f"{'raises' if acc_up > 0 else 'does not raise'} test accuracy, "
            f"{pm(fl['test_acc'])} vs {pm(none['test_acc'])} without, and "
            f"{'lowers' if gap_down > 0 else 'does not lower'} the test-minus-train loss gap, "
            f"{pm(fl['gap'], 2)} vs {pm(none['gap'], 2)}"
        )
        others = [
            f"{LABELS[m]} {pm(get[(setting, fw, m)]['test_acc'])}"
            for m in ("iflood", "adaflood")
            if (setting, fw, m) in get
        ]
        for other_fw in fws[1:]:
            o_none, o_fl = get[(setting, other_fw, "none")], get[(setting, other_fw, "flood")]
            others.append(
                f"{other_fw}: flooding {pm(o_fl['test_acc'])} vs {pm(o_none['test_acc'])} without"
            )
        parts.append(text + (f" ({'; '.join(others)})" if others else ""))
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Figures


def _mean_curve(runs, key):
    return np.mean([r["curves"][key] for r in runs], axis=0)


def plot_curves(ctx, records, seeds, cfg) -> str:
    plt = pyplot()
    fws = list(dict.fromkeys(r["framework"] for r in records))
    epochs, every = cfg["epochs"], cfg["eval_every"]
    ev = np.arange(0, epochs + 1, every)
    steps = np.arange(1, epochs + 1)
    fig, axes = plt.subplots(
        len(fws), len(SETTINGS), figsize=(5.2 * len(SETTINGS) + 2.6, 3.6 * len(fws)), squeeze=False
    )
    for row, fw in enumerate(fws):
        for col, setting in enumerate(SETTINGS):
            ax = axes[row, col]
            chosen = [select(records, fw, setting, s) for s in seeds]
            best = [c["flood"] for c in chosen]
            for runs, color, label in (
                ([c["none"] for c in chosen], "C0", "no flooding"),
                (best, "C3", "flooding (b chosen)"),
            ):
                ax.plot(
                    ev,
                    _mean_curve(runs, "test_loss"),
                    "-",
                    color=color,
                    lw=2,
                    label=f"{label}: test (clean labels)",
                )
                ax.plot(
                    ev,
                    _mean_curve(runs, "train_loss"),
                    "--",
                    color=color,
                    label=f"{label}: train (eval mode)",
                )
                ax.plot(
                    steps,
                    _mean_curve(runs, "batch_loss"),
                    color=color,
                    lw=0.6,
                    alpha=0.4,
                    label=f"{label}: training-mode batch loss",
                )
            for i, b in enumerate(sorted({r["param"] for r in best if r["param"] > 0})):
                ax.axhline(b, color="0.4", lw=0.7, ls=":", label="flood level b" if not i else None)
            bs = ", ".join(f"{r['param']:g}" for r in best)
            ax.set(
                yscale="log",
                xlabel="epoch (one full-batch step)",
                ylabel="cross-entropy",
                title=f"{setting} ({fw}): b = {bs} (per seed)",
            )
            ax.title.set_fontsize(10)
    axes[0, -1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"Loss curves, mean over {len(seeds)} seed(s)", fontsize=10)
    return save_figure(ctx, fig, "flooding_curves.png")


def plot_accuracy(ctx, summary) -> str:
    plt = pyplot()
    groups = list(dict.fromkeys((s["setting"], s["framework"]) for s in summary))
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(groups)) + 1.8, 4.2))
    width = 0.8 / len(METHODS)
    lo = 1.0
    for i, method in enumerate(METHODS):
        xs, means, stds = [], [], []
        for g, (setting, fw) in enumerate(groups):
            s = next(
                (
                    s
                    for s in summary
                    if (s["setting"], s["framework"], s["method"]) == (setting, fw, method)
                ),
                None,
            )
            if s is None:
                continue
            m, sd = mean_std(s["test_acc"])
            xs.append(g + (i - (len(METHODS) - 1) / 2) * width)
            means.append(m)
            stds.append(sd)
            lo = min(lo, m - sd)
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=LABELS[method], color=f"C{i}")
    ax.set_xticks(range(len(groups)), [f"{s} ({fw})" for s, fw in groups])
    ax.set(ylabel="test accuracy (clean labels)", ylim=(max(0.0, lo - 0.03), 1.0))
    ax.set_title("Test accuracy, level chosen on validation; mean ± std over seeds", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(ctx, fig, "flooding_accuracy.png")


# ---------------------------------------------------------------------------------------------


def run(ctx: Context) -> StudyResult:
    cfg = config(ctx)
    seeds = list(range(cfg["seeds"]))
    datas = [make_data(s, cfg["n_test"]) for s in seeds]
    fws = frameworks()
    sides = []
    if "torch" in fws:
        sides.append(TorchSide(ctx.device))
    if "jax" in fws:
        sides.append(JaxSide())
    jobs = []
    for side in sides:
        if side.name == "torch":
            jobs += [(side, setting, [s]) for setting in SETTINGS for s in seeds]
        else:
            jobs += [(side, setting, seeds) for setting in SETTINGS]
    records = []
    for side, setting, job_seeds in progress(jobs, NAME):
        job_datas = [datas[s] for s in job_seeds]
        if side.name == "torch":
            records += side.run(setting, job_seeds[0], job_datas[0], cfg)
        else:
            records += side.run_setting(setting, job_seeds, job_datas, cfg)

    summary = summarize(records, seeds)
    figures = [plot_curves(ctx, records, seeds, cfg), plot_accuracy(ctx, summary)]
    notes = _notes(ctx, cfg, records, seeds)
    return StudyResult(
        name=NAME,
        question=QUESTION,
        verdict=_verdict(summary),
        settings={
            "data": SINUSOID2D,
            "n_train": N_TRAIN,
            "n_val": N_VAL,
            "n_test": cfg["n_test"],
            "label_noise": NOISE,
            "model": f"MLP {HIDDEN} x {WIDTH} (Linear no bias + BatchNorm1d + ReLU), linear head",
            "epochs": cfg["epochs"],
            "eval_every": cfg["eval_every"],
            "batch": "full (one step per epoch)",
            "optimizers": {
                k: {kk: v for kk, v in s.items() if kk != "levels"} for k, s in SETTINGS.items()
            },
            "levels": cfg["levels"],
            "adaflood": {"folds": FOLDS, "gammas": cfg["gammas"], "alpha": 1.0, "beta": 0.0},
            "seeds": seeds,
            "jax_methods": list(cfg["jax_methods"]),
            "dtype": "float32",
        },
        data={"summary": summary, "records": records},
        tables=[main_table(summary), grid_table(records)],
        figures=figures,
        notes=notes,
    )


def _notes(ctx, cfg, records, seeds) -> list[str]:
    notes = [
        "Train, validation and test losses are the plain cross-entropy in evaluation mode "
        "(BatchNorm running statistics), as in the ref-code; 'gap' is test minus train loss at "
        "the last epoch. Training labels and validation labels carry the 10% flips, test "
        "labels are clean. Flooding and iFlood at b = 0 are one run (the plain loss).",
        f"Levels are chosen per seed by the validation accuracy after {cfg['epochs']} epochs "
        "(100 noisy validation points, so ties are common: the first of the grid wins, b = 0 "
        "for flooding and iFlood). std is the sample standard deviation over seeds.",
        f"Test metrics are evaluated every {cfg['eval_every']} epochs (and at epoch 0), not "
        "every epoch; the training-mode batch loss is recorded at every step.",
        "Data are drawn once per seed with NumPy and shared by both frameworks. Each framework "
        "initializes its own MLP with torch's default Linear init (U(+-1/sqrt(fan_in)), BN "
        "scale 1, shift 0): torch from torch.manual_seed(seed), JAX from "
        "jax.random.PRNGKey(seed), so the weights differ across frameworks (same "
        "distribution) but are shared by every run of one seed within a framework. The JAX "
        "BatchNorm is hand-written to torch's rules (momentum 0.1, eps 1e-5, unbiased running "
        "variance).",
    ]
    for fw in dict.fromkeys(r["framework"] for r in records):
        ada = [r for r in records if r["framework"] == fw and r["method"] == "adaflood"]
        if ada:
            notes.append(
                f"AdaFlood ({fw}): the auxiliary models' held-out loss is "
                f"{np.mean([r['aux_loss_flipped'] for r in ada]):.2f} on the flipped training "
                f"samples vs {np.mean([r['aux_loss_clean'] for r in ada]):.2f} on the others, "
                f"so the flipped samples get higher levels (mean over gamma and seeds: "
                f"{np.mean([r['level_flipped'] for r in ada]):.2f} vs "
                f"{np.mean([r['level_clean'] for r in ada]):.2f})."
            )
    ev = np.arange(0, cfg["epochs"] + 1, cfg["eval_every"])
    shapes = []
    for fw in dict.fromkeys(r["framework"] for r in records):
        for setting in SETTINGS:
            chosen = [select(records, fw, setting, s) for s in seeds]
            parts = []
            for method in ("none", "flood"):
                curve = _mean_curve([c[method] for c in chosen], "test_loss")
                k = int(np.argmin(curve))
                parts.append(
                    f"{'without' if method == 'none' else 'with'} flooding {curve[0]:.2f} -> "
                    f"min {curve[k]:.3f} at epoch {ev[k]} -> {curve[-1]:.3f} at the end"
                )
            shapes.append(f"{setting} ({fw}): " + ", ".join(parts))
    notes.append("Mean test loss over the run: " + "; ".join(shapes) + ".")
    if ctx.quick:
        notes.append(
            "--quick: 1 seed, 30 epochs, 2000 test points, one flood level besides 0, "
            "gamma = 0.5 only, JAX batch flooding only: a smoke run, not a result."
        )
    return notes
