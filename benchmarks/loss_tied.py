"""Study ``loss_tied``: does the loss-tied step escape the local minimum where GD stalls?

Su's 1-D example (math.md §1.4): f(x) = x(x-1)(x-3)^2 + 1.62276 from x0 = 4 with h = 0.01 and
M = 1000. The loss-tied ODE dx/dt = -(f'/|f'|) f min(1/|f'|, M) has dL/dt = -L wherever it is not
truncated, so it cannot rest at the local minimum x = 3 (f = 1.62 > 0): it leaves the basin and
settles at the global minimum. Plain gradient descent with the same step stays at x = 3. When
the iterate escapes depends on rounding, so we report the step at which it settles.

Run alone: ``python -m benchmarks --only loss_tied``.
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
from benchmarks.problems import SU_1D_GLOBAL_MIN, SU_1D_LOCAL_MIN, SU_1D_START, su_1d

NAME = "loss_tied"
QUESTION = "Does the loss-tied step escape the local minimum where GD stalls?"
LR, MAX_SCALE, TOL, RUN = 0.01, 1000.0, 1e-3, 500


def settled_at(xs: np.ndarray, target: float) -> int | None:
    """The first step of the first run of ``RUN`` steps within ``TOL`` of ``target``."""
    streak = 0
    for k, x in enumerate(xs):
        streak = streak + 1 if abs(x - target) < TOL else 0
        if streak == RUN:
            return k - RUN + 2  # 1-based step at which the streak began
    return None


def torch_path(steps: int, loss_tied: bool) -> np.ndarray:
    import torch

    import torch_opt

    x = torch.tensor(SU_1D_START, dtype=torch.float64, requires_grad=True)
    opt = (
        torch_opt.LossTiedODE([x], lr=LR, max_scale=MAX_SCALE)
        if loss_tied
        else torch.optim.SGD([x], lr=LR)
    )

    def closure():
        opt.zero_grad()
        loss = su_1d(x)
        loss.backward()
        return loss

    out = np.empty(steps)
    for k in range(steps):
        opt.step(closure)
        out[k] = x.item()
    return out


def jax_path(steps: int, loss_tied: bool) -> np.ndarray:
    import jax
    import optax

    import jax_opt

    opt = jax_opt.loss_tied_ode(LR, max_scale=MAX_SCALE) if loss_tied else optax.sgd(LR)

    def body(carry, _):
        x, state = carry
        loss, grad = jax.value_and_grad(su_1d)(x)
        updates, state = opt.update(grad, state, x, value=loss)
        x = optax.apply_updates(x, updates)
        return (x, state), x

    with jax.enable_x64(True):
        x0 = jax.numpy.asarray(SU_1D_START)
        _, xs = jax.lax.scan(body, (x0, opt.init(x0)), length=steps)
        return np.asarray(xs)


def run(ctx: Context) -> StudyResult:
    steps = 20000
    paths = {"torch": torch_path, "jax": jax_path}
    runs = [(fw, method) for fw in frameworks() for method in ("loss-tied", "gradient descent")]
    records = []
    for fw, method in progress(runs, NAME):
        xs = paths[fw](steps, method == "loss-tied")
        target = SU_1D_GLOBAL_MIN if method == "loss-tied" else SU_1D_LOCAL_MIN
        keep = np.unique(np.geomspace(1, steps, 1500).astype(int)) - 1  # log-spaced steps
        records.append(
            {
                "framework": fw,
                "method": method,
                "x_final": float(xs[-1]),
                "f_final": float(su_1d(xs[-1])),
                "settled_at": settled_at(xs, target),
                "target": target,
                "step": (keep + 1).tolist(),
                "x": xs[keep].tolist(),
            }
        )
    rows = [
        (
            r["method"],
            r["framework"],
            f"{r['x_final']:.5f}",
            f"{r['f_final']:.3g}",
            r["settled_at"] if r["settled_at"] is not None else "never",
            r["target"],
        )
        for r in records
    ]
    table = markdown_table(
        [
            "method",
            "framework",
            "x after 20000 steps",
            "f",
            f"settled within {TOL} of target at step",
            "target",
        ],
        rows,
    )
    return StudyResult(
        name=NAME,
        question=QUESTION,
        verdict=_verdict(records),
        settings={
            "lr": LR,
            "max_scale": MAX_SCALE,
            "x0": SU_1D_START,
            "steps": steps,
            "tolerance": TOL,
            "run": RUN,
        },
        data={"records": records},
        tables=[table],
        figures=[plot(ctx, records)],
        notes=[
            f"'settled' = within {TOL} of the target for {RUN} consecutive steps; "
            "x* = 0.40693 is the global minimum, x = 3 the local one."
        ],
    )


def _verdict(records) -> str:
    tied = [r for r in records if r["method"] == "loss-tied"]
    gd = [r for r in records if r["method"] == "gradient descent"]
    escaped = all(r["settled_at"] is not None for r in tied)
    steps = ", ".join(f"{r['settled_at']} ({r['framework']})" for r in tied)
    return (
        f"loss-tied {'settles' if escaped else 'does not settle'} at x = "
        f"{tied[0]['x_final']:.5f} (f = {tied[0]['f_final']:.2g}) from step {steps}; plain "
        f"gradient descent stays at x = {gd[0]['x_final']:.4f} (f = {gd[0]['f_final']:.5f})"
    )


def plot(ctx: Context, records) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in records:
        style = "-" if r["framework"] == "torch" else "--"
        ax.plot(r["step"], r["x"], style, label=f"{r['method']} ({r['framework']})")
    ax.axhline(SU_1D_GLOBAL_MIN, color="k", lw=0.8, ls=":", label="global minimum x*")
    ax.axhline(SU_1D_LOCAL_MIN, color="0.5", lw=0.8, ls=":", label="local minimum x = 3")
    ax.set(xscale="log", xlabel="step", ylabel="x", title="Su's 1-D example, h = 0.01, M = 1000")
    ax.legend(fontsize=8)
    return save_figure(ctx, fig, "loss_tied_paths.png")
